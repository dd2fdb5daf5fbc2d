"""The training loop: seeded, resumable, evaluating every epoch and keeping the last weights.

The checkpoint is always the last finished epoch, never the epoch with the best test
accuracy: picking an epoch by its test score would select on the test set and overstate
the accuracy every later figure (export drops, distillation gains) is measured against.
The one-cycle schedule ends at its lowest learning rate, so the last epoch is the
natural model to keep.

Determinism: the global RNG and the sampler are re-seeded from ``(seed, epoch)`` at the
start of every epoch, so a resumed run replays exactly what an uninterrupted one would
have done, and the same seed and settings on the same CPU give the same weights.
"""

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from torch import nn

from slimserve.console import cli_console
from slimserve.errors import SlimserveError
from slimserve.naming import default_run_dir
from slimserve.spec import PreprocessSpec
from training import distributed
from training.averaging import WeightAveraging, weight_averaging
from training.backbones import get_head
from training.checkpoint import METADATA_FILE, atomic_write, save_checkpoint
from training.config import TrainConfig
from training.datasets import LoadedData, limit_dataset, load_data
from training.distillation import Distillation
from training.distributed import World
from training.models import build_model
from training.pretrained import Weights
from training.tensors import ImageTensors, batch_count, batches, materialize, shard_of
from training.transfer import (
    describe,
    freeze_backbone,
    frozen_bn_train_mode,
    frozen_train_mode,
    head_inputs,
    linear_probe,
    parameter_groups,
    pretrained_model,
    with_new_head,
)
from training.transforms import (
    center_crops,
    normalize_transform,
    random_crop_flip,
    random_resized_crop_flip,
    train_base_spec,
)

STATE_FILE = "train_state.pt"
EVAL_BATCH = 512

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (images, logits, labels)
Normalize = Callable[[torch.Tensor], torch.Tensor]
Augment = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    accuracy: float
    epochs: int
    seconds: float  # every epoch, its test-set evaluation included
    images_per_second: float  # the last epoch's training alone (the demo sizes its budget from both)


def resolve_device(requested: str) -> torch.device:
    """``auto`` picks CUDA when torch sees a GPU; asking for CUDA without one is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise SlimserveError("--device cuda was requested but torch sees no CUDA GPU; use --device cpu")
    return torch.device(requested)


def resolve_amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """Mixed precision where the hardware has it: bf16 on CUDA (fp16 on older GPUs) and on
    CPUs with native bf16 (AVX-512 BF16 / AMX), where it measured 2-2.5x faster here."""
    if mode == "off":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    cpu_bf16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if mode == "on" and not cpu_bf16:
        raise SlimserveError("--amp on: this CPU has no native bf16 support; use --amp off")
    return torch.bfloat16 if cpu_bf16 else None


def _default_run_dir(config: TrainConfig) -> Path:
    return default_run_dir(config.model, config.dataset)


def _open_run(
    config: TrainConfig, run_dir: Path | None, resume: bool, overwrite: bool
) -> tuple[TrainConfig, Path, dict[str, Any] | None]:
    """The run's folder, and on ``resume`` its saved state and the config it was started with."""
    run_dir = Path(run_dir) if run_dir else _default_run_dir(config)
    state = _load_state(run_dir) if resume else None
    if state is not None:
        config = TrainConfig.from_dict(state["config"])
    elif (run_dir / METADATA_FILE).exists() and not overwrite:
        raise SlimserveError(
            f"{run_dir} already holds a checkpoint; pass --resume to continue it, "
            "--force to start over, or --out for a new folder"
        )
    return config, run_dir, state


def _load_run_data(config: TrainConfig, weights: Weights | None) -> LoadedData:
    """The dataset, normalized the way the pretrained weights expect when there are any."""
    return load_data(
        config.dataset,
        download=config.download,
        image_size=config.image_size,
        channels=config.channels,
        val_fraction=config.val_fraction,
        seed=config.seed,
        resize_shorter=config.resize_shorter,
        mean_std=(weights.mean, weights.std) if weights else None,
        interpolation=weights.interpolation if weights else "bilinear",
    )


