"""The start-up canary: does each variant still answer like fp32 on this machine?

Export stores a few preprocessed evaluation images and the fp32 answers in the bundle
(``export.canary``). At start every variant runs them, one image per call as most
requests arrive, and its top-1 agreement with the fp32 answers is logged and shown in
``/models``. Below the bundle's budget the variant is still served unless ``strict`` is
set, which refuses it with one line. A bundle from before canaries has none: it is served
and ``/models`` says its answers were not checked.
"""

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from slimserve.errors import SlimserveError
from slimserve.manifest import ArtifactFile, Manifest
from slimserve.runtime import Runner

logger = logging.getLogger("slimserve.service")
ABSENT_NOTE = "this bundle was exported without a canary set: answers on this machine are not checked"


def load_canary(manifest: Manifest, model_dir: Path) -> dict[str, np.ndarray] | None:
    """The canary tensors, sha256-verified (``None`` for a bundle without a canary)."""
    entry = manifest.data.get("canary")
    if not entry:
        return None
    listed = ArtifactFile(
        format="canary", path=entry["path"], sha256=entry["sha256"], bytes=int(entry["bytes"])
    )
    tensors = load_file(str(listed.verified_path(model_dir)))
    if set(tensors) != {"inputs", "fp32_logits"} or len(tensors["inputs"]) != len(tensors["fp32_logits"]):
        raise SlimserveError(f"{model_dir / entry['path']}: not a slimserve canary set")
    return tensors


def run_canary(backend: Runner, manifest: Manifest, model_dir: Path) -> dict[str, Any]:
    """Agreement of ``backend`` with the stored fp32 answers, as ``/models`` shows it."""
    tensors = load_canary(manifest, model_dir)
    if tensors is None:
        return {"status": "absent", "note": ABSENT_NOTE}
    budget = float(manifest.data["canary"]["min_top1_agreement"])
    inputs, expected = tensors["inputs"], tensors["fp32_logits"]
    start = time.perf_counter()
    try:
        logits = np.concatenate([backend.run(inputs[i : i + 1]) for i in range(len(inputs))])
    except Exception as exc:  # a model that cannot run its canary fails it, with the reason
        return {
            "status": "failed",
            "images": len(inputs),
            "min_top1_agreement": budget,
            "error": str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__,
        }
    agreement = float(np.mean(logits.argmax(1) == expected.argmax(1)))
    difference = float(np.abs(logits - expected).max())
    return {
        "status": "passed" if agreement >= budget else "failed",
        "images": len(inputs),
        "top1_agreement": agreement,
        "min_top1_agreement": budget,
        # JSON has no NaN: a non-finite answer is reported as null here and fails top-1 anyway.
        "max_abs_logit_diff": difference if math.isfinite(difference) else None,
        "seconds": round(time.perf_counter() - start, 4),
    }


def check_canary(result: dict[str, Any], tag: str, strict: bool) -> None:
    """Log the outcome; in strict mode a failed canary refuses the variant."""
    if result["status"] == "absent":
        logger.warning("%s: %s", tag, ABSENT_NOTE)
        return
    if result["status"] == "passed":
        logger.info("%s: canary passed, top-1 agreement %.1f%% with fp32 on %d images", tag,
                    100 * result["top1_agreement"], result["images"])  # fmt: skip
        return
    measured = (
        f"could not run ({result['error']})"
        if "error" in result
        else f"top-1 agreement {result['top1_agreement']:.1%} with fp32"
    )
    message = (
        f"{tag}: canary {measured} on this machine, below the bundle's budget of "
        f"{result['min_top1_agreement']:.1%} ({result['images']} images)"
    )
    if strict:
        raise SlimserveError(f"strict mode: {message}; re-export on this hardware or serve without --strict")
    logger.warning("%s; serving it anyway (no --strict)", message)
