"""Datasets as in-memory uint8 tensors, and seeded mini-batches over them.

Small-image datasets fit in memory many times over (Fashion-MNIST: 55 MB as uint8), so
the per-image half of the spec's pipeline runs once and every epoch after that is
tensor indexing; see ``training.transforms`` for why augmentation is batched.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from rich.progress import Progress
from torch.utils.data import Dataset

from slimserve.spec import PreprocessSpec
from training.transforms import pixel_transform

MATERIALIZE_PROGRESS_MIN = 5000  # below this a progress bar only flickers


@dataclass(frozen=True)
class ImageTensors:
    """uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def materialize(
    dataset: Dataset, spec: PreprocessSpec, description: str = "preparing images"
) -> ImageTensors:
    """Run the spec's per-image transform over a dataset once."""
    to_pixels = pixel_transform(spec)
    count = len(dataset)  # type: ignore[arg-type]
    images = torch.empty((count, *spec.input_shape), dtype=torch.uint8)
    labels = torch.empty(count, dtype=torch.int64)
    with Progress(transient=True, disable=count < MATERIALIZE_PROGRESS_MIN) as progress:
        for index in progress.track(range(count), description=description):
            image, label = dataset[index]
            images[index] = to_pixels(image)
            labels[index] = label
    return ImageTensors(images, labels)


def batches(
    data: ImageTensors,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    shard: tuple[int, int] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches, shuffled by ``generator`` when one is given.

    ``shard=(rank, size)``: each batch is cut into ``size`` contiguous slices and rank
    ``rank`` gets its slice, so when every rank seeds ``generator`` alike the ranks' slices
    together are exactly the one-process batch (DistributedSampler shards the epoch
    instead, which would change what one optimizer step sees).
    """
    count = len(data)
    order = torch.randperm(count, generator=generator) if generator is not None else torch.arange(count)
    stop = count - count % batch_size if drop_last and count > batch_size else count
    for start in range(0, stop, batch_size):
        index = order[start : start + batch_size]
        if shard is not None:
            index = index.tensor_split(shard[1])[shard[0]]
        yield data.images[index], data.labels[index]


def shard_of(data: ImageTensors, rank: int, size: int) -> ImageTensors:
    """Rank ``rank``'s contiguous slice of ``size``, e.g. of the test set to evaluate in parallel."""
    return ImageTensors(data.images.tensor_split(size)[rank], data.labels.tensor_split(size)[rank])


def batch_count(data: ImageTensors, batch_size: int, drop_last: bool) -> int:
    if drop_last and len(data) > batch_size:
        return len(data) // batch_size
    return -(-len(data) // batch_size)
