"""Pruning variants: structured (MAC share, dependency-aware on ResNet, still exports) and
unstructured (real sparsity, no size change, smaller compressed file)."""

from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
from rich.console import Console

from commands.main import main
from export.building import ExportSettings
from export.formats import example_batch
from export.pipeline import export_bundle
from export.prune import structured_prune
from slimserve.errors import SlimserveError
from training.checkpoint import load_checkpoint

# These tests are about what pruning builds; the accuracy gate has its own test below, so a
# two-epoch CNN fine-tuned for one epoch on 600 images is not held to the 1-point budget.
NO_BUDGET = 100.0


@pytest.fixture(scope="module")
def pruned_bundle(tiny_cnn_run: Path, tmp_path_factory: pytest.TempPathFactory):
    settings = ExportSettings(
        prune_macs=0.5, finetune_epochs=1, sparsity=0.6, calibration_images=256, max_pruning_drop=NO_BUDGET
    )
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


def _export_pruned(run_dir, out, settings: ExportSettings, limit: int):
    """fp32 and pruned only, unregistered; both must have been built."""
    manifest = export_bundle(
        run_dir, out=out, variants=["fp32", "pruned"], limit=limit, settings=settings, register=False
    )
    assert manifest.data["failed"] == {}
    return manifest


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
    manifest = _export_pruned(
        tiny_resnet_run,
        tmp_path,
        ExportSettings(prune_macs=0.5, finetune_epochs=0, max_pruning_drop=NO_BUDGET),
        300,
    )
    assert manifest.variant("pruned").entry["macs"] <= 0.5 * manifest.variant("fp32").entry["macs"]
    assert manifest.variant("pruned").entry["notes"].endswith("; not fine-tuned")
    assert np.isfinite(manifest.variant("pruned").entry["test_accuracy"])


def test_depth_pruning_drops_blocks_and_fine_tunes_from_a_teacher(tiny_resnet_run, tiny_cnn_run, tmp_path):
    settings = ExportSettings(
        prune_macs=0.6,
        drop_blocks=("stages.0",),
        finetune_teacher=str(tiny_cnn_run),
        finetune_epochs=1,
        max_pruning_drop=NO_BUDGET,
    )
    manifest = _export_pruned(tiny_resnet_run, tmp_path, settings, 400)
    fp32, pruned = manifest.variant("fp32").entry, manifest.variant("pruned").entry
    depth = pruned["export_settings"]["depth_pruning"]
    assert depth["dropped_blocks"] == ["stages.0"] and depth["macs_before"] == fp32["macs"]
    # --prune-macs is the total: channel pruning removes what dropping the block did not.
    assert pruned["macs"] <= 0.4 * fp32["macs"]
    assert pruned["export_settings"]["mac_reduction"] >= 0.6
    assert pruned["notes"].endswith("; fine-tuned 1 epoch by distillation")
    assert pruned["export_settings"]["pruning"]["macs_before"] < fp32["macs"]
    # The block's two 3x3 convolutions are gone from the exported graph.
    convs = lambda variant: sum(node.op_type == "Conv" for node in _onnx(manifest, variant).graph.node)  # noqa: E731
    assert convs("pruned") == convs("fp32") - 2
    assert all(parity["passed"] for parity in pruned["parity"].values())
    finetune = pruned["export_settings"]["finetune"]
    assert finetune["loss"] == "distillation" and finetune["epochs"] == 1
    teacher = finetune["distillation"]
    assert teacher["teacher_arch"] == "cnn"
    assert teacher["teacher_sha256"] == load_checkpoint(tiny_cnn_run).metadata["weights_sha256"]
    assert "by distillation" in pruned["notes"]