def _build(
    config: TrainConfig, data: LoadedData, pretrained: nn.Module | None
) -> tuple[nn.Module, dict[str, str] | None]:
    """The model to train, and where its head's rows came from when ``--head-init`` chose them."""
    torch.manual_seed(config.seed)
    head_rows = None
    if pretrained is not None:
        model, head_rows = with_new_head(pretrained, list(data.classes), config.seed, config.head_init)
    else:
        model = build_model(
            config.model,
            in_channels=data.spec.channels,
            num_classes=len(data.classes),
            input_size=(data.spec.height, data.spec.width),
            **config.arch_kwargs,
        )
    if config.freeze == "backbone":
        freeze_backbone(model)
    return model, head_rows


def _prepare(config: TrainConfig, data: LoadedData) -> tuple[ImageTensors, ImageTensors]:
    """uint8 tensors of both splits; photo training keeps a larger square to crop from."""
    photo_augment = config.augment and data.spec.resize_shorter is not None
    train_spec = train_base_spec(data.spec) if photo_augment else data.spec
    train = materialize(
        limit_dataset(data.train, config.limit, config.seed), train_spec, "preparing train images"
    )
    test = materialize(
        limit_dataset(data.test, config.limit, config.seed), data.spec, "preparing test images"
    )
    return train, test


def _print_skipped(console: Console, data: LoadedData) -> None:
    if data.skipped:
        console.print(f"Skipped {len(data.skipped)} files of {data.name}:")
        for line in data.skipped[:20]:
            console.print(f"  {line}", markup=False)
        if len(data.skipped) > 20:
            console.print(f"  ... and {len(data.skipped) - 20} more")


def _augmentation(config: TrainConfig, data: LoadedData, generator: torch.Generator) -> Augment | None:
    if not config.augment:
        return None
    if data.spec.resize_shorter is not None:
        return functools.partial(
            random_resized_crop_flip,
            size=(data.spec.height, data.spec.width),
            interpolation=data.spec.interpolation,
            hflip=data.hflip,
            scale=(config.crop_scale, 1.0),
            policy=config.augment_policy,
        )
    return functools.partial(
        random_crop_flip, padding=data.crop_padding, hflip=data.hflip, generator=generator
    )


def _loss(
    config: TrainConfig, distillation: Distillation | None, device: torch.device, channels_last: bool
) -> LossFn:
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    if distillation is None:
        return lambda _images, logits, labels: criterion(logits, labels)
    if config.freeze == "backbone":
        raise SlimserveError("distillation trains the whole student; it cannot use --freeze backbone")
    distillation.teacher.to(device).eval()  # nn.Module.to moves in place
    if channels_last:
        distillation.teacher.to(memory_format=torch.channels_last)
    return functools.partial(distillation.loss, ce=criterion)  # type: ignore[return-value]


@dataclass
class Session:
    """Everything the epochs share: what trains, on what, and the plan of one epoch."""

    trained: nn.Module  # the whole model, or only its head on cached features
    train_set: ImageTensors
    test_set: ImageTensors
    plan: "EpochPlan"
    eval_normalize: Normalize
    scheduler: torch.optim.lr_scheduler.LRScheduler


def _session(
    config: TrainConfig,
    model: nn.Module,
    data: LoadedData,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    distillation: Distillation | None,
    generator: torch.Generator,
    probe: bool = False,
) -> Session:
    """``probe``: run LP-FT's linear probe first (a fresh run, not a resumed one)."""
    channels_last = config.model != "mlp"
    if channels_last:  # 2x faster convolutions on oneDNN and cuDNN
        model.to(memory_format=torch.channels_last)
    train_set, test_set = _prepare(config, data)
    normalize = normalize_transform(data.spec)
    if probe and config.probe_epochs:
        crops = ImageTensors(center_crops(train_set.images, data.spec), train_set.labels)
        linear_probe(model, crops, normalize, device, config)
    averaging = weight_averaging(config, model)  # after the probe: WiSE-FT's anchor is the probed model
    optimizer = _optimizer(config, model)
    steps = config.epochs * batch_count(train_set, config.batch_size, drop_last=True)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=steps, pct_start=0.15
    )
    plan = EpochPlan(
        loss_fn=_loss(config, distillation, device, channels_last),
        optimizer=optimizer,
        scheduler=scheduler,
        normalize=normalize,
        augment=_augmentation(config, data, generator),
        batch_size=config.batch_size,
        device=device,
        channels_last=channels_last,
        autocast=torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext(),
        scaler=torch.amp.GradScaler(enabled=amp_dtype == torch.float16),
        train_mode=_train_mode(config),
        averaging=averaging,
    )
    if config.freeze == "backbone" and not config.augment:
        # The frozen backbone maps each image to the same features every epoch: compute them
        # once and let the epochs train the head alone (no autocast: the head is tiny).
        head = get_head(model)
        features = functools.partial(head_inputs, model, normalize=normalize, device=device)
        plan = dataclasses.replace(
            plan, normalize=_identity, channels_last=False, autocast=nullcontext(), train_mode=nn.Module.train
        )
        return Session(head, features(train_set), features(test_set), plan, _identity, scheduler)
    return Session(model, train_set, test_set, plan, normalize, scheduler)


