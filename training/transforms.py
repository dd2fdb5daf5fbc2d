"""Training-time transforms, built from the same PreprocessSpec the service reads.

``eval_transform`` is the reference implementation of the spec in torchvision; the
service's numpy/Pillow version (``service/preprocess.py``) is tested against it pixel
for pixel. It is split in two halves so training can run the per-image half once and
the cheap per-pixel half on whole batches:

- ``pixel_transform``: colour mode, resize (+ center crop), to a uint8 CHW tensor (per image, PIL);
- ``normalize_transform``: scale to [0, 1] and normalize (works on one image or a batch).
"""

import dataclasses

import torch
from torch.nn import functional
from torchvision.transforms import InterpolationMode, RandomResizedCrop, v2

from slimserve.spec import PreprocessSpec


def pixel_transform(spec: PreprocessSpec) -> v2.Compose:
    """PIL image -> uint8 CHW tensor in the spec's mode and size."""
    mode = v2.Grayscale(num_output_channels=1) if spec.channels == 1 else v2.RGB()
    interpolation = InterpolationMode(spec.interpolation)
    if spec.resize_shorter is None:
        resize = [v2.Resize((spec.height, spec.width), interpolation=interpolation, antialias=True)]
    else:  # torchvision's ImageNet evaluation transform
        resize = [
            v2.Resize(spec.resize_shorter, interpolation=interpolation, antialias=True),
            v2.CenterCrop((spec.height, spec.width)),
        ]
    return v2.Compose([mode, *resize, v2.PILToTensor()])


def train_base_spec(spec: PreprocessSpec) -> PreprocessSpec:
    """What photo training keeps in memory per image: the central ``resize_shorter`` square.

    RandomResizedCrop then draws from that square every epoch, so 245 photos of up to
    12 MP cost 245 x 3 x 256 x 256 bytes (48 MB) instead of their full decodes; the edges
    beyond the square (a few percent of a 4:3 photo) are the price.
    """
    side = spec.resize_shorter or max(spec.height, spec.width)
    return dataclasses.replace(spec, height=side, width=side)


def normalize_transform(spec: PreprocessSpec) -> v2.Compose:
    """uint8 tensor (CHW or NCHW) -> float32 scaled to [0, 1] and normalized."""
    return v2.Compose(
        [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(spec.mean), std=list(spec.std))]
    )


def eval_transform(spec: PreprocessSpec) -> v2.Compose:
    """PIL image -> normalized CHW float tensor, exactly as the spec describes."""
    return v2.Compose([pixel_transform(spec), normalize_transform(spec)])


def random_crop_flip(
    batch: torch.Tensor, *, padding: int, hflip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Per-image random crop (zero padding) and horizontal flip on an NCHW batch.

    Written by hand because torchvision's v2.RandomCrop/RandomHorizontalFlip draw one
    set of parameters per call, i.e. per batch, and calling them per image (as a
    Dataset transform) capped training at ~4k images/s on two cores. Semantics match
    torchvision's: pad with zeros by ``padding`` on each side, crop back to the
    original size at a uniform offset, flip with probability 0.5.
    """
    n, _, height, width = batch.shape
    if padding > 0:
        padded = functional.pad(batch, (padding, padding, padding, padding))
        top = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        left = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        rows = (top[:, None] + torch.arange(height))[:, None, :, None]
        cols = (left[:, None] + torch.arange(width))[:, None, None, :]
        index = torch.arange(n)[:, None, None, None]
        channel = torch.arange(batch.shape[1])[None, :, None, None]
        batch = padded[index, channel, rows, cols]
    if hflip:
        flip = torch.rand(n, generator=generator) < 0.5
        batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
    return batch


def center_crops(images: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """The spec's evaluation pixels from a batch of ``train_base_spec`` squares: their
    central crop (the same as resizing the shorter side and centre-cropping, to a pixel)."""
    return v2.functional.center_crop(images, [spec.height, spec.width])


def random_resized_crop_flip(
    batch: torch.Tensor,
    *,
    size: tuple[int, int],
    interpolation: str,
    hflip: bool = True,
    scale: tuple[float, float] = (0.08, 1.0),
    policy: str = "none",
) -> torch.Tensor:
    """Per-image RandomResizedCrop (``scale`` of the area, torchvision's ratio) and flip, NCHW uint8,
    then ``policy`` (torchvision's TrivialAugmentWide or RandAugment) on each crop.

    Parameters come from torchvision's own ``RandomResizedCrop.get_params`` and policies,
    which draw from the global RNG that the training loop re-seeds every epoch.
    """
    mode = InterpolationMode(interpolation)
    # The policies' rotations and shears take nearest or bilinear on tensors (not bicubic).
    extra = _POLICIES[policy](interpolation=InterpolationMode.BILINEAR) if policy != "none" else None
    flips = torch.rand(len(batch)) < 0.5 if hflip else torch.zeros(len(batch), dtype=torch.bool)
    out = []
    for image, flip in zip(batch, flips, strict=True):
        top, left, height, width = RandomResizedCrop.get_params(image, list(scale), [3 / 4, 4 / 3])
        crop = v2.functional.resized_crop(
            image, top, left, height, width, list(size), interpolation=mode, antialias=True
        )
        crop = crop.flip(-1) if flip else crop
        out.append(extra(crop) if extra is not None else crop)
    return torch.stack(out)


_POLICIES = {"trivialaugment": v2.TrivialAugmentWide, "randaugment": v2.RandAugment}
