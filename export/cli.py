"""`slimserve export`: argument parsing only, torch imported on use."""

import argparse
from pathlib import Path

from slimserve.cli_types import positive_float, positive_int, share, share_or_bound

VARIANT_NAMES = ("fp32", "int8", "pruned", "pruned-int8", "sparse", "distilled", "distilled-int8")


def _variant_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in VARIANT_NAMES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown variant {', '.join(unknown) or repr(text)}; choose from {', '.join(VARIANT_NAMES)}"
        )
    return names


def _block_list(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected module names such as stages.1,stages.2, got {text!r}")
    return names


def _export(args: argparse.Namespace) -> None:
    from export.building import ExportSettings
    from export.pipeline import export_bundle

    settings = ExportSettings(
        calibration_images=args.calibration_images,
        calibration_method=args.calibration_method,
        int8_target=args.int8_target,
        max_accuracy_drop=args.max_accuracy_drop,
        prune_macs=args.prune_macs,
        finetune_epochs=args.finetune_epochs,
        finetune_lr=args.finetune_lr,
        sparsity=args.sparsity,
        seed=args.seed,
        student=None if args.student is None else str(args.student.resolve()),
        drop_blocks=args.drop_blocks,
        finetune_teacher=None if args.finetune_teacher is None else str(args.finetune_teacher.resolve()),
    )
    export_bundle(
        Path(args.run_dir),
        out=args.out,
        name=args.name,
        version=args.version,
        variants=args.variants,
        limit=args.limit,
        settings=settings,
        register=args.register,
    )


def _distill(args: argparse.Namespace) -> None:
    from export.distill import distill, inherit_data_settings
    from training.checkpoint import read_metadata
    from training.cli import train_config_from_args

    config = inherit_data_settings(
        train_config_from_args(args, args.student),
        read_metadata(Path(args.teacher)),
        keep_dataset=args.dataset is not None,
    )
    distill(
        args.teacher,
        config,
        temperature=args.temperature,
        alpha=args.alpha,
        out=args.out,
        twin_out=args.twin_out,
        force=args.force,
    )


def add_commands(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export",
        help="turn a checkpoint into a bundle of TorchScript + ONNX variants",
        description="Verify a checkpoint, export each variant as frozen TorchScript and ONNX, check "
        "parity and accuracy on the test split, write OUT/NAME/VERSION/manifest.json and register "
        "each variant in the BentoML model store as NAME-VARIANT:VERSION.",
    )
    export.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by 'slimserve train'")
    export.add_argument("--out", type=Path, default=Path("bundles"), help="bundles root (default: ./bundles)")
    export.add_argument("--name", help="bundle name (default: ARCH-DATASET)")
    export.add_argument("--version", help="bundle version (default: UTC time, YYYYMMDD-HHMMSS)")
    export.add_argument(
        "--variants",
        type=_variant_list,
        help=f"comma-separated subset of {','.join(VARIANT_NAMES)} (default: all; the distilled ones "
        "only with --student)",
    )
    export.add_argument(
        "--limit",
        type=positive_int,
        help="use N test images for measurements and N train images for fine-tuning (default: all)",
    )
    export.add_argument(
        "--calibration-images", type=positive_int, default=512, help="INT8 calibration images (default: 512)"
    )
    export.add_argument(
        "--calibration-method",
        choices=["minmax", "entropy", "percentile"],
        default="minmax",
        help="INT8 calibration method tried first (default: minmax)",
    )
    export.add_argument(
        "--int8-target",
        choices=["cpu", "tensorrt"],
        default="cpu",
        help="ONNX INT8 signedness: cpu = uint8 activations (fastest with VNNI), "
        "tensorrt = symmetric int8 (default: cpu)",
    )
    export.add_argument(
        "--max-accuracy-drop",
        type=positive_float,
        default=0.5,
        help="largest accepted accuracy drop vs fp32, in points (default: 0.5)",
    )
    export.add_argument(
        "--prune-macs",
        type=share,
        default=0.5,
        help="pruned: share of fp32's MACs structured pruning removes, dropped blocks included "
        "(default: 0.5)",
    )
    export.add_argument(
        "--drop-blocks",
        type=_block_list,
        default=(),
        metavar="NAMES",
        help="pruned: comma-separated blocks to replace by identities before channel pruning, e.g. "
        "stages.1,stages.2 (a wrong name lists the droppable ones); --prune-macs stays the total",
    )
    export.add_argument(
        "--finetune-teacher",
        type=Path,
        metavar="RUN_DIR",
        help="pruned: fine-tune by distillation from this run (same dataset and classes; best trained "
        "with --label-smoothing 0) instead of on the labels",
    )
    export.add_argument(
        "--finetune-epochs",
        type=int,
        default=3,
        help="pruned: fine-tuning epochs after pruning (default: 3)",
    )
    export.add_argument(
        "--finetune-lr", type=positive_float, default=0.01, help="pruned: fine-tuning peak LR (default: 0.01)"
    )
    export.add_argument(
        "--sparsity",
        type=share,
        default=0.5,
        help="sparse: share of Conv/Linear weights set to zero (default: 0.5)",
    )
    export.add_argument(
        "--student",
        type=Path,
        metavar="RUN_DIR",
        help="a `slimserve distill` run: adds the distilled and distilled-int8 variants",
    )
    export.add_argument("--seed", type=int, default=0, help="seed for subsets and fine-tuning (default: 0)")
    export.add_argument(
        "--no-register",
        dest="register",
        action="store_false",
        help="write the bundle only, skip the BentoML model store",
    )
    export.set_defaults(handler=_export)

    from training.cli import add_train_options
    from training.config import RECIPES

    distill = commands.add_parser(
        "distill",
        help="train a small student from a teacher checkpoint, and the same student without one",
        description="Knowledge distillation: train STUDENT on the teacher's dataset with soft targets "
        "(temperature, alpha) and, with the same config and seed, its no-teacher twin (reused when a "
        "finished one exists); prints both accuracies. The student is a normal checkpoint for 'export'.",
    )
    distill.add_argument("--teacher", required=True, metavar="RUN_DIR", help="the teacher's run folder")
    distill.add_argument(
        "--student",
        choices=list(RECIPES),
        default="cnn-small",
        help="student architecture (default: cnn-small)",
    )
    distill.add_argument(
        "--temperature", type=positive_float, default=4.0, help="softmax temperature (default: 4)"
    )
    distill.add_argument(
        "--alpha",
        type=share_or_bound,
        default=0.9,
        help="weight of the soft-target loss, 0..1 (default: 0.9)",
    )
    add_train_options(distill)
    distill.set_defaults(dataset=None)  # the teacher's dataset unless given
    distill.add_argument(
        "--out", type=Path, help="student run folder (default: runs/STUDENT-DATASET-distilled)"
    )
    distill.add_argument("--twin-out", type=Path, help="no-teacher twin folder (default: OUT-no-teacher)")
    distill.add_argument("--force", action="store_true", help="overwrite an existing student run folder")
    distill.set_defaults(handler=_distill)