def _train_mode(config: TrainConfig) -> Callable[[nn.Module], Any]:
    if config.freeze == "backbone":
        return frozen_train_mode
    return frozen_bn_train_mode if config.freeze_bn else nn.Module.train


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    groups = parameter_groups(config, model)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)


def _predict(
    model: nn.Module, data: ImageTensors, normalize: Normalize, device: torch.device, channels_last: bool
) -> torch.Tensor:
    model.eval()
    predictions = []
    with torch.inference_mode():
        for images, _ in batches(data, EVAL_BATCH):
            images = normalize(images).to(device)
            if channels_last:
                images = images.to(memory_format=torch.channels_last)
            predictions.append(model(images).argmax(dim=1).cpu())
    return torch.cat(predictions)


def evaluate_model(
    model: nn.Module,
    data: ImageTensors,
    spec: PreprocessSpec,
    device: torch.device,
    channels_last: bool = False,
) -> tuple[float, torch.Tensor]:
    """Accuracy and all predictions, in fp32 (what the checkpoint will serve)."""
    predicted = _predict(model, data, normalize_transform(spec), device, channels_last)
    return (predicted == data.labels).float().mean().item(), predicted


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.3f}  acc {task.fields[acc]:.1%}  {task.fields[ips]:,.0f} img/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


def _save_state(run_dir: Path, state: dict[str, Any]) -> None:
    atomic_write(run_dir / STATE_FILE, lambda tmp: torch.save(state, tmp))


def _load_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_FILE
    if not path.is_file():
        raise SlimserveError(f"cannot resume: {path} is missing (was the run started with this slimserve?)")
    try:
        # weights_only=True: tensors and plain containers only, no code execution on load.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file
        raise SlimserveError(f"cannot resume: {path} is unreadable ({type(exc).__name__})") from None


@dataclass(frozen=True)
class EpochStats:
    images: int
    correct: int
    loss_sum: float
    seconds: float
    per_process: tuple[float, ...] = ()  # each process's img/s when there are several

    @property
    def row(self) -> dict[str, Any]:
        return {
            "train_loss": self.loss_sum / self.images,
            "train_accuracy": self.correct / self.images,
            "images_per_second": self.images / self.seconds,
            **({"images_per_second_per_process": list(self.per_process)} if self.per_process else {}),
        }

    def across(self, world: World) -> "EpochStats":
        """All ranks' counts added (every rank trained on its slice of each global batch);
        the epoch took as long as the slowest rank."""
        if world.size == 1:
            return self
        images, correct, loss_sum = distributed.sum_counts([self.images, self.correct, self.loss_sum], world)
        rates = distributed.gather(self.images / self.seconds, world)
        seconds = max(distributed.gather(self.seconds, world))
        return EpochStats(int(images), int(correct), loss_sum, seconds, tuple(rates))


@dataclass(frozen=True)
class EpochPlan:
    """What one training epoch needs besides the model, the data and the epoch's RNG.

    ``train_mode`` puts the model in training mode: ``nn.Module.train``, or for a frozen
    backbone a version that leaves the backbone (and its BatchNorm statistics) in eval.
    ``averaging`` is updated after every step (``training.averaging``).
    """

    loss_fn: LossFn
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    normalize: Normalize
    augment: Augment | None
    batch_size: int
    device: torch.device
    channels_last: bool = False
    autocast: AbstractContextManager = field(default_factory=nullcontext)
    scaler: torch.amp.GradScaler = field(default_factory=lambda: torch.amp.GradScaler(enabled=False))
    train_mode: Callable[[nn.Module], Any] = nn.Module.train
    averaging: WeightAveraging | None = None


