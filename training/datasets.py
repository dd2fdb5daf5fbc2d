"""Datasets by name, each knowing its channels, size, classes and normalization.

Everything is loaded through torchvision's own dataset classes. Nothing downloads
unless the user passes ``download=True``; a missing dataset is a ``SlimserveError``
whose message names the fix.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision import datasets
from torchvision.datasets.utils import extract_archive

from slimserve.errors import SlimserveError
from slimserve.hashing import sha256_file
from slimserve.imaging import to_spec_mode
from slimserve.spec import PreprocessSpec

# Where Debian's `dataset-fashion-mnist` package puts the original IDX files.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FIX = "sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist"


def default_data_dir() -> Path:
    """Torchvision-layout cache: ``$SLIMSERVE_DATA_DIR`` or ``~/.cache/slimserve/data``."""
    return Path(os.environ.get("SLIMSERVE_DATA_DIR", Path.home() / ".cache/slimserve/data"))


def fashion_mnist_source_dir() -> Path:
    """Overridable so a user with the IDX files elsewhere (or a test) can point at them."""
    return Path(os.environ.get("SLIMSERVE_FASHION_MNIST_DIR", DEBIAN_FASHION_MNIST_DIR))


@dataclass(frozen=True)
class LoadedData:
    """Train and test splits plus what a checkpoint must record about them."""

    name: str
    train: Dataset
    test: Dataset
    classes: tuple[str, ...]
    spec: PreprocessSpec
    hflip: bool  # horizontal flips preserve the label (clothes yes, digits no)
    crop_padding: int  # padding for random-crop augmentation, 0 disables it


def limit_dataset(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    """A seeded random subset, so quick runs still see every class."""
    if limit is None or limit >= len(dataset):  # type: ignore[arg-type]
        return dataset
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(dataset), generator=generator)[:limit]  # type: ignore[arg-type]
    return Subset(dataset, indices.tolist())


# sha256 of the decompressed IDX files. torchvision's md5 list is for the original .gz
# archives; Debian recompressed them (same content, different gzip headers), so the check
# is on the content instead.
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


def _stage_fashion_mnist(root: Path) -> None:
    """Put Debian's files where torchvision's FashionMNIST class looks for them, verified.

    torchvision would download and unpack these archives itself; here there is no
    internet, so its class is fed the same archives from the system package, unpacked
    with torchvision's own extractor and checked against known content hashes.
    """
    raw = root / "FashionMNIST" / "raw"
    if all((raw / name).exists() for name in FASHION_MNIST_SHA256):
        return
    source = fashion_mnist_source_dir()
    partial = raw / ".partial"
    partial.mkdir(parents=True, exist_ok=True)
    for name, digest in FASHION_MNIST_SHA256.items():
        archive = source / f"{name}.gz"
        if not archive.exists():
            raise SlimserveError(
                f"Fashion-MNIST not found: {archive} is missing; install it with: {FASHION_MNIST_FIX}"
            )
        unpacked = Path(extract_archive(str(archive), str(partial)))
        if sha256_file(unpacked) != digest:
            unpacked.unlink()
            raise SlimserveError(
                f"Fashion-MNIST file {archive} is corrupt (content hash mismatch); reinstall it "
                "with: sudo apt-get install --reinstall dataset-fashion-mnist"
            )
        unpacked.replace(raw / name)
    partial.rmdir()


def _torchvision_split(cls: type, root: Path, name: str, download: bool) -> Callable[[bool], Dataset]:
    def load(train: bool) -> Dataset:
        try:
            return cls(root=str(root), train=train, download=download)
        except RuntimeError as exc:
            if download:
                raise SlimserveError(f"{name}: download failed ({exc})") from None
            raise SlimserveError(
                f"{name} not found under {root}; run again with --download on a machine "
                "with internet (or set SLIMSERVE_DATA_DIR to where it is)"
            ) from None

    return load


def _load_fashion_mnist(root: Path, download: bool) -> LoadedData:
    # --download is accepted for symmetry but never needed: the Debian package is the source.
    _stage_fashion_mnist(root)
    load = _torchvision_split(datasets.FashionMNIST, root, "fashion-mnist", download=False)
    return LoadedData(
        name="fashion-mnist",
        train=load(True),
        test=load(False),
        classes=tuple(datasets.FashionMNIST.classes),
        spec=PreprocessSpec(28, 28, 1, mean=(0.2860,), std=(0.3530,)),
        hflip=True,
        crop_padding=2,
    )


def _load_mnist(root: Path, download: bool) -> LoadedData:
    load = _torchvision_split(datasets.MNIST, root, "mnist", download)
    return LoadedData(
        name="mnist",
        train=load(True),
        test=load(False),
        classes=tuple(datasets.MNIST.classes),
        spec=PreprocessSpec(28, 28, 1, mean=(0.1307,), std=(0.3081,)),
        hflip=False,
        crop_padding=2,
    )


def _load_cifar10(root: Path, download: bool) -> LoadedData:
    load = _torchvision_split(datasets.CIFAR10, root, "cifar10", download)
    train = load(True)
    return LoadedData(
        name="cifar10",
        train=train,
        test=load(False),
        classes=tuple(train.classes),  # type: ignore[attr-defined]
        spec=PreprocessSpec(32, 32, 3, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
        hflip=True,
        crop_padding=4,
    )


def _channel_stats(dataset: Dataset, size: int, channels: int, max_images: int = 2000) -> tuple:
    """Per-channel mean/std of a user's images after resize, so normalization fits them."""
    from training.transforms import eval_transform

    identity = PreprocessSpec(size, size, channels, (0.0,) * channels, (1.0,) * channels)
    to_tensor = eval_transform(identity)
    count = min(len(dataset), max_images)  # type: ignore[arg-type]
    pixels = []
    for index in range(count):
        image, _ = dataset[index]
        pixels.append(to_tensor(image).reshape(channels, -1))
    stacked = torch.cat(pixels, dim=1)
    mean = tuple(round(v, 4) for v in stacked.mean(dim=1).tolist())
    std = tuple(round(max(v, 1e-3), 4) for v in stacked.std(dim=1).tolist())
    return mean, std


