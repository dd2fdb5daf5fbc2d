"""`slimserve serve`: argument parsing only; the server is started by ``service.launch``."""

import argparse
import dataclasses

from service.config import BACKENDS, PROVIDER_CHOICES, ServeConfig
from slimserve.cli_types import positive_int


def _serve(args: argparse.Namespace) -> None:
    from service.launch import serve

    overrides = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(ServeConfig)
        if getattr(args, field.name, None) is not None
    }
    config = dataclasses.replace(ServeConfig.from_env(), **overrides)
    serve(config, host=args.host, ready_timeout=args.ready_timeout)


def add_commands(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve an exported bundle over HTTP (BentoML)",
        description="Start the BentoML service on a bundle from the BentoML model store. Every option "
        "also reads SLIMSERVE_<OPTION> (e.g. SLIMSERVE_PROVIDERS=cpu); options win.",
    )
    serve.add_argument("--bundle", help="bundle name (default: the only bundle in the store)")
    serve.add_argument("--version", help="bundle version (default: latest)")
    serve.add_argument("--variants", help="comma-separated variants to load (default: all)")
    serve.add_argument("--backend", choices=BACKENDS, help="onnx (default, torch-free) or torchscript")
    serve.add_argument(
        "--providers", choices=PROVIDER_CHOICES, help="auto (default): TensorRT > CUDA > CPU as available"
    )
    serve.add_argument(
        "--strict",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="refuse to start when a requested accelerator is not actually used",
    )
    serve.add_argument("--max-batch-size", type=positive_int, help="adaptive batching: images per call (32)")
    serve.add_argument(
        "--max-latency-ms",
        type=positive_int,
        help="adaptive batching: queue deadline; requests that would wait longer get 503 (2000)",
    )
    serve.add_argument("--max-batch-images", type=positive_int, help="images per /predict/batch (64)")
    serve.add_argument("--workers", type=positive_int, help="worker processes (default: one per core)")
    serve.add_argument("--threads", type=positive_int, help="inference threads per worker (cores/workers)")
    serve.add_argument("--max-body-bytes", type=positive_int, help="request body limit (16 MiB)")
    serve.add_argument("--max-pixels", type=positive_int, help="decoded image limit (4096x4096)")
    serve.add_argument("--top-k", type=positive_int, help="classes per answer unless top_k is sent (5)")
    serve.add_argument("--host", default="0.0.0.0", help="bind address (default: 0.0.0.0)")
    serve.add_argument("--port", type=positive_int, help="port (default: 3000)")
    serve.add_argument(
        "--access-log", action=argparse.BooleanOptionalAction, default=None, help="log every request (off)"
    )
    serve.add_argument(
        "--tracing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="OpenTelemetry spans on prediction routes (off; needs a BentoML tracing exporter)",
    )
    serve.add_argument("--timeout-s", type=positive_int, help="per-request timeout in seconds (60)")
    serve.add_argument(
        "--ready-timeout", type=positive_int, default=120, help="seconds to wait for readiness (120)"
    )
    serve.set_defaults(handler=_serve)
