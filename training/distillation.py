"""Knowledge distillation (Hinton et al. 2015): soft targets from a teacher at temperature T.

The loss mixes the KL divergence between the temperature-softened teacher and student
distributions (scaled by T^2 so its gradients keep their size as T changes) with the
usual cross-entropy on the labels: ``alpha * T^2 * KL + (1 - alpha) * CE``.
"""

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from slimserve.errors import SlimserveError
from training.checkpoint import Checkpoint


@dataclass(frozen=True)
class Distillation:
    """A teacher and how to learn from it; recorded in the student's checkpoint metadata."""

    teacher: nn.Module
    temperature: float
    alpha: float
    teacher_run_dir: str
    teacher_sha256: str
    teacher_arch: str

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise SlimserveError(f"--temperature must be positive, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise SlimserveError(f"--alpha must be in [0, 1], got {self.alpha}")

    def to_metadata(self) -> dict[str, Any]:
        data = asdict(self)
        del data["teacher"]
        return data

    def loss(self, images: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, ce: nn.Module):
        with torch.no_grad():
            teacher_logits = self.teacher(images).float()
        t = self.temperature
        soft = functional.kl_div(
            functional.log_softmax(logits / t, dim=1),
            functional.log_softmax(teacher_logits / t, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        return self.alpha * t * t * soft + (1 - self.alpha) * ce(logits, labels)


def distill_from(teacher: Checkpoint, *, temperature: float, alpha: float) -> Distillation:
    """Distillation from a verified checkpoint, recording which teacher (path and weights
    hash) so the student's metadata can name it."""
    return Distillation(
        teacher=teacher.model,
        temperature=temperature,
        alpha=alpha,
        teacher_run_dir=str(teacher.run_dir.resolve()),
        teacher_sha256=teacher.metadata["weights_sha256"],
        teacher_arch=teacher.metadata["arch"],
    )
