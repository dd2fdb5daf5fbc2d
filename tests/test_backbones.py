"""timm and torchvision architectures by name, with the head replaced for the dataset."""

from pathlib import Path

import pytest
import torch
from torch import nn

from slimserve.errors import SlimserveError
from training import backbones
from training.checkpoint import load_checkpoint, save_checkpoint
from training.models import build_model
from training.tensors import ImageTensors, materialize
from training.train import EpochPlan, train_epoch
from training.transfer import freeze_backbone, frozen_train_mode

HYMENOPTERA = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "hymenoptera"


@pytest.mark.parametrize(
    ("name", "qualified"),
    [
        ("resnet18", "timm:resnet18"),  # both libraries know it: timm wins, as --help says
        ("tv:resnet18", "tv:resnet18"),
        ("mobilenet_v3_small", "tv:mobilenet_v3_small"),  # torchvision only
        ("timm:efficientnet_lite0", "timm:efficientnet_lite0"),
        ("tf_efficientnet_lite0", "timm:tf_efficientnet_lite0"),
    ],
)
def test_names_resolve_slimserve_then_timm_then_torchvision(name, qualified):
    assert backbones.resolve(name).qualified == qualified


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("resnet_does_not_exist", "unknown model"),
        ("tv:efficientnet_lite0", "torchvision has no classification model"),
        ("keras:resnet50", "unknown model library"),
    ],
)
def test_unknown_names_are_one_line_errors(name, message):
    with pytest.raises(SlimserveError, match=message) as caught:
        backbones.resolve(name)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "name",
    [
        *(
            "tv:resnet18",
            "tv:mobilenet_v3_small",
            "tv:squeezenet1_1",
            "tv:shufflenet_v2_x0_5",
            "tv:regnet_x_400mf",
        ),
        *("timm:mobilenetv3_small_050", "timm:tf_efficientnet_lite0", "timm:resnet10t"),
    ],
)
def test_head_is_replaced_for_the_dataset_classes(name):
    """Built with 1000 classes then re-headed (the pretrained path) equals building with 3."""
    model = backbones.create(backbones.resolve(name), num_classes=1000)
    backbones.replace_head(model, 3)
    direct = build_model(name, in_channels=3, num_classes=3, input_size=(64, 64))
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in direct.state_dict().items()
    }
    model.eval()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)


def test_backbone_needs_three_channels():
    with pytest.raises(SlimserveError, match="3-channel"):
        build_model("tv:resnet18", in_channels=1, num_classes=2, input_size=(28, 28))


def test_checkpoint_rebuilds_a_library_model(tmp_path):
    torch.manual_seed(0)
    model = build_model("tv:mobilenet_v3_small", in_channels=3, num_classes=2, input_size=(96, 96)).eval()
    spec = {
        "height": 96,
        "width": 96,
        "channels": 3,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "resize_shorter": 110,
    }
    save_checkpoint(
        tmp_path,
        model,
        {
            "arch": "tv:mobilenet_v3_small",
            "arch_kwargs": {},
            "dataset": "folder:x",
            "classes": ["a", "b"],
            "preprocess": spec,
        },
    )
    loaded = load_checkpoint(tmp_path)
    images = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(images), model(images), rtol=0, atol=0)
    assert loaded.metadata["versions"]["timm"]


def _photos(count: int) -> ImageTensors:
    from training.datasets import load_data

    data = load_data(
        f"folder:{HYMENOPTERA}", image_size=64, resize_shorter=72, mean_std=((0.5,) * 3, (0.5,) * 3)
    )
    subset = torch.utils.data.Subset(
        data.train, [*range(count // 2), *range(len(data.train) - count // 2, len(data.train))]
    )
    return materialize(subset, data.spec)


def test_frozen_backbone_stays_bit_identical_through_a_training_step():
    """Only the head changes; BatchNorm running statistics of the backbone do not move."""
    torch.manual_seed(0)
    model = build_model("timm:mobilenetv3_small_050", in_channels=3, num_classes=2, input_size=(64, 64))
    freeze_backbone(model)
    head = {id(p) for p in backbones.get_head(model).parameters()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == head
    optimizer = torch.optim.SGD(trainable, lr=0.5)
    plan = EpochPlan(
        loss_fn=lambda _images, logits, labels: nn.functional.cross_entropy(logits, labels),
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0),
        normalize=lambda x: x.float() / 255,
        augment=None,
        batch_size=4,
        device=torch.device("cpu"),
        train_mode=frozen_train_mode,
    )
    from rich.progress import Progress

    with Progress(disable=True) as progress:
        train_epoch(
            model,
            _photos(8),
            plan,
            generator=torch.Generator().manual_seed(0),
            progress=progress,
            description="t",
        )
    head_name = backbones.head_name(model)
    after = model.state_dict()
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert changed and all(k.startswith(head_name + ".") for k in changed), changed
