"""Pruning: depth pruning (whole blocks dropped) and structured channel pruning with
torch-pruning, then a short fine-tune, plain or distilled from a teacher; and unstructured
global magnitude pruning with torch.nn.utils.prune.

Structured pruning removes whole channels, so the dense kernels really do less work;
torch-pruning's dependency graph keeps coupled layers consistent (a residual block's
convolutions, its shortcut and the BatchNorms after them lose the same channels).
Depth pruning exists because channel pruning has a floor on small images: ResNet-20's
first stage runs at full 28x28 resolution, and with even 84% of the MACs removed by
channels a batch of 64 still took 3.1-3.3 ms here, short of 8x eager; dropping two of
that stage's three blocks got there. A residual block whose input and output shapes
match computes ``x + f(x)``, so the identity is its natural stand-in.
Unstructured pruning only writes zeros into the weights: same shapes, same dense
kernels, no speed-up - only a file that compresses better.
"""

import copy
import functools
from contextlib import nullcontext

import torch
import torch_pruning as tp
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from torch.nn.utils import prune

from export.failures import export_step
from slimserve.errors import SlimserveError
from training.datasets import LoadedData
from training.distillation import Distillation
from training.tensors import ImageTensors
from training.train import EpochPlan, resolve_amp_dtype, train_epoch
from training.transforms import normalize_transform, random_crop_flip

# Channels are removed in small steps until the MAC target is met; 2% of each layer's
# channels per step overshoots the target by at most a few points.
PRUNE_STEPS = 45
MAX_CHANNEL_RATIO = 0.9
# Kept channel counts are multiples of this: INT8 and fp32 kernels (oneDNN, MLAS) block
# channels in 8s and 16s, and odd widths left pruned-int8 ResNet-20 slower on ONNX Runtime
# than the unpruned int8 model (5,073 vs 7,642 images/s at batch 64).
ROUND_CHANNELS_TO = 8
FINETUNE_BATCH = 128
PRUNE_STEP = "structured pruning (torch-pruning)"
DEPTH_STEP = "depth pruning"


def _classifier(model: nn.Module) -> nn.Module:
    """The last Linear: its outputs are the classes, which must all stay."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise SlimserveError("structured pruning needs a final Linear classifier layer")
    return linears[-1]


def droppable_blocks(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Outermost modules with weights whose output has their input's shape, in model order:
    the blocks an identity can stand in for without breaking the graph around them."""
    preserving: dict[str, bool] = {}

    def record(name: str, _module: nn.Module, inputs: tuple, output: object) -> None:
        same = (
            len(inputs) == 1
            and isinstance(output, torch.Tensor)
            and isinstance(inputs[0], torch.Tensor)
            and inputs[0].shape == output.shape
        )
        preserving[name] = preserving.get(name, True) and same

    hooks = [
        module.register_forward_hook(functools.partial(record, name))
        for name, module in model.named_modules()
        if name
    ]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for hook in hooks:
            hook.remove()
    blocks: list[str] = []
    for name, module in model.named_modules():  # parents come before their children
        has_weights = any(isinstance(m, nn.Conv2d | nn.Linear) for m in module.modules())
        inside_block = any(name.startswith(f"{block}.") for block in blocks)
        if preserving.get(name) and has_weights and not inside_block:
            blocks.append(name)
    return blocks


def check_droppable(model: nn.Module, example: torch.Tensor, names: tuple[str, ...]) -> None:
    """Refuse names that are not droppable blocks, listing the ones that are."""
    with export_step(DEPTH_STEP, model=model):
        blocks = droppable_blocks(model, example)
    unknown = [name for name in names if name not in blocks]
    if unknown:
        raise SlimserveError(
            f"--drop-blocks: {unknown[0]!r} is not a block whose output has its input's shape; "
            f"droppable here: {', '.join(blocks) or 'none'}"
        )


def drop_blocks(model: nn.Module, example: torch.Tensor, names: tuple[str, ...]) -> tuple[nn.Module, dict]:
    """A copy with the named blocks replaced by ``nn.Identity``, and what that removed."""
    model = copy.deepcopy(model).eval()
    check_droppable(model, example, names)
    with export_step(DEPTH_STEP, model=model):
        macs_before, params_before = tp.utils.count_ops_and_params(model, example)
        for name in names:
            model.set_submodule(name, nn.Identity())
        macs, params = tp.utils.count_ops_and_params(model, example)
    info = {
        "method": "blocks replaced by nn.Identity (input and output shapes checked on an example)",
        "dropped_blocks": list(names),
        "mac_reduction": round(1 - macs / macs_before, 4),
        "param_reduction": round(1 - params / params_before, 4),
        "macs_before": int(macs_before),
    }
    return model, info


def _prune_to_target(
    model: nn.Module, example: torch.Tensor, mac_reduction: float, round_to: int | None
) -> tuple[nn.Module, int, int, int] | None:
    """Prune a copy step by step until the MAC target is met; None if it cannot be met."""
    model = copy.deepcopy(model).eval()
    with export_step(PRUNE_STEP, model=model):
        base_macs, _ = tp.utils.count_ops_and_params(model, example)
        pruner = tp.pruner.MetaPruner(
            model,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=MAX_CHANNEL_RATIO,
            iterative_steps=PRUNE_STEPS,
            ignored_layers=[_classifier(model)],
            round_to=round_to,
        )
        macs, params, steps = base_macs, 0, 0
        while macs > base_macs * (1 - mac_reduction):
            if steps == PRUNE_STEPS:
                return None
            pruner.step()
            steps += 1
            macs, params = tp.utils.count_ops_and_params(model, example)
    return model, int(macs), int(params), steps


