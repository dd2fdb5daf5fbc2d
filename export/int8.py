"""INT8 variants: ONNX Runtime static QDQ for the ONNX file, PyTorch x86 for TorchScript.

Both start from the same float model (fp32, or the pruned one for ``pruned-int8``) and go
through the accuracy-aware search in ``int8_search``. The ONNX recipe is the hardware preset
for this CPU (``int8_presets``: reduce_range where there is no VNNI) with bias correction;
the preset is saved in the manifest beside the model. The ONNX file is compared with its
float parent (logits cannot match to 1e-4 after quantization, so that parity is recorded,
not enforced; the accuracy budget is the gate). The TorchScript file must reproduce the
eager INT8 model it was traced from exactly like a float export would.
"""

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from export.building import (
    TORCHSCRIPT_STEP,
    Artifact,
    ExportContext,
    VariantFailed,
    finish_variant,
    macs_and_params,
)
from export.checks import accuracy, predict
from export.failures import export_step
from export.formats import check_onnx, write_torchscript
from export.int8_presets import resolve_preset
from export.int8_search import BudgetMissed, fit_budget
from export.quantize_onnx import METHODS, OnnxQuantizer, op_counts
from export.quantize_torch import is_linear_only, quantizable_layers, quantize_model
from slimserve.manifest import FILE_NAMES
from slimserve.runtime import Runner, eager_runner, open_runner

# Sensitivity ranking runs one quantization per layer: a slice of the calibration set is
# enough to order layers by the error they add.
SENSITIVITY_IMAGES = 128
ORT_STEP = "ONNX Runtime INT8 quantization (quantize_static)"
# Said in every INT8 entry, so a missing .pt2 is never a silent omission.
NO_PT2 = (
    "not built: an INT8 torch.export program needs PT2E quantization (torchao), a separate "
    "flow from the FX and ONNX Runtime quantization used here"
)


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b) ** 2))


def _onnx_int8(ctx: ExportContext, float_onnx: Path, out: Path, float_accuracy: float) -> dict[str, Any]:
    settings = ctx.settings
    preset = resolve_preset(settings.int8_target)
    calibration = ctx.calibration()
    probe = calibration.images[:SENSITIVITY_IMAGES]
    float_probe = predict(open_runner("onnx", float_onnx), probe)
    methods = [settings.calibration_method, *(m for m in METHODS if m != settings.calibration_method)]

    def evaluate(run) -> float:
        return accuracy(predict(run, ctx.eval_set.images), ctx.eval_set)

    with tempfile.TemporaryDirectory(prefix="slimserve-int8-") as work:
        with export_step(ORT_STEP, "onnx"):
            quantizer = OnnxQuantizer(float_onnx, calibration, preset, Path(work))

        def quantized(path: Path, method: str, **layers: tuple[str, ...]) -> Runner:
            with export_step(ORT_STEP, "onnx"):
                return open_runner("onnx", quantizer.quantize(path, method, **layers))

        def sensitivity(method: str, layer: str) -> float:
            return _mse(
                predict(quantized(Path(work) / "probe.onnx", method, only=(layer,)), probe), float_probe
            )

        attempts = fit_budget(
            build=lambda method, fp32_layers: quantized(out, method, exclude=fp32_layers),
            evaluate=evaluate,
            sensitivity=sensitivity,
            methods=methods,
            layers=quantizer.layers,
            fp32_accuracy=float_accuracy,
            budget=settings.max_accuracy_drop,
        )
    check_onnx(out)
    final = attempts[-1]
    return {
        "quantizer": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "target": settings.int8_target,
        # The hardware recipe, chosen for this CPU's flags (or TensorRT), saved beside the model.
        "preset": preset.to_dict(),
        "activations": f"{preset.activations} {'symmetric' if preset.activation_symmetric else 'asymmetric'}",
        "weights": preset.weights + (" (7-bit, reduce_range)" if preset.reduce_range else ""),
        "bias_correction": preset.bias_correction,
        "calibration_images": len(calibration),
        "calibration_method": final.method,
        "fp32_layers": list(final.fp32_layers),
        "attempts": [a.to_dict() for a in attempts],
        "ops": op_counts(out),
    }


