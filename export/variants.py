"""The variants `slimserve export` can build, in build order.

Each builder returns a manifest entry or raises; ``pipeline`` records failures per
variant. Derived variants (``pruned-int8``) reuse the float model an earlier one left in
the context.
"""

from collections.abc import Callable
from typing import Any

from export.building import ExportContext, export_float, finish_variant, macs_and_params
from export.formats import ONNX_OPSET
from export.int8 import quantized_variant


def build_fp32(ctx: ExportContext) -> dict[str, Any]:
    macs, params = macs_and_params(ctx.parent, ctx.spec)
    artifacts = export_float(ctx, "fp32", ctx.parent)
    entry = finish_variant(
        ctx,
        "fp32",
        artifacts,
        description="the trained checkpoint, unchanged",
        precision="fp32",
        sparsity=0.0,
        params=params,
        macs=macs,
        export_settings={"onnx_opset": ONNX_OPSET, "torchscript": "trace + freeze"},
        notes="reference for every other variant",
    )
    ctx.float_models["fp32"] = ctx.parent
    ctx.float_accuracies["fp32"] = entry["test_accuracy"]
    return entry


def build_int8(ctx: ExportContext) -> dict[str, Any]:
    return quantized_variant(ctx, "int8", "fp32")


Builder = Callable[[ExportContext], dict[str, Any]]
# In build order: later variants may reuse earlier ones' float models.
BUILDERS: dict[str, Builder] = {"fp32": build_fp32, "int8": build_int8}
