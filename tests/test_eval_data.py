"""Training, `evaluate`, `export` and `bench models` score one held-out split.

A ``folder:`` dataset's split depends on the run's ``val_fraction`` and ``seed``; a run
trained with other values than the defaults shows whether every consumer rebuilt the
run's split (the benchmark once used the defaults and scored other images).
"""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from benchmarks.inputs import load_test_images
from export.data import checkpoint_data, image_set
from slimserve.errors import SlimserveError
from slimserve.manifest import Manifest
from training.checkpoint import load_checkpoint
from training.config import TrainConfig
from training.datasets import load_data
from training.evaluate import evaluate_checkpoint
from training.train import train

IMAGES_PER_CLASS = 20
VAL_FRACTION = 0.3  # not the default 0.2
SEED = 7  # not the default 0
HELD_OUT = round(2 * IMAGES_PER_CLASS * VAL_FRACTION)


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real Fashion-MNIST images of two classes as a user's ``class/image.png`` folder,
    and an MLP trained on it for one epoch (about a second)."""
    root = tmp_path_factory.mktemp("folder")
    test = load_data("fashion-mnist").test
    counts = {0: 0, 1: 0}
    for image, label in test:
        if label in counts and counts[label] < IMAGES_PER_CLASS:
            (root / f"class{label}").mkdir(exist_ok=True)
            image.save(root / f"class{label}" / f"{counts[label]:02d}.png")
            counts[label] += 1
        if min(counts.values()) == IMAGES_PER_CLASS:
            break
    config = TrainConfig.from_recipe(
        "mlp",
        "fast",
        dataset=f"folder:{root}",
        epochs=1,
        image_size=28,
        channels=1,
        val_fraction=VAL_FRACTION,
        seed=SEED,
        device="cpu",
        arch_kwargs={"hidden": [16]},
    )
    run_dir = tmp_path_factory.mktemp("runs") / "folder-mlp"
    train(config, run_dir, console=Console(quiet=True))
    return run_dir


def _manifest(run_dir: Path, tmp_path: Path) -> Manifest:
    """What `bench models` reads of a bundle: its dataset, preprocessing and parent run."""
    meta = load_checkpoint(run_dir).metadata
    data = {"dataset": meta["dataset"], "preprocess": meta["preprocess"], "parent": {"run_dir": str(run_dir)}}
    return Manifest(data, tmp_path)


def _pixels(path: str) -> bytes:
    with Image.open(path) as image:
        return image.tobytes()


def test_folder_dataset_split_is_the_same_for_training_export_bench_and_evaluate(folder_run, tmp_path):
    checkpoint = load_checkpoint(folder_run)
    exported = image_set(checkpoint_data(checkpoint), checkpoint, "test", None, 0)
    assert len(exported) == HELD_OUT == checkpoint.metadata["metrics"]["test_images"]

    benched = load_test_images(_manifest(folder_run, tmp_path), HELD_OUT)
    assert np.array_equal(benched.images, exported.images) and np.array_equal(benched.labels, exported.labels)

    evaluation = evaluate_checkpoint(
        folder_run, plot_path=tmp_path / "confusion.png", console=Console(quiet=True)
    )
    assert int(evaluation.confusion.sum()) == HELD_OUT
    # Same images, same model: evaluate's accuracy is the one training recorded.
    assert evaluation.accuracy == pytest.approx(checkpoint.metadata["metrics"]["test_accuracy"])

    # The split really differs from the defaults' (what the benchmark used to score).
    defaults = load_data(checkpoint.metadata["dataset"], image_size=28, channels=1)
    held_out = {_pixels(path) for path in _split_paths(defaults.test)}
    ours = checkpoint_data(checkpoint).test
    assert {_pixels(path) for path in _split_paths(ours)} != held_out


def _split_paths(split) -> list[Path]:
    """The files of a split, whether a seeded Subset of one folder or a folder of its own."""
    if hasattr(split, "indices"):
        return [split.dataset.samples[i][0] for i in split.indices]
    return [path for path, _ in split.samples]


def test_bench_refuses_a_folder_split_it_cannot_rebuild(folder_run, tmp_path):
    manifest = _manifest(folder_run, tmp_path)
    manifest.data["parent"]["run_dir"] = str(tmp_path / "gone")
    with pytest.raises(SlimserveError, match="held-out split cannot be rebuilt"):
        load_test_images(manifest, HELD_OUT)
