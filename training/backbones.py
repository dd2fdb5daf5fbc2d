"""Classification backbones from timm and torchvision, built by name with a new head.

Naming (also in ``slimserve train --help``): ``timm:NAME`` or ``tv:NAME`` pick the
library; a plain name is slimserve's own (mlp, cnn, cnn-small, resnet) first, then timm's,
then torchvision's. Names both libraries know (``resnet18``, ``resnet50``, ...) therefore
mean timm's; write ``tv:resnet18`` for torchvision's. Checkpoints always store the
qualified name, so a later timm release that adds a name cannot change what loads.

A backbone is built with the head it was pretrained with (1000 ImageNet classes) when
weights are loaded, then the classifier is replaced for the dataset's classes: timm's
``reset_classifier``, and for torchvision the last Linear/1x1-Conv layer that produces
the logits (every model of ``list_models(module=torchvision.models)`` ends in one).
"""

from dataclasses import dataclass
from typing import Any

import timm
import torchvision
from torch import nn

from slimserve.errors import SlimserveError
from training.models import MODELS

LIBRARIES = {"timm": "timm", "tv": "torchvision"}
SLIMSERVE_MODELS = tuple(MODELS)  # slimserve's own, resolved before timm and torchvision


@dataclass(frozen=True)
class BackboneName:
    library: str  # "timm" or "tv"
    name: str

    @property
    def qualified(self) -> str:
        return f"{self.library}:{self.name}"

    @property
    def version(self) -> str:
        return timm.__version__ if self.library == "timm" else torchvision.__version__


def _torchvision_names() -> list[str]:
    return torchvision.models.list_models(module=torchvision.models)


def resolve(arch: str) -> BackboneName:
    """``timm:x`` / ``tv:x`` as given; a plain name from timm first, then torchvision."""
    library, sep, name = arch.partition(":")
    if sep:
        if library not in LIBRARIES:
            raise SlimserveError(f"unknown model library {library!r} in {arch!r}; write timm:NAME or tv:NAME")
        known = timm.is_model(name) if library == "timm" else name in _torchvision_names()
        if not known:
            raise SlimserveError(f"{LIBRARIES[library]} has no classification model {name!r}")
        return BackboneName(library, name)
    if timm.is_model(arch):
        return BackboneName("timm", arch)
    if arch in _torchvision_names():
        return BackboneName("tv", arch)
    close = timm.list_models(f"*{arch}*")[:5]
    hint = f" (timm has e.g. {', '.join(close)})" if close else ""
    raise SlimserveError(
        f"unknown model {arch!r}: not slimserve's ({', '.join(SLIMSERVE_MODELS)}), timm's or torchvision's{hint}"
    )


def create(backbone: BackboneName, num_classes: int, **kwargs: Any) -> nn.Module:
    """The architecture with ``num_classes`` outputs and random weights."""
    try:
        if backbone.library == "timm":
            return timm.create_model(backbone.name, pretrained=False, num_classes=num_classes, **kwargs)
        return torchvision.models.get_model(backbone.name, weights=None, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise SlimserveError(f"model {backbone.qualified!r}: bad arguments {kwargs}: {exc}") from None


def head_name(model: nn.Module) -> str:
    """Dotted name of the module producing the logits (the one a new dataset replaces)."""
    if hasattr(model, "get_classifier") and hasattr(model, "pretrained_cfg"):  # timm
        return model.pretrained_cfg.get("classifier", "classifier")
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)):
            last = name
    if last is None:
        raise SlimserveError(f"{type(model).__name__}: found no Linear or 1x1 Conv classifier to replace")
    return last


def get_head(model: nn.Module) -> nn.Module:
    return model.get_submodule(head_name(model))


def set_head(model: nn.Module, head: nn.Module) -> None:
    parent, _, child = head_name(model).rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, head)


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Swap the pretrained classifier for a freshly initialised one with ``num_classes`` outputs."""
    if hasattr(model, "reset_classifier") and hasattr(model, "pretrained_cfg"):
        model.reset_classifier(num_classes)
        return model
    old = get_head(model)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, kernel_size=1)
    set_head(model, new)
    return model
