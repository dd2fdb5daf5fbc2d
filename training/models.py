"""Model registry: every architecture is built by name from JSON-able keyword arguments.

Checkpoints store ``(arch, kwargs)`` and loading rebuilds the model from them (the
nanoGPT ``model_args`` pattern), so weights never need pickled classes. Every
``forward`` is free of data-dependent Python control flow, so all models trace to
TorchScript, export to ONNX and go through FX/torch-pruning unchanged.
"""

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from slimserve.errors import SlimserveError


def build_mlp(
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    hidden: tuple[int, ...] = (512, 512),
    dropout: float = 0.2,
) -> nn.Module:
    """A plain multilayer perceptron; BatchNorm makes a 3-minute CPU recipe reach ~90%."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_channels * input_size[0] * input_size[1]
    for units in hidden:
        layers += [nn.Linear(width, units), nn.BatchNorm1d(units), nn.ReLU(inplace=True)]
        layers.append(nn.Dropout(dropout))
        width = units
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def build_cnn(
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    widths: tuple[int, int] = (32, 64),
    hidden: int = 256,
    dropout: float = 0.3,
) -> nn.Module:
    """Two VGG-style blocks (two 3x3 convs + max-pool each) and a small classifier head."""
    w1, w2 = widths
    features = [
        *_conv_bn_relu(in_channels, w1),
        *_conv_bn_relu(w1, w1),
        nn.MaxPool2d(2),
        *_conv_bn_relu(w1, w2),
        *_conv_bn_relu(w2, w2),
        nn.MaxPool2d(2),
    ]
    flat = w2 * (input_size[0] // 4) * (input_size[1] // 4)
    head = [
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(flat, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    ]
    return nn.Sequential(*features, *head)


class BasicBlock(nn.Module):
    """The ResNet basic block with a 1x1 projection shortcut when the shape changes.

    Projection ("option B") rather than zero-padding keeps the shortcut a real layer that
    torch-pruning, FX quantization and ONNX see as ordinary convolutions.
    """

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016, section 4.2): depth 6n+2, three stages.

    Made for 28-32 px inputs: a 3x3 stem with no down-sampling, stages of width
    ``w, 2w, 4w`` at strides 1, 2, 2, global average pooling. ``depth=20, width=16`` is
    the paper's ResNet-20 (0.27M parameters).
    """

    def __init__(self, in_channels: int, num_classes: int, depth: int, width: int) -> None:
        super().__init__()
        blocks_per_stage = (depth - 2) // 6
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, width))
        stages: list[nn.Module] = []
        cin = width
        for stage, stride in enumerate((1, 2, 2)):
            cout = width * 2**stage
            for index in range(blocks_per_stage):
                stages.append(BasicBlock(cin, cout, stride if index == 0 else 1))
                cin = cout
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.stages(self.stem(x)))))


def build_resnet(
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    depth: int = 20,
    width: int = 16,
) -> nn.Module:
    if depth < 8 or (depth - 2) % 6:
        raise SlimserveError(f"resnet depth must be 6n+2 with n >= 1 (20, 32, 44, 56), got {depth}")
    del input_size  # global pooling makes the network size-agnostic
    return ResNet(in_channels, num_classes, depth, width)


def build_cnn_small(in_channels: int, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
    """A 4x-cheaper CNN, the default distillation student. No dropout: a model this small
    underfits with it (Fashion-MNIST, 16 epochs: 93.58% without, and 0.8 points lost by the
    16/48 variant with dropout 0.3; BENCHMARKS.md)."""
    return build_cnn(in_channels, num_classes, input_size, widths=(16, 32), hidden=128, dropout=0.0)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": build_mlp,
    "cnn": build_cnn,
    "cnn-small": build_cnn_small,
    "resnet": build_resnet,
}


def build_model(
    arch: str,
    *,
    in_channels: int,
    num_classes: int,
    input_size: tuple[int, int],
    **kwargs: Any,
) -> nn.Module:
    """Build a registered architecture, or a timm/torchvision one by name (see
    ``training.backbones``); unknown names and arguments are user errors."""
    if arch not in MODELS:
        from training import backbones  # imports timm: only for the models that need it

        backbone = backbones.resolve(arch)
        if in_channels != 3:
            raise SlimserveError(
                f"{arch}: timm and torchvision backbones take 3-channel images; use --channels 3"
            )
        del input_size  # these networks pool globally
        return backbones.create(backbone, num_classes, **kwargs)
    try:
        return MODELS[arch](in_channels, num_classes, tuple(input_size), **kwargs)
    except TypeError as exc:
        raise SlimserveError(f"model {arch!r}: bad arguments {kwargs}: {exc}") from None
