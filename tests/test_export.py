"""fp32 export: every format, parity, dynamic batch, manifest hashes, BentoML store, CLI."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import bentoml
import numpy as np
import onnx
import pytest
import torch
from torch import nn

from commands.main import main
from export.data import checkpoint_data, image_set
from export.pipeline import export_bundle
from export.registry import register_bundle
from slimserve.errors import SlimserveError
from slimserve.manifest import read_manifest
from slimserve.runtime import open_runner
from training.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def fp32_bundle(tiny_cnn_run: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("bundles")
    return export_bundle(tiny_cnn_run, out=out, variants=["fp32"], limit=400, version="v1")


def _test_images(run_dir: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    checkpoint = load_checkpoint(run_dir)
    images = image_set(checkpoint_data(checkpoint), checkpoint, "test", count, seed=1)
    with torch.inference_mode():
        eager = checkpoint.model(torch.from_numpy(images.images)).numpy()
    return images.images, eager


def test_fp32_parity_every_format_on_real_images(fp32_bundle):
    entry = fp32_bundle.variant("fp32").entry
    assert set(entry["files"]) == {"onnx", "torchscript", "pt2"}
    assert entry["skipped_formats"] == {}
    for fmt in ("onnx", "torchscript", "pt2"):
        parity = entry["parity"][fmt]
        assert parity["images"] == 256
        assert parity["max_abs_diff"] <= 1e-4
        assert parity["top1_agreement"] == 1.0
        assert entry["accuracy_by_format"][fmt] == entry["test_accuracy"]
    assert entry["top1_agreement"] == 1.0
    assert entry["accuracy_drop"] == 0.0
    assert entry["test_accuracy"] == fp32_bundle.data["parent"]["test_accuracy"]
    assert entry["macs"] > entry["params"] > 0
    parent = load_checkpoint(Path(fp32_bundle.data["parent"]["run_dir"])).model
    assert entry["params"] == sum(p.numel() for p in parent.parameters())
    assert fp32_bundle.data["default_variant"] == "fp32"
    assert fp32_bundle.data["preprocess"] == load_checkpoint_metadata(fp32_bundle)["preprocess"]


def load_checkpoint_metadata(manifest) -> dict:
    return json.loads((Path(manifest.data["parent"]["run_dir"]) / "metadata.json").read_text())


def test_onnx_is_valid_and_batch_axis_is_dynamic(fp32_bundle, tiny_cnn_run):
    path = fp32_bundle.variant("fp32").files["onnx"].verified_path(fp32_bundle.bundle_dir)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 17
    images, eager = _test_images(tiny_cnn_run, 128)
    run = open_runner("onnx", path)
    for batch in (1, 64, 128):
        logits = run(images[:batch])
        assert logits.shape == (batch, 10)
        np.testing.assert_allclose(logits, eager[:batch], atol=1e-4)


@pytest.mark.parametrize(
    ("fmt", "load"),
    [("torchscript", "torch.jit.load({})"), ("pt2", "torch.export.load({}).module()")],
    ids=["torchscript", "pt2"],
)
def test_torch_files_load_in_fresh_python_with_only_torch(fp32_bundle, tiny_cnn_run, tmp_path, fmt, load):
    path = fp32_bundle.variant("fp32").files[fmt].verified_path(fp32_bundle.bundle_dir)
    images, eager = _test_images(tiny_cnn_run, 64)
    np.save(tmp_path / "images.npy", images)
    script = (
        "import sys, numpy, torch\n"
        f"m = {load.format(repr(str(path)))}\n"
        f"x = torch.from_numpy(numpy.load({str(tmp_path / 'images.npy')!r}))\n"
        "with torch.inference_mode():\n"
        "    out = [m(x[:1]), m(x)]\n"  # batch 1 and 64 from one loaded file: the batch axis is dynamic
        f"numpy.save({str(tmp_path / 'one.npy')!r}, out[0].numpy())\n"
        f"numpy.save({str(tmp_path / 'all.npy')!r}, out[1].numpy())\n"
        "assert not any(n.split('.')[0] in ('slimserve', 'training', 'export') for n in sys.modules)\n"
    )
    # A neutral cwd and no PYTHONPATH: the project must not be importable by accident.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-I", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "one.npy"), eager[:1], atol=1e-4)
    np.testing.assert_allclose(np.load(tmp_path / "all.npy"), eager, atol=1e-4)


def test_manifest_hashes_match_files_and_tampering_is_detected(fp32_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(fp32_bundle.bundle_dir, copy)
    manifest = read_manifest(copy)
    for artifact in manifest.variant("fp32").files.values():
        path = artifact.verified_path(copy)
        assert path.stat().st_size == artifact.bytes
    onnx_path = copy / manifest.variant("fp32").files["onnx"].path
    data = bytearray(onnx_path.read_bytes())
    data[-1] ^= 0xFF
    onnx_path.write_bytes(bytes(data))
    with pytest.raises(SlimserveError, match="sha256 mismatch"):
        manifest.variant("fp32").files["onnx"].verified_path(copy)


def test_variants_are_in_the_bentoml_store_with_bundle_layout(fp32_bundle):
    tag = "cnn-fashion-mnist-fp32:v1"
    model = bentoml.models.get(tag)
    assert model.info.labels == {"bundle": "cnn-fashion-mnist", "variant": "fp32", "slimserve": "bundle"}
    assert model.info.metadata["precision"] == "fp32"
    assert model.info.metadata["bundle"]["preprocess"] == fp32_bundle.data["preprocess"]
    stored = read_manifest(model.path)
    assert stored.data == fp32_bundle.data
    onnx_path = stored.variant("fp32").files["onnx"].verified_path(Path(model.path))
    assert onnx_path.is_relative_to(Path(model.path))
    listing = subprocess.run(
        ["bentoml", "models", "list", "-o", "json"], capture_output=True, text=True, env=os.environ
    )
    assert listing.returncode == 0, listing.stderr[-2000:]
    assert tag in listing.stdout
    with pytest.raises(SlimserveError, match="already exists"):
        register_bundle(fp32_bundle)


def test_tampered_checkpoint_is_refused(tiny_cnn_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_cnn_run, run)
    weights = run / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(SlimserveError, match="sha256 mismatch"):
        export_bundle(run, out=tmp_path / "bundles", register=False)
    assert not (tmp_path / "bundles").exists()


@pytest.mark.slow  # the run fixture is requested by name, which collection cannot see
@pytest.mark.parametrize("fixture", ["tiny_mlp_run", "tiny_resnet_run"])
def test_fp32_export_of_other_architectures(fixture, request, tmp_path):
    run_dir = request.getfixturevalue(fixture)
    manifest = export_bundle(run_dir, out=tmp_path, variants=["fp32"], limit=300, register=False)
    entry = manifest.variant("fp32").entry
    assert set(entry["parity"]) == {"onnx", "torchscript", "pt2"}
    for parity in entry["parity"].values():
        assert parity["passed"] and parity["max_abs_diff"] <= 1e-4
    graph = onnx.load(str(manifest.variant("fp32").files["onnx"].verified_path(manifest.bundle_dir))).graph
    layers = {node.name for node in graph.node if node.op_type in ("Conv", "Gemm", "MatMul")}
    model = load_checkpoint(run_dir).model
    weighted = {name for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))}
    assert layers == weighted  # ONNX nodes carry the layer path (profiles, fp32-layer lists)


def test_cli_export_prints_table_and_writes_bundle(tiny_cnn_run, tmp_path, capsys):
    code = main(
        [
            "export",
            str(tiny_cnn_run),
            "--out",
            str(tmp_path),
            "--name",
            "cli-cnn",
            "--version",
            "1",
            "--variants",
            "fp32",
            "--limit",
            "200",
            "--no-register",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "cli-cnn:1" in printed and "fp32" in printed
    assert read_manifest(tmp_path / "cli-cnn" / "1").variant("fp32").precision == "fp32"
    with pytest.raises(bentoml.exceptions.NotFound):
        bentoml.models.get("cli-cnn-fp32:1")


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "metadata.json is missing" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tmp_path), "--variants", "fp64"])
    assert exit_info.value.code == 2
    assert "unknown variant fp64" in capsys.readouterr().err
