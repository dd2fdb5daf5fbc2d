"""`slimserve serve`: argument parsing only; the server is started by ``service.launch``.

The options are generated from ``ServeConfig`` (every one also reads ``SLIMSERVE_<OPTION>``)
plus ``ServeArgs``, which only this process needs.
"""

import argparse
import dataclasses
from dataclasses import dataclass

from service.config import ServeConfig
from slimserve.cli_types import positive_int
from slimserve.settings import add_options, build, given, option


@dataclass(frozen=True)
class ServeArgs:
    """How this process starts the server, not how the server behaves."""

    host: str = option("0.0.0.0", help="bind address")
    ready_timeout: int = option(120, help="seconds to wait for readiness", parse=positive_int)


def _serve(args: argparse.Namespace) -> None:
    from service.launch import serve

    launch = build(ServeArgs, args)
    config = dataclasses.replace(ServeConfig.from_env(), **given(ServeConfig, args))
    serve(config, host=launch.host, ready_timeout=launch.ready_timeout)


def add_commands(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve an exported bundle over HTTP (BentoML)",
        description="Start the BentoML service on a bundle from the BentoML model store. Every option "
        "but --host and --ready-timeout also reads SLIMSERVE_<OPTION> (e.g. SLIMSERVE_PROVIDERS=cpu); "
        "options win.",
    )
    add_options(serve, ServeConfig)
    add_options(serve, ServeArgs)
    serve.set_defaults(handler=_serve)
