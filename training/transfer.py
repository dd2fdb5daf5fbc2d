"""Transfer learning: pretrained backbones with a new head, frozen or fine-tuned.

- ``--freeze backbone``: backbone parameters stop requiring gradients and the backbone
  stays in eval mode (BatchNorm keeps ImageNet's running statistics, dropout is off), so
  only the head learns. Without augmentation the backbone sees the same pixels every
  epoch, so its output is computed once (``head_inputs``) and the epochs train the head
  alone on those features: one backbone pass in total instead of one per epoch.
- ``--freeze none``: everything trains, the backbone at ``lr x backbone_lr_scale`` (its
  own parameter groups), the usual way to keep pretrained features from being washed out
  by a freshly initialised head's large early gradients. ``probe_epochs`` goes further
  (LP-FT, Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features"): the head is
  first trained alone on cached features (``linear_probe``), so fine-tuning starts from a
  head that already fits and the backbone's first gradients are not noise.
  ``freeze_bn`` keeps BatchNorm's ImageNet running statistics: batch statistics of 32
  photos of two classes are a poor estimate of them.
"""

from collections.abc import Callable

import torch
from torch import nn

from training import backbones
from training import head_init as head_rows
from training.config import BACKBONE_RECIPES, HEAD_NEW, TrainConfig
from training.pretrained import Weights, load_pretrained
from training.tensors import ImageTensors, batch_count, batches

PROBE = BACKBONE_RECIPES["transfer-frozen"]  # LP-FT's probe trains the head as --freeze backbone does


def pretrained_model(config: TrainConfig) -> tuple[nn.Module, Weights]:
    """The pretrained network with its original (e.g. 1000-class ImageNet) head."""
    return load_pretrained(config.model, str(config.weights), download=config.download)


def with_new_head(
    model: nn.Module, classes: list[str], seed: int, head_init: str = HEAD_NEW
) -> tuple[nn.Module, dict[str, str] | None]:
    """The head replaced for ``classes``: freshly initialised, or (``--head-init``) from the
    pretrained classifier's rows for them; with each class's row for the metadata."""
    torch.manual_seed(seed)  # the new head's initialisation is part of the seeded run
    if head_init == HEAD_NEW:
        return backbones.replace_head(model, len(classes)), None
    return head_rows.with_head_from(model, classes, head_init)


def freeze_backbone(model: nn.Module) -> None:
    head = set(backbones.get_head(model).parameters())
    for parameter in model.parameters():
        parameter.requires_grad_(parameter in head)


def frozen_train_mode(model: nn.Module) -> None:
    """``model.train()`` for a frozen backbone: only the head leaves eval mode."""
    model.eval()
    backbones.get_head(model).train()


def frozen_bn_train_mode(model: nn.Module) -> None:
    """``model.train()`` with every BatchNorm left in eval mode (running statistics kept)."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def linear_probe(
    model: nn.Module,
    train_set: ImageTensors,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    config: TrainConfig,
) -> None:
    """LP-FT's first stage: fit the new head on the backbone's features of ``train_set``
    (un-augmented, centre crops), leaving the backbone untouched.

    The hyperparameters are the frozen recipe's (``BACKBONE_RECIPES["transfer-frozen"]``)
    for ``config.probe_epochs`` epochs; the loop is a few lines because the head is one
    linear layer on a tensor that fits in memory, so the full training loop's
    augmentation, autocast and checkpointing have nothing to do here.
    """
    features = head_inputs(model, train_set, normalize, device)
    head = backbones.get_head(model)
    head.train()
    torch.manual_seed(config.seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=PROBE["lr"], weight_decay=PROBE["weight_decay"])
    steps = config.probe_epochs * batch_count(features, config.batch_size, drop_last=True)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=PROBE["lr"], total_steps=steps, pct_start=0.15
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    generator = torch.Generator().manual_seed(config.seed)
    for _ in range(config.probe_epochs):
        for inputs, labels in batches(features, config.batch_size, generator=generator, drop_last=True):
            loss = criterion(head(inputs.to(device)), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()


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
    head = f", head from the pretrained rows ({config.head_init})" if config.head_init != HEAD_NEW else ""
    if config.freeze == "backbone":
        how = "head only, features computed once" if not config.augment else "head only"
        return f"{config.weights} weights, backbone frozen ({how}{head})"
    probe = f", head first probed for {config.probe_epochs} epochs" if config.probe_epochs else ""
    bn = ", BatchNorm statistics frozen" if config.freeze_bn else ""
    ema = f", EMA of the weights (decay {config.ema_decay})" if config.ema_decay else ""
    wise = f", WiSE-FT alpha {config.wise_alpha}" if config.wise_alpha < 1 else ""
    policy = f", {config.augment_policy}" if config.augment_policy != "none" else ""
    return (
        f"{config.weights} weights, full fine-tune "
        f"(backbone lr x{config.backbone_lr_scale}{head}{probe}{bn}{ema}{wise}{policy})"
    )
