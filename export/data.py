"""Real images for export-time checks: the test split for accuracy and parity, the train
split for INT8 calibration, built by ``training.eval_data`` from the checkpoint's own
metadata, so export measures exactly the split training measured."""

from training.checkpoint import Checkpoint
from training.datasets import LoadedData
from training.eval_data import ImageSet, evaluation_images, run_data


def checkpoint_data(checkpoint: Checkpoint) -> LoadedData:
    """The checkpoint's dataset, split with the settings it was trained with."""
    return run_data(checkpoint.metadata)


def image_set(data: LoadedData, checkpoint: Checkpoint, split: str, limit: int | None, seed: int) -> ImageSet:
    return evaluation_images(data, checkpoint.spec, split, limit, seed)
