"""`slimserve export`: checkpoint in, versioned bundle (and BentoML models) out.

The parent checkpoint is verified and evaluated in fp32 first; that evaluation is the
reference every variant's accuracy drop and top-1 agreement are measured against. Each
variant is built independently: one that fails (an unsupported layer, a parity miss, an
accuracy budget it cannot meet) is recorded under ``failed`` with a one-line reason that
names the step, the format and the layer (see ``export.failures``), and the others are
still written.
"""

import functools
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from export.building import ExportContext, ExportSettings
from export.canary import write_canary
from export.checks import accuracy, predict
from export.data import checkpoint_data, image_set
from export.failures import describe_failure
from export.formats import example_batch, quiet_torch_deprecations
from export.prune import check_droppable
from export.report import print_report
from export.variants import BUILDERS, STUDENT_VARIANTS
from slimserve.console import cli_console
from slimserve.errors import SlimserveError
from slimserve.manifest import SCHEMA_VERSION, Manifest, check_name, read_manifest, write_manifest
from slimserve.naming import dataset_slug, model_slug
from slimserve.runtime import eager_runner
from slimserve.versions import installed_versions
from training.checkpoint import Checkpoint, library_versions, load_checkpoint
from training.datasets import limit_dataset
from training.tensors import materialize

DEFAULT_OUT = Path("bundles")


def default_bundle_name(metadata: dict[str, Any]) -> str:
    """``{arch}-{dataset}`` (``naming.model_slug``/``dataset_slug``), made safe for paths and BentoML tags."""
    raw = f"{model_slug(metadata['arch'])}-{dataset_slug(metadata['dataset'])}".lower()
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in raw).strip("-_.")
    return check_name("bundle", cleaned[:63])


def new_version() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def default_variant(variants: dict[str, dict[str, Any]]) -> str:
    """The fastest variant expected to keep accuracy: int8 when it met its budget, else
    fp32 (else whatever was built, in build order)."""
    for name in ("int8", "fp32"):
        if name in variants:
            return name
    return next(iter(variants))


def _select(variants: list[str] | None, student: bool) -> list[str]:
    if not variants:
        return [v for v in BUILDERS if student or v not in STUDENT_VARIANTS]
    unknown = [v for v in variants if v not in BUILDERS]
    if unknown:
        raise SlimserveError(f"unknown variant {', '.join(unknown)}; choose from {', '.join(BUILDERS)}")
    needs_student = [v for v in variants if v in STUDENT_VARIANTS]
    if needs_student and not student:
        raise SlimserveError(
            f"variant {needs_student[0]} needs --student RUN_DIR (a `slimserve distill` run)"
        )
    return [v for v in BUILDERS if v in variants]  # build order, so dependencies come first


MUST_MATCH = ("dataset", "classes", "preprocess")


def load_matching(run_dir: str, parent: dict[str, Any], option: str) -> Checkpoint:
    """Another run this export uses (a student, a fine-tuning teacher), verified; it must see
    the same inputs and name the same classes as the bundle's checkpoint, or the service
    would preprocess for one network and run another, or a teacher would teach other classes."""
    checkpoint = load_checkpoint(run_dir)
    for key in MUST_MATCH:
        if checkpoint.metadata[key] != parent[key]:
            raise SlimserveError(
                f"{option} {run_dir}: its {key} differs from the checkpoint's "
                f"({checkpoint.metadata[key]!r} vs {parent[key]!r})"
            )
    return checkpoint


def load_student(run_dir: str, parent: dict[str, Any]) -> Checkpoint:
    """The distilled student: a matching run trained by `slimserve distill`."""
    student = load_matching(run_dir, parent, "--student")
    if "distillation" not in student.metadata:
        raise SlimserveError(
            f"--student {run_dir} was not trained by `slimserve distill` (no teacher recorded)"
        )
    return student


