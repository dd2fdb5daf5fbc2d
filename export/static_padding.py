"""timm's TF-"same" convolutions at the spec's fixed input size, as constant-padded ones.

timm's ``Conv2dSame`` (``tf_efficientnet_*``, ``tf_mobilenetv3_*``: the stride-2 layers whose
TensorFlow padding is asymmetric) computes its padding from the input's shape on every call
(``timm.layers.pad_same``); torch.ao's FX tracer cannot follow that control flow ("symbolically
traced variables cannot be used as inputs to control flow"). Every runtime feeds the model at
the spec's size, so each layer's padding is a constant: computed once with timm's own
``pad_same_arg`` from the size the layer sees, the layer keeps its weights and its name.
"""

import torch
from timm.layers import Conv2dSame
from timm.layers.padding import pad_same_arg
from torch import nn
from torch.nn import functional


class StaticSameConv2d(nn.Conv2d):
    """A Conv2d that zero-pads by fixed (left, right, top, bottom) amounts first."""

    def __init__(self, conv: nn.Conv2d, pads: list[int]) -> None:
        super().__init__(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation, conv.groups,
            conv.bias is not None,
        )  # fmt: skip
        self.pads = tuple(int(p) for p in pads)
        self.weight = conv.weight
        self.bias = conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(functional.pad(x, self.pads), self.weight, self.bias)


def with_static_same_padding(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """``model`` (changed in place) with each ``Conv2dSame`` padded for ``example``'s size."""
    same = {name: m for name, m in model.named_modules() if isinstance(m, Conv2dSame)}
    if not same:
        return model
    sizes: dict[str, list[int]] = {}
    hooks = [
        module.register_forward_pre_hook(
            lambda _module, args, name=name: sizes.__setitem__(name, list(args[0].shape[-2:]))
        )
        for name, module in same.items()
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    for name, module in same.items():
        pads = pad_same_arg(sizes[name], list(module.kernel_size), list(module.stride), list(module.dilation))
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name), leaf, StaticSameConv2d(module, pads))
    return model