def _torch_int8(ctx: ExportContext, model: nn.Module, float_accuracy: float) -> tuple[nn.Module, dict]:
    calibration = ctx.calibration().images
    probe = calibration[:SENSITIVITY_IMAGES]
    float_probe = predict(eager_runner(model), probe)
    built: list[nn.Module] = []

    def build(_method: str, fp32_layers: tuple[str, ...]):
        built.append(quantize_model(model, calibration, exclude=fp32_layers))
        return eager_runner(built[-1])

    def sensitivity(_method: str, layer: str) -> float:
        probe_model = quantize_model(model, probe, only=(layer,))
        return _mse(predict(eager_runner(probe_model), probe), float_probe)

    dynamic = is_linear_only(model)
    method = "dynamic" if dynamic else "x86-static"
    attempts = fit_budget(
        build=build,
        evaluate=lambda run: accuracy(predict(run, ctx.eval_set.images), ctx.eval_set),
        sensitivity=sensitivity,
        methods=[method],
        layers=quantizable_layers(model),
        fp32_accuracy=float_accuracy,
        budget=ctx.settings.max_accuracy_drop,
    )
    settings = {
        "quantizer": "torch.ao.quantization " + ("quantize_dynamic" if dynamic else "prepare_fx/convert_fx"),
        "engine": "x86",
        "scheme": "dynamic int8 Linear (activations quantized per batch at run time)"
        if dynamic
        else "static: HistogramObserver uint8 activations, per-channel int8 weights",
        "calibration_images": 0 if dynamic else len(calibration),
        "fp32_layers": list(attempts[-1].fp32_layers),
        "attempts": [a.to_dict() for a in attempts],
    }
    return built[-1], settings


def quantized_variant(ctx: ExportContext, name: str, float_name: str) -> dict[str, Any]:
    """INT8 of the float variant ``float_name``; the ONNX file must meet the accuracy budget,
    the TorchScript file is dropped (with the reason) if it cannot."""
    if float_name not in ctx.float_models:
        raise VariantFailed(f"{name} quantizes {float_name}, which was not built")
    model = ctx.float_models[float_name]
    float_accuracy = ctx.float_accuracies[float_name]
    folder = ctx.bundle_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path, ts_path = folder / FILE_NAMES["onnx"], folder / FILE_NAMES["torchscript"]
    try:
        onnx_settings = _onnx_int8(
            ctx, ctx.bundle_dir / float_name / FILE_NAMES["onnx"], onnx_path, float_accuracy
        )
    except BudgetMissed as exc:
        raise VariantFailed(f"{name} onnx: {exc}") from None
    float_parity = predict(eager_runner(model), ctx.parity_set.images)
    artifacts = [Artifact("onnx", onnx_path, float_parity, f"{float_name} eager fp32", strict=False)]
    skipped: dict[str, str] = {}
    torch_settings: dict[str, Any] = {}
    try:
        quantized, torch_settings = _torch_int8(ctx, model, float_accuracy)
    except BudgetMissed as exc:
        skipped["torchscript"] = str(exc)
    else:
        with export_step(TORCHSCRIPT_STEP, "torchscript", quantized):
            write_torchscript(quantized, ctx.example(), ts_path)
        reference = predict(eager_runner(quantized), ctx.parity_set.images)
        artifacts.append(Artifact("torchscript", ts_path, reference, f"{name} eager int8", strict=True))
    macs, params = macs_and_params(model, ctx.spec)
    source = ctx.float_sparsity.get(float_name, 0.0)
    preset = resolve_preset(ctx.settings.int8_target).name
    notes = f"INT8 of {float_name}; ONNX graph quantized with the {preset} preset"
    if skipped:
        notes += "; TorchScript INT8 skipped: " + skipped["torchscript"]
    notes += "; no .pt2 (INT8 torch.export programs need the separate PT2E quantization flow)"
    return finish_variant(
        ctx,
        name,
        artifacts,
        description=f"{float_name} with INT8 weights and activations",
        precision="int8",
        sparsity=source,
        params=params,
        macs=macs,
        budget_reference=float_name,
        export_settings={"onnx": onnx_settings, "torchscript": torch_settings, "pt2": NO_PT2},
        skipped_formats=skipped,
        notes=notes,
    )
