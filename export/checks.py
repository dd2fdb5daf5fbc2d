"""Parity and accuracy of exported artifacts, measured on real images.

Parity compares an artifact with the eager model it was made from (same weights, same
precision): a float export must reproduce the logits to 1e-4 and every top-1 decision.
Accuracy compares every artifact with the labels and with the fp32 eager predictions.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np

from slimserve.runtime import Runner
from slimserve.runtime.torch_runners import quiet_torch_deprecations
from training.eval_data import ImageSet

PARITY_IMAGES = 256
PARITY_MAX_ABS_DIFF = 1e-4
BATCH = 256
# Input values per batch: 256 small images, 16 at 224 px. One batch of 153 photos at 224 px
# held ~9 GB of EfficientNet-Lite0 activations in eager PyTorch; 16 hold under 1 GB.
BATCH_VALUES = 16 * 3 * 224 * 224


def batch_size_for(images: np.ndarray) -> int:
    """``BATCH`` images, or fewer when they are large, so memory stays bounded."""
    per_image = max(1, int(np.prod(images.shape[1:])))
    return max(1, min(BATCH, BATCH_VALUES // per_image))


def predict(run: Runner, images: np.ndarray, batch: int | None = None) -> np.ndarray:
    """Logits for every image, in batches; torch's per-call deprecation warnings kept off
    the export's console (the runtime layer leaves warnings alone for the service)."""
    batch = batch or batch_size_for(images)
    with quiet_torch_deprecations():
        return np.concatenate([run(images[start : start + batch]) for start in range(0, len(images), batch)])


@dataclass(frozen=True)
class Parity:
    reference: str
    images: int
    max_abs_diff: float
    top1_agreement: float
    strict: bool  # whether the fp32 thresholds apply (they cannot for a quantized ONNX graph)

    @property
    def passed(self) -> bool:
        if not self.strict:
            return True
        return self.max_abs_diff <= PARITY_MAX_ABS_DIFF and self.top1_agreement == 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "images": self.images,
            "max_abs_diff": self.max_abs_diff,
            "top1_agreement": self.top1_agreement,
            "threshold_max_abs_diff": PARITY_MAX_ABS_DIFF if self.strict else None,
            "passed": self.passed,
        }

    def describe(self) -> str:
        return (
            f"max |logit diff| {self.max_abs_diff:.2e} (limit {PARITY_MAX_ABS_DIFF:.0e}), "
            f"top-1 agreement {self.top1_agreement:.2%} (need 100%) on {self.images} test images "
            f"vs {self.reference}"
        )


def parity(reference: np.ndarray, logits: np.ndarray, reference_name: str, strict: bool) -> Parity:
    return Parity(
        reference=reference_name,
        images=len(reference),
        max_abs_diff=float(np.abs(reference.astype(np.float64) - logits).max()),
        top1_agreement=float((reference.argmax(1) == logits.argmax(1)).mean()),
        strict=strict,
    )


def accuracy(logits: np.ndarray, data: ImageSet) -> float:
    return float((logits.argmax(1) == data.labels).mean())


def agreement(predicted: np.ndarray, reference_predicted: np.ndarray) -> float:
    return float((predicted == reference_predicted).mean())
