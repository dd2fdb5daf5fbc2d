"""Real test images for the model benchmark: the split export scored, built the same way
(``training.eval_data``) from the parent run's own metadata."""

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slimserve.errors import SlimserveError
from slimserve.manifest import Manifest

if TYPE_CHECKING:  # torch loads with it: the benchmark imports it only when it builds images
    from training.eval_data import ImageSet

EVAL_SEED = 0


def dataset_name(manifest: Manifest) -> str:
    """The dataset the bundle's checkpoint was trained on, as export recorded it."""
    parent = manifest.data.get("parent", {})
    name = manifest.data.get("dataset") or parent.get("dataset")
    if not name:
        raise SlimserveError(f"{manifest.bundle_dir}: the manifest does not name its dataset")
    return str(name)


def run_metadata(manifest: Manifest) -> dict[str, Any]:
    """The parent run's metadata (its split settings) when the run folder is still there;
    otherwise what the manifest records, which ``run_data`` refuses for a ``folder:``
    dataset (its split cannot be rebuilt without the run's val_fraction and seed)."""
    dataset_name(manifest)  # refuses a manifest without its dataset, naming the bundle
    return manifest_run_metadata(manifest.data)


def manifest_run_metadata(data: dict[str, Any]) -> dict[str, Any]:
    """``run_metadata`` for a manifest as plain JSON (what a running service describes)."""
    from training.checkpoint import METADATA_FILE, read_metadata

    run_dir = data.get("parent", {}).get("run_dir")
    if run_dir and (Path(run_dir) / METADATA_FILE).is_file():
        return read_metadata(Path(run_dir))
    return {"dataset": data.get("dataset") or data["parent"]["dataset"], "preprocess": data["preprocess"]}


def load_test_images(manifest: Manifest, count: int) -> "ImageSet":
    """``count`` seeded test images (tiled when the test split is smaller)."""
    from training.eval_data import ImageSet, evaluation_images, run_data

    data = evaluation_images(run_data(run_metadata(manifest)), manifest.spec, "test", count, EVAL_SEED)
    repeats = -(-count // len(data))
    return ImageSet(np.tile(data.images, (repeats, 1, 1, 1))[:count], np.tile(data.labels, repeats)[:count])


def save_array(array: np.ndarray, path: Path) -> str:
    np.save(path, np.ascontiguousarray(array))
    return str(path)
