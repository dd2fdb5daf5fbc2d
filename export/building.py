"""What every variant builder shares: settings, context, and the checks each variant passes.

A builder turns the parent checkpoint (or another variant's float model) into artifacts
in its folder and returns the manifest entry. ``finish_variant`` is the shared tail: it
checks parity per format, measures accuracy and agreement with fp32 on the evaluation
set, and hashes the files. Any failure raises, and the pipeline records it for that
variant only.
"""

import gzip
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from rich.console import Console
from torch import nn

from export.checks import PARITY_IMAGES, Parity, accuracy, agreement, parity, predict
from export.failures import StepFailed, describe_failure, export_step
from export.formats import example_batch, write_onnx, write_pt2, write_torchscript
from export.settings import ExportSettings  # re-exported: builders and callers import it here
from slimserve.errors import SlimserveError
from slimserve.hashing import sha256_file
from slimserve.manifest import FILE_NAMES
from slimserve.runtime import RuntimeOptions, eager_runner, open_runner
from slimserve.spec import PreprocessSpec
from training.datasets import LoadedData
from training.eval_data import ImageSet
from training.tensors import ImageTensors

TORCHSCRIPT_STEP = "TorchScript tracing (torch.jit.trace + freeze)"
# What loads and runs each format when parity and accuracy are measured.
RUNTIMES = {"onnx": "ONNX Runtime", "torchscript": "the TorchScript runtime", "pt2": "torch.export.load"}
PT2_STEP = "torch.export"


class VariantFailed(SlimserveError):
    """This variant cannot be produced; the others still are."""


@dataclass
class ExportContext:
    """What every builder needs: the parent, the images, fp32 reference outputs, and the
    float models earlier variants produced (``pruned-int8`` quantizes ``pruned``'s)."""

    parent: nn.Module
    parent_metadata: dict[str, Any]
    spec: PreprocessSpec
    data: LoadedData
    eval_set: ImageSet
    calibration: Callable[[], ImageSet]
    train_set: Callable[[], ImageTensors]
    console: Console
    settings: ExportSettings
    bundle_dir: Path
    fp32_accuracy: float
    fp32_predictions: np.ndarray
    canary: dict[str, Any]  # the manifest entry of the canary set written into the bundle (export.canary)
    float_models: dict[str, nn.Module] = field(default_factory=dict)
    float_accuracies: dict[str, float] = field(default_factory=dict)
    float_sparsity: dict[str, float] = field(default_factory=dict)
    student: Any = None  # the verified student checkpoint when --student was given
    teacher: Any = None  # the verified fine-tuning teacher when --finetune-teacher was given

    @property
    def parity_set(self) -> ImageSet:
        return self.eval_set.head(PARITY_IMAGES)

    def example(self) -> torch.Tensor:
        return example_batch(self.spec.input_shape)


def macs_and_params(model: nn.Module, spec: PreprocessSpec) -> tuple[int, int]:
    """Per image, counted by torch-pruning on a float copy of the architecture."""
    with export_step("MAC counting (torch-pruning)", model=model), torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model.eval(), example_batch(spec.input_shape, batch=1))
    return int(macs), int(params)


def file_entry(path: Path, bundle_dir: Path) -> dict[str, Any]:
    """Path, hash and size; plus the gzip size, the honest measure of what unstructured
    sparsity saves (dense formats store the zeros)."""
    return {
        "path": path.relative_to(bundle_dir).as_posix(),
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "gzip_bytes": len(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0)),
    }


@dataclass(frozen=True)
class Artifact:
    """One written file, the logits it must reproduce on the parity images, whether the
    fp32 parity thresholds apply to it, and whether the variant can do without it."""

    format: str
    path: Path
    reference: np.ndarray
    reference_name: str
    strict: bool
    optional: bool = False


