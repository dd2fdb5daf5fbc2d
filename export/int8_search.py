"""Accuracy-aware INT8: try calibration methods, then keep the most sensitive layers in fp32.

Shared by the ONNX Runtime and the PyTorch quantizers; each supplies ``build(method,
fp32_layers)`` (quantize and return a runner for the result) and ``rank(method)`` (the
layers, most sensitive first: ``export.int8`` measures the error of a model where only one
layer is quantized, against fp32 on calibration images, so the ranking never looks at the
test labels). The budget is
checked on the evaluation set, as the issue defines it.

The search is bounded by a count of attempts, not by a clock, so the same checkpoint and
settings give the same artifact on a busy or a quiet machine: every calibration method
once, then ``fallback_attempts`` builds that keep a geometrically growing number of the
most sensitive layers in fp32 (1, 3, 9, 25 of EfficientNet-Lite0's 50 layers with 4
attempts), so a few builds span the whole range up to ``MAX_FP32_SHARE``. A linear scan
(1, 2, 3, ... 25 layers) at 224 px cost one calibration and one evaluation per step and
ran past 29 minutes for the TorchScript file of Lite0 on this 2-core machine.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slimserve.runtime import Runner

# Beyond half of the layers in fp32 the variant would no longer be an INT8 model.
MAX_FP32_SHARE = 0.5


@dataclass(frozen=True)
class Attempt:
    method: str
    fp32_layers: tuple[str, ...]
    accuracy: float
    drop: float  # points vs fp32

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "fp32_layers": list(self.fp32_layers),
            "accuracy": self.accuracy,
            "accuracy_drop": round(self.drop, 4),
        }


class BudgetMissed(Exception):
    def __init__(self, attempts: list[Attempt], budget: float) -> None:
        best = min(attempts, key=lambda a: a.drop)
        super().__init__(
            f"INT8 accuracy drop {best.drop:.2f} points exceeds the {budget:g}-point budget after "
            f"{len(attempts)} attempts (best: {best.method} calibration with "
            f"{len(best.fp32_layers)} layers kept in fp32); raise --max-accuracy-drop or "
            "--int8-fallback-attempts, add --calibration-images, or serve fp32"
        )
        self.attempts = attempts


def fallback_counts(layers: int, attempts: int) -> list[int]:
    """How many of the most sensitive layers each fallback attempt keeps in fp32: ``attempts``
    counts spaced geometrically from 1 to ``MAX_FP32_SHARE`` of ``layers`` (fewer when
    they coincide; a small model gets the full linear scan)."""
    largest = int(layers * MAX_FP32_SHARE)
    if largest < 1 or attempts < 1:
        return []
    if attempts == 1:
        return [1]
    return sorted({max(1, round(largest ** (step / (attempts - 1)))) for step in range(attempts)})


def fit_budget(
    *,
    build: Callable[[str, tuple[str, ...]], Runner],
    evaluate: Callable[[Runner], float],
    rank: Callable[[str], list[str]],
    methods: list[str],
    layers: list[str],
    fp32_accuracy: float,
    budget: float,
    fallback_attempts: int,
) -> list[Attempt]:
    """Attempts in order; the last one met the budget and its artifact is the one on disk.

    ``rank`` (one quantization per layer) is called only when every method missed the
    budget and fallback attempts are allowed."""
    attempts: list[Attempt] = []

    def attempt(method: str, fp32_layers: tuple[str, ...]) -> bool:
        accuracy = evaluate(build(method, fp32_layers))
        attempts.append(Attempt(method, fp32_layers, accuracy, (fp32_accuracy - accuracy) * 100))
        return attempts[-1].drop <= budget

    for method in methods:
        if attempt(method, ()):
            return attempts
    counts = fallback_counts(len(layers), fallback_attempts)
    if not counts:
        raise BudgetMissed(attempts, budget)
    best = max(attempts, key=lambda a: a.accuracy).method
    ranking = rank(best)
    for count in counts:
        if attempt(best, tuple(ranking[:count])):
            return attempts
    raise BudgetMissed(attempts, budget)
