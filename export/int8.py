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
# of Lite0's 50 layers quantizes the graph and runs its images once).
SENSITIVITY_IMAGES = 128
SENSITIVITY_VALUES = 32 * 3 * 224 * 224
# PyTorch's x86 HistogramObserver costs about 5x a float forward pass (Lite0 at 224 px, 16
# photos: 17-19 s against 3.6 s on the busy 2-core machine), so its calibration keeps the
# first 64 images at 224 px; small images keep every calibration image.
TORCH_CALIBRATION_VALUES = 64 * 3 * 224 * 224
ORT_STEP = "ONNX Runtime INT8 quantization (quantize_static)"
# Said in every INT8 entry, so a missing .pt2 is never a silent omission.
NO_PT2 = (
    "not built: an INT8 torch.export program needs PT2E quantization (torchao), a separate "
    "flow from the FX and ONNX Runtime quantization used here"
)


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b) ** 2))


def _head(images: np.ndarray, count: int, values: int) -> np.ndarray:
    """The first ``count`` images, fewer when they are large (at most ``values`` numbers)."""
    per_image = max(1, int(np.prod(images.shape[1:])))
    return images[: max(1, min(count, values // per_image))]


def sensitivity_probe(images: np.ndarray) -> np.ndarray:
    """The calibration images the per-layer ranking runs on."""
    return _head(images, SENSITIVITY_IMAGES, SENSITIVITY_VALUES)


def torch_calibration(images: np.ndarray) -> np.ndarray:
    """The calibration images PyTorch's observers see."""
    return _head(images, len(images), TORCH_CALIBRATION_VALUES)


class OnnxRanking:
    """Per-layer INT8 sensitivity, measured with ONNX Runtime once per calibration method and
    shared by the ONNX and the TorchScript searches: the ONNX graph keeps the modules' names
    (``conv_stem``, ``blocks.0.0.conv_dw``), and ORT quantizes and runs one layer in a
    fraction of what PyTorch's FX prepare/calibrate/convert costs at 224 px."""

    def __init__(self, quantizer: OnnxQuantizer, float_onnx: Path, images: np.ndarray, work: Path) -> None:
        self.quantizer = quantizer
        self.probe = sensitivity_probe(images)
        self.float_probe = predict(open_runner("onnx", float_onnx), self.probe)
        self.work = work
        self.rankings: dict[str, list[str]] = {}

    def _error(self, method: str, layer: str) -> float:
        with export_step(ORT_STEP, "onnx"):
            run = open_runner(
                "onnx", self.quantizer.quantize(self.work / "probe.onnx", method, only=(layer,))
            )
        return _mse(predict(run, self.probe), self.float_probe)

    def __call__(self, method: str) -> list[str]:
        if method not in self.rankings:
            layers = self.quantizer.layers
            self.rankings[method] = sorted(layers, key=lambda layer: self._error(method, layer), reverse=True)
        return self.rankings[method]

    def order(self, layers: list[str], method: str) -> list[str]:
        """``layers`` (PyTorch's names) by ONNX sensitivity; ones the graph lacks go last."""
        position = {name: index for index, name in enumerate(self(method))}
        return sorted(layers, key=lambda name: position.get(name, len(position)))

    def record(self) -> dict[str, Any]:
        """How the ranking was measured, for the manifest."""
        return {
            "sensitivity_ranking": {method: ranked for method, ranked in self.rankings.items()},
            "sensitivity_images": len(self.probe) if self.rankings else 0,
        }


def _search_record(attempts: list, started: float) -> dict[str, Any]:
    """What the search did: every attempt and its wall time."""
    return {
        "fp32_layers": list(attempts[-1].fp32_layers),
        "attempts": [a.to_dict() for a in attempts],
        "search_seconds": round(time.perf_counter() - started, 1),
    }


def _onnx_int8(
    ctx: ExportContext, quantizer: OnnxQuantizer, ranking: OnnxRanking, out: Path, float_accuracy: float
) -> dict[str, Any]:
    settings = ctx.settings
    started = time.perf_counter()
    preset = quantizer.preset
    methods = [settings.calibration_method, *(m for m in METHODS if m != settings.calibration_method)]

    def build(method: str, fp32_layers: tuple[str, ...]) -> Runner:
        with export_step(ORT_STEP, "onnx"):
            return open_runner("onnx", quantizer.quantize(out, method, exclude=fp32_layers))

    attempts = fit_budget(
        build=build,
        evaluate=lambda run: accuracy(predict(run, ctx.eval_set.images), ctx.eval_set),
        rank=ranking,
        methods=methods,
        layers=quantizer.layers,
        fp32_accuracy=float_accuracy,
        budget=settings.max_accuracy_drop,
        fallback_attempts=settings.int8_fallback_attempts,
    )
    check_onnx(out)
    return {
        "quantizer": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "target": settings.int8_target,
        # The hardware recipe, chosen for this CPU's flags (or TensorRT), saved beside the model.
        "preset": preset.to_dict(),
        "activations": f"{preset.activations} {'symmetric' if preset.activation_symmetric else 'asymmetric'}",
        "weights": preset.weights + (" (7-bit, reduce_range)" if preset.reduce_range else ""),
        "bias_correction": preset.bias_correction,
        "calibration_images": len(quantizer.calibration),
        "calibration_method": attempts[-1].method,
        **_search_record(attempts, started),
        "ops": op_counts(out),
    }


def _torch_int8(
    ctx: ExportContext, model: nn.Module, float_accuracy: float, ranking: OnnxRanking, onnx_method: str
) -> tuple[nn.Module, dict]:
    """PyTorch INT8 through the same search; its fp32 fallbacks follow the ONNX ranking
    (of the calibration method the ONNX file kept)."""
    started = time.perf_counter()
    calibration = torch_calibration(ctx.calibration().images)
    built: list[nn.Module] = []

    def build(_method: str, fp32_layers: tuple[str, ...]):
        built.append(quantize_model(model, calibration, exclude=fp32_layers))
        return eager_runner(built[-1])

    dynamic = is_linear_only(model)
    layers = quantizable_layers(model)
    attempts = fit_budget(
        build=build,
        evaluate=lambda run: accuracy(predict(run, ctx.eval_set.images), ctx.eval_set),
        rank=lambda _method: ranking.order(layers, onnx_method),
        methods=["dynamic" if dynamic else "x86-static"],
        layers=layers,
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
        "fallback_ranking": f"the ONNX graph's per-layer sensitivity ({onnx_method} calibration)",
        **_search_record(attempts, started),
    }
    return built[-1], settings


def _torchscript_int8(
    ctx: ExportContext, name: str, model: nn.Module, float_accuracy: float, path: Path, **ranking: Any
) -> tuple[Artifact | None, dict[str, Any], dict[str, str]]:
    """The TorchScript INT8 file (optional: its parity is checked by ``finish_variant``), its
    settings, and the reason it was skipped when PyTorch's quantizer cannot take the model
    or its search misses the budget."""
    try:
        quantized, settings = _torch_int8(ctx, model, float_accuracy, **ranking)
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
    float_onnx = ctx.bundle_dir / float_name / FILE_NAMES["onnx"]
    calibration = ctx.calibration()
    with tempfile.TemporaryDirectory(prefix="slimserve-int8-") as work:
        with export_step(ORT_STEP, "onnx"):
            quantizer = OnnxQuantizer(
                float_onnx, calibration, resolve_preset(ctx.settings.int8_target), Path(work)
            )
        ranking = OnnxRanking(quantizer, float_onnx, calibration.images, Path(work))
        try:
            onnx_settings = _onnx_int8(ctx, quantizer, ranking, onnx_path, float_accuracy)
        except BudgetMissed as exc:
            raise VariantFailed(f"{name} onnx: {exc}") from None
        torchscript, torch_settings, skipped = _torchscript_int8(
            ctx,
            name,
            model,
            float_accuracy,
            ts_path,
            ranking=ranking,
            onnx_method=onnx_settings["calibration_method"],
        )
        onnx_settings.update(ranking.record())
    float_parity = predict(eager_runner(model), ctx.parity_set.images)
    artifacts = [Artifact("onnx", onnx_path, float_parity, f"{float_name} eager fp32", strict=False)]
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
