"""Transfer learning: pretrained backbones with a new head, frozen or fine-tuned.

- ``--freeze backbone``: backbone parameters stop requiring gradients and the backbone
  stays in eval mode (BatchNorm keeps ImageNet's running statistics, dropout is off), so
  only the head learns. Without augmentation the backbone sees the same pixels every
  epoch, so its output is computed once (``head_inputs``) and the epochs train the head
  alone on those features: one backbone pass in total instead of one per epoch.
- ``--freeze none``: everything trains, the backbone at ``lr x backbone_lr_scale`` (its
  own parameter groups), the usual way to keep pretrained features from being washed out
  by a freshly initialised head's large early gradients.
"""

from collections.abc import Callable

import torch
from torch import nn

from training import backbones
from training.config import TrainConfig
from training.pretrained import Weights, load_pretrained
from training.tensors import ImageTensors, batches


def pretrained_model(config: TrainConfig) -> tuple[nn.Module, Weights]:
    """The pretrained network with its original (e.g. 1000-class ImageNet) head."""
    return load_pretrained(config.model, str(config.weights), download=config.download)


def with_new_head(model: nn.Module, num_classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)  # the new head's initialisation is part of the seeded run
    return backbones.replace_head(model, num_classes)


def freeze_backbone(model: nn.Module) -> None:
    head = set(backbones.get_head(model).parameters())
    for parameter in model.parameters():
        parameter.requires_grad_(parameter in head)


def frozen_train_mode(model: nn.Module) -> None:
    """``model.train()`` for a frozen backbone: only the head leaves eval mode."""
    model.eval()
    backbones.get_head(model).train()


def parameter_groups(config: TrainConfig, model: nn.Module) -> list[dict]:
    """Decay / no-decay groups (no weight decay on norms and biases), with the backbone at
    a smaller learning rate when fine-tuning pretrained weights; frozen parameters left out."""
    head_ids = {id(p) for p in backbones.get_head(model).parameters()} if config.is_backbone else set()
    backbone_lr = config.lr * config.backbone_lr_scale if config.weights is not None else config.lr
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for parameter in model.parameters():
        if parameter.requires_grad:
            key = (id(parameter) in head_ids or not config.is_backbone, parameter.ndim > 1)
            groups.setdefault(key, []).append(parameter)
    return [
        {
            "params": params,
            "lr": config.lr if is_head else backbone_lr,
            "weight_decay": config.weight_decay if decay else 0.0,
        }
        for (is_head, decay), params in groups.items()
    ]


def head_inputs(
    model: nn.Module,
    data: ImageTensors,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    batch_size: int = 64,
) -> ImageTensors:
    """What the head sees for every image (pooled backbone features), computed once."""
    head = backbones.get_head(model)
    backbones.set_head(model, nn.Identity())
    model.eval()
    try:
        with torch.inference_mode():
            features = [
                model(normalize(images).to(device)).flatten(1).float().cpu()
                for images, _ in batches(data, batch_size)
            ]
    finally:
        backbones.set_head(model, head)
    return ImageTensors(torch.cat(features), data.labels)


def describe(config: TrainConfig) -> str:
    """One phrase for the start-of-run line: how the backbone is trained."""
    if config.weights is None:
        return "from scratch"
    if config.freeze == "backbone":
        how = "head only, features computed once" if not config.augment else "head only"
        return f"{config.weights} weights, backbone frozen ({how})"
    return f"{config.weights} weights, full fine-tune (backbone lr x{config.backbone_lr_scale})"
