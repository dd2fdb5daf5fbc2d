"""Export settings: every knob that changes an artifact, typed once.

Torch-free, so `slimserve export --help` is generated from these fields without importing
torch (``slimserve.settings``); the manifest records them per variant. A new export option
is a new field here.
"""

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimserve.cli_types import non_negative_int, positive_float, positive_int, share
from slimserve.errors import SlimserveError
from slimserve.settings import option

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
INT8_TARGETS = ("cpu", "tensorrt")


def block_list(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected module names such as stages.1,stages.2, got {text!r}")
    return names


def resolved_path(text: str) -> str:
    """A run folder as an absolute path, so the manifest names it wherever it is read."""
    return str(Path(text).resolve())


@dataclass(frozen=True)
class ExportSettings:
    """Every knob that changes an artifact; recorded in the manifest per variant."""

    calibration_images: int = option(512, help="INT8 calibration images", parse=positive_int)
    calibration_method: str = option(
        "minmax", help="INT8 calibration method tried first", choices=CALIBRATION_METHODS
    )
    int8_target: str = option(
        "cpu",
        help="ONNX INT8 signedness: cpu = uint8 activations (fastest with VNNI), tensorrt = symmetric int8",
        choices=INT8_TARGETS,
    )
    max_accuracy_drop: float = option(
        0.5, help="largest accepted accuracy drop vs fp32, in points", parse=positive_float
    )
    max_pruning_drop: float = option(
        1.0,
        help="pruned and sparse: largest accepted accuracy drop vs fp32, in points; a variant over it is "
        "not written and is listed under the manifest's failed variants with its numbers",
        parse=positive_float,
    )
    int8_fallback_attempts: int = option(
        4,
        help="INT8: builds after the calibration methods that keep the most sensitive layers in fp32 "
        "(1 up to half of them, spaced geometrically); bounds the search's time, per format; 0 = none",
        parse=non_negative_int,
    )
    prune_macs: float = option(
        0.5,
        help="pruned: share of fp32's MACs structured pruning removes, dropped blocks included",
        parse=share,
    )
    finetune_epochs: int = option(3, help="pruned: fine-tuning epochs after pruning", parse=int)
    finetune_images: int | None = option(
        None,
        help="pruned: fine-tune on a seeded subset of N train images, whatever --limit says (the demo sizes it "
        "to its budget)",
        parse=positive_int,
        unset="--limit's count, else all",
    )
    finetune_lr: float = option(0.01, help="pruned: fine-tuning peak LR", parse=positive_float)
    sparsity: float = option(0.5, help="sparse: share of Conv/Linear weights set to zero", parse=share)
    seed: int = option(0, help="seed for subsets and fine-tuning")
    student: str | None = option(
        None,
        help="a `slimserve distill` run: adds the distilled and distilled-int8 variants",
        parse=resolved_path,
        metavar="RUN_DIR",
    )
    drop_blocks: tuple[str, ...] = option(
        (),
        help="pruned: comma-separated blocks to replace by identities before channel pruning, e.g. "
        "stages.1,stages.2 (a wrong name lists the droppable ones); --prune-macs stays the total",
        parse=block_list,
        metavar="NAMES",
    )
    finetune_teacher: str | None = option(
        None,
        help="pruned: fine-tune by distillation from this run (same dataset and classes; best trained "
        "with --label-smoothing 0) instead of on the labels",
        parse=resolved_path,
        metavar="RUN_DIR",
    )

    def __post_init__(self) -> None:
        checks = [
            (self.calibration_method in CALIBRATION_METHODS, "unknown --calibration-method"),
            (self.int8_target in INT8_TARGETS, "--int8-target must be cpu or tensorrt"),
            (0 < self.prune_macs < 1, f"--prune-macs must be between 0 and 1, got {self.prune_macs}"),
            (0 < self.sparsity < 1, f"--sparsity must be between 0 and 1, got {self.sparsity}"),
            (self.finetune_epochs >= 0, "--finetune-epochs must not be negative"),
            (
                self.finetune_epochs > 0 or self.finetune_teacher is None,
                "--finetune-teacher needs --finetune-epochs above 0",
            ),
            (len(set(self.drop_blocks)) == len(self.drop_blocks), "--drop-blocks names a block twice"),
            (self.max_accuracy_drop >= 0, "--max-accuracy-drop must not be negative"),
            (self.max_pruning_drop >= 0, "--max-pruning-drop must not be negative"),
            (self.int8_fallback_attempts >= 0, "--int8-fallback-attempts must not be negative"),
        ]
        for ok, message in checks:
            if not ok:
                raise SlimserveError(message)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "drop_blocks": list(self.drop_blocks)}
