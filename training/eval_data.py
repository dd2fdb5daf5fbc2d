"""A run's evaluation images, built one way for training's report, `evaluate`, `export`,
`distill` and `bench models`.

The held-out split of a ``folder:`` dataset depends on the run's ``val_fraction`` and
``seed`` (``training.datasets``), so every consumer rebuilds the split from the run's own
metadata here; scoring another split would compare a model on images it trained on.
Preprocessing is training's own (``materialize`` plus ``normalize_transform``).
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from slimserve.errors import SlimserveError
from slimserve.spec import PreprocessSpec
from training.datasets import LoadedData, limit_dataset, load_data_for_spec
from training.tensors import ImageTensors, materialize
from training.transforms import normalize_transform

SPLIT_SETTINGS = ("val_fraction", "seed")  # what decides a folder dataset's held-out split


@dataclass(frozen=True)
class ImageSet:
    """Normalized float32 NCHW images and int64 labels, as numpy for every runtime."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, count: int) -> "ImageSet":
        return ImageSet(self.images[:count], self.labels[:count])


def run_data(metadata: dict[str, Any]) -> LoadedData:
    """The run's dataset, split exactly as training split it.

    ``metadata`` is a run's ``metadata.json`` (``dataset``, ``preprocess`` and the
    ``train_config`` it was trained with). A ``folder:`` dataset without its split settings
    is refused: its held-out images could not be told apart from its training images.
    """
    dataset = metadata["dataset"]
    config = metadata.get("train_config", {})
    split = {key: config[key] for key in SPLIT_SETTINGS if key in config}
    if dataset.startswith("folder:") and len(split) < len(SPLIT_SETTINGS):
        raise SlimserveError(
            f"{dataset}: the run's train_config does not record {' and '.join(SPLIT_SETTINGS)}, so its "
            "held-out split cannot be rebuilt; evaluate with the run folder that trained the model"
        )
    spec = PreprocessSpec.from_dict(metadata["preprocess"])
    # The spec decides size, crop, filter and normalization, so photos are decoded as in training.
    return load_data_for_spec(
        dataset, spec, val_fraction=split.get("val_fraction", 0.2), seed=split.get("seed", 0)
    )


def evaluation_tensors(
    data: LoadedData, spec: PreprocessSpec, split: str = "test", limit: int | None = None, seed: int = 0
) -> ImageTensors:
    """A seeded subset (``limit`` images, all when None) of one split, as uint8 tensors."""
    dataset = data.test if split == "test" else data.train
    return materialize(limit_dataset(dataset, limit, seed), spec, f"preparing {split} images")


def evaluation_images(
    data: LoadedData, spec: PreprocessSpec, split: str = "test", limit: int | None = None, seed: int = 0
) -> ImageSet:
    """``evaluation_tensors`` normalized: what a runtime is fed."""
    tensors = evaluation_tensors(data, spec, split, limit, seed)
    with torch.inference_mode():
        images = normalize_transform(spec)(tensors.images).contiguous().numpy()
    return ImageSet(images.astype(np.float32, copy=False), tensors.labels.numpy())
