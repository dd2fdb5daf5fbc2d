"""``--head-init``: the new head starts from the pretrained classifier's rows for the dataset's
classes, found by name, WordNet id or index; anything it cannot place is one clear error."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from slimserve.errors import SlimserveError
from slimserve.spec import PreprocessSpec
from training import backbones, pretrained
from training.config import TrainConfig
from training.head_init import LabelSet, resolve
from training.transfer import describe, with_new_head
from training.transforms import eval_transform

HYMENOPTERA = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "hymenoptera"
ANT, BEE = 310, 309


@pytest.fixture(scope="module")
def imagenet() -> LabelSet:
    return LabelSet.for_head(1000)


@pytest.mark.parametrize(
    ("value", "classes", "rows"),
    [
        ("auto", ["ants", "bees"], [ANT, BEE]),  # plural folder names
        ("auto", ["Golden_Retriever", "tabby"], [207, 281]),  # case, underscores, a second synonym
        ("ants=emmet,bees=bee", ["ants", "bees"], [ANT, BEE]),
        ("bees=n02206856,ants=310", ["ants", "bees"], [ANT, BEE]),  # WordNet id, index; any order
    ],
)
def test_classes_find_their_imagenet_rows(imagenet, value, classes, rows):
    assert resolve(value, classes, imagenet) == rows


@pytest.mark.parametrize(
    ("value", "classes", "message"),
    [
        ("auto", ["ants", "my-dog-rex"], "my-dog-rex: no label"),
        ("auto", ["crane", "ants"], "crane: ambiguous, rows 134, 517"),
        ("ants=ant", ["ants", "bees"], "bees: no label"),  # every class needs a row
        ("ants=ant,wasps=bee", ["ants", "bees"], "names wasps, not classes of this dataset"),
        ("ants=ant,bees=emmet", ["ants", "bees"], "two classes map to the same row"),
        ("ants=1000,bees=bee", ["ants", "bees"], "ants: no label"),  # past the last row
        ("ants=ant,ants=bee", ["ants", "bees"], "a class is named twice"),
    ],
)
def test_what_cannot_be_placed_is_one_error_naming_the_fix(imagenet, value, classes, message):
    with pytest.raises(SlimserveError, match=message) as error:
        resolve(value, classes, imagenet)
    text = str(error.value)  # names the fix: the form to write, or the classes there are
    assert "\n" not in text and (
        "e.g. --head-init " in text or "classes of this dataset (ants, bees)" in text
    )


def test_a_head_without_known_labels_takes_indices_only():
    labels = LabelSet.for_head(5)
    assert resolve("a=4,b=0", ["a", "b"], labels) == [4, 0]
    with pytest.raises(SlimserveError, match="this head takes row indices"):
        resolve("auto", ["a", "b"], labels)


def test_the_option_is_checked_before_anything_loads():
    with pytest.raises(SlimserveError, match="write 'new', 'auto' or CLASS=LABEL pairs"):
        TrainConfig.from_recipe("tf_efficientnet_lite0", "transfer", weights="imagenet", head_init="ants")
    with pytest.raises(SlimserveError, match=r"--head-init starts the head .* needs --weights"):
        TrainConfig.from_recipe("tf_efficientnet_lite0", "fast", head_init="auto")


def test_with_pretrained_rows_the_transfer_recipe_skips_the_probe_unless_asked():
    base = {"weights": "imagenet", "dataset": f"folder:{HYMENOPTERA}"}
    assert TrainConfig.from_recipe("tf_efficientnet_lite0", "transfer", **base).probe_epochs == 30
    auto = TrainConfig.from_recipe("tf_efficientnet_lite0", "transfer", head_init="auto", **base)
    assert auto.probe_epochs == 0
    assert "head from the pretrained rows (auto)" in describe(auto) and "probed" not in describe(auto)
    asked = TrainConfig.from_recipe(
        "tf_efficientnet_lite0", "transfer", head_init="auto", probe_epochs=5, **base
    )
    assert asked.probe_epochs == 5


def test_the_new_head_is_imagenets_ant_and_bee_rows_and_answers_before_training():
    model, weights = pretrained.load_pretrained("tf_efficientnet_lite0", "imagenet")
    old = backbones.get_head(model)
    old_weight, old_bias = old.weight.detach().clone(), old.bias.detach().clone()
    model, rows = with_new_head(model, ["ants", "bees"], seed=0, head_init="auto")
    head = backbones.get_head(model)
    assert head.weight.shape == (2, old_weight.shape[1])
    assert torch.equal(head.weight, old_weight[[ANT, BEE]]) and torch.equal(head.bias, old_bias[[ANT, BEE]])
    assert rows == {"ants": "310: ant, emmet, pismire", "bees": "309: bee"}
    spec = PreprocessSpec(224, 224, 3, weights.mean, weights.std, weights.interpolation, resize_shorter=256)
    photos = (
        sorted((HYMENOPTERA / "val" / "ants").glob("*.jpg"))[:4]
        + sorted((HYMENOPTERA / "val" / "bees").glob("*.jpg"))[:4]
    )
    with torch.inference_mode():
        batch = torch.stack([eval_transform(spec)(Image.open(p).convert("RGB")) for p in photos])
        answers = model.eval()(batch).argmax(dim=1).tolist()
    assert sum(a == want for a, want in zip(answers, [0] * 4 + [1] * 4, strict=True)) >= 7, answers


@pytest.mark.slow
def test_the_cli_refuses_an_unplaceable_class_in_one_line(tmp_path):
    for name in ("ants", "wasps"):  # wasps are not an ImageNet class
        (tmp_path / "photos" / name).mkdir(parents=True)
        for photo in sorted((HYMENOPTERA / "train" / "ants").glob("*.jpg"))[:5]:
            (tmp_path / "photos" / name / photo.name).symlink_to(photo)
    result = subprocess.run(
        [sys.executable, "-m", "commands.main", "train", "--model", "tf_efficientnet_lite0",
         "--weights", "imagenet", "--dataset", f"folder:{tmp_path / 'photos'}", "--recipe", "transfer",
         "--head-init", "auto", "--image-size", "64", "--resize-shorter", "72", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "wasps: no label" in lines[0] and "Traceback" not in result.stderr, (
        result.stderr
    )
    assert not (tmp_path / "run" / "metadata.json").exists()


@pytest.mark.slow
def test_metadata_records_where_the_head_started(tmp_path):
    from rich.console import Console

    from training.train import train

    config = TrainConfig.from_recipe(
        "tf_efficientnet_lite0", "transfer", weights="imagenet", dataset=f"folder:{HYMENOPTERA}",
        head_init="ants=ant,bees=bee", epochs=1, limit=16, batch_size=8, image_size=64, resize_shorter=72,
        threads=2,
    )  # fmt: skip
    train(config, tmp_path / "run", console=Console(quiet=True))
    transfer = json.loads((tmp_path / "run" / "metadata.json").read_text())["transfer"]
    assert transfer["head_init"] == "ants=ant,bees=bee" and transfer["probe_epochs"] == 0
    assert transfer["head_rows"] == {"ants": "310: ant, emmet, pismire", "bees": "309: bee"}
