"""PyTorch INT8 for the TorchScript artifact: x86 static quantization (FX graph mode) for
convolutional models, dynamic quantization for Linear-only models (the MLP).

torch.ao.quantization is deprecated upstream in favour of torchao's pt2e flow, but pt2e
produces graphs that do not trace to TorchScript; the issue asks for TorchScript INT8, so
this uses the API that produces it.
"""

import copy
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from torch.ao.quantization import QConfigMapping, default_dynamic_qconfig, get_default_qconfig_mapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from export.checks import batch_size_for
from export.failures import export_step
from export.formats import quiet_torch_deprecations
from export.static_padding import with_static_same_padding

ENGINE = "x86"
FX_STEP = "PyTorch INT8 quantization (torch.ao FX graph mode)"
DYNAMIC_STEP = "PyTorch dynamic INT8 quantization (torch.ao quantize_dynamic)"
CALIBRATION_BATCH = 64


@contextmanager
def x86_engine():
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = ENGINE
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def is_linear_only(model: nn.Module) -> bool:
    return not any(isinstance(m, nn.Conv2d) for m in model.modules())


def quantizable_layers(model: nn.Module) -> list[str]:
    kinds = (nn.Linear,) if is_linear_only(model) else (nn.Conv2d, nn.Linear)
    return [name for name, module in model.named_modules() if isinstance(module, kinds)]


def quantize_model(
    model: nn.Module,
    calibration: np.ndarray,
    *,
    exclude: tuple[str, ...] = (),
    only: tuple[str, ...] | None = None,
) -> nn.Module:
    """An eager INT8 copy of ``model``; layers in ``exclude`` (or not in ``only``) stay fp32.

    A failure names the step and the copy the library saw, so the layer can be found.
    """
    work = copy.deepcopy(model).eval()
    with quiet_torch_deprecations(), x86_engine(), torch.no_grad():
        if is_linear_only(model):
            layers = [
                n for n in quantizable_layers(model) if n not in exclude and (only is None or n in only)
            ]
            spec = {name: default_dynamic_qconfig for name in layers}
            with export_step(DYNAMIC_STEP, "torchscript", work):
                return torch.ao.quantization.quantize_dynamic(work, spec, dtype=torch.qint8, inplace=True)
        if only is None:  # everything, including adds and pools, except the excluded layers
            mapping = get_default_qconfig_mapping(ENGINE)
            for name in exclude:
                mapping.set_module_name(name, None)
        else:
            mapping = QConfigMapping()
            for name in only:
                mapping.set_module_name(name, get_default_qconfig_mapping(ENGINE).global_qconfig)
        example = torch.from_numpy(calibration[:2])
        with export_step(FX_STEP, "torchscript", work):
            prepared = prepare_fx(with_static_same_padding(work, example), mapping, (example,))
            step = min(CALIBRATION_BATCH, batch_size_for(calibration))  # bounded memory at 224 px
            for start in range(0, len(calibration), step):
                prepared(torch.from_numpy(calibration[start : start + step]))
            return convert_fx(prepared)