def _measure(ctx: ExportContext, name: str, artifact: Artifact) -> tuple[Parity, float, float]:
    """Parity on the parity images (raises on a miss), then accuracy and agreement with fp32."""
    with export_step(RUNTIMES[artifact.format], artifact.format):
        try:
            run = open_runner(
                artifact.format, artifact.path, RuntimeOptions(label=f"{name} {artifact.format}")
            )
        except SlimserveError as exc:  # the file cannot be opened: this format's failure, like a parity miss
            raise VariantFailed(str(exc)) from None
        outputs = predict(run, ctx.parity_set.images)
    check = parity(artifact.reference, outputs, artifact.reference_name, artifact.strict)
    if not check.passed:
        raise VariantFailed(f"{name} {artifact.format} parity failed: {check.describe()}")
    # The parity images are the evaluation set's head: only the rest still needs running
    # (on a 153-photo split at 224 px that halves the time each format takes to check).
    rest = ctx.eval_set.images[len(outputs) :]
    with export_step(RUNTIMES[artifact.format], artifact.format):
        logits = np.concatenate([outputs, predict(run, rest)]) if len(rest) else outputs
    return check, accuracy(logits, ctx.eval_set), agreement(logits.argmax(1), ctx.fp32_predictions)


def finish_variant(ctx: ExportContext, name: str, artifacts: list[Artifact], **entry: Any) -> dict[str, Any]:
    """Parity gate, then accuracy on the evaluation set; returns the manifest entry.

    An optional file that cannot be run or misses parity is deleted and its reason joins
    ``skipped_formats``; any other file's failure fails the variant.
    """
    skipped: dict[str, str] = dict(entry.pop("skipped_formats", {}))
    measured: dict[str, tuple[Parity, float, float]] = {}
    for artifact in artifacts:
        try:
            measured[artifact.format] = _measure(ctx, name, artifact)
        except (VariantFailed, StepFailed) as exc:
            if not artifact.optional:
                raise
            skipped[artifact.format] = describe_failure(name, exc)["reason"]
            artifact.path.unlink(missing_ok=True)
    kept = [a for a in artifacts if a.format in measured]
    accuracies = {fmt: result[1] for fmt, result in measured.items()}
    agreements = {fmt: result[2] for fmt, result in measured.items()}
    # The service defaults to ONNX, so its numbers are the variant's headline numbers.
    primary = "onnx" if "onnx" in accuracies else kept[0].format
    return {
        **entry,
        "test_accuracy": accuracies[primary],
        "test_images": len(ctx.eval_set),
        "accuracy_drop": round((ctx.fp32_accuracy - accuracies[primary]) * 100, 4),
        "top1_agreement": agreements[primary],
        "accuracy_by_format": accuracies,
        "top1_agreement_by_format": agreements,
        "parity": {fmt: result[0].to_dict() for fmt, result in measured.items()},
        "files": {a.format: file_entry(a.path, ctx.bundle_dir) for a in kept},
        "skipped_formats": skipped,
    }


def try_pt2(name: str, model: nn.Module, example: torch.Tensor, path: Path) -> str | None:
    """Write the ``.pt2`` file; on failure return the one-line reason instead of raising.

    The file is a bonus next to TorchScript and ONNX, so a model torch.export cannot take
    keeps its variant (the manifest's ``skipped_formats`` says why there is no ``.pt2``).
    """
    try:
        with export_step(PT2_STEP, "pt2", model):
            write_pt2(model, example, path)
    except StepFailed as exc:
        path.unlink(missing_ok=True)
        return describe_failure(name, exc)["reason"]
    return None


def export_float(ctx: ExportContext, name: str, model: nn.Module) -> tuple[list[Artifact], dict[str, str]]:
    """TorchScript, ONNX and (if torch.export takes the model) ``.pt2`` files of a float model,
    each held to fp32 parity with it; returns them and the formats skipped, with reasons."""
    folder = ctx.bundle_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    reference = predict(eager_runner(model), ctx.parity_set.images)
    ts_path, onnx_path = folder / FILE_NAMES["torchscript"], folder / FILE_NAMES["onnx"]
    with export_step(TORCHSCRIPT_STEP, "torchscript", model):
        write_torchscript(model, ctx.example(), ts_path)
    with export_step("the ONNX exporter (torch.onnx.export, dynamo)", "onnx", model):
        write_onnx(model, ctx.example(), onnx_path)
    artifacts = [
        Artifact("onnx", onnx_path, reference, f"{name} eager fp32", strict=True),
        Artifact("torchscript", ts_path, reference, f"{name} eager fp32", strict=True),
    ]
    pt2_path = folder / FILE_NAMES["pt2"]
    skipped = {}
    reason = try_pt2(name, model, ctx.example(), pt2_path)
    if reason is None:
        artifacts.append(
            Artifact("pt2", pt2_path, reference, f"{name} eager fp32", strict=True, optional=True)
        )
    else:
        skipped["pt2"] = reason
    return artifacts, skipped