def _train_step(
    model: nn.Module, plan: EpochPlan, pixels: torch.Tensor, labels: torch.Tensor, description: str
):
    if plan.augment is not None:
        pixels = plan.augment(pixels)
    images = plan.normalize(pixels).to(plan.device, non_blocking=True)
    labels = labels.to(plan.device, non_blocking=True)
    if plan.channels_last:
        images = images.to(memory_format=torch.channels_last)
    with plan.autocast:
        logits = model(images)
        loss = plan.loss_fn(images, logits.float(), labels)
    if not math.isfinite(loss.item()):
        raise SlimserveError(f"training diverged (loss {loss.item()}) in {description}; lower --lr")
    plan.optimizer.zero_grad(set_to_none=True)
    plan.scaler.scale(loss).backward()
    plan.scaler.step(plan.optimizer)
    plan.scaler.update()
    plan.scheduler.step()
    if plan.averaging is not None:
        plan.averaging.update()
    return logits, loss


def train_epoch(
    model: nn.Module,
    train_set: ImageTensors,
    plan: EpochPlan,
    *,
    generator: torch.Generator,
    progress: Progress,
    description: str,
    shard: tuple[int, int] | None = None,
) -> EpochStats:
    """One pass over ``train_set`` in the order ``generator`` draws; also used by export's
    fine-tuning of pruned models, which cannot be rebuilt from a recipe. With ``shard``
    this process trains on its slice of each global batch (``training.distributed``)."""
    plan.train_mode(model)
    total = batch_count(train_set, plan.batch_size, drop_last=True)
    task = progress.add_task(description, total=total, loss=0.0, acc=0.0, ips=0.0)
    seen, correct, loss_sum, started = 0, 0, 0.0, time.perf_counter()
    for pixels, labels in batches(
        train_set, plan.batch_size, generator=generator, drop_last=True, shard=shard
    ):
        logits, loss = _train_step(model, plan, pixels, labels, description)
        seen += labels.numel()
        correct += (logits.argmax(dim=1).cpu() == labels).sum().item()
        loss_sum += loss.item() * labels.numel()
        rate = seen / (time.perf_counter() - started)
        progress.update(task, advance=1, loss=loss_sum / seen, acc=correct / seen, ips=rate)
    progress.remove_task(task)
    return EpochStats(seen, correct, loss_sum, time.perf_counter() - started)


def _metadata(
    config: TrainConfig,
    data: LoadedData,
    weights: Weights | None,
    session: Session,
    extra: dict[str, Any],
    head_rows: dict[str, str] | None,
) -> dict[str, Any]:
    """What the checkpoint records beside the weights: enough to rebuild and to explain it."""
    arch = config.model
    source: dict[str, Any] = {"library": "slimserve"}
    if config.is_backbone:
        from training.backbones import resolve

        backbone = resolve(config.model)
        arch = backbone.qualified  # a later timm that adds the plain name cannot change what loads
        source = {"library": {"tv": "torchvision"}.get(backbone.library, "timm"), "version": backbone.version}
    return {
        "arch": arch,
        "arch_kwargs": config.arch_kwargs,
        "arch_source": source,
        "dataset": data.name,
        "classes": list(data.classes),
        "preprocess": data.spec.to_dict(),
        "metrics": {"test_accuracy": extra.pop("test_accuracy"), "test_images": len(session.test_set)},
        "pretrained": weights.to_metadata() if weights else None,
        "transfer": {
            "freeze": config.freeze,
            "backbone_lr_scale": config.backbone_lr_scale,
            "probe_epochs": config.probe_epochs,
            "freeze_bn": config.freeze_bn,
            "ema_decay": config.ema_decay,
            "wise_alpha": config.wise_alpha,
            "head_init": config.head_init,
            "head_rows": head_rows,  # class -> "row: label" of the pretrained head it started from
        }
        if weights
        else None,
        "seed": config.seed,
        "train_config": config.to_dict(),
        **extra,
    }


