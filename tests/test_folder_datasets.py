"""Folder datasets as people lay them out: split folders, one folder + fraction, junk files."""

import shutil
from pathlib import Path

import pytest
from PIL import Image

from slimserve.errors import SlimserveError
from training.config import TrainConfig
from training.datasets import PhotoFolder, dataset_slug, load_data
from training.train import _default_run_dir

HYMENOPTERA = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "hymenoptera"
LARGEST = (
    "ants-devouring-remains-of-large-dead-insect-on-red-tile-in-Stellenbosch-South-Africa-closeup-1-DHD.jpg"
)


def _copy_photos(target: Path, split: str, per_class: int) -> None:
    """Real photos, ``per_class`` of each class, into ``target/CLASS``."""
    for name in ("ants", "bees"):
        (target / name).mkdir(parents=True, exist_ok=True)
        for photo in sorted((HYMENOPTERA / split / name).glob("*.jpg"))[:per_class]:
            shutil.copy(photo, target / name / photo.name)


def _load(path: Path, **kwargs):
    return load_data(
        f"folder:{path}", image_size=64, resize_shorter=72, mean_std=((0.5,) * 3, (0.5,) * 3), **kwargs
    )


@pytest.mark.parametrize("held_out", ["val", "test"])
def test_train_plus_val_or_test_folders(tmp_path, held_out):
    _copy_photos(tmp_path / "photos" / "train", "train", 4)
    _copy_photos(tmp_path / "photos" / held_out, "val", 3)
    data = _load(tmp_path / "photos")
    assert data.classes == ("ants", "bees")
    assert (len(data.train), len(data.test)) == (8, 6)
    assert data.skipped == ()
    image, label = data.test[5]
    assert label == 1 and image.mode == "RGB"


def test_one_folder_split_by_fraction(tmp_path):
    _copy_photos(tmp_path / "flat", "train", 10)
    data = _load(tmp_path / "flat", val_fraction=0.25, seed=3)
    assert (len(data.train), len(data.test)) == (15, 5)
    train_files = {path for path, _ in data.train.samples}
    assert not train_files & {path for path, _ in data.test.samples}
    again = _load(tmp_path / "flat", val_fraction=0.25, seed=3)
    assert [p for p, _ in again.test.samples] == [p for p, _ in data.test.samples]  # seeded


def test_stray_text_file_and_corrupt_jpeg_are_listed_and_skipped(tmp_path):
    root = tmp_path / "photos"
    _copy_photos(root / "train", "train", 3)
    _copy_photos(root / "val", "val", 2)
    (root / "train" / "ants" / "notes.txt").write_text("shot on my phone")
    good = next((root / "train" / "bees").glob("*.jpg")).read_bytes()
    (root / "train" / "bees" / "broken.jpg").write_bytes(good[: len(good) // 3])  # truncated
    (root / "val" / "ants" / "fake.jpg").write_bytes(b"this is not a jpeg")
    data = _load(root)
    assert (len(data.train), len(data.test)) == (6, 4)
    reasons = {Path(line.split(": ")[0]).name: line for line in data.skipped}
    assert set(reasons) == {"notes.txt", "broken.jpg", "fake.jpg"}
    assert "not an image file" in reasons["notes.txt"] and "unreadable" in reasons["broken.jpg"]
    for index in range(len(data.train)):  # every kept image decodes
        data.train[index][0].load()


def test_class_with_too_few_images_is_refused(tmp_path):
    root = tmp_path / "photos"
    _copy_photos(root / "train", "train", 3)
    _copy_photos(root / "val", "val", 2)
    for photo in list((root / "train" / "bees").glob("*.jpg"))[1:]:
        photo.unlink()
    with pytest.raises(SlimserveError, match=r"fewer than 2 readable images: bees \(1\)"):
        _load(root)


def test_val_classes_must_match_train(tmp_path):
    root = tmp_path / "photos"
    _copy_photos(root / "train", "train", 3)
    _copy_photos(root / "val", "val", 2)
    shutil.rmtree(root / "val" / "bees")
    with pytest.raises(SlimserveError, match="differ"):
        _load(root)


def test_large_photos_decode_reduced_and_lazily(tmp_path):
    """The dataset holds file names; a 2592x1944 JPEG is decoded at 1/8 scale (324x243), the
    smallest libjpeg scale that keeps the shorter side >= 72 (what the spec resizes to)."""
    data = _load(HYMENOPTERA)
    assert isinstance(data.train, PhotoFolder) and len(data.train) == 244 and len(data.test) == 153
    index = next(i for i, (path, _) in enumerate(data.test.samples) if path.name == LARGEST)
    image, _ = data.test[index]
    assert image.size == (324, 243)
    assert [Path(line.split(": ")[0]).name for line in data.skipped] == ["imageNotFound.gif"]  # not a photo
    with Image.open(HYMENOPTERA / "val" / "ants" / LARGEST) as full:
        assert full.size == (2592, 1944)


def test_run_names_come_from_the_folder_name():
    assert dataset_slug("folder:/data/photos") == "photos"
    assert dataset_slug("folder:/data/photos/") == "photos"
    assert dataset_slug("fashion-mnist") == "fashion-mnist"
    config = TrainConfig.from_recipe("timm:tf_efficientnet_lite0", "fast", dataset="folder:/data/photos")
    assert _default_run_dir(config) == Path("runs/tf_efficientnet_lite0-photos")
