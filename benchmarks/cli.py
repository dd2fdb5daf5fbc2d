"""`slimserve bench models` and `slimserve bench http`: argument parsing only, heavy imports on use."""

import argparse
from pathlib import Path

from slimserve.cli_types import int_list, non_negative_int, positive_float, positive_int


def _models(args: argparse.Namespace) -> None:
    from benchmarks.models_bench import ModelBenchSettings, bench_models

    threads = {"threads": args.threads} if args.threads else {}
    settings = ModelBenchSettings(
        **threads,
        batch_sizes=args.batch_sizes,
        warmup=args.warmup,
        repeats=args.repeats,
        max_seconds=args.max_seconds,
        limit=args.limit,
        ort_spinning=args.ort_spinning,
        max_accuracy_drop=args.max_accuracy_drop,
        select_batch=args.select_batch or (64 if 64 in args.batch_sizes else max(args.batch_sizes)),
        clock_ghz=args.clock_ghz,
        malloc=args.malloc,
        rounds=args.rounds,
    )
    bench_models(Path(args.bundle_dir), args.out, settings)


def _http(args: argparse.Namespace) -> None:
    from benchmarks.http_bench import HttpBenchSettings, bench_http

    settings = HttpBenchSettings(
        concurrency=args.concurrency,
        duration_s=args.duration,
        requests=args.requests,
        images_dir=args.images,
        image_count=args.image_count,
        variant=args.variant,
        reference=args.reference,
        bundle_dir=args.bundle,
        in_process_repeats=args.in_process_repeats,
    )
    bench_http(args.url, args.out, settings)


def add_commands(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser(
        "bench",
        help="benchmark exported variants in-process, or a running service over HTTP",
        description="Benchmarks that write JSON, Markdown and PNG plots.",
    )
    sub = bench.add_subparsers(dest="bench_command", metavar="BENCH_COMMAND", required=True)
    models = sub.add_parser(
        "models",
        help="latency, throughput, memory and accuracy of every variant x runtime x batch size",
        description="Time every variant of a bundle on PyTorch eager (the fp32 reference), TorchScript and "
        "ONNX Runtime (every provider that works here), each in its own process with the same thread "
        "count, and recommend the fastest variant within the accuracy budget.",
    )
    models.add_argument(
        "bundle_dir", metavar="BUNDLE_DIR", help="bundles/NAME/VERSION written by 'slimserve export'"
    )
    models.add_argument(
        "--batch-sizes", type=int_list, default=(1, 8, 32, 64, 128), help="default: 1,8,32,64,128"
    )
    models.add_argument(
        "--threads", type=positive_int, help="intra-op threads for every runtime (default: every usable core)"
    )
    models.add_argument("--warmup", type=positive_int, default=10, help="untimed calls per batch size")
    models.add_argument("--repeats", type=positive_int, default=100, help="timed calls per batch size")
    models.add_argument(
        "--max-seconds", type=positive_float, default=20.0, help="time bound per batch size (default 20)"
    )
    models.add_argument(
        "--limit",
        type=positive_int,
        help="re-evaluate accuracy on N test images per runtime (default: use export's figures)",
    )
    models.add_argument(
        "--ort-spinning",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ONNX Runtime intra-op thread spinning (its default; each runtime has its own process)",
    )
    models.add_argument(
        "--max-accuracy-drop",
        type=positive_float,
        default=0.5,
        help="budget in points for the recommendation",
    )
    models.add_argument(
        "--select-batch",
        type=positive_int,
        help="batch size for the recommendation (default: 64 or the largest)",
    )
    models.add_argument(
        "--clock-ghz",
        type=positive_float,
        help="core clock for the peak (default: what the kernel reports; VMs show the nominal clock)",
    )
    models.add_argument(
        "--rounds",
        type=positive_int,
        default=3,
        help="run the whole matrix this many times; cells report the median round and each speed-up "
        "its range over rounds (default 3: single cells drift by up to 30%% on shared machines)",
    )
    models.add_argument(
        "--malloc",
        choices=("retain", "default"),
        default="retain",
        help="allocator policy in every worker: retain freed memory (default; PyTorch eager fp32 is "
        "up to 1.75x faster with it) or the C library's default, to reproduce an untuned process",
    )
    models.add_argument("--out", type=Path, default=Path("bench-results"), help="default: ./bench-results")
    models.set_defaults(handler=_models)

    http = sub.add_parser(
        "http",
        help="load-test the running service with locust, beside a bare Starlette reference",
        description="Drive the service at URL (loopback only) with headless locust at each concurrency, "
        "on its adaptive-batching and unbatched routes, and a bare Starlette+uvicorn endpoint doing the same "
        "inference (started here); compare with the in-process batch-1 latency of the same variant.",
    )
    http.add_argument("url", metavar="URL", help="the service, e.g. http://127.0.0.1:3000")
    http.add_argument("--concurrency", type=int_list, default=(1, 8, 32, 64), help="default: 1,8,32,64")
    http.add_argument(
        "--duration", type=positive_float, default=20.0, help="seconds per target and concurrency (20)"
    )
    http.add_argument(
        "--requests", type=positive_int, default=3000, help="requests per target and concurrency (3000)"
    )
    http.add_argument("--images", type=Path, help="folder of image files to send (default: real test images)")
    http.add_argument("--image-count", type=positive_int, default=64, help="images to cycle through (64)")
    http.add_argument("--variant", help="variant to request (default: the service's default)")
    http.add_argument(
        "--reference",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also start and measure the bare Starlette+uvicorn reference endpoint (default: on)",
    )
    http.add_argument(
        "--bundle", type=Path, help="bundle folder for the reference (default: the BentoML store entry)"
    )
    http.add_argument(
        "--in-process-repeats",
        type=non_negative_int,
        default=300,
        help="timed in-process batch-1 calls for the comparison (0 skips it; default 300)",
    )
    http.add_argument("--out", type=Path, default=Path("bench-results"), help="default: ./bench-results")
    http.set_defaults(handler=_http)