def train(
    config: TrainConfig,
    run_dir: Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
    distillation: Distillation | None = None,
) -> TrainResult:
    """Train ``config`` into ``run_dir``; with ``resume`` continue the run saved there.

    With ``distillation`` the loss learns from the teacher's soft targets as well as the
    labels; everything else (data order, augmentation, schedule) is what the same config
    without a teacher does, so the two runs differ only in the loss.

    With ``config.nproc`` > 1 this launches that many processes, each of which calls
    ``train`` again and trains its slice of every global batch (``training.distributed``);
    under torchrun the launcher's environment says which process this is.
    """
    config, run_dir, state = _open_run(config, run_dir, resume, overwrite)
    requested = resolve_device(config.device)  # refused here, before any process starts
    world = distributed.launched_world()
    if world is None and config.nproc > 1:
        if distillation is not None:
            raise SlimserveError("distillation trains in one process; drop --nproc")
        return distributed.launch(config.nproc, _train_worker, config, run_dir, resume, overwrite)
    world = world or World()
    if config.nproc == 1 and world.local_size > 1:  # torchrun's workers: --resume without it relaunches them
        config = dataclasses.replace(config, nproc=world.local_size)
    if config.nproc not in (1, world.local_size):
        raise SlimserveError(
            f"--nproc {config.nproc} disagrees with the launcher's {world.local_size} processes per machine; "
            "under torchrun leave --nproc out"
        )
    if config.batch_size % world.size:
        raise SlimserveError(
            f"--batch-size {config.batch_size} must be a multiple of the {world.size} processes"
        )
    device = distributed.process_device(requested, world)
    created = distributed.join(world, device)
    try:
        return _train_in_world(config, run_dir, state, world, device, console, distillation)
    finally:
        distributed.leave(created)


def _train_worker(config: TrainConfig, run_dir: Path, resume: bool, overwrite: bool) -> TrainResult:
    """What each process ``--nproc`` launches runs (module level: the launcher pickles it)."""
    return train(config, run_dir, resume=resume, overwrite=overwrite)


def _train_in_world(
    config: TrainConfig,
    run_dir: Path,
    state: dict[str, Any] | None,
    world: World,
    device: torch.device,
    console: Console | None,
    distillation: Distillation | None,
) -> TrainResult:
    """The epochs, as one process of ``world``: rank 0 prints and writes the run folder."""
    console = (console or cli_console()) if world.is_main else Console(quiet=True)
    if config.threads or world.local_size > 1:
        torch.set_num_threads(config.threads or distributed.threads_per_process(world))
    amp_dtype = resolve_amp_dtype(config.amp, device)
    pretrained, weights = pretrained_model(config) if config.weights is not None else (None, None)
    data = _load_run_data(config, weights)
    _print_skipped(console, data)
    model, head_rows = _build(config, data, pretrained)
    model = model.to(device)
    if state is not None:
        if state["epoch"] >= config.epochs:
            raise SlimserveError(f"{run_dir} already finished all {config.epochs} epochs; nothing to resume")
        model.load_state_dict(state["model"])
    generator = torch.Generator()
    prepare_started = time.perf_counter()  # decoding photos, and for a frozen backbone its features
    session = _session(config, model, data, device, amp_dtype, distillation, generator, probe=state is None)
    prepare_seconds = round(time.perf_counter() - prepare_started, 1)
    start_epoch, history, elapsed = 0, [], 0.0
    if state is not None:
        session.plan.optimizer.load_state_dict(state["optimizer"])
        session.scheduler.load_state_dict(state["scheduler"])
        if session.plan.averaging is not None:
            session.plan.averaging.load_state_dict(state["averaging"])
        start_epoch, history, elapsed = state["epoch"], state["history"], state["seconds"]
        console.print(f"Resuming {run_dir} from epoch {start_epoch}")
    trained = distributed.wrap(session.trained, device, world)
    _announce(console, config, data, session, device, amp_dtype, world)
    table = Table("epoch", "train loss", "train acc", "test acc", "img/s", "time", title=str(run_dir))
    with _progress(console) as progress:
        for epoch in range(start_epoch, config.epochs):
            torch.manual_seed(config.seed * 100_003 + epoch)
            generator.manual_seed(config.seed * 100_003 + epoch)
            started = time.perf_counter()
            description = f"epoch {epoch + 1}/{config.epochs}"
            stats = train_epoch(
                trained,
                session.train_set,
                session.plan,
                generator=generator,
                progress=progress,
                description=description,
                shard=world.shard,
            ).across(world)
            distributed.sync_buffers(session.trained, world)
            averaging = session.plan.averaging  # the averaged weights are what is tested and saved
            served = averaging.served() if averaging is not None else None
            test_acc = _test_accuracy(
                session, served if served is not None else session.trained, device, world
            )
            elapsed += time.perf_counter() - started
            history.append({"epoch": epoch + 1, **stats.row, "test_accuracy": test_acc})
            _report_epoch(console, table, history[-1], elapsed, description)
            extra = {
                "test_accuracy": test_acc,
                "epoch": epoch + 1,
                "epochs": config.epochs,
                "train_seconds": round(elapsed, 1),
                "prepare_seconds": prepare_seconds,
                "device": device.type,
                "amp": str(amp_dtype).removeprefix("torch.") if amp_dtype else None,
                **({"distillation": distillation.to_metadata()} if distillation else {}),
                **_world_metadata(model, device, world),
            }
            if world.is_main:
                save_checkpoint(
                    run_dir,
                    served if served is not None else model,
                    _metadata(config, data, weights, session, extra, head_rows),
                )
                _save_state(run_dir, _resume_state(config, model, session, history, elapsed))
            distributed.barrier(world)  # no rank starts the next epoch (or exits) before the files exist
    console.print(table)
    accuracy = history[-1]["test_accuracy"]
    console.print(
        f"Test accuracy after {config.epochs} epoch{'s' if config.epochs != 1 else ''}: "
        f"[bold]{accuracy:.2%}[/] in {elapsed:.0f}s; "
        f"checkpoint: {run_dir / METADATA_FILE}"
    )
    return TrainResult(
        run_dir=run_dir,
        accuracy=accuracy,
        epochs=config.epochs,
        seconds=elapsed,
        images_per_second=history[-1]["images_per_second"],
    )