def _check_pruning_options(settings: ExportSettings, selected: list[str], checkpoint: Checkpoint) -> None:
    """Options that only shape the pruned model must not be silently ignored, nor fail
    after the variants before it were built."""
    if "pruned" in selected or "pruned-int8" in selected:
        check_droppable(checkpoint.model, example_batch(checkpoint.spec.input_shape, 1), settings.drop_blocks)
        return
    for option, value in (
        ("--drop-blocks", settings.drop_blocks),
        ("--finetune-teacher", settings.finetune_teacher),
    ):
        if value:
            raise SlimserveError(f"{option} shapes the pruned variants, and none is selected")


def export_bundle(
    run_dir: str | Path,
    *,
    out: str | Path = DEFAULT_OUT,
    name: str | None = None,
    version: str | None = None,
    variants: list[str] | None = None,
    limit: int | None = None,
    settings: ExportSettings | None = None,
    register: bool = True,
    console: Console | None = None,
) -> Manifest:
    """Export ``run_dir`` into ``out/NAME/VERSION`` and (by default) the BentoML store.

    ``limit`` uses a seeded subset of N test images for every measurement and of N train
    images for fine-tuning pruned models (quick runs); without it every number in the
    manifest is on the full test split and fine-tuning sees the full train split.
    """
    console = console or cli_console()
    settings = settings or ExportSettings()
    selected = _select(variants, settings.student is not None)
    checkpoint = load_checkpoint(run_dir)  # verifies the weights' sha256, refuses tampering
    student, teacher = _load_companions(settings, selected, checkpoint)
    bundle_dir = _new_bundle_dir(Path(out), name, version, checkpoint.metadata)
    ctx = _measure_parent(run_dir, checkpoint, bundle_dir, settings, limit, console)
    ctx.student, ctx.teacher = student, teacher
    entries, failed = _build_variants(ctx, selected)
    write_manifest(bundle_dir, _manifest_data(ctx, run_dir, limit, entries, failed))
    manifest = read_manifest(bundle_dir)
    print_report(manifest, console)
    if register:
        from export.registry import register_bundle  # loads BentoML only when registering

        console.print("Registered in the BentoML model store: " + ", ".join(register_bundle(manifest)))
    return manifest


def _load_companions(
    settings: ExportSettings, selected: list[str], checkpoint: Checkpoint
) -> tuple[Checkpoint | None, Checkpoint | None]:
    """The student and the fine-tuning teacher runs, verified and matched against the
    checkpoint, and the pruning options checked, before anything is written."""
    meta = checkpoint.metadata
    student = None if settings.student is None else load_student(settings.student, meta)
    _check_pruning_options(settings, selected, checkpoint)
    teacher = (
        None
        if settings.finetune_teacher is None
        else load_matching(settings.finetune_teacher, meta, "--finetune-teacher")
    )
    return student, teacher


def _new_bundle_dir(out: Path, name: str | None, version: str | None, meta: dict[str, Any]) -> Path:
    """``out/NAME/VERSION``, refused when it exists: a bundle version is never overwritten."""
    name = check_name("bundle", name) if name else default_bundle_name(meta)
    version = check_name("version", version or new_version())
    bundle_dir = out / name / version
    if bundle_dir.exists():
        raise SlimserveError(f"{bundle_dir} already exists; pick another --version or remove it")
    return bundle_dir


