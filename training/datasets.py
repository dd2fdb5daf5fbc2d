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
from slimserve.imaging import draft_for, to_spec_mode
from slimserve.naming import dataset_slug
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
    skipped: tuple[str, ...] = ()  # "path: reason" for files a folder dataset could not use

    @property
    def slug(self) -> str:
        return dataset_slug(self.name)


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


# Fewer than this many readable images of a class in the training split is refused: a
# class seen once or never cannot be learned, and a silent near-empty class only shows
# up later as a confusing accuracy.
MIN_TRAIN_IMAGES_PER_CLASS = 2
STATS_MAX_IMAGES = 256


def _channel_stats(dataset: Dataset, spec: PreprocessSpec) -> tuple:
    """Per-channel mean/std of a user's images after resize (and crop), so normalization fits them."""
    from training.transforms import pixel_transform

    to_pixels = pixel_transform(spec)
    count = min(len(dataset), STATS_MAX_IMAGES)  # type: ignore[arg-type]
    pixels = [to_pixels(dataset[index][0]).reshape(spec.channels, -1).float() / 255 for index in range(count)]
    stacked = torch.cat(pixels, dim=1)
    mean = tuple(round(v, 4) for v in stacked.mean(dim=1).tolist())
    std = tuple(round(max(v, 1e-3), 4) for v in stacked.std(dim=1).tolist())
    return mean, std


class PhotoFolder(Dataset):
    """Listed image files, decoded only when indexed (reduced-size JPEG decode via the spec).

    Holding 398 decoded 5 MP photos would take ~6 GB; this holds file names.
    """

    def __init__(
        self, samples: list[tuple[Path, int]], classes: tuple[str, ...], spec: PreprocessSpec
    ) -> None:
        self.samples = samples
        self.classes = classes
        self.spec = spec

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        with Image.open(path) as image:
            return to_spec_mode(draft_for(image, self.spec), self.spec), label


def _readable(path: Path) -> str | None:
    """None if Pillow can decode the file (at 1/8 scale, cheaply); else why not."""
    try:
        with Image.open(path) as image:
            image.draft(image.mode, (1, 1))
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return f"unreadable ({str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__})"
    return None


def scan_folder(root: Path, classes: tuple[str, ...] | None = None):
    """``(samples, classes, skipped)`` of a ``class_name/image`` tree.

    Files without an image extension and images Pillow cannot decode are skipped and
    returned as ``"path: reason"`` lines, never a crash mid-training.
    """
    found = tuple(sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")))
    classes = classes or found
    if found != classes:
        raise SlimserveError(
            f"folder dataset: class folders of {root} ({', '.join(found)}) differ from training's ({', '.join(classes)})"
        )
    samples: list[tuple[Path, int]] = []
    skipped: list[str] = []
    for label, name in enumerate(classes):
        for file in sorted((root / name).rglob("*")):
            if not file.is_file() or file.name.startswith("."):
                continue
            if file.suffix.lower() not in datasets.folder.IMG_EXTENSIONS:
                skipped.append(f"{file}: not an image file")
            elif (reason := _readable(file)) is not None:
                skipped.append(f"{file}: {reason}")
            else:
                samples.append((file, label))
    return samples, classes, skipped


def _check_counts(
    samples: list[tuple[Path, int]], classes: tuple[str, ...], root: Path, minimum: int
) -> None:
    counts = torch.bincount(
        torch.tensor([label for _, label in samples], dtype=torch.int64), minlength=len(classes)
    )
    few = [f"{classes[i]} ({int(c)})" for i, c in enumerate(counts) if c < minimum]
    if few:
        raise SlimserveError(
            f"folder dataset {root}: class folders with fewer than {minimum} readable images: {', '.join(few)}; "
            "add images or remove the folder"
        )


def _load_folder(
    path: Path,
    image_size: int,
    channels: int,
    val_fraction: float,
    seed: int,
    resize_shorter: int | None,
    mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None,
    interpolation: str,
) -> LoadedData:
    """A user's ``class_name/image`` tree; uses ``train/`` and ``val/`` (or ``test/``) if present."""
    if not path.is_dir():
        raise SlimserveError(f"folder dataset: {path} is not a directory")
    # The service's colour handling (EXIF, alpha, palette, CMYK) and reduced JPEG decode,
    # so training sees what serving sees.
    identity = ((0.0,) * channels, (1.0,) * channels)
    mode_spec = PreprocessSpec(
        image_size,
        image_size,
        channels,
        *identity,
        interpolation=interpolation,
        resize_shorter=resize_shorter,
    )
    held_out = next((path / n for n in ("val", "test") if (path / n).is_dir()), None)
    if (path / "train").is_dir() and held_out is not None:
        train_samples, classes, skipped = scan_folder(path / "train")
        test_samples, _, skipped_test = scan_folder(held_out, classes)
        skipped += skipped_test
        _check_counts(train_samples, classes, path / "train", MIN_TRAIN_IMAGES_PER_CLASS)
        _check_counts(test_samples, classes, held_out, 1)
    else:
        samples, classes, skipped = scan_folder(path)
        _check_counts(samples, classes, path, MIN_TRAIN_IMAGES_PER_CLASS + 1)
        order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).tolist()
        n_val = max(1, round(len(samples) * val_fraction))
        train_samples = [samples[i] for i in order[n_val:]]
        test_samples = [samples[i] for i in order[:n_val]]
    if len(classes) < 2:
        raise SlimserveError(f"folder dataset {path}: need at least two class folders")
    train = PhotoFolder(train_samples, classes, mode_spec)
    mean, std = mean_std or _channel_stats(train, mode_spec)
    return LoadedData(
        name=f"folder:{path}",
        train=train,
        test=PhotoFolder(test_samples, classes, mode_spec),
        classes=classes,
        spec=PreprocessSpec(
            image_size,
            image_size,
            channels,
            mean=mean,
            std=std,
            interpolation=interpolation,
            resize_shorter=resize_shorter,
        ),
        hflip=True,
        crop_padding=max(1, image_size // 8),
        skipped=tuple(skipped),
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
    resize_shorter: int | None = None,
    mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    interpolation: str = "bilinear",
) -> LoadedData:
    """Load a dataset by name: ``fashion-mnist``, ``mnist``, ``cifar10`` or ``folder:PATH``.

    The last three arguments shape a folder dataset's spec: ``resize_shorter`` turns on
    resize + center crop; ``mean_std`` (pretrained weights' statistics) replaces the
    statistics measured on the folder's images.
    """
    root = root or default_data_dir()
    loaders = {"fashion-mnist": _load_fashion_mnist, "mnist": _load_mnist, "cifar10": _load_cifar10}
    if name in loaders:
        return loaders[name](root, download)
    if name.startswith("folder:") and len(name) > len("folder:"):
        return _load_folder(
            Path(name[len("folder:") :]),
            image_size,
            channels,
            val_fraction,
            seed,
            resize_shorter,
            mean_std,
            interpolation,
        )
    raise SlimserveError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")


def load_data_for_spec(name: str, spec: PreprocessSpec, *, val_fraction: float, seed: int) -> LoadedData:
    """A checkpoint's dataset decoded for its spec (size, crop, filter, normalization), so a
    folder dataset is read exactly as it was in training (same reduced JPEG decode, no
    statistics recomputed)."""
    return load_data(
        name,
        image_size=spec.height,
        channels=spec.channels,
        val_fraction=val_fraction,
        seed=seed,
        resize_shorter=spec.resize_shorter,
        mean_std=(spec.mean, spec.std),
        interpolation=spec.interpolation,
    )
