"""INT8 variants: ONNX Runtime static QDQ for the ONNX file, PyTorch x86 for TorchScript.

Both start from the same float model (fp32, or the pruned one for ``pruned-int8``) and go
through the accuracy-aware search in ``int8_search``. The ONNX recipe is the hardware preset
for this CPU (``int8_presets``: reduce_range where there is no VNNI) with bias correction;
the preset is saved in the manifest beside the model. The ONNX file is compared with its
float parent (logits cannot match to 1e-4 after quantization, so that parity is recorded,
not enforced; the accuracy budget is the gate). The TorchScript file must reproduce the
eager INT8 model it was traced from exactly like a float export would.

The ONNX file is the variant: without it the variant fails. The TorchScript file is
optional: when PyTorch's quantizer cannot take the model, its search misses the budget
within ``--int8-fallback-attempts``, or the traced file misses parity, it is left out and
the reason goes to ``skipped_formats`` (printed by the export, kept in the manifest).
"""

import tempfile
import time
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
from export.failures import StepFailed, describe_failure, export_step
from export.formats import check_onnx, write_torchscript
from export.int8_presets import resolve_preset
from export.int8_search import BudgetMissed, fit_budget
from export.quantize_onnx import METHODS, OnnxQuantizer, op_counts
from export.quantize_torch import is_linear_only, quantizable_layers, quantize_model
from slimserve.manifest import FILE_NAMES
from slimserve.runtime import Runner, eager_runner, open_runner

# Sensitivity ranking runs one quantization per layer: a slice of the calibration set is
# enough to order layers by the error they add. 128 small images, 32 at 224 px (each probe
# of Lite0's 50 layers calibrates and runs its images once).
SENSITIVITY_IMAGES = 128
SENSITIVITY_VALUES = 32 * 3 * 224 * 224
ORT_STEP = "ONNX Runtime INT8 quantization (quantize_static)"
# Said in every INT8 entry, so a missing .pt2 is never a silent omission.
NO_PT2 = (
    "not built: an INT8 torch.export program needs PT2E quantization (torchao), a separate "
    "flow from the FX and ONNX Runtime quantization used here"
)


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b) ** 2))


def sensitivity_probe(images: np.ndarray) -> np.ndarray:
    """The calibration images the per-layer ranking runs on, fewer when they are large."""
    per_image = max(1, int(np.prod(images.shape[1:])))
    return images[: max(1, min(SENSITIVITY_IMAGES, SENSITIVITY_VALUES // per_image))]


def _search_record(attempts: list, started: float, probe: np.ndarray, rankings: int) -> dict[str, Any]:
    """What the search did: every attempt, how many per-layer probes it ran, and its wall time."""
    return {
        "fp32_layers": list(attempts[-1].fp32_layers),
        "attempts": [a.to_dict() for a in attempts],
        "sensitivity_probes": rankings,
        "sensitivity_images": len(probe) if rankings else 0,
        "search_seconds": round(time.perf_counter() - started, 1),
    }


def _onnx_int8(ctx: ExportContext, float_onnx: Path, out: Path, float_accuracy: float) -> dict[str, Any]:
    settings = ctx.settings
    started = time.perf_counter()
    preset = resolve_preset(settings.int8_target)
    calibration = ctx.calibration()
    probe = sensitivity_probe(calibration.images)
    float_probe = predict(open_runner("onnx", float_onnx), probe)
    probes: list[str] = []
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
            probes.append(layer)
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
            fallback_attempts=settings.int8_fallback_attempts,
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
        **_search_record(attempts, started, probe, len(probes)),
        "ops": op_counts(out),
    }


def _torch_int8(ctx: ExportContext, model: nn.Module, float_accuracy: float) -> tuple[nn.Module, dict]:
    started = time.perf_counter()
    calibration = ctx.calibration().images
    probe = sensitivity_probe(calibration)
    float_probe = predict(eager_runner(model), probe)
    built: list[nn.Module] = []
    probes: list[str] = []

    def build(_method: str, fp32_layers: tuple[str, ...]):
        built.append(quantize_model(model, calibration, exclude=fp32_layers))
        return eager_runner(built[-1])

    def sensitivity(_method: str, layer: str) -> float:
        probes.append(layer)
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
        fallback_attempts=ctx.settings.int8_fallback_attempts,
    )
    settings = {
        "quantizer": "torch.ao.quantization " + ("quantize_dynamic" if dynamic else "prepare_fx/convert_fx"),
        "engine": "x86",
        "scheme": "dynamic int8 Linear (activations quantized per batch at run time)"
        if dynamic
        else "static: HistogramObserver uint8 activations, per-channel int8 weights",
        "calibration_images": 0 if dynamic else len(calibration),
        **_search_record(attempts, started, probe, len(probes)),
    }
    return built[-1], settings


def _torchscript_int8(
    ctx: ExportContext, name: str, model: nn.Module, float_accuracy: float, path: Path
) -> tuple[Artifact | None, dict[str, Any], dict[str, str]]:
    """The TorchScript INT8 file (optional: its parity is checked by ``finish_variant``), its
    settings, and the reason it was skipped when PyTorch's quantizer cannot take the model
    or its search misses the budget."""
    try:
        quantized, settings = _torch_int8(ctx, model, float_accuracy)
        with export_step(TORCHSCRIPT_STEP, "torchscript", quantized):
            write_torchscript(quantized, ctx.example(), path)
    except BudgetMissed as exc:
        return None, {}, {"torchscript": f"variant '{name}' (torchscript): {exc}"}
    except StepFailed as exc:
        path.unlink(missing_ok=True)  # a trace that failed half-way
        return None, {}, {"torchscript": describe_failure(name, exc)["reason"]}
    reference = predict(eager_runner(quantized), ctx.parity_set.images)
    artifact = Artifact("torchscript", path, reference, f"{name} eager int8", strict=True, optional=True)
    return artifact, settings, {}


def quantized_variant(ctx: ExportContext, name: str, float_name: str) -> dict[str, Any]:
    """INT8 of the float variant ``float_name``; the ONNX file must meet the accuracy budget,
    the TorchScript file is dropped (with the reason) if it cannot, or cannot be built."""
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
    torchscript, torch_settings, skipped = _torchscript_int8(ctx, name, model, float_accuracy, ts_path)
    artifacts += [torchscript] if torchscript else []
    macs, params = macs_and_params(model, ctx.spec)
    source = ctx.float_sparsity.get(float_name, 0.0)
    preset = resolve_preset(ctx.settings.int8_target).name
    notes = f"INT8 of {float_name}; ONNX graph quantized with the {preset} preset"
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
