"""`slimserve bench models` and `slimserve bench http`: argument parsing only, heavy imports on use."""

import argparse
import os
from pathlib import Path

from slimserve.cli_types import positive_float, positive_int


def int_list(text: str) -> tuple[int, ...]:
    """``1,8,32`` -> (1, 8, 32); each a positive whole number."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive whole numbers, got {text!r}")
    return tuple(sorted(set(values)))


def default_threads() -> int:
    return len(os.sched_getaffinity(0))


def _models(args: argparse.Namespace) -> None:
    from benchmarks.models_bench import ModelBenchSettings, bench_models

    settings = ModelBenchSettings(
        batch_sizes=args.batch_sizes,
        threads=args.threads,
        warmup=args.warmup,
        repeats=args.repeats,
        max_seconds=args.max_seconds,
        limit=args.limit,
        ort_spinning=args.ort_spinning,
        max_accuracy_drop=args.max_accuracy_drop,
        select_batch=args.select_batch or (64 if 64 in args.batch_sizes else max(args.batch_sizes)),
    )
    bench_models(Path(args.bundle_dir), args.out, settings)


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
        "--threads", type=positive_int, default=default_threads(), help="intra-op threads for every runtime"
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
    models.add_argument("--out", type=Path, default=Path("bench-results"), help="default: ./bench-results")
    models.set_defaults(handler=_models)
