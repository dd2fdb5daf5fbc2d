"""Real images for export-time checks: the test split for accuracy and parity, the train
split for INT8 calibration. Preprocessing is training's own (``materialize`` plus
``normalize_transform``), so export measures exactly what training measured."""

from dataclasses import dataclass

import numpy as np
import torch

from training.checkpoint import Checkpoint
from training.datasets import LoadedData, limit_dataset, load_data
from training.tensors import materialize
from training.transforms import normalize_transform


@dataclass(frozen=True)
class ImageSet:
    """Normalized float32 NCHW images and int64 labels, as numpy for ONNX Runtime."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, count: int) -> "ImageSet":
        return ImageSet(self.images[:count], self.labels[:count])


def checkpoint_data(checkpoint: Checkpoint) -> LoadedData:
    """The checkpoint's dataset with the settings it was trained with."""
    meta = checkpoint.metadata
    config = meta.get("train_config", {})
    return load_data(
        meta["dataset"],
        image_size=checkpoint.spec.height,
        channels=checkpoint.spec.channels,
        val_fraction=config.get("val_fraction", 0.2),
        seed=config.get("seed", 0),
    )


def image_set(data: LoadedData, checkpoint: Checkpoint, split: str, limit: int | None, seed: int) -> ImageSet:
    dataset = data.test if split == "test" else data.train
    tensors = materialize(limit_dataset(dataset, limit, seed), checkpoint.spec, f"preparing {split} images")
    normalize = normalize_transform(checkpoint.spec)
    with torch.inference_mode():
        images = normalize(tensors.images).contiguous().numpy()
    return ImageSet(images.astype(np.float32, copy=False), tensors.labels.numpy())
