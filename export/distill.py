"""`slimserve distill`: a small student learns from a trained teacher's soft targets.

The student is trained by ``training.train.train`` with a teacher attached (the KD loss
lives in ``training.distillation``), so it is an ordinary checkpoint that `export`
accepts. Its twin is the same student, config and seed without a teacher: the only
difference between the two runs is the loss, which is what makes the gain meaningful.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from rich import box
from rich.console import Console
from rich.table import Table

from slimserve.console import cli_console
from slimserve.documents import write_json
from slimserve.errors import SlimserveError
from slimserve.naming import default_run_dir
from training.checkpoint import METADATA_FILE, load_checkpoint, read_metadata
from training.config import TrainConfig
from training.distillation import distill_from
from training.eval_data import evaluation_tensors, run_data
from training.models import build_model
from training.train import STATE_FILE, evaluate_model, train

REPORT_FILE = "distill_report.json"


@dataclass(frozen=True)
class DistillResult:
    student_dir: Path
    twin_dir: Path
    teacher_accuracy: float
    student_accuracy: float
    twin_accuracy: float
    teacher_macs: int
    student_macs: int
    twin_reused: bool

    @property
    def gain_points(self) -> float:
        return (self.student_accuracy - self.twin_accuracy) * 100

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.update(student_dir=str(self.student_dir), twin_dir=str(self.twin_dir))
        data["gain_points"] = round(self.gain_points, 4)
        data["teacher_gap_points"] = round((self.teacher_accuracy - self.student_accuracy) * 100, 4)
        data["mac_ratio"] = round(self.teacher_macs / self.student_macs, 3)
        return data


def _macs(arch: str, arch_kwargs: dict, spec, num_classes: int) -> int:
    model = build_model(
        arch,
        in_channels=spec.channels,
        num_classes=num_classes,
        input_size=(spec.height, spec.width),
        **arch_kwargs,
    )
    macs, _ = tp.utils.count_ops_and_params(model.eval(), torch.zeros(1, *spec.input_shape))
    return int(macs)


def _twin_matches(twin_dir: Path, config: TrainConfig) -> bool:
    """A finished no-teacher run with exactly this config can be reused as the twin."""
    if not (twin_dir / METADATA_FILE).is_file() or not (twin_dir / STATE_FILE).is_file():
        return False
    meta = read_metadata(twin_dir)
    if "distillation" in meta or meta.get("train_config") != config.to_dict():
        return False
    state = torch.load(twin_dir / STATE_FILE, map_location="cpu", weights_only=True)
    return state.get("epoch") == config.epochs


def inherit_data_settings(config: TrainConfig, teacher_meta: dict, *, keep_dataset: bool) -> TrainConfig:
    """The student trains on the teacher's data (dataset, size, crop, channels, validation
    split), unless the user named a dataset, which ``distill`` then checks against the teacher's."""
    settings = teacher_meta.get("train_config", {})
    keys = ("image_size", "resize_shorter", "channels", "val_fraction")
    inherited = {k: settings[k] for k in keys if k in settings}
    if not keep_dataset:
        inherited["dataset"] = teacher_meta["dataset"]
    return dataclasses.replace(config, **inherited)


def check_same_normalization(config: TrainConfig, teacher_meta: dict[str, Any]) -> None:
    """The teacher is fed the student's normalized batches, and export serves a distilled
    variant with the teacher's preprocessing, so both must normalize alike. A pretrained
    student takes its weights' mean/std; one from scratch takes the dataset's statistics,
    as its teacher did only if that too was trained from scratch. Checked before training,
    so a mismatch costs seconds, not a training run."""
    teacher_spec = teacher_meta["preprocess"]
    teacher_stats = (list(teacher_spec["mean"]), list(teacher_spec["std"]))
    if config.weights is not None:
        from training.pretrained import load_pretrained

        _, weights = load_pretrained(config.model, config.weights, config.download)
        student_stats, what = (list(weights.mean), list(weights.std)), f"its --weights {config.weights}"
    elif teacher_meta.get("pretrained"):
        student_stats, what = None, "the dataset's own statistics (it trains from scratch)"
    else:
        return  # both from scratch on one dataset and split: the same measured statistics
    if student_stats != teacher_stats:
        raise SlimserveError(
            f"student {config.model} would normalize with {what}, the teacher with mean "
            f"{teacher_stats[0]} std {teacher_stats[1]}; the teacher would see inputs meant for another "
            "network. Pick a student whose --weights expect the teacher's mean/std (e.g. torchvision "
            "models share ImageNet's), or a teacher trained the same way"
        )


