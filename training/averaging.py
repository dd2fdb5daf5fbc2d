"""Weight averaging for a full fine-tune: an EMA of the weights, and WiSE-FT interpolation.

Why: the transfer recipe fine-tunes for a few dozen steps on a few hundred photos, so the
last step's weights are one noisy point of a short trajectory that starts at the probed
head. Both options below move the served weights back toward that start, which is known
to hold on to the pretrained features (both keep one forward pass in serving):

- ``ema_decay`` d > 0: after every optimizer step ``ema = d * ema + (1 - d) * weights``,
  starting from the weights the fine-tune starts from. torch's own
  ``AveragedModel`` + ``get_ema_multi_avg_fn`` does the arithmetic; buffers (BatchNorm
  statistics) follow the trained model rather than being averaged.
- ``wise_alpha`` a < 1: WiSE-FT (Wortsman et al. 2022, "Robust fine-tuning of zero-shot
  models"): the served weights are ``(1 - a) * probed + a * fine-tuned``, the probed
  weights being LP-FT's (the pretrained backbone with the probe's head).

The served weights (EMA and/or interpolated) are what every epoch's test accuracy
measures and what the checkpoint holds; the raw weights keep training.
"""

import copy
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from training.config import TrainConfig

StateDict = dict[str, torch.Tensor]


def interpolate(start: StateDict, end: StateDict, alpha: float) -> StateDict:
    """``(1 - alpha) * start + alpha * end`` for floating tensors; others are ``end``'s."""
    return {
        name: torch.lerp(start[name], value, alpha) if value.is_floating_point() else value.clone()
        for name, value in end.items()
    }


class WeightAveraging:
    """The served weights of a fine-tune whose raw weights are ``model``'s."""

    def __init__(self, config: TrainConfig, model: nn.Module) -> None:
        self.model = model
        self.alpha = config.wise_alpha
        self.anchor: StateDict | None = (
            {k: v.detach().clone() for k, v in model.state_dict().items()} if self.alpha < 1 else None
        )
        self.ema: AveragedModel | None = None
        if config.ema_decay > 0:
            self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay))
            self.ema.update_parameters(model)  # the first update copies: the EMA starts where training does

    def update(self) -> None:
        """After an optimizer step."""
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def served(self) -> nn.Module:
        """The model to evaluate and save: the EMA (if on), interpolated toward the anchor (if on)."""
        tuned = self.ema.module if self.ema is not None else self.model
        if self.anchor is None:
            return tuned
        mixed = copy.deepcopy(tuned)
        mixed.load_state_dict(interpolate(self.anchor, tuned.state_dict(), self.alpha))
        return mixed

    def state_dict(self) -> dict[str, Any]:
        """What ``--resume`` needs: the EMA so far and the anchor (the probe does not run again)."""
        return {
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "anchor": self.anchor,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if self.anchor is not None:
            self.anchor = state["anchor"]


def weight_averaging(config: TrainConfig, model: nn.Module) -> WeightAveraging | None:
    """The averaging ``config`` asks for, or None for plain last-step weights."""
    if config.ema_decay == 0 and config.wise_alpha == 1:
        return None
    return WeightAveraging(config, model)
