"""The ``slimserve`` command: a thin front that parses arguments and calls typed functions.

Stage modules are imported inside each handler, so ``slimserve --help`` is instant and
commands that serve ONNX never import torch.
"""

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from slimserve.errors import SlimserveError

EXIT_USAGE = 2
EXIT_ERROR = 1


class _Parser(argparse.ArgumentParser):
    """argparse prints the whole usage block on a bad argument; users get one line instead."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    from training.config import AMP_MODES, DEVICES, OPTIMIZERS, RECIPES

    parser.add_argument("--model", choices=list(RECIPES), default="cnn", help="architecture (default: cnn)")
    parser.add_argument(
        "--dataset",
        default="fashion-mnist",
        help="fashion-mnist (default), mnist, cifar10 or folder:PATH (class_name/image.png tree)",
    )
    parser.add_argument(
        "--recipe",
        choices=["full", "fast"],
        default="full",
        help="per-model defaults: 'full' reaches the documented accuracy, 'fast' is a quick run",
    )
    parser.add_argument("--epochs", type=_positive_int, help="override the recipe's epoch count")
    parser.add_argument("--batch-size", type=_positive_int, help="override the recipe's batch size")
    parser.add_argument("--lr", type=_positive_float, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--weight-decay", type=float, help="override the recipe's weight decay")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, help="override the recipe's optimizer")
    parser.add_argument("--label-smoothing", type=float, help="override the recipe's label smoothing")
    parser.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random crop and (where labels allow) horizontal flip",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--limit", type=_positive_int, help="use at most N train and N test images")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto picks CUDA when present")
    parser.add_argument(
        "--amp",
        choices=AMP_MODES,
        default="auto",
        help="mixed precision: auto uses bf16/fp16 where the GPU or CPU supports it natively",
    )
    parser.add_argument("--threads", type=_positive_int, help="torch CPU threads (default: all cores)")
    parser.add_argument("--download", action="store_true", help="allow torchvision to download mnist/cifar10")
    parser.add_argument("--image-size", type=_positive_int, default=32, help="folder datasets: square size")
    parser.add_argument("--channels", type=int, choices=[1, 3], default=3, help="folder datasets: channels")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="folder datasets: validation share")
    parser.add_argument(
        "--arch-kwargs", type=_json_object, default={}, help="model arguments, e.g. '{\"depth\": 32}'"
    )


def _train_config(args: argparse.Namespace):
    from training.config import TrainConfig

    return TrainConfig.from_recipe(
        args.model,
        args.recipe,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        optimizer=args.optimizer,
        label_smoothing=args.label_smoothing,
        augment=args.augment,
        seed=args.seed,
        limit=args.limit,
        device=args.device,
        amp=args.amp,
        threads=args.threads,
        download=args.download,
        image_size=args.image_size,
        channels=args.channels,
        val_fraction=args.val_fraction,
        arch_kwargs=args.arch_kwargs,
    )


def _cmd_train(args: argparse.Namespace) -> None:
    from training.train import train

    if args.resume is not None:
        train(_train_config(args), Path(args.resume), resume=True)
        return
    train(_train_config(args), args.out, overwrite=args.force)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from training.evaluate import evaluate_checkpoint

    evaluate_checkpoint(Path(args.run_dir), limit=args.limit, device=args.device, plot_path=args.plot)


def _cmd_demo(args: argparse.Namespace) -> None:
    from slimserve.demo import run_demo

    run_demo(Path(args.workdir), limit=args.limit)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="slimserve",
        description="Train small image classifiers, make them smaller and faster, serve them over HTTP.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    train = commands.add_parser(
        "train",
        help="train a classifier and write a checkpoint",
        description="Train MLP/CNN/ResNet classifiers; writes model.safetensors + metadata.json "
        "(best epoch) and train_state.pt (for --resume) into the run folder.",
    )
    _add_train_options(train)
    train.add_argument("--out", type=Path, help="run folder (default: runs/MODEL-DATASET)")
    train.add_argument("--force", action="store_true", help="overwrite an existing run folder")
    train.add_argument(
        "--resume", metavar="RUN_DIR", help="continue an interrupted run with its saved settings"
    )
    train.set_defaults(handler=_cmd_train)

    evaluate = commands.add_parser(
        "evaluate",
        help="accuracy, per-class accuracy and a confusion matrix for a checkpoint",
        description="Verify a checkpoint's hash, evaluate it on its dataset's test split and "
        "write a confusion-matrix PNG.",
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by 'slimserve train'")
    evaluate.add_argument("--limit", type=_positive_int, help="evaluate on at most N test images")
    evaluate.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    evaluate.add_argument(
        "--plot", type=Path, help="where to write the PNG (default: RUN_DIR/confusion_matrix.png)"
    )
    evaluate.set_defaults(handler=_cmd_evaluate)

    demo = commands.add_parser(
        "demo",
        help="the end-to-end job on Fashion-MNIST with the fast recipe",
        description="Train the default CNN on Fashion-MNIST with the fast recipe and evaluate it.",
    )
    demo.add_argument("--workdir", default="slimserve-demo", help="where runs go (default: ./slimserve-demo)")
    demo.add_argument("--limit", type=_positive_int, help="use at most N images (a smoke run)")
    demo.set_defaults(handler=_cmd_demo)
    return parser


def _version() -> str:
    from slimserve import __version__

    return __version__


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
