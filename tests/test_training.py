"""Training stage: datasets, models, the loop, checkpoints, resume and evaluation, on real data."""

import json
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch
from rich.console import Console

from slimserve.errors import SlimserveError
from training.checkpoint import METADATA_FILE, WEIGHTS_FILE, load_checkpoint
from training.config import RECIPES, TrainConfig
from training.datasets import load_data
from training.models import MODELS, build_model
from training.tensors import materialize
from training.train import STATE_FILE, train
from training.transforms import eval_transform

QUIET = Console(quiet=True)


def test_fashion_mnist_loads_through_torchvision_with_its_spec():
    data = load_data("fashion-mnist")
    assert len(data.train) == 60_000 and len(data.test) == 10_000
    assert data.classes[0] == "T-shirt/top" and len(data.classes) == 10
    assert data.spec.input_shape == (1, 28, 28)
    image, label = data.test[0]
    tensor = eval_transform(data.spec)(image)
    assert tensor.shape == (1, 28, 28) and tensor.dtype == torch.float32
    # Normalized with the dataset's statistics: a real subset has mean ~0 and std ~1.
    sample = materialize(torch.utils.data.Subset(data.train, range(2000)), data.spec)
    normalized = (sample.images.float() / 255 - data.spec.mean[0]) / data.spec.std[0]
    assert abs(normalized.mean().item()) < 0.1 and abs(normalized.std().item() - 1) < 0.1
    assert 0 <= label < 10


def test_missing_fashion_mnist_is_one_line_naming_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMSERVE_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("SLIMSERVE_DATA_DIR", str(tmp_path / "cache"))
    with pytest.raises(SlimserveError) as error:
        load_data("fashion-mnist")
    message = str(error.value)
    assert "apt-get install -y dataset-fashion-mnist" in message and "\n" not in message


def test_corrupt_fashion_mnist_file_is_refused(tmp_path, monkeypatch):
    source = tmp_path / "fmnist"
    shutil.copytree("/usr/share/datasets/fashion-mnist", source)
    import gzip

    with gzip.open(source / "t10k-labels-idx1-ubyte.gz", "rb") as f:
        labels = bytearray(f.read())
    labels[-1] = (labels[-1] + 1) % 10
    with gzip.open(source / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes(labels))
    monkeypatch.setenv("SLIMSERVE_FASHION_MNIST_DIR", str(source))
    monkeypatch.setenv("SLIMSERVE_DATA_DIR", str(tmp_path / "cache"))
    with pytest.raises(SlimserveError, match="corrupt"):
        load_data("fashion-mnist")


def test_mnist_without_download_names_the_flag(tmp_path):
    with pytest.raises(SlimserveError, match="--download"):
        load_data("mnist", root=tmp_path)


def test_folder_dataset_with_validation_split(tmp_path):
    from PIL import Image

    for index, colour in enumerate(["red", "blue", "green"]):
        folder = tmp_path / "shapes" / f"class{index}"
        folder.mkdir(parents=True)
        for k in range(10):
            Image.new("RGBA" if k % 2 else "RGB", (40 + k, 36), colour).save(folder / f"{k}.png")
    data = load_data(f"folder:{tmp_path / 'shapes'}", image_size=16, channels=3, val_fraction=0.2, seed=1)
    assert data.classes == ("class0", "class1", "class2")
    assert len(data.train) + len(data.test) == 30 and len(data.test) == 6
    assert data.spec.input_shape == (3, 16, 16)
    assert all(s > 0 for s in data.spec.std)


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_model_shapes_gradients_and_tracing(arch, channels, size):
    torch.manual_seed(0)
    model = build_model(arch, in_channels=channels, num_classes=7, input_size=(size, size))
    images = torch.randn(4, channels, size, size)
    logits = model(images)
    assert logits.shape == (4, 7)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    no_grad = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"parameters without gradient: {no_grad}"
    model.eval()
    traced = torch.jit.trace(model, images)
    torch.testing.assert_close(traced(images), model(images))


def test_recipes_cover_every_registered_model():
    assert set(RECIPES) == set(MODELS)


def test_unknown_model_and_bad_arguments_are_user_errors():
    with pytest.raises(SlimserveError, match="unknown model"):
        build_model("vgg", in_channels=1, num_classes=10, input_size=(28, 28))
    with pytest.raises(SlimserveError, match="depth"):
        build_model("resnet", in_channels=1, num_classes=10, input_size=(28, 28), depth=21)
    with pytest.raises(SlimserveError, match="epochs"):
        TrainConfig.from_recipe("cnn", epochs=0)


def test_short_training_beats_chance_by_far(tiny_cnn_run):
    metadata = json.loads((tiny_cnn_run / METADATA_FILE).read_text())
    assert metadata["metrics"]["test_accuracy"] > 0.6  # chance is 0.1
    assert metadata["arch"] == "cnn" and metadata["dataset"] == "fashion-mnist"
    for key in ("seed", "train_config", "versions", "preprocess", "classes", "weights_sha256", "epochs"):
        assert key in metadata