def structured_prune(model: nn.Module, example: torch.Tensor, mac_reduction: float) -> tuple[nn.Module, dict]:
    """A pruned copy with at least ``mac_reduction`` of the MACs removed.

    Kept widths are multiples of ROUND_CHANNELS_TO where that still reaches the target;
    a model too narrow for that (8 channels cannot lose any and stay a multiple of 8)
    is pruned to exact widths instead, and the manifest says which.
    """
    with export_step(PRUNE_STEP, model=model):
        base_macs, base_params = tp.utils.count_ops_and_params(model.eval(), example)
    for round_to in (ROUND_CHANNELS_TO, None):
        result = _prune_to_target(model, example, mac_reduction, round_to)
        if result is not None:
            break
    else:
        raise SlimserveError(
            f"structured pruning cannot remove {mac_reduction:.0%} of MACs from this model; "
            "lower --prune-macs"
        )
    pruned, macs, params, steps = result
    info = {
        "method": "torch-pruning MetaPruner, GroupMagnitudeImportance(p=2), dependency-aware, per layer",
        "round_channels_to": round_to or 1,
        "target_mac_reduction": mac_reduction,
        "mac_reduction": round(1 - macs / base_macs, 4),
        "param_reduction": round(1 - params / base_params, 4),
        "channel_ratio": round(MAX_CHANNEL_RATIO * steps / PRUNE_STEPS, 4),
        "macs_before": int(base_macs),
        "params_before": int(base_params),
    }
    return pruned, info


def fine_tune(
    model: nn.Module,
    data: LoadedData,
    train_set: ImageTensors,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    label_smoothing: float,
    seed: int,
    console: Console,
    distillation: Distillation | None = None,
) -> dict:
    """Recover accuracy after pruning with training's own epoch loop (SGD, cosine decay),
    from the labels or, given ``distillation``, mostly from a teacher's soft targets.

    ``train()`` cannot do this: it rebuilds models from their recipe, and a pruned model
    has channel counts no recipe describes.
    """
    device = torch.device("cpu")
    amp_dtype = resolve_amp_dtype("auto", device)
    channels_last = any(isinstance(m, nn.Conv2d) for m in model.modules())
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
    )
    steps = epochs * max(1, len(train_set) // FINETUNE_BATCH)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    if distillation is None:
        criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        loss_fn = lambda _images, logits, labels: criterion(logits, labels)  # noqa: E731
    else:
        # No label smoothing beside soft targets: they already say how wrong classes relate.
        loss_fn = functools.partial(distillation.loss, ce=nn.CrossEntropyLoss())
        if channels_last:
            distillation.teacher.to(memory_format=torch.channels_last)
    generator = torch.Generator()
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("loss {task.fields[loss]:.3f}  acc {task.fields[acc]:.1%}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    with progress:
        for epoch in range(epochs):
            torch.manual_seed(seed * 100_003 + epoch)
            generator.manual_seed(seed * 100_003 + epoch)
            plan = EpochPlan(
                loss_fn=loss_fn,
                optimizer=optimizer,
                scheduler=scheduler,
                normalize=normalize_transform(data.spec),
                augment=functools.partial(
                    random_crop_flip, padding=data.crop_padding, hflip=data.hflip, generator=generator
                ),
                batch_size=FINETUNE_BATCH,
                device=device,
                channels_last=channels_last,
                autocast=torch.autocast("cpu", dtype=amp_dtype) if amp_dtype else nullcontext(),
            )
            train_epoch(
                model,
                train_set,
                plan,
                generator=generator,
                progress=progress,
                description=f"fine-tune {epoch + 1}/{epochs}",
            )
    model.to(memory_format=torch.contiguous_format).eval()
    return {
        "epochs": epochs,
        "lr": lr,
        "schedule": "SGD nesterov, cosine decay",
        "images": len(train_set),
        "augment": "random crop + flip" if data.hflip else "random crop",
        "amp": str(amp_dtype).removeprefix("torch.") if amp_dtype else None,
        "loss": "cross-entropy" if distillation is None else "distillation",
        "label_smoothing": label_smoothing if distillation is None else 0.0,
        "distillation": None if distillation is None else distillation.to_metadata(),
    }


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def weight_sparsity(model: nn.Module) -> float:
    """Share of exact zeros in the Conv/Linear weights (what magnitude pruning targets)."""
    weights = [module.weight for module, _ in prunable_weights(model)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / sum(w.numel() for w in weights)


def unstructured_prune(model: nn.Module, amount: float) -> nn.Module:
    """Zero the ``amount`` smallest-magnitude weights across all layers, permanently."""
    model = copy.deepcopy(model).eval()
    parameters = prunable_weights(model)
    prune.global_unstructured(parameters, pruning_method=prune.L1Unstructured, amount=amount)
    for module, name in parameters:
        prune.remove(module, name)  # fold the mask into the weight: a plain module again
    return model
