"""INT8 variants: accuracy budget, quantized operators really present, size, targets, fallback."""

import re
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
import pytest
import torch

from export.building import ExportSettings
from export.int8_presets import resolve_preset
from export.int8_search import BudgetMissed, fallback_counts, fit_budget
from export.pipeline import export_bundle


@pytest.fixture(scope="module")
def cnn_bundle(tiny_cnn_run: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("int8-bundles")
    return export_bundle(tiny_cnn_run, out=out, variants=["fp32", "int8"], limit=500, register=False)


def _file(manifest, variant: str, fmt: str) -> Path:
    return manifest.variant(variant).files[fmt].verified_path(manifest.bundle_dir)


def test_int8_meets_accuracy_budget_and_is_default(cnn_bundle):
    assert cnn_bundle.data["failed"] == {}
    entry = cnn_bundle.variant("int8").entry
    assert entry["precision"] == "int8"
    assert entry["accuracy_drop"] <= 0.5
    assert entry["export_settings"]["onnx"]["attempts"][-1]["accuracy_drop"] <= 0.5
    assert entry["top1_agreement"] >= 0.95
    assert cnn_bundle.data["default_variant"] == "int8"
    # No torch.export file for INT8, and the entry says why.
    assert "pt2" not in entry["files"]
    assert entry["export_settings"]["pt2"].startswith("not built: ")
    assert "no .pt2" in entry["notes"]
    # The TorchScript file reproduces the eager INT8 model it was traced from exactly.
    assert entry["parity"]["torchscript"]["max_abs_diff"] <= 1e-4
    assert entry["parity"]["torchscript"]["top1_agreement"] == 1.0


def test_int8_manifest_records_the_preset_chosen_for_this_cpu(cnn_bundle):
    onnx_settings = cnn_bundle.variant("int8").entry["export_settings"]["onnx"]
    assert onnx_settings["preset"] == resolve_preset("cpu").to_dict()
    assert onnx_settings["bias_correction"] is True
    assert ("reduce_range" in onnx_settings["weights"]) == onnx_settings["preset"]["reduce_range"]


def test_int8_onnx_has_quantized_convolutions_and_is_small(cnn_bundle, tmp_path):
    path = _file(cnn_bundle, "int8", "onnx")
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("QuantizeLinear") >= 4 and ops.count("DequantizeLinear") >= 10
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and t.dims]
    assert len(int8_weights) >= 6  # 4 convolutions + 2 linear layers, per-channel
    # ONNX Runtime fuses the QDQ pairs into integer kernels on the CPU target.
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    fused = [node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert fused.count("QLinearConv") == 4
    fp32_bytes = cnn_bundle.variant("fp32").files["onnx"].bytes
    assert cnn_bundle.variant("int8").files["onnx"].bytes <= 0.3 * fp32_bytes


def test_int8_torchscript_runs_quantized_kernels(cnn_bundle):
    module = torch.jit.load(str(_file(cnn_bundle, "int8", "torchscript")))
    graph = str(module.inlined_graph)
    assert "quantized::conv2d" in graph and "quantized::linear" in graph
    logits = module(torch.zeros(3, 1, 28, 28))
    assert logits.shape == (3, 10) and logits.dtype == torch.float32


def test_mlp_int8_uses_dynamic_quantization_and_tensorrt_signedness(tiny_mlp_run, tmp_path):
    settings = ExportSettings(int8_target="tensorrt", calibration_images=256)
    manifest = export_bundle(
        tiny_mlp_run, out=tmp_path, variants=["fp32", "int8"], limit=300, settings=settings, register=False
    )
    entry = manifest.variant("int8").entry
    assert entry["export_settings"]["onnx"]["preset"]["name"] == "tensorrt"
    assert entry["export_settings"]["torchscript"]["scheme"].startswith("dynamic")
    graph = str(torch.jit.load(str(_file(manifest, "int8", "torchscript"))).inlined_graph)
    assert "quantized::linear_dynamic" in graph
    model = onnx.load(str(_file(manifest, "int8", "onnx")))
    zero_point_names = {
        node.input[2] for node in model.graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")
    }
    initializers = {t.name: t for t in model.graph.initializer}
    zero_points = [
        initializers[name]
        for name in zero_point_names
        if initializers[name].data_type != onnx.TensorProto.INT32
    ]  # int32 zero points belong to the biases
    assert zero_points
    for tensor in zero_points:  # symmetric int8 activations and weights, as TensorRT requires
        assert tensor.data_type == onnx.TensorProto.INT8
        assert not onnx.numpy_helper.to_array(tensor).any()
    assert entry["accuracy_drop"] <= 0.5


def test_budget_search_tries_methods_then_sensitive_layers():
    """The search order, checked with plain functions standing in for quantized models."""
    harmful = {"conv1": 3.0, "conv2": 0.5, "fc": 0.1}
    calls = []

    def build(method, fp32_layers):
        calls.append((method, fp32_layers))
        return lambda images: images  # a runner; evaluate below only looks at the call

    def evaluate(_run):
        method, fp32_layers = calls[-1]
        loss = sum(v for k, v in harmful.items() if k not in fp32_layers) + (0.2 if method == "minmax" else 0)
        return 0.9 - loss / 100

    attempts = fit_budget(
        build=build,
        evaluate=evaluate,
        rank=lambda method: sorted(harmful, key=harmful.get, reverse=True),
        methods=["minmax", "entropy", "percentile"],
        layers=list(harmful),
        fp32_accuracy=0.9,
        budget=1.0,
        fallback_attempts=4,
    )
    assert [a.method for a in attempts] == ["minmax", "entropy", "percentile", "entropy"]
    assert attempts[-1].fp32_layers == ("conv1",)
    assert attempts[-1].drop <= 1.0
    with pytest.raises(BudgetMissed, match=re.escape("exceeds the 0.01-point budget")):
        fit_budget(
            build=build,
            evaluate=evaluate,
            rank=lambda method: sorted(harmful, key=harmful.get, reverse=True),
            methods=["entropy"],
            layers=list(harmful),
            fp32_accuracy=0.9,
            budget=0.01,
            fallback_attempts=4,
        )


def test_fallback_attempts_are_geometric_and_bounded():
    # EfficientNet-Lite0 has 50 Conv/Linear layers: 4 builds span 1 to 25 kept in fp32.
    assert fallback_counts(50, 4) == [1, 3, 9, 25]
    assert fallback_counts(6, 4) == [1, 2, 3]  # a small model gets the whole linear scan
    assert fallback_counts(50, 1) == [1] and fallback_counts(50, 0) == [] and fallback_counts(1, 4) == []
    for layers, attempts in ((50, 4), (160, 6), (7, 2)):
        counts = fallback_counts(layers, attempts)
        assert len(counts) <= attempts and counts == sorted(set(counts)) and max(counts) == layers // 2


def test_no_fallback_attempts_skip_the_per_layer_ranking():
    ranked = []

    def rank(method):
        ranked.append(method)
        return []

    with pytest.raises(BudgetMissed, match=r"after 2 attempts.*--int8-fallback-attempts"):
        fit_budget(
            build=lambda method, fp32_layers: None,
            evaluate=lambda _run: 0.5,
            rank=rank,
            methods=["minmax", "entropy"],
            layers=[f"conv{i}" for i in range(50)],
            fp32_accuracy=0.9,
            budget=1.0,
            fallback_attempts=0,
        )
    assert ranked == []  # no per-layer ranking ran: the expensive step is bounded too


def test_unreachable_budget_fails_only_that_variant(tiny_cnn_run, tmp_path):
    # A budget of 1e-6 points is missed as soon as one image flips: int8 must fail with the
    # numbers while fp32 is still exported.
    settings = ExportSettings(max_accuracy_drop=1e-6, calibration_images=64)
    manifest = export_bundle(
        tiny_cnn_run, out=tmp_path, variants=["fp32", "int8"], limit=2000, settings=settings, register=False
    )
    assert "fp32" in manifest.variants
    if "int8" in manifest.variants:  # it can only pass by losing no accuracy at all
        assert manifest.variant("int8").entry["accuracy_drop"] <= 1e-6
    else:
        assert "exceeds the 1e-06-point budget" in manifest.failed["int8"]["reason"]
        assert not (manifest.bundle_dir / "int8").exists()
        assert manifest.data["default_variant"] == "fp32"
    assert np.isfinite(manifest.variant("fp32").entry["test_accuracy"])