def test_checkpoint_round_trip_gives_identical_outputs(tiny_cnn_run):
    images = torch.randn(8, 1, 28, 28)
    first = load_checkpoint(tiny_cnn_run)
    second = load_checkpoint(tiny_cnn_run)
    assert torch.equal(first.model(images), second.model(images))
    weights = safetensors.torch.load_file(str(tiny_cnn_run / WEIGHTS_FILE))
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, weights[name])


def test_tampered_weights_are_refused(tiny_cnn_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_cnn_run, run)
    weights = safetensors.torch.load_file(str(run / WEIGHTS_FILE))
    name = next(iter(weights))
    weights[name] = weights[name] + 1e-3
    safetensors.torch.save_file(weights, str(run / WEIGHTS_FILE))
    with pytest.raises(SlimserveError, match="sha256 mismatch"):
        load_checkpoint(run)


@pytest.mark.parametrize(
    "content,message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"schema_version": 1}', "missing arch"),
    ],
)
def test_malformed_metadata_is_refused(tiny_cnn_run, tmp_path, content, message):
    run = tmp_path / "run"
    shutil.copytree(tiny_cnn_run, run)
    (run / METADATA_FILE).write_text(content)
    with pytest.raises(SlimserveError, match=message):
        load_checkpoint(run)


def test_weights_file_name_cannot_escape_the_run_folder(tiny_cnn_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_cnn_run, run)
    metadata = json.loads((run / METADATA_FILE).read_text())
    metadata["weights_file"] = "../elsewhere.safetensors"
    (run / METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(SlimserveError, match="plain file name"):
        load_checkpoint(run)


def test_same_seed_gives_same_weights(tmp_path):
    config = TrainConfig.from_recipe("mlp", "fast", epochs=2, limit=600, arch_kwargs={"hidden": [32]})
    first = train(config, tmp_path / "first", console=QUIET)
    second = train(config, tmp_path / "second", console=QUIET)
    assert first.accuracy == second.accuracy
    a = safetensors.torch.load_file(str(tmp_path / "first" / WEIGHTS_FILE))
    b = safetensors.torch.load_file(str(tmp_path / "second" / WEIGHTS_FILE))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_continues_from_the_saved_epoch_and_matches_an_uninterrupted_run(tmp_path):
    config = TrainConfig.from_recipe(
        "cnn", "fast", epochs=2, limit=400, arch_kwargs={"widths": [8, 8], "hidden": 16}
    )
    train(config, tmp_path / "straight", console=QUIET)
    resumed = tmp_path / "resumed"
    _train_one_epoch_of_two(config, resumed)
    assert torch.load(resumed / STATE_FILE, weights_only=True)["epoch"] == 1
    train(config, resumed, resume=True, console=QUIET)
    straight_state = torch.load(tmp_path / "straight" / STATE_FILE, weights_only=True)
    resumed_state = torch.load(resumed / STATE_FILE, weights_only=True)
    assert resumed_state["epoch"] == 2 and len(resumed_state["history"]) == 2
    for name, tensor in straight_state["model"].items():
        assert torch.equal(tensor, resumed_state["model"][name]), name
    with pytest.raises(SlimserveError, match="already finished"):
        train(config, resumed, resume=True, console=QUIET)


def _train_one_epoch_of_two(config: TrainConfig, run_dir: Path) -> None:
    """Simulate an interruption: stop a 2-epoch run after its first epoch."""
    import training.train as loop

    original = loop._save_state
    calls = []

    def save_then_stop(run, state):
        original(run, state)
        calls.append(state["epoch"])
        raise KeyboardInterrupt

    loop._save_state = save_then_stop
    try:
        with pytest.raises(KeyboardInterrupt):
            train(config, run_dir, console=QUIET)
    finally:
        loop._save_state = original
    assert calls == [1]


def test_resume_without_state_and_overwrite_guard(tiny_cnn_run, tmp_path):
    with pytest.raises(SlimserveError, match="cannot resume"):
        train(TrainConfig(), tmp_path / "empty", resume=True, console=QUIET)
    with pytest.raises(SlimserveError, match="already holds a checkpoint"):
        train(TrainConfig.from_recipe("cnn", "fast", limit=100), tiny_cnn_run, console=QUIET)


def test_evaluate_writes_confusion_matrix(tiny_cnn_run, tmp_path):
    from training.evaluate import evaluate_checkpoint

    plot = tmp_path / "cm.png"
    result = evaluate_checkpoint(tiny_cnn_run, limit=500, plot_path=plot, console=QUIET)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert int(result.confusion.sum()) == 500
    assert result.accuracy == pytest.approx(result.confusion.diag().sum().item() / 500)
    assert set(result.per_class) == set(load_checkpoint(tiny_cnn_run).classes)