def _load_folder(path: Path, image_size: int, channels: int, val_fraction: float, seed: int):
    """A user's ``class_name/image`` tree; uses ``train/`` and ``val/`` (or ``test/``) if present."""
    if not path.is_dir():
        raise SlimserveError(f"folder dataset: {path} is not a directory")
    # The service's colour handling (EXIF, alpha, palette), so training sees what serving sees.
    mode_spec = PreprocessSpec(image_size, image_size, channels, (0.0,) * channels, (1.0,) * channels)

    def loader(file: str) -> Image.Image:
        with Image.open(file) as image:
            return to_spec_mode(image, mode_spec)

    splits = {name: path / name for name in ("train", "val", "test") if (path / name).is_dir()}
    try:
        if "train" in splits and ("val" in splits or "test" in splits):
            train = datasets.ImageFolder(str(splits["train"]), loader=loader)
            test = datasets.ImageFolder(str(splits.get("val", splits.get("test"))), loader=loader)
            if test.classes != train.classes:
                raise SlimserveError(
                    f"folder dataset: train and validation class folders differ under {path}"
                )
        else:
            full = datasets.ImageFolder(str(path), loader=loader)
            generator = torch.Generator().manual_seed(seed)
            order = torch.randperm(len(full), generator=generator).tolist()
            n_val = max(1, round(len(full) * val_fraction))
            train, test = Subset(full, order[n_val:]), Subset(full, order[:n_val])
            train.classes = full.classes  # type: ignore[attr-defined]
    except (FileNotFoundError, OSError) as exc:
        raise SlimserveError(f"folder dataset {path}: {exc}") from None
    classes = tuple(train.classes)  # type: ignore[attr-defined]
    if len(classes) < 2:
        raise SlimserveError(f"folder dataset {path}: need at least two class folders")
    mean, std = _channel_stats(train, image_size, channels)
    return LoadedData(
        name=f"folder:{path}",
        train=train,
        test=test,
        classes=classes,
        spec=PreprocessSpec(image_size, image_size, channels, mean=mean, std=std),
        hflip=True,
        crop_padding=max(1, image_size // 8),
    )


DATASETS = ("fashion-mnist", "mnist", "cifar10", "folder:PATH")


def load_data(
    name: str,
    *,
    root: Path | None = None,
    download: bool = False,
    image_size: int = 32,
    channels: int = 3,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> LoadedData:
    """Load a dataset by name: ``fashion-mnist``, ``mnist``, ``cifar10`` or ``folder:PATH``."""
    root = root or default_data_dir()
    loaders = {"fashion-mnist": _load_fashion_mnist, "mnist": _load_mnist, "cifar10": _load_cifar10}
    if name in loaders:
        return loaders[name](root, download)
    if name.startswith("folder:") and len(name) > len("folder:"):
        return _load_folder(Path(name[len("folder:") :]), image_size, channels, val_fraction, seed)
    raise SlimserveError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
