"""`slimserve bench models` and `slimserve bench http`: argument parsing only, heavy imports on use.

The options are generated from ``benchmarks.settings`` (``slimserve.settings``); what
each command reads and writes is in the small dataclasses below.
"""

import argparse
from dataclasses import dataclass
from pathlib import Path

from benchmarks.peers.cli import add_parser as add_peers
from benchmarks.settings import BurstBenchSettings, HttpBenchSettings, ModelBenchSettings
from slimserve.settings import add_options, build, option

RESULTS = Path("bench-results")


@dataclass(frozen=True)
class BenchModelsArgs:
    bundle_dir: str = option(
        help="bundles/NAME/VERSION written by 'slimserve export'", metavar="BUNDLE_DIR", positional=True
    )
    out: Path = option(RESULTS, help="where the report goes")


@dataclass(frozen=True)
class BenchHttpArgs:
    url: str = option(help="the service, e.g. http://127.0.0.1:3000", metavar="URL", positional=True)
    out: Path = option(RESULTS, help="where the report goes")


def _models(args: argparse.Namespace) -> None:
    from benchmarks.models_bench import bench_models

    job = build(BenchModelsArgs, args)
    bench_models(Path(job.bundle_dir), job.out, build(ModelBenchSettings, args))


def _http(args: argparse.Namespace) -> None:
    from benchmarks.http_bench import bench_http

    job = build(BenchHttpArgs, args)
    bench_http(job.url, job.out, build(HttpBenchSettings, args))


def _burst(args: argparse.Namespace) -> None:
    from benchmarks.connection_burst import bench_burst

    job = build(BenchHttpArgs, args)
    bench_burst(job.url, job.out, build(BurstBenchSettings, args))


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
    add_options(models, BenchModelsArgs)
    add_options(models, ModelBenchSettings)
    models.set_defaults(handler=_models)

    http = sub.add_parser(
        "http",
        help="load-test the running service with locust, beside a bare Starlette reference",
        description="Drive the service at URL (loopback only) with headless locust at each concurrency, "
        "on its adaptive-batching and unbatched routes, and a bare Starlette+uvicorn endpoint doing the same "
        "inference (started here); compare with the in-process batch-1 latency of the same variant.",
    )
    add_options(http, BenchHttpArgs)
    add_options(http, HttpBenchSettings)
    http.set_defaults(handler=_http)

    burst = sub.add_parser(
        "burst",
        help="open kept-alive connections to the running service at once; show how they split over its workers",
        description="Open --connections kept-alive connections to the service at URL (loopback, this machine) "
        "in one burst, as an asyncio client, wrk or a proxy's pool does, post real test images on each for "
        "--duration seconds, and report each run's split over the server's processes, req/s, p50/p99 and "
        "how many answers said `connection: close`.",
    )
    add_options(burst, BenchHttpArgs)
    add_options(burst, BurstBenchSettings)
    burst.set_defaults(handler=_burst)
    add_peers(sub)  # `bench peers`: its own module
