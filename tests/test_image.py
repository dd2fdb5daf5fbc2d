"""The OCI image, built with buildah and run with podman, no Docker daemon: what `make image`
does, on a tiny real bundle, in a private image store of its own.

Minutes of work (a Debian base from packages, ~80 Python wheels, a multi-GB commit), so it
runs apart from the main suite: `make test-image` (CI runs it after `make test`). Without
buildah, podman, mmdebstrap or runc it fails and names the install command; it never skips.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from deployment import REPO, assert_same_predictions, png_bytes, registered_fp32_bundle, source_predictions

pytestmark = [pytest.mark.image, pytest.mark.slow, pytest.mark.http]
BUNDLE = "image-cnn"


def image_script():
    """deploy/image/image.py as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("deploy_image", REPO / "deploy" / "image" / "image.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_container_tools_are_installed():
    script = image_script()
    missing = [tool for tool in script.TOOLS if shutil.which(tool) is None]
    assert not missing, f"{', '.join(missing)} missing; install with: {script.INSTALL} (or: make image-tools)"


@pytest.fixture(scope="module")
def image_bundle(tiny_cnn_run: Path, tmp_path_factory: pytest.TempPathFactory):
    return registered_fp32_bundle(tiny_cnn_run, tmp_path_factory.mktemp("image-bundles"), BUNDLE)


@pytest.fixture(scope="module")
def image_home(tmp_path_factory: pytest.TempPathFactory):
    """A private podman/buildah store, emptied afterwards (its layers are gigabytes)."""
    home = tmp_path_factory.mktemp("image-home")
    yield home
    script = image_script()
    env = script.container_env(home)
    for command in (["rm", "--all", "--force"], ["rmi", "--all", "--force"]):
        subprocess.run(["podman", *command], env=env, capture_output=True, timeout=300)


def test_make_image_builds_runs_and_answers_as_the_source_service(image_bundle, image_home, tmp_path):
    from training.datasets import load_data

    png = tmp_path / "shirt.png"
    png.write_bytes(png_bytes(load_data("fashion-mnist").test[1][0]))
    report_path = tmp_path / "report.json"
    env = {
        **os.environ,
        "SLIMSERVE_IMAGE_HOME": str(image_home),
        "SLIMSERVE_BUNDLE": BUNDLE,
        "SLIMSERVE_VARIANTS": "fp32",
    }
    result = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "image" / "image.py"), "--png", str(png), "--report", str(report_path)],
        env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(report_path.read_text())
    print(result.stderr.strip().splitlines()[-1])  # size and times, shown with -s

    # The image runs its own copy of the service and carries no torch and no training code.
    modules = report["modules"]
    assert modules["service.service"] == "/home/bentoml/bento/src/service/service.py"
    assert all(modules[name] is None for name in ("torch", "torchvision", "onnx", "training", "export"))
    assert report["image_bytes"] > 100 * 2**20 and report["ready_seconds"] > 0

    # Compared here with the exported bundle's own files, independently of the script's check.
    expected = source_predictions(image_bundle.bundle_dir, f"{BUNDLE}-fp32:v1", "fp32", png.read_bytes())
    assert_same_predictions(report["served"], expected)
