"""Pruning variants: structured (MAC share, dependency-aware on ResNet, still exports) and
unstructured (real sparsity, no size change, smaller compressed file)."""

from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch

from export.building import ExportSettings
from export.formats import example_batch
from export.pipeline import export_bundle
from export.prune import structured_prune
from training.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pruned_bundle(tiny_cnn_run: Path, tmp_path_factory: pytest.TempPathFactory):
    settings = ExportSettings(prune_macs=0.5, finetune_epochs=1, sparsity=0.6, calibration_images=256)
    return export_bundle(
        tiny_cnn_run,
        out=tmp_path_factory.mktemp("pruned-bundles"),
        variants=["fp32", "pruned", "pruned-int8", "sparse"],
        limit=600,
        settings=settings,
        register=False,
    )


def _onnx(manifest, variant: str) -> onnx.ModelProto:
    return onnx.load(str(manifest.variant(variant).files["onnx"].verified_path(manifest.bundle_dir)))


def test_structured_pruning_removes_the_requested_share_of_macs(pruned_bundle):
    assert pruned_bundle.data["failed"] == {}
    fp32 = pruned_bundle.variant("fp32").entry
    pruned = pruned_bundle.variant("pruned").entry
    assert pruned["macs"] <= 0.5 * fp32["macs"]
    # The pruned and sparse models go through torch.export like the parent.
    for name in ("pruned", "sparse"):
        assert pruned_bundle.variant(name).entry["parity"]["pt2"]["passed"]
    assert pruned["params"] < fp32["params"]
    info = pruned["export_settings"]["pruning"]
    assert info["macs_before"] == fp32["macs"] and info["mac_reduction"] >= 0.5
    assert pruned["export_settings"]["finetune"]["epochs"] == 1
    for parity in pruned["parity"].values():  # the pruned float model still exports exactly
        assert parity["passed"] and parity["max_abs_diff"] <= 1e-4
    # Whole channels are gone from the exported graph, not just zeroed.
    conv_out = lambda model: [  # noqa: E731
        init.dims[0] for init in model.graph.initializer if len(init.dims) == 4
    ]
    assert sum(conv_out(_onnx(pruned_bundle, "pruned"))) < sum(conv_out(_onnx(pruned_bundle, "fp32")))
    assert pruned["test_accuracy"] > 0.3  # fine-tuned, far above 10% chance


def test_pruned_int8_quantizes_the_pruned_model(pruned_bundle):
    entry = pruned_bundle.variant("pruned-int8").entry
    assert entry["macs"] == pruned_bundle.variant("pruned").entry["macs"]
    assert entry["budget_reference"] == "pruned"
    ops = [node.op_type for node in _onnx(pruned_bundle, "pruned-int8").graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert (
        pruned_bundle.variant("pruned-int8").files["onnx"].bytes
        < pruned_bundle.variant("pruned").files["onnx"].bytes * 0.35
    )


def test_unstructured_sparsity_matches_the_request_and_is_reported_honestly(pruned_bundle):
    entry = pruned_bundle.variant("sparse").entry
    assert abs(entry["sparsity"] - 0.6) < 0.005
    weights = [
        onnx.numpy_helper.to_array(init)
        for init in _onnx(pruned_bundle, "sparse").graph.initializer
        if len(init.dims) in (2, 4)
    ]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)
    assert abs(zeros - 0.6) < 0.01
    ts = torch.jit.load(
        str(pruned_bundle.variant("sparse").files["torchscript"].verified_path(pruned_bundle.bundle_dir))
    )
    assert ts(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    fp32_file = pruned_bundle.variant("fp32").entry["files"]["onnx"]
    sparse_file = entry["files"]["onnx"]
    assert abs(sparse_file["bytes"] - fp32_file["bytes"]) < 0.05 * fp32_file["bytes"]  # zeros are stored
    assert sparse_file["gzip_bytes"] < 0.8 * fp32_file["gzip_bytes"]
    assert entry["macs"] == pruned_bundle.variant("fp32").entry["macs"]
    assert "no dense speed-up" in entry["notes"]


def test_structured_pruning_keeps_resnet_residuals_consistent(tiny_resnet_run, tmp_path):
    parent = load_checkpoint(tiny_resnet_run).model
    pruned, info = structured_prune(parent, example_batch((1, 28, 28), 1), 0.5)
    assert info["mac_reduction"] >= 0.5
    for block in pruned.stages:
        # The residual sum needs the block output and its shortcut to keep the same channels.
        shortcut_out = block.shortcut[0].out_channels if len(list(block.shortcut.children())) else None
        assert shortcut_out in (None, block.conv2.out_channels)
    with torch.no_grad():
        assert pruned(torch.randn(4, 1, 28, 28)).shape == (4, 10)
    settings = ExportSettings(prune_macs=0.5, finetune_epochs=0)
    manifest = export_bundle(
        tiny_resnet_run,
        out=tmp_path,
        variants=["fp32", "pruned"],
        limit=300,
        settings=settings,
        register=False,
    )
    assert manifest.data["failed"] == {}
    assert manifest.variant("pruned").entry["macs"] <= 0.5 * manifest.variant("fp32").entry["macs"]
    assert np.isfinite(manifest.variant("pruned").entry["test_accuracy"])