def distill(
    teacher_dir: str | Path,
    config: TrainConfig,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
    out: str | Path | None = None,
    twin_out: str | Path | None = None,
    force: bool = False,
    console: Console | None = None,
) -> DistillResult:
    """Train ``config.model`` with the teacher in ``teacher_dir`` and its no-teacher twin."""
    console = console or cli_console()
    teacher = load_checkpoint(teacher_dir)  # verifies the teacher's weights hash
    if teacher.metadata["dataset"] != config.dataset:
        raise SlimserveError(
            f"the teacher was trained on {teacher.metadata['dataset']}, the student on {config.dataset}; "
            "drop --dataset so the student uses the teacher's"
        )
    check_same_normalization(config, teacher.metadata)
    student_dir = Path(out) if out else default_run_dir(config.model, config.dataset, "distilled")
    twin_dir = Path(twin_out) if twin_out else student_dir.with_name(f"{student_dir.name}-no-teacher")
    distillation = distill_from(teacher, temperature=temperature, alpha=alpha)
    smoothing = teacher.metadata.get("train_config", {}).get("label_smoothing", 0.0)
    if smoothing:
        # Label smoothing pulls a network's wrong-class logits to nearly one value (Muller,
        # Kornblith and Hinton 2019), which erases the class similarities soft targets
        # carry; with such a teacher the student learns about what smoothed labels teach.
        console.print(
            f"[yellow]note:[/yellow] the teacher was trained with label smoothing {smoothing}, which "
            "flattens its wrong-class outputs: its soft targets carry little beyond the labels. "
            "Teachers are usually trained with --label-smoothing 0 (see BENCHMARKS.md)."
        )
    console.print(
        f"Distilling [bold]{teacher.metadata['arch']}[/] ({teacher_dir}) into [bold]{config.model}[/]: "
        f"temperature {temperature}, alpha {alpha}, {config.epochs} epochs, seed {config.seed}"
    )
    student = train(config, student_dir, overwrite=force, console=console, distillation=distillation)
    twin_reused = _twin_matches(twin_dir, config)
    if twin_reused:
        twin_accuracy = float(read_metadata(twin_dir)["metrics"]["test_accuracy"])
        console.print(f"Reusing the no-teacher twin in {twin_dir} (same config and seed)")
    else:
        console.print(f"Training the no-teacher twin into {twin_dir} (same config and seed)")
        twin_accuracy = train(config, twin_dir, overwrite=True, console=console).accuracy

    # The teacher is scored on the images the student was: the student's own held-out split.
    data = run_data(read_metadata(student_dir))
    test = evaluation_tensors(data, teacher.spec, "test", config.limit, config.seed)
    teacher_accuracy, _ = evaluate_model(teacher.model.cpu(), test, teacher.spec, torch.device("cpu"))
    result = DistillResult(
        student_dir=student_dir,
        twin_dir=twin_dir,
        teacher_accuracy=teacher_accuracy,
        student_accuracy=student.accuracy,
        twin_accuracy=twin_accuracy,
        teacher_macs=_macs(
            teacher.metadata["arch"], teacher.metadata["arch_kwargs"], teacher.spec, len(teacher.classes)
        ),
        student_macs=_macs(config.model, config.arch_kwargs, teacher.spec, len(teacher.classes)),
        twin_reused=twin_reused,
    )
    write_json(student_dir / REPORT_FILE, {**result.to_dict(), **distillation.to_metadata()})
    _print_result(result, teacher.metadata["arch"], config.model, len(test), console)
    return result


def _print_result(
    result: DistillResult, teacher_arch: str, student: str, images: int, console: Console
) -> None:
    table = Table(title=f"Distillation on {images} test images", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("model", "run", "test accuracy", "MACs"):
        table.add_column(column, justify="right" if column in ("test accuracy", "MACs") else "left")
    table.add_row(
        f"teacher ({teacher_arch})", "-", f"{result.teacher_accuracy:.2%}", f"{result.teacher_macs:,}"
    )
    table.add_row(
        f"student ({student}) + teacher",
        str(result.student_dir),
        f"{result.student_accuracy:.2%}",
        f"{result.student_macs:,}",
    )
    table.add_row(
        f"student ({student}) alone",
        str(result.twin_dir) + (" (reused)" if result.twin_reused else ""),
        f"{result.twin_accuracy:.2%}",
        f"{result.student_macs:,}",
    )
    console.print(table)
    console.print(
        f"Distillation gain: [bold]{result.gain_points:+.2f}[/] points over the no-teacher twin; "
        f"{result.teacher_macs / result.student_macs:.1f}x fewer MACs than the teacher, "
        f"{(result.teacher_accuracy - result.student_accuracy) * 100:.2f} points below it. "
        f"Export the student with: slimserve export {result.student_dir}"
    )
