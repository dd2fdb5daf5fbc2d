"""The variants `slimserve export` can build, in build order.

Each builder returns a manifest entry or raises; ``pipeline`` records failures per
variant. Derived variants (``pruned-int8``) reuse the float model an earlier one left in
the context.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from export.building import ExportContext, VariantFailed, export_float, finish_variant, macs_and_params
from export.checks import accuracy, predict
from export.formats import ONNX_OPSET, PT2_SETTINGS, example_batch
from export.int8 import quantized_variant
from export.prune import drop_blocks, fine_tune, structured_prune, unstructured_prune, weight_sparsity
from slimserve.runtime import eager_runner
from training.distillation import distill_from

# Soft targets for fine-tuning pruned models: the temperature and weight `slimserve distill`
# defaults to, with which distillation brought depth-pruned ResNet-20 to 0.86 points of fp32.
FINETUNE_TEMPERATURE = 4.0
FINETUNE_ALPHA = 0.9


# What to change when a pruned or sparse variant loses more than --max-pruning-drop.
PRUNED_FIX = (
    "fine-tune longer (--finetune-epochs), remove fewer MACs (--prune-macs), fine-tune from a teacher "
    "(--finetune-teacher RUN_DIR, e.g. this checkpoint), or raise --max-pruning-drop"
)
SPARSE_FIX = "lower --sparsity (sparse is not fine-tuned) or raise --max-pruning-drop"


def check_pruning_budget(ctx: ExportContext, name: str, variant_accuracy: float, fix: str) -> None:
    """Gate a pruned or sparse variant on accuracy, as INT8 is gated: more than
    ``--max-pruning-drop`` points below fp32 fails the variant with its numbers (the pipeline
    lists it under ``failed`` and writes none of its files), never a silent ship."""
    drop = (ctx.fp32_accuracy - variant_accuracy) * 100
    budget = ctx.settings.max_pruning_drop
    if drop > budget + 1e-9:
        raise VariantFailed(
            f"accuracy {variant_accuracy:.2%} on {len(ctx.eval_set)} test images is {drop:.2f} points "
            f"below fp32's {ctx.fp32_accuracy:.2%}, over the {budget:g}-point budget "
            f"(--max-pruning-drop); {fix}"
        )


def _check_eager(ctx: ExportContext, name: str, model: nn.Module, fix: str) -> None:
    """The budget on the eager model, before any file is written: a Lite0 export spends
    minutes writing and checking three formats of a variant that would then be refused."""
    logits = predict(eager_runner(model), ctx.eval_set.images)
    check_pruning_budget(ctx, name, accuracy(logits, ctx.eval_set), fix)


def _float_variant(
    ctx: ExportContext,
    name: str,
    model: nn.Module,
    *,
    description: str,
    macs: int,
    params: int,
    budget_fix: str | None = None,
    **details: Any,
) -> dict[str, Any]:
    """Export a float model in every format, check and measure it (``finish_variant``), and
    keep the model and its accuracy for the INT8 variant quantized from it. With
    ``budget_fix`` the variant must stay within ``--max-pruning-drop`` of fp32."""
    artifacts, skipped = export_float(ctx, name, model)
    entry = finish_variant(
        ctx, name, artifacts, skipped_formats=skipped, description=description, precision="fp32", sparsity=0.0,
        params=params, macs=macs, **details,
    )  # fmt: skip
    if budget_fix is not None:  # the headline (ONNX) accuracy, which the service will serve
        check_pruning_budget(ctx, name, entry["test_accuracy"], budget_fix)
    ctx.float_models[name] = model
    ctx.float_accuracies[name] = entry["test_accuracy"]
    return entry


def build_fp32(ctx: ExportContext) -> dict[str, Any]:
    macs, params = macs_and_params(ctx.parent, ctx.spec)
    return _float_variant(
        ctx,
        "fp32",
        ctx.parent,
        macs=macs,
        params=params,
        description="the trained checkpoint, unchanged",
        export_settings={"onnx_opset": ONNX_OPSET, "torchscript": "trace + freeze", "pt2": PT2_SETTINGS},
        notes="reference for every other variant",
    )


def build_int8(ctx: ExportContext) -> dict[str, Any]:
    return quantized_variant(ctx, "int8", "fp32")


def _prune(ctx: ExportContext) -> tuple[nn.Module, dict[str, Any] | None, dict[str, Any] | None]:
    """Depth pruning first (if asked), then channels until ``--prune-macs`` of fp32's MACs
    are gone in total; channel pruning is skipped when dropped blocks already got there."""
    settings = ctx.settings
    example = example_batch(ctx.spec.input_shape, 1)
    model, depth_info, channel_share = ctx.parent, None, settings.prune_macs
    if settings.drop_blocks:
        model, depth_info = drop_blocks(model, example, settings.drop_blocks)
        channel_share = 1 - (1 - settings.prune_macs) / (1 - depth_info["mac_reduction"])
    if channel_share <= 0:
        return model, depth_info, None
    model, channel_info = structured_prune(model, example, channel_share)
    return model, depth_info, channel_info


def _pruning_summary(depth_info: dict[str, Any] | None, channel_info: dict[str, Any] | None) -> str:
    steps = []
    if depth_info:
        steps.append(f"{len(depth_info['dropped_blocks'])} blocks dropped")
    if channel_info:
        steps.append("channels pruned")
    return " and ".join(steps)


def build_pruned(ctx: ExportContext) -> dict[str, Any]:
    settings = ctx.settings
    model, depth_info, channel_info = _prune(ctx)
    train_config = ctx.parent_metadata.get("train_config", {})
    finetune: dict[str, Any] = {"epochs": 0}
    if settings.finetune_epochs:
        teacher = ctx.teacher
        finetune = fine_tune(
            model,
            ctx.data,
            ctx.train_set(),
            epochs=settings.finetune_epochs,
            lr=settings.finetune_lr,
            weight_decay=train_config.get("weight_decay", 5e-4),
            label_smoothing=train_config.get("label_smoothing", 0.0),
            seed=settings.seed,
            console=ctx.console,
            distillation=None
            if teacher is None
            else distill_from(teacher, temperature=FINETUNE_TEMPERATURE, alpha=FINETUNE_ALPHA),
        )
    _check_eager(ctx, "pruned", model, PRUNED_FIX)
    macs, params = macs_and_params(model, ctx.spec)
    parent_macs, parent_params = macs_and_params(ctx.parent, ctx.spec)
    mac_reduction, param_reduction = 1 - macs / parent_macs, 1 - params / parent_params
    how = "by distillation" if finetune.get("loss") == "distillation" else "on the labels"
    epochs = finetune["epochs"]
    tuned = f"fine-tuned {epochs} epoch{'s' * (epochs != 1)} {how}" if epochs else "not fine-tuned"
    return _float_variant(
        ctx,
        "pruned",
        model,
        macs=macs,
        params=params,
        budget_fix=PRUNED_FIX,
        description=f"structured pruning: {_pruning_summary(depth_info, channel_info)} "
        f"({mac_reduction:.0%} of MACs removed), {tuned}",
        export_settings={
            "depth_pruning": depth_info,
            "pruning": channel_info,
            "mac_reduction": round(mac_reduction, 4),
            "finetune": finetune,
            "onnx_opset": ONNX_OPSET,
            "pt2": PT2_SETTINGS,
        },
        notes=f"{mac_reduction:.0%} fewer MACs and {param_reduction:.0%} fewer parameters than fp32 "
        f"(whole blocks or channels removed: dense kernels do less work); {tuned}",
    )


def build_pruned_int8(ctx: ExportContext) -> dict[str, Any]:
    return quantized_variant(ctx, "pruned-int8", "pruned")


def build_distilled(ctx: ExportContext) -> dict[str, Any]:
    """The student network as a variant of this bundle: a different, smaller architecture
    trained by `slimserve distill`, measured against this bundle's fp32 like any variant."""
    student = ctx.student
    meta = student.metadata
    macs, params = macs_and_params(student.model, ctx.spec)
    parent_macs, _ = macs_and_params(ctx.parent, ctx.spec)
    kd = meta["distillation"]
    return _float_variant(
        ctx,
        "distilled",
        student.model,
        macs=macs,
        params=params,
        description=f"{meta['arch']} student distilled from a {kd['teacher_arch']} teacher, "
        f"{macs / parent_macs:.0%} of fp32's MACs",
        export_settings={
            "student": {
                "run_dir": str(Path(ctx.settings.student).resolve()),
                "weights_sha256": meta["weights_sha256"],
                "arch": meta["arch"],
                "arch_kwargs": meta["arch_kwargs"],
                "checkpoint_test_accuracy": meta.get("metrics", {}).get("test_accuracy"),
                "distillation": kd,
            },
            "onnx_opset": ONNX_OPSET,
            "torchscript": "trace + freeze",
            "pt2": PT2_SETTINGS,
        },
        notes=f"a separate network ({meta['arch']}), trained with soft targets from the teacher at "
        f"{kd['teacher_run_dir']}; same dataset, classes and preprocessing as this bundle",
    )