def _announce(
    console: Console,
    config: TrainConfig,
    data: LoadedData,
    session: Session,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    world: World,
) -> None:
    console.print(
        f"Training [bold]{config.model}[/] on [bold]{data.name}[/] "
        f"({len(session.train_set)} train / {len(session.test_set)} test images"
        + (f", {describe(config)}" if config.is_backbone else "")
        + f") on {device.type}"
        + (f" with {str(amp_dtype).removeprefix('torch.')} mixed precision" if amp_dtype else "")
        + f", {torch.get_num_threads()} threads"
        + (
            f" in each of {world.size} processes ({distributed.backend_for(device)})"
            if world.size > 1
            else ""
        )
        + f", seed {config.seed}"
    )


def _test_accuracy(session: Session, model: nn.Module, device: torch.device, world: World) -> float:
    """Test accuracy of the (unwrapped, or averaged) model; several processes each predict a slice."""
    plan = session.plan
    if world.size == 1:
        predicted = _predict(model, session.test_set, session.eval_normalize, device, plan.channels_last)
        return (predicted == session.test_set.labels).float().mean().item()
    part = shard_of(session.test_set, world.rank, world.size)
    predicted = _predict(model, part, session.eval_normalize, device, plan.channels_last)
    correct, count = distributed.sum_counts([(predicted == part.labels).sum().item(), len(part)], world)
    return correct / count


def _world_metadata(model: nn.Module, device: torch.device, world: World) -> dict[str, Any]:
    """For several processes: how many, over what, and every rank's weight digest (all equal,
    or this raises), so the run folder shows the replicas stayed identical."""
    if world.size == 1:
        return {}
    digests = distributed.gather(distributed.state_digest(model.state_dict()), world)
    distributed.check_identical(digests)
    return {
        "distributed": {
            "processes": world.size,
            "backend": distributed.backend_for(device),
            "rank_weight_sha256": digests,
        }
    }


def _resume_state(
    config: TrainConfig, model: nn.Module, session: Session, history: list[dict], elapsed: float
) -> dict[str, Any]:
    """What ``--resume`` needs to replay the rest of the run exactly."""
    return {
        "config": config.to_dict(),
        "epoch": history[-1]["epoch"],
        "model": model.state_dict(),
        "optimizer": session.plan.optimizer.state_dict(),
        "scheduler": session.scheduler.state_dict(),
        "averaging": session.plan.averaging.state_dict() if session.plan.averaging else None,
        "history": history,
        "seconds": elapsed,
    }


def _report_epoch(
    console: Console, table: Table, row: dict[str, float], elapsed: float, description: str
) -> None:
    table.add_row(
        str(row["epoch"]),
        f"{row['train_loss']:.4f}",
        f"{row['train_accuracy']:.2%}",
        f"{row['test_accuracy']:.2%}",
        f"{row['images_per_second']:,.0f}",
        f"{elapsed:.0f}s",
    )
    console.print(
        f"{description}: loss {row['train_loss']:.4f}  train {row['train_accuracy']:.2%}  "
        f"test {row['test_accuracy']:.2%}  {row['images_per_second']:,.0f} img/s"
        + (
            " (" + " + ".join(f"{r:,.0f}" for r in row["images_per_second_per_process"]) + " per process)"
            if "images_per_second_per_process" in row
            else ""
        )
        + f"  {elapsed:.0f}s"
    )
