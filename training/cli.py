"""`slimserve train` and `slimserve evaluate`: argument parsing only, torch imported on use.

The options are generated from ``TrainConfig`` (``slimserve.settings``); the few that are
not part of a run's configuration live in the small dataclasses below.
"""

import argparse
from dataclasses import dataclass
from pathlib import Path

from slimserve.cli_types import positive_int
from slimserve.settings import add_options, build, given, option
from training.config import DEVICES, TrainConfig


@dataclass(frozen=True)
class TrainArgs:
    """Where `train` writes, beside the run's configuration."""

    out: Path | None = option(
        None, help="run folder", unset="runs/MODEL-DATASET, DATASET a folder's own name"
    )
    force: bool = option(False, help="overwrite an existing run folder")
    resume: str | None = option(
        None, help="continue an interrupted run with its saved settings", metavar="RUN_DIR"
    )


@dataclass(frozen=True)
class EvaluateArgs:
    run_dir: str = option(help="a folder written by 'slimserve train'", metavar="RUN_DIR", positional=True)
    limit: int | None = option(
        None, help="evaluate on at most N test images", parse=positive_int, unset="all"
    )
    device: str = option("auto", help="auto picks CUDA when present", choices=DEVICES)
    plot: Path | None = option(None, help="where to write the PNG", unset="RUN_DIR/confusion_matrix.png")


def train_config_from_args(args: argparse.Namespace, model: str) -> TrainConfig:
    """The recipe of ``model`` and ``--recipe``, then every option given on the command line."""
    return TrainConfig.from_recipe(
        model, args.recipe, **given(TrainConfig, args, exclude=("model", "recipe"))
    )


def _train(args: argparse.Namespace) -> None:
    from training.train import train

    where = build(TrainArgs, args)
    config = train_config_from_args(args, args.model)
    if where.resume is not None:
        train(config, Path(where.resume), resume=True)
        return
    train(config, where.out, overwrite=where.force)


def _evaluate(args: argparse.Namespace) -> None:
    from training.evaluate import evaluate_checkpoint

    options = build(EvaluateArgs, args)
    evaluate_checkpoint(
        Path(options.run_dir), limit=options.limit, device=options.device, plot_path=options.plot
    )


def add_commands(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train",
        help="train a classifier and write a checkpoint",
        description="Train MLP/CNN/ResNet classifiers, or any timm/torchvision classification model "
        "with a new head; writes model.safetensors + metadata.json (last epoch) and train_state.pt "
        "(for --resume) into the run folder.",
    )
    add_options(train, TrainConfig)
    add_options(train, TrainArgs)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser(
        "evaluate",
        help="accuracy, per-class accuracy and a confusion matrix for a checkpoint",
        description="Verify a checkpoint's hash, evaluate it on its dataset's test split and "
        "write a confusion-matrix PNG.",
    )
    add_options(evaluate, EvaluateArgs)
    evaluate.set_defaults(handler=_evaluate)
