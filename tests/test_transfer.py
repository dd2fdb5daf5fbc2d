"""LP-FT on real photos: the probe trains only the head, the fine-tune then moves the
backbone while BatchNorm keeps ImageNet's running statistics; the EMA / WiSE-FT weights
are what the checkpoint holds."""

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

import training.train as loop
from slimserve.errors import SlimserveError
from training import backbones
from training.averaging import interpolate
from training.checkpoint import METADATA_FILE, load_checkpoint
from training.config import TrainConfig
from training.datasets import limit_dataset, load_data
from training.pretrained import load_pretrained
from training.tensors import materialize
from training.train import STATE_FILE, train
from training.transfer import linear_probe, with_new_head
from training.transforms import normalize_transform, random_resized_crop_flip

HYMENOPTERA = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "hymenoptera"
SMALL = {"limit": 16, "batch_size": 8, "image_size": 96, "resize_shorter": 110, "threads": 2}


def _config(**overrides) -> TrainConfig:
    return TrainConfig.from_recipe(
        "tf_efficientnet_lite0",
        "transfer",
        weights="imagenet",
        dataset=f"folder:{HYMENOPTERA}",
        **SMALL,
        **overrides,
    )


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_the_transfer_recipe_is_lp_ft_with_frozen_batchnorm():
    config = _config()
    assert config.freeze == "none" and config.probe_epochs > 0 and config.freeze_bn
    assert (config.ema_decay, config.wise_alpha) == (0.0, 1.0)  # measured, not better on average
    frozen = _config(freeze="backbone")
    assert frozen.probe_epochs == 0 and not frozen.augment


@pytest.mark.slow
def test_the_probe_trains_the_head_and_leaves_the_backbone_bit_for_bit():
    config = _config(probe_epochs=5)
    model, weights = load_pretrained(config.model, "imagenet")
    data = load_data(
        config.dataset, image_size=96, channels=3, val_fraction=0.2, seed=0, resize_shorter=110,
        mean_std=(weights.mean, weights.std), interpolation=weights.interpolation, download=False,
    )  # fmt: skip
    model, rows = with_new_head(model, list(data.classes), seed=0)
    assert rows is None  # a fresh head
    before = _snapshot(model)
    photos = materialize(limit_dataset(data.train, 16, 0), data.spec)
    linear_probe(model, photos, normalize_transform(data.spec), torch.device("cpu"), config)
    after = model.state_dict()
    head = {f"classifier.{name}" for name, _ in backbones.get_head(model).named_parameters()}
    assert head == {"classifier.weight", "classifier.bias"}
    assert not torch.equal(after["classifier.weight"], before["classifier.weight"])
    assert all(torch.equal(after[k], before[k]) for k in before if k not in head)


@pytest.mark.slow
def test_interpolation_is_a_weighted_mean_of_floats_and_keeps_counters():
    start = {"w": torch.zeros(3), "n": torch.tensor(5)}
    end = {"w": torch.full((3,), 4.0), "n": torch.tensor(7)}
    mixed = interpolate(start, end, 0.25)
    assert torch.equal(mixed["w"], torch.ones(3)) and mixed["n"].item() == 7


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"freeze": "backbone", "ema_decay": 0.9}, "--ema-decay averages a full fine-tune"),
        ({"probe_epochs": 0, "wise_alpha": 0.5}, "--wise-alpha interpolates toward the probed weights"),
        ({"ema_decay": 1.0}, r"--ema-decay must be in \[0, 1\)"),
    ],
)
def test_averaging_options_are_refused_where_they_cannot_apply(overrides, message):
    with pytest.raises(SlimserveError, match=message):
        _config(**overrides)


def _averaged_run(config: TrainConfig, run_dir: Path, stop_after_first_epoch: bool = False) -> None:
    """Train; with ``stop_after_first_epoch`` simulate an interruption, then ``--resume``."""
    if not stop_after_first_epoch:
        train(config, run_dir, console=Console(quiet=True))
        return
    original = loop._save_state

    def save_then_stop(run, state):
        original(run, state)
        raise KeyboardInterrupt

    loop._save_state = save_then_stop
    try:
        with pytest.raises(KeyboardInterrupt):
            train(config, run_dir, console=Console(quiet=True))
    finally:
        loop._save_state = original
    train(config, run_dir, resume=True, console=Console(quiet=True))


