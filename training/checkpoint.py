"""Self-describing checkpoints: safetensors weights plus a versioned JSON metadata file.

A run folder holds ``model.safetensors`` (the last epoch's weights, no pickle) and
``metadata.json`` (schema below). Loading reads the metadata, verifies the weights'
sha256, rebuilds the model from ``arch`` + ``arch_kwargs`` and loads the weights
strictly. Files are written to a temporary name and moved into place, so a crash never
leaves a half-written checkpoint behind (timm's ``CheckpointSaver`` does the same).
"""

import platform
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torchvision
from torch import nn

import slimserve
from slimserve.documents import atomic_write, check_document, parse_json_file, write_json
from slimserve.errors import SlimserveError
from slimserve.hashing import sha256_file, verify_sha256
from slimserve.spec import PreprocessSpec
from training.models import build_model

SCHEMA_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
METADATA_FILE = "metadata.json"
REQUIRED_KEYS = (
    "schema_version",
    "arch",
    "arch_kwargs",
    "dataset",
    "classes",
    "preprocess",
    "weights_file",
    "weights_sha256",
)


@dataclass(frozen=True)
class Checkpoint:
    """A loaded, verified checkpoint: the model in eval mode and its metadata."""

    model: nn.Module
    metadata: dict[str, Any]
    run_dir: Path

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.metadata["preprocess"])

    @property
    def classes(self) -> list[str]:
        return list(self.metadata["classes"])


def _timm_version() -> str | None:
    """timm's version if it is installed (it is a dependency, but only backbones import it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("timm")
    except PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    return {
        "slimserve": slimserve.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": _timm_version(),
        "python": platform.python_version(),
    }


def git_commit() -> str | None:
    """The commit of the slimserve source that produced an artifact, if it is a git checkout."""
    source = Path(__file__).resolve().parent
    try:
        result = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def save_checkpoint(run_dir: Path, model: nn.Module, metadata: dict[str, Any]) -> dict[str, Any]:
    """Write weights then metadata (with the weights' hash); returns the metadata written."""
    missing = [
        key for key in ("arch", "arch_kwargs", "dataset", "classes", "preprocess") if key not in metadata
    ]
    if missing:
        raise ValueError(f"checkpoint metadata lacks {missing}")
    run_dir = Path(run_dir)
    weights = run_dir / WEIGHTS_FILE
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    atomic_write(weights, lambda tmp: safetensors.torch.save_file(state, str(tmp)))
    full = {
        "schema_version": SCHEMA_VERSION,
        "kind": "slimserve.checkpoint",
        **metadata,
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": sha256_file(weights),
        "parameters": sum(t.numel() for t in model.parameters()),
        "versions": library_versions(),
        "git_commit": git_commit(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_json(run_dir / METADATA_FILE, full)
    return full


def read_metadata(run_dir: Path) -> dict[str, Any]:
    """Parse and validate ``metadata.json``; every failure is one line naming the file."""
    path = Path(run_dir) / METADATA_FILE
    if not path.is_file():
        raise SlimserveError(f"{run_dir} is not a slimserve run folder: {METADATA_FILE} is missing")
    metadata = check_document(parse_json_file(path), str(path), REQUIRED_KEYS, SCHEMA_VERSION)
    if Path(metadata["weights_file"]).name != metadata["weights_file"]:
        raise SlimserveError(f"{path} is malformed: weights_file must be a plain file name")
    PreprocessSpec.from_dict(metadata["preprocess"])  # validates the spec
    return metadata


def load_checkpoint(run_dir: str | Path) -> Checkpoint:
    """Verify and load a checkpoint without unpickling anything."""
    run_dir = Path(run_dir)
    metadata = read_metadata(run_dir)
    weights = run_dir / metadata["weights_file"]
    if not weights.is_file():
        raise SlimserveError(f"{weights} is missing")
    verify_sha256(weights, metadata["weights_sha256"])
    spec = PreprocessSpec.from_dict(metadata["preprocess"])
    model = build_model(
        metadata["arch"],
        in_channels=spec.channels,
        num_classes=len(metadata["classes"]),
        input_size=(spec.height, spec.width),
        **metadata["arch_kwargs"],
    )
    try:
        state = safetensors.torch.load_file(str(weights))
        model.load_state_dict(state, strict=True)
    except (RuntimeError, OSError, safetensors.SafetensorError) as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise SlimserveError(f"{weights} does not match its metadata: {first_line}") from None
    return Checkpoint(model=model.eval(), metadata=metadata, run_dir=run_dir)
