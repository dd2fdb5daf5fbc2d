"""The ``slimserve`` command: one entry point that dispatches to each stage's subcommands.

Each stage owns its own ``cli`` module with an ``add_commands(subparsers)`` function whose
options are generated from the stage's settings dataclasses (``slimserve.settings``)
(timm/litgpt style: the CLI parses arguments and calls typed functions, nothing else).
Those modules import torch only inside handlers, so ``slimserve --help`` is instant and
commands that serve ONNX never import torch.
"""

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from slimserve.errors import SlimserveError

EXIT_USAGE = 2
EXIT_ERROR = 1
# Stage modules that contribute subcommands, in the order `--help` lists them.
STAGE_CLIS = ("training.cli", "export.cli", "service.cli", "benchmarks.cli")


class _Parser(argparse.ArgumentParser):
    """argparse prints the whole usage block on a bad argument; users get one line instead."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from commands import demo
    from slimserve import __version__

    parser = _Parser(
        prog="slimserve",
        description="Train small image classifiers, make them smaller and faster, serve them over HTTP.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in STAGE_CLIS:
        importlib.import_module(module).add_commands(commands)
    demo.add_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], None] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        handler(args)
    except SlimserveError as exc:
        print(f"slimserve {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"slimserve {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
