"""`slimserve export` and `slimserve distill`: argument parsing only, torch imported on use.

`export`'s options are generated from ``ExportSettings`` plus ``ExportArgs`` (what names and
places the bundle); `distill`'s from ``TrainConfig`` plus ``DistillArgs``.
"""

import argparse
from dataclasses import dataclass
from pathlib import Path

from export.settings import ExportSettings
from slimserve.cli_types import positive_float, positive_int, share_or_bound
from slimserve.settings import add_options, build, option
from training.config import RECIPES, TrainConfig

VARIANT_NAMES = ("fp32", "int8", "pruned", "pruned-int8", "sparse", "distilled", "distilled-int8")


def variant_list(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in VARIANT_NAMES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown variant {', '.join(unknown) or repr(text)}; choose from {', '.join(VARIANT_NAMES)}"
        )
    return names


@dataclass(frozen=True)
class ExportArgs:
    """Which checkpoint, which variants, and where the bundle goes."""

    run_dir: str = option(help="a folder written by 'slimserve train'", metavar="RUN_DIR", positional=True)
    out: Path = option(Path("bundles"), help="bundles root")
    name: str | None = option(None, help="bundle name", unset="ARCH-DATASET")
    version: str | None = option(None, help="bundle version", unset="UTC time, YYYYMMDD-HHMMSS")
    variants: tuple[str, ...] | None = option(
        None,
        help=f"comma-separated subset of {','.join(VARIANT_NAMES)}",
        parse=variant_list,
        unset="all; the distilled ones only with --student",
    )
    limit: int | None = option(
        None,
        help="use N test images for measurements and N train images for fine-tuning",
        parse=positive_int,
        unset="all",
    )
    register: bool = option(True, help="register each variant in the BentoML model store")


@dataclass(frozen=True)
class DistillArgs:
    """The teacher, the student's architecture and the distillation loss; the student's
    training options are ``TrainConfig``'s."""

    teacher: str = option(help="the teacher's run folder", metavar="RUN_DIR")
    student: str = option(
        "cnn-small",
        help=f"student architecture: slimserve's {', '.join(RECIPES)}, or a timm/torchvision model "
        "(timm:NAME, tv:NAME, e.g. tf_efficientnet_lite0); it must see the teacher's preprocessing",
    )
    temperature: float = option(4.0, help="softmax temperature", parse=positive_float)
    alpha: float = option(0.9, help="weight of the soft-target loss, 0..1", parse=share_or_bound)
    out: Path | None = option(None, help="student run folder", unset="runs/STUDENT-DATASET-distilled")
    twin_out: Path | None = option(None, help="no-teacher twin folder", unset="OUT-no-teacher")
    force: bool = option(False, help="overwrite an existing student run folder")


def _export(args: argparse.Namespace) -> None:
    from export.pipeline import export_bundle

    job = build(ExportArgs, args)
    export_bundle(
        Path(job.run_dir),
        out=job.out,
        name=job.name,
        version=job.version,
        variants=None if job.variants is None else list(job.variants),
        limit=job.limit,
        settings=build(ExportSettings, args),
        register=job.register,
    )


def _distill(args: argparse.Namespace) -> None:
    from export.distill import distill, inherit_data_settings
    from training.checkpoint import read_metadata
    from training.cli import train_config_from_args

    job = build(DistillArgs, args)
    config = inherit_data_settings(
        train_config_from_args(args, job.student),
        read_metadata(Path(job.teacher)),
        keep_dataset=args.dataset is not None,
    )
    distill(
        job.teacher,
        config,
        temperature=job.temperature,
        alpha=job.alpha,
        out=job.out,
        twin_out=job.twin_out,
        force=job.force,
    )


def add_commands(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export",
        help="turn a checkpoint into a bundle of TorchScript + ONNX variants",
        description="Verify a checkpoint, export each variant as frozen TorchScript and ONNX, check "
        "parity and accuracy on the test split, write OUT/NAME/VERSION/manifest.json and register "
        "each variant in the BentoML model store as NAME-VARIANT:VERSION.",
    )
    add_options(export, ExportArgs)
    add_options(export, ExportSettings)
    export.set_defaults(handler=_export)

    distill = commands.add_parser(
        "distill",
        help="train a small student from a teacher checkpoint, and the same student without one",
        description="Knowledge distillation: train STUDENT on the teacher's dataset with soft targets "
        "(temperature, alpha) and, with the same config and seed, its no-teacher twin (reused when a "
        "finished one exists); prints both accuracies. The student is a normal checkpoint for 'export'.",
    )
    add_options(distill, DistillArgs)
    add_options(distill, TrainConfig, exclude=("model",), unset={"dataset": "the teacher's"})
    distill.set_defaults(handler=_distill)
