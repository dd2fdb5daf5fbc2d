"""The canary set written into every bundle: a few evaluation inputs and the fp32 answers.

INT8 kernels differ by CPU (AVX2 without VNNI saturates some u8s8 products; other
machines pick other kernels), so an artifact that met its budget here can answer
differently on the serving machine without any error. The service runs this set through
each variant at start (``service.canary``) and compares top-1 with the fp32 answers.

The images are the evaluation images the fp32 model is most sure of: every faithful variant
keeps those, so a disagreement there means the arithmetic changed, not that a borderline
image tipped. Inputs are stored preprocessed (float32 NCHW), so the check is of the model
and its kernels alone; preprocessing has its own parity tests. Safetensors, no pickle; the
file's sha256 is in the manifest and verified before use.
"""

import shutil
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from slimserve.hashing import sha256_file

CANARY_FILE = "canary.safetensors"
MAX_IMAGES = 32
MAX_BYTES = 8 * 1024 * 1024  # large inputs (224x224 RGB is 600 KB each) get fewer images


def _softmax_margin(logits: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability per row: how sure the model is."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    top2 = np.sort(probabilities, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def write_canary(bundle_dir: Path, images: np.ndarray, fp32_logits: Any, max_accuracy_drop: float) -> dict:
    """Write the canary file into ``bundle_dir``; returns its manifest entry.

    ``min_top1_agreement`` is the bundle's accuracy budget read as agreement: a variant
    whose top-1 answers differ from fp32 on more than ``max_accuracy_drop`` percent of
    these images would lose more than the budget allows.
    """
    logits = np.asarray(fp32_logits, dtype=np.float32)
    per_image = int(np.prod(images.shape[1:])) * 4
    count = max(1, min(MAX_IMAGES, len(images), MAX_BYTES // per_image))
    chosen = np.sort(np.argsort(-_softmax_margin(logits), kind="stable")[:count])
    path = bundle_dir / CANARY_FILE
    save_file(
        {
            "inputs": np.ascontiguousarray(images[chosen], dtype=np.float32),
            "fp32_logits": np.ascontiguousarray(logits[chosen]),
        },
        str(path),
    )
    return {
        "path": CANARY_FILE,
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "images": count,
        "selection": "the evaluation images with the largest fp32 top-1 margin",
        "min_top1_agreement": round(1.0 - max_accuracy_drop / 100.0, 6),
    }


def copy_canary(bundle_dir: Path, data: dict, target: Path) -> None:
    """Copy the canary (if the bundle has one) next to a store copy of the manifest."""
    entry = data.get("canary")
    if entry:
        shutil.copy2(bundle_dir / entry["path"], target / entry["path"])
