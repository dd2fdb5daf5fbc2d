"""Real test images for the model benchmark, preprocessed exactly as training and export do."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slimserve.errors import SlimserveError
from slimserve.manifest import Manifest

EVAL_SEED = 0


@dataclass(frozen=True)
class BenchData:
    """Normalized float32 NCHW test images and their labels."""

    images: np.ndarray
    labels: np.ndarray


def dataset_name(manifest: Manifest) -> str:
    """The dataset the bundle's checkpoint was trained on, as export recorded it."""
    parent = manifest.data.get("parent", {})
    name = manifest.data.get("dataset") or parent.get("dataset")
    if not name:
        raise SlimserveError(f"{manifest.bundle_dir}: the manifest does not name its dataset")
    return str(name)


def load_test_images(manifest: Manifest, count: int) -> BenchData:
    """``count`` seeded test images (tiled when the test split is smaller)."""
    import torch

    from training.datasets import limit_dataset, load_data
    from training.tensors import materialize
    from training.transforms import normalize_transform

    spec = manifest.spec
    data = load_data(dataset_name(manifest), image_size=spec.height, channels=spec.channels)
    tensors = materialize(limit_dataset(data.test, count, EVAL_SEED), spec, "preparing test images")
    with torch.inference_mode():
        images = normalize_transform(spec)(tensors.images).contiguous().numpy().astype(np.float32)
    labels = tensors.labels.numpy()
    repeats = -(-count // len(labels))
    return BenchData(np.tile(images, (repeats, 1, 1, 1))[:count], np.tile(labels, repeats)[:count])


def save_array(array: np.ndarray, path: Path) -> str:
    np.save(path, np.ascontiguousarray(array))
    return str(path)
