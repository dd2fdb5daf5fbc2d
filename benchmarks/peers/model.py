"""The per-request work every peer runs: bytes -> decode + preprocess -> ONNX Runtime -> top-5.

One class, shared by all peer servers, so the frameworks differ only in what surrounds
the model. The model is opened through ``open_backend``, the one place to re-point when
the shared runtime layer moves.
"""

import argparse
import base64
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.reference_server import cpu_backend
from service.errors import RequestError
from service.preprocess import Preprocessor
from slimserve.manifest import read_manifest
from slimserve.runtime import Runner
from slimserve.topk import top_k  # the service's own answer

ENV = "SLIMSERVE_PEER"  # the settings reach every framework's worker processes through the environment
MAX_PIXELS = 4096 * 4096  # the service's default bounds
TOP_K = 5  # the service's default


@dataclass(frozen=True)
class PeerSettings:
    """What a peer server needs; serialised into ``SLIMSERVE_PEER`` by the benchmark."""

    bundle_dir: str
    variant: str
    workers: int
    threads: int
    max_batch_size: int
    batch_wait_ms: float

    def to_env(self) -> dict[str, str]:
        return {ENV: json.dumps(asdict(self))}

    @classmethod
    def from_env(cls) -> "PeerSettings":
        return cls(**json.loads(os.environ[ENV]))


def open_backend(bundle_dir: Path, variant: str, threads: int, label: str) -> Runner:
    """The variant's hash-checked ONNX file opened by ``slimserve.runtime`` with the service's
    session options (CPU, ``threads`` intra-op threads), as the bare reference opens it."""
    return cpu_backend(read_manifest(bundle_dir), variant, "onnx", threads, label)


class Classifier:
    """The variant, its preprocessing and its classes, opened once per worker process."""

    def __init__(self, settings: PeerSettings, label: str) -> None:
        manifest = read_manifest(settings.bundle_dir)
        self.variant = settings.variant
        self.backend = open_backend(Path(settings.bundle_dir), settings.variant, settings.threads, label)
        self.preprocess = Preprocessor(manifest.spec)
        self.classes = manifest.classes
        self.backend.run(np.zeros((1, *manifest.spec.input_shape), np.float32))  # warm-up

    def answer(self, logits: np.ndarray) -> dict[str, Any]:
        return {"variant": self.variant, "predictions": top_k(logits, TOP_K, self.classes)}

    def predict(self, payloads: list[bytes]) -> list[dict[str, Any]]:
        """One model call for the whole list; a payload that does not decode gets its error
        instead of failing its neighbours."""
        answers: list[dict[str, Any] | None] = [None] * len(payloads)
        rows, good = [], []
        for index, data in enumerate(payloads):
            try:
                rows.append(self.preprocess.payload(data, MAX_PIXELS))
                good.append(index)
            except RequestError as exc:
                answers[index] = {"error": exc.message, "status": exc.status}
        if rows:
            logits = self.backend.run(rows[0] if len(rows) == 1 else np.concatenate(rows))
            for index, row in zip(good, logits, strict=True):
                answers[index] = self.answer(row)
        return answers  # type: ignore[return-value]


def b64_payload(body: dict[str, Any]) -> bytes:
    """The image of a ``{"image": base64}`` JSON body, for frameworks that only take JSON."""
    return base64.b64decode(body["image"], validate=True)


def server_arguments(description: str | None, *ports: str) -> tuple[argparse.Namespace, PeerSettings]:
    """What every peer server module starts with: ``--port`` (and any other ``ports`` it
    listens on), ``--batched``, and the settings the benchmark passed through the environment."""
    parser = argparse.ArgumentParser(description=description)
    for flag in ("--port", *ports):
        parser.add_argument(flag, type=int, required=True)
    parser.add_argument("--batched", action="store_true")
    return parser.parse_args(), PeerSettings.from_env()
