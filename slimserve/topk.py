"""The answer every HTTP front gives: softmax over one row of logits, the k best classes.

numpy only, so the service (BentoML) and the bare benchmark reference (no BentoML) answer
with the very same function and their figures compare like for like.
"""

from typing import Any

import numpy as np


def top_k(logits: np.ndarray, k: int, classes: list[str]) -> list[dict[str, Any]]:
    """Softmax over one row of logits; the k most probable classes, best first (k capped at the class count)."""
    shifted = logits.astype(np.float64) - logits.max()
    probabilities = np.exp(shifted)
    probabilities /= probabilities.sum()
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [{"index": int(i), "label": classes[i], "probability": float(probabilities[i])} for i in order]