def _measure_parent(
    run_dir: str | Path,
    checkpoint: Checkpoint,
    bundle_dir: Path,
    settings: ExportSettings,
    limit: int | None,
    console: Console,
) -> ExportContext:
    """Evaluate the fp32 parent on the evaluation set (the reference every variant is
    measured against) and create the bundle folder; calibration and fine-tuning images
    load on first use, since only some variants need them."""
    meta = checkpoint.metadata
    data = checkpoint_data(checkpoint)
    eval_set = image_set(data, checkpoint, "test", limit, settings.seed)
    with quiet_torch_deprecations():
        fp32_logits = predict(eager_runner(checkpoint.model), eval_set.images)
    fp32_accuracy = accuracy(fp32_logits, eval_set)
    console.print(
        f"Exporting [bold]{run_dir}[/] ({meta['arch']}, fp32 test accuracy {fp32_accuracy:.2%} "
        f"on {len(eval_set)} images) to [bold]{bundle_dir}[/]"
    )
    # Loaded on first use: only INT8 variants calibrate.
    calibration = functools.cache(
        lambda: image_set(data, checkpoint, "train", settings.calibration_images, settings.seed)
    )

    bundle_dir.mkdir(parents=True)
    # An explicit --finetune-images wins over --limit: the demo caps its accuracy gates' test
    # images with ``limit`` and sizes the fine-tuning apart, often to more images than that.
    finetune_limit = limit if settings.finetune_images is None else settings.finetune_images
    train_set = functools.cache(
        lambda: materialize(
            limit_dataset(data.train, finetune_limit, settings.seed), checkpoint.spec, "train images"
        )
    )
    return ExportContext(
        parent=checkpoint.model,
        parent_metadata=meta,
        spec=checkpoint.spec,
        data=data,
        eval_set=eval_set,
        calibration=calibration,
        train_set=train_set,
        console=console,
        settings=settings,
        bundle_dir=bundle_dir,
        fp32_accuracy=fp32_accuracy,
        fp32_predictions=fp32_logits.argmax(1),
        canary=write_canary(bundle_dir, eval_set.images, fp32_logits, settings.max_accuracy_drop),
    )


def _build_variants(
    ctx: ExportContext, selected: list[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Build each selected variant in order; one that fails is recorded with its reason and
    its folder removed, and the others are still built. Refuses when none could be."""
    console = ctx.console
    entries: dict[str, dict[str, Any]] = {}
    failed: dict[str, dict[str, Any]] = {}
    torch.manual_seed(ctx.settings.seed)
    for variant in selected:
        console.print(f"  {variant}: building…")
        try:
            entries[variant] = BUILDERS[variant](ctx)
        except Exception as exc:  # one variant's failure must not stop the others
            failed[variant] = describe_failure(variant, exc, ctx.parent)
            shutil.rmtree(ctx.bundle_dir / variant, ignore_errors=True)
        if variant in entries:
            console.print(f"  {variant}: ok")
        else:
            console.print(f"  [red]{variant}: failed[/] - {escape(failed[variant]['reason'])}")
    if not entries:
        reasons = "; ".join(entry["reason"] for entry in failed.values())
        raise SlimserveError(f"no variant could be exported: {reasons}")
    return entries, failed


# Beside training's torch and torchvision (with their build tags): what else shapes an artifact.
EXPORT_PACKAGES = ("onnx", "onnxruntime-gpu", "onnxruntime", "torch-pruning", "bentoml", "numpy")


def _manifest_data(
    ctx: ExportContext,
    run_dir: str | Path,
    limit: int | None,
    entries: dict[str, dict[str, Any]],
    failed: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    meta = ctx.parent_metadata
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "slimserve.bundle",
        "name": ctx.bundle_dir.parent.name,
        "version": ctx.bundle_dir.name,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "parent": {
            "run_dir": str(Path(run_dir).resolve()),
            "weights_sha256": meta["weights_sha256"],
            "arch": meta["arch"],
            "arch_kwargs": meta["arch_kwargs"],
            "test_accuracy": ctx.fp32_accuracy,
            "checkpoint_test_accuracy": meta.get("metrics", {}).get("test_accuracy"),
        },
        "dataset": meta["dataset"],
        "evaluation": {
            "split": "test",
            "images": len(ctx.eval_set),
            "limit": limit,
            "seed": ctx.settings.seed,
        },
        "classes": list(meta["classes"]),
        "preprocess": meta["preprocess"],
        "versions": {**installed_versions(EXPORT_PACKAGES), **library_versions()},
        "default_variant": default_variant(entries),
        "settings": ctx.settings.to_dict(),
        "variants": entries,
        "failed": failed,
        "canary": ctx.canary,
    }
