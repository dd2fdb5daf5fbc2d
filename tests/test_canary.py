"""The canary set: written at export, run through each variant at start, refused in strict mode.

The bundle is the tiny CNN as fp32 and int8 plus test_service's ``nan`` variant (fp32's
graph with its logits multiplied by NaN: it loads and warms up, and every answer is
wrong), a real model that a canary has to catch.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import bentoml
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from test_service import export_test_bundle

from export.canary import CANARY_FILE, MAX_IMAGES
from service.canary import ABSENT_NOTE
from service.config import ServeConfig
from service.store import load_variant
from slimserve.errors import SlimserveError
from slimserve.manifest import read_manifest, write_manifest
from training.checkpoint import load_checkpoint

BUNDLE = "canary-cnn"
CPU = ServeConfig(providers="cpu", threads=1)


@pytest.fixture(scope="module")
def bundle(tiny_cnn_run: Path, tmp_path_factory: pytest.TempPathFactory):
    return export_test_bundle(tiny_cnn_run, tmp_path_factory.mktemp("bundles"), BUNDLE)


def stored(variant: str) -> Path:
    return Path(bentoml.models.get(f"{BUNDLE}-{variant}:v1").path)


def test_export_writes_the_most_confident_images_and_the_fp32_answers_to_them(bundle, tiny_cnn_run):
    entry = bundle.data["canary"]
    assert entry["path"] == CANARY_FILE and entry["images"] == MAX_IMAGES
    assert entry["min_top1_agreement"] == pytest.approx(
        1 - bundle.data["settings"]["max_accuracy_drop"] / 100
    )
    tensors = load_file(str(bundle.bundle_dir / CANARY_FILE))
    assert tensors["inputs"].shape == (MAX_IMAGES, *bundle.spec.input_shape)
    model = load_checkpoint(tiny_cnn_run).model.eval()
    with torch.no_grad():
        eager = model(torch.from_numpy(tensors["inputs"])).numpy()
    assert np.abs(eager - tensors["fp32_logits"]).max() < 1e-4  # the answers belong to these inputs
    probabilities = torch.softmax(torch.from_numpy(tensors["fp32_logits"]), 1).sort(1).values
    assert (probabilities[:, -1] - probabilities[:, -2]).min() > 0.5  # only images the model is sure of
    assert (stored("fp32") / CANARY_FILE).is_file()  # the store copy carries it for the service


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_faithful_variants_pass_their_canary_on_this_machine(bundle, variant):
    loaded = load_variant(variant, f"{BUNDLE}-{variant}:v1", stored(variant), CPU)
    canary = loaded.describe()["canary"]
    assert canary["status"] == "passed", canary
    assert canary["images"] == MAX_IMAGES and canary["top1_agreement"] >= canary["min_top1_agreement"]


def test_a_wrong_variant_fails_its_canary_served_anyway_unless_strict(bundle):
    loaded = load_variant("nan", f"{BUNDLE}-nan:v1", stored("nan"), CPU)
    canary = loaded.canary
    assert canary["status"] == "failed" and canary["top1_agreement"] < canary["min_top1_agreement"]
    assert canary["max_abs_logit_diff"] is None  # NaN answers: reported as null, JSON-safe
    json.dumps(canary, allow_nan=False)
    strict = ServeConfig(providers="cpu", threads=1, strict=True)
    with pytest.raises(SlimserveError, match=r"strict mode: canary-cnn-nan:v1: canary top-1 agreement"):
        load_variant("nan", f"{BUNDLE}-nan:v1", stored("nan"), strict)


def test_serve_strict_refuses_a_variant_below_its_canary_budget_with_one_line(bundle):
    result = subprocess.run(
        [sys.executable, "-m", "commands.main", "serve", "--bundle", BUNDLE, "--variants", "fp32,nan",
         "--strict", "--providers", "cpu", "--port", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("slimserve serve: error: strict mode: canary-cnn-nan:v1: canary")
    assert "below the bundle's budget" in lines[0]


def test_a_bundle_without_a_canary_still_serves_and_says_it_is_unchecked(bundle, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(stored("fp32"), old)
    (old / CANARY_FILE).unlink()
    data = read_manifest(old).data
    write_manifest(old, {k: v for k, v in data.items() if k != "canary"})
    loaded = load_variant("fp32", "old", old, ServeConfig(providers="cpu", threads=1, strict=True))
    assert loaded.describe()["canary"] == {"status": "absent", "note": ABSENT_NOTE}


def test_a_tampered_canary_is_refused(bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(stored("fp32"), copy)
    with open(copy / CANARY_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(SlimserveError, match="sha256 mismatch"):
        load_variant("fp32", "x", copy, CPU)