def test_pruned_and_sparse_variants_over_the_accuracy_budget_are_refused_and_named(tiny_cnn_run, tmp_path):
    """Pruning 90% of the MACs without fine-tuning, and zeroing 95% of the weights, cost the
    tiny CNN far more than a point: neither ships, each is named with its numbers in the
    manifest and the export's output, and fp32 is still built."""
    console = Console(record=True, width=400)
    settings = ExportSettings(prune_macs=0.9, finetune_epochs=0, sparsity=0.95, max_pruning_drop=1.0)
    manifest = export_bundle(
        tiny_cnn_run,
        out=tmp_path,
        variants=["fp32", "pruned", "pruned-int8", "sparse"],
        limit=300,
        settings=settings,
        register=False,
        console=console,
    )
    assert set(manifest.variants) == {"fp32"}
    assert set(manifest.failed) == {"pruned", "pruned-int8", "sparse"}
    fp32 = manifest.variant("fp32").entry["test_accuracy"]
    printed = console.export_text()
    for name, fix in (("pruned", "--finetune-epochs"), ("sparse", "--sparsity")):
        reason = manifest.failed[name]["reason"]
        assert reason.startswith(f"variant '{name}': accuracy ")
        assert f"below fp32's {fp32:.2%}, over the 1-point budget (--max-pruning-drop)" in reason
        assert fix in reason and "\n" not in reason
        assert f"{name}: failed - {reason}" in printed
        assert not (manifest.bundle_dir / name).exists()
    assert "pruned, which was not built" in manifest.failed["pruned-int8"]["reason"]


def test_depth_pruning_refuses_a_block_that_changes_shape_before_building(tiny_resnet_run, tmp_path):
    # stages.1 halves the resolution and doubles the channels: no identity can stand in.
    settings = ExportSettings(drop_blocks=("stages.1",))
    with pytest.raises(SlimserveError, match=r"'stages.1' is not a block .* droppable here: stages.0"):
        export_bundle(
            tiny_resnet_run, out=tmp_path, variants=["fp32", "pruned"], settings=settings, register=False
        )
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_pruning_options_without_a_pruned_variant_are_refused(tiny_resnet_run, tmp_path):
    for settings in (
        ExportSettings(drop_blocks=("stages.0",)),
        ExportSettings(finetune_teacher=str(tiny_resnet_run)),
    ):
        with pytest.raises(SlimserveError, match="shapes the pruned variants, and none is selected"):
            export_bundle(tiny_resnet_run, out=tmp_path, variants=["fp32"], settings=settings, register=False)


def test_cli_names_the_droppable_blocks_in_one_line(tiny_resnet_run, tmp_path, capsys):
    argv = [
        "export",
        str(tiny_resnet_run),
        "--drop-blocks",
        "stages.9",
        "--out",
        str(tmp_path),
        "--no-register",
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'stages.9' is not a block" in err and "droppable here: stages.0" in err


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"finetune_teacher": "runs/teacher", "finetune_epochs": 0}, "needs --finetune-epochs above 0"),
        ({"drop_blocks": ("stages.1", "stages.1")}, "names a block twice"),
    ],
)
def test_contradictory_pruning_settings_are_refused(kwargs, message):
    with pytest.raises(SlimserveError, match=message):
        ExportSettings(**kwargs)


@pytest.mark.parametrize("images", [120, 500], ids=["below-the-limit", "beyond-the-limit"])
def test_fine_tuning_images_are_set_apart_from_the_evaluation_limit(tiny_cnn_run, tmp_path, images):
    # The demo gates on a few thousand test images (limit) and sizes the fine-tuning to its
    # budget, fewer or more train images than that: neither shrinks the other.
    manifest = _export_pruned(
        tiny_cnn_run,
        tmp_path,
        ExportSettings(finetune_epochs=1, finetune_images=images, max_pruning_drop=NO_BUDGET),
        300,
    )
    assert manifest.variant("pruned").entry["export_settings"]["finetune"]["images"] == images
    assert manifest.data["evaluation"]["images"] == manifest.variant("pruned").entry["test_images"] == 300
    assert manifest.data["settings"]["finetune_images"] == images