def build_distilled_int8(ctx: ExportContext) -> dict[str, Any]:
    return quantized_variant(ctx, "distilled-int8", "distilled")


def build_sparse(ctx: ExportContext) -> dict[str, Any]:
    model = unstructured_prune(ctx.parent, ctx.settings.sparsity)
    _check_eager(ctx, "sparse", model, SPARSE_FIX)
    sparsity = weight_sparsity(model)
    macs, params = macs_and_params(model, ctx.spec)
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    artifacts, skipped = export_float(ctx, "sparse", model)
    entry = finish_variant(
        ctx,
        "sparse",
        artifacts,
        skipped_formats=skipped,
        description=f"unstructured global magnitude pruning, {sparsity:.0%} of Conv/Linear weights zero",
        precision="fp32",
        sparsity=round(sparsity, 4),
        params=params,
        nonzero_params=nonzero,
        macs=macs,
        export_settings={
            "pruning": "torch.nn.utils.prune.global_unstructured(L1Unstructured), prune.remove (permanent)",
            "requested_sparsity": ctx.settings.sparsity,
            "finetune": {"epochs": 0},
            "pt2": PT2_SETTINGS,
        },
        notes="unstructured sparsity brings no dense speed-up: ONNX Runtime and PyTorch run the same "
        "dense kernels over the zeros; only the compressed (gzip) file is smaller; not fine-tuned",
    )
    check_pruning_budget(ctx, "sparse", entry["test_accuracy"], SPARSE_FIX)
    ctx.float_sparsity["sparse"] = sparsity
    return entry


Builder = Callable[[ExportContext], dict[str, Any]]
# In build order: later variants may reuse earlier ones' float models.
BUILDERS: dict[str, Builder] = {
    "fp32": build_fp32,
    "int8": build_int8,
    "pruned": build_pruned,
    "pruned-int8": build_pruned_int8,
    "sparse": build_sparse,
    "distilled": build_distilled,
    "distilled-int8": build_distilled_int8,
}
# Built only from a student run (--student); the others from the checkpoint alone.
STUDENT_VARIANTS = ("distilled", "distilled-int8")
