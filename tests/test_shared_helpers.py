"""The small torch-free helpers every stage shares (slimserve/): names, JSON, samples, readiness."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from slimserve.documents import write_json
from slimserve.errors import SlimserveError
from slimserve.local_server import free_port, wait_ready
from slimserve.naming import default_run_dir
from slimserve.samples import write_pngs
from slimserve.store_names import is_bundle_model, store_labels


def test_default_run_dir_names_a_folder_dataset_after_its_own_folder():
    assert default_run_dir("cnn", "fashion-mnist") == Path("runs/cnn-fashion-mnist")
    assert default_run_dir("cnn", "folder:/data/bees/", "distilled") == Path("runs/cnn-bees-distilled")


def test_write_json_refuses_nan_when_strict_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "deep" / "report.json"
    write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1} and list(path.parent.iterdir()) == [path]
    with pytest.raises(ValueError):
        write_json(path, {"a": math.nan}, allow_nan=False)
    assert json.loads(path.read_text()) == {"a": 1}  # the old file survives a failed write
    assert list(path.parent.iterdir()) == [path]  # and no temporary file is left behind


def test_write_pngs_names_each_file_by_index_and_class(tmp_path):
    images = [(Image.new("L", (4, 3), 7), "T-shirt/top"), (Image.new("L", (4, 3), 9), "Ankle boot")]
    paths = write_pngs(images, tmp_path / "samples")
    assert [p.name for p in paths] == ["0-t-shirt-top.png", "1-ankle-boot.png"]
    assert Image.open(paths[1]).getpixel((0, 0)) == 9


def test_store_labels_are_what_the_service_selects_by():
    labels = store_labels("cnn-fashion-mnist", "fp32")
    assert labels == {"bundle": "cnn-fashion-mnist", "variant": "fp32", "slimserve": "bundle"}
    assert is_bundle_model(labels) and not is_bundle_model({"bundle": "x"})


def test_wait_ready_names_a_server_that_exits_before_it_is_ready():
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(SlimserveError, match="the reference server exited with code 3 before it was ready"):
        wait_ready(f"http://127.0.0.1:{free_port()}", process, 30, server="the reference server")