@pytest.mark.slow
def test_the_checkpoint_holds_the_ema_interpolated_toward_the_probe_and_resume_keeps_it(tmp_path):
    """16 photos at 96 px, probe then two fine-tune epochs, straight and resumed (~1 min on 2 cores)."""
    config = _config(epochs=2, probe_epochs=3, ema_decay=0.5, wise_alpha=0.5)
    _averaged_run(config, tmp_path / "straight")
    state = torch.load(tmp_path / "straight" / STATE_FILE, weights_only=True)
    raw, anchor = state["model"], state["averaging"]["anchor"]
    ema = {
        k.removeprefix("module."): v for k, v in state["averaging"]["ema"].items() if k.startswith("module.")
    }
    saved = load_checkpoint(tmp_path / "straight").model.state_dict()
    convolutions = [k for k in raw if k.endswith("weight") and raw[k].ndim == 4]
    assert all(not torch.equal(ema[k], raw[k]) for k in convolutions)  # the EMA lags the raw weights
    expected = interpolate(anchor, ema, 0.5)
    assert all(torch.equal(saved[k], expected[k]) for k in raw)
    assert all(not torch.equal(saved[k], raw[k]) for k in convolutions)
    metadata = json.loads((tmp_path / "straight" / METADATA_FILE).read_text())
    assert (metadata["transfer"]["ema_decay"], metadata["transfer"]["wise_alpha"]) == (0.5, 0.5)

    _averaged_run(config, tmp_path / "resumed", stop_after_first_epoch=True)
    resumed = load_checkpoint(tmp_path / "resumed").model.state_dict()
    assert all(torch.equal(resumed[k], saved[k]) for k in saved)


@pytest.mark.slow
def test_fine_tuning_moves_the_backbone_but_not_batchnorm_statistics(tmp_path):
    """16 photos at 96 px, probe then one fine-tune epoch (~20 s on 2 cores)."""
    result = train(_config(epochs=1, probe_epochs=3), tmp_path / "run", console=Console(quiet=True))
    assert result.epochs == 1
    metadata = json.loads((tmp_path / "run" / METADATA_FILE).read_text())
    assert metadata["transfer"] == {
        "freeze": "none",
        "backbone_lr_scale": 0.1,
        "probe_epochs": 3,
        "freeze_bn": True,
        "ema_decay": 0.0,
        "wise_alpha": 1.0,
        "head_init": "new",
        "head_rows": None,
    }
    tuned = load_checkpoint(tmp_path / "run").model.state_dict()
    original = load_pretrained("tf_efficientnet_lite0", "imagenet")[0].state_dict()
    statistics = [k for k in original if k.endswith(("running_mean", "running_var"))]
    convolutions = [k for k in original if k.endswith("weight") and original[k].ndim == 4]
    assert statistics and convolutions
    assert all(torch.equal(tuned[k], original[k]) for k in statistics)
    assert sum(not torch.equal(tuned[k], original[k]) for k in convolutions) == len(convolutions)


def test_the_augment_policy_changes_each_crop_reproducibly_and_unknown_ones_are_refused():
    data = load_data(f"folder:{HYMENOPTERA}", image_size=96, channels=3, resize_shorter=110)
    photos = materialize(limit_dataset(data.train, 4, 0), data.spec).images

    def crops(policy: str) -> torch.Tensor:
        torch.manual_seed(0)  # the training loop re-seeds the global RNG every epoch
        return random_resized_crop_flip(photos, size=(96, 96), interpolation="bicubic", policy=policy)

    plain, trivial = crops("none"), crops("trivialaugment")
    assert trivial.shape == plain.shape == (4, 3, 96, 96) and trivial.dtype == torch.uint8
    assert torch.equal(trivial, crops("trivialaugment"))
    assert not torch.equal(trivial, plain) and not torch.equal(crops("randaugment"), plain)
    with pytest.raises(SlimserveError, match="--augment-policy must be one of none, trivialaugment"):
        _config(augment_policy="autoaugment")
