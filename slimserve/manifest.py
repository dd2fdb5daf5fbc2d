"""The bundle manifest: what `slimserve export` wrote, and what the service may serve.

A bundle is one export of one checkpoint, laid out as::

    BUNDLES_ROOT/NAME/VERSION/manifest.json
    BUNDLES_ROOT/NAME/VERSION/VARIANT/model.onnx        (ONNX, opset >= 17, dynamic batch)
    BUNDLES_ROOT/NAME/VERSION/VARIANT/model.ts          (frozen TorchScript)
    BUNDLES_ROOT/NAME/VERSION/VARIANT/model.pt2         (torch.export, float variants only)

Every file is listed with its sha256 and size; readers verify before loading. The
manifest also carries the preprocessing spec and class names, so a consumer needs
nothing else. Each variant is registered in BentoML's model store as
``NAME-VARIANT:VERSION`` (see ``export.registry``). Torch-free: the service imports it.
"""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimserve.documents import check_document, parse_json_file, write_json
from slimserve.errors import SlimserveError
from slimserve.hashing import verify_sha256
from slimserve.spec import PreprocessSpec

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
# Consumers pick a format by name; "pt2" is optional (bundles written before it lack it,
# INT8 variants never have it) and nothing in slimserve serves it.
FORMATS = ("onnx", "torchscript", "pt2")
FILE_NAMES = {"onnx": "model.onnx", "torchscript": "model.ts", "pt2": "model.pt2"}
# BentoML model names allow lowercase letters, digits, '-', '_' and '.'; so do ours.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


def check_name(kind: str, name: str) -> str:
    """Bundle, variant and version names become paths and BentoML tags: keep them plain."""
    if not NAME_PATTERN.fullmatch(name):
        raise SlimserveError(
            f"invalid {kind} name {name!r}: use lowercase letters, digits, '-', '_' or '.' (max 63)"
        )
    return name


@dataclass(frozen=True)
class ArtifactFile:
    """One file of a variant in one format, relative to the bundle folder."""

    format: str
    path: str
    sha256: str
    bytes: int

    def resolve(self, bundle_dir: Path) -> Path:
        """The absolute path, refusing anything that would leave the bundle folder."""
        candidate = (bundle_dir / self.path).resolve()
        if bundle_dir.resolve() not in candidate.parents:
            raise SlimserveError(f"manifest file path {self.path!r} points outside the bundle")
        return candidate

    def verified_path(self, bundle_dir: Path) -> Path:
        path = self.resolve(bundle_dir)
        if not path.is_file():
            raise SlimserveError(f"{path} is listed in the manifest but missing")
        verify_sha256(path, self.sha256)
        return path


@dataclass(frozen=True)
class Variant:
    """A manifest entry: one compressed (or not) version of the model, in one or more formats."""

    name: str
    entry: dict[str, Any]

    @property
    def files(self) -> dict[str, ArtifactFile]:
        return {
            fmt: ArtifactFile(format=fmt, path=f["path"], sha256=f["sha256"], bytes=int(f["bytes"]))
            for fmt, f in self.entry["files"].items()
        }

    @property
    def precision(self) -> str:
        return str(self.entry["precision"])


@dataclass(frozen=True)
class Manifest:
    """A parsed, validated manifest and the folder it describes."""

    data: dict[str, Any]
    bundle_dir: Path

    @property
    def name(self) -> str:
        return str(self.data["name"])

    @property
    def version(self) -> str:
        return str(self.data["version"])

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.data["preprocess"])

    @property
    def classes(self) -> list[str]:
        return list(self.data["classes"])

    @property
    def variants(self) -> dict[str, Variant]:
        return {name: Variant(name, entry) for name, entry in self.data["variants"].items()}

    @property
    def failed(self) -> dict[str, dict[str, Any]]:
        """Variants that could not be built: ``reason`` (one line) plus, from bundles written
        since failures name their layer, ``step``, ``format``, ``layer``, ``layer_class``,
        ``op`` and ``error``. Older bundles stored the reason string alone."""
        return {
            name: {"reason": entry} if isinstance(entry, str) else dict(entry)
            for name, entry in self.data.get("failed", {}).items()
        }

    def variant(self, name: str) -> Variant:
        variants = self.variants
        if name not in variants:
            raise SlimserveError(
                f"bundle {self.name}:{self.version} has no variant {name!r}; it has {', '.join(variants)}"
            )
        return variants[name]


REQUIRED = ("schema_version", "name", "version", "preprocess", "classes", "variants", "parent")


def validate_manifest(data: Any, source: str) -> dict[str, Any]:
    """Structural checks with one-line errors; returns the data unchanged."""
    check_document(data, source, REQUIRED, SCHEMA_VERSION)
    check_name("bundle", str(data["name"]))
    check_name("version", str(data["version"]))
    PreprocessSpec.from_dict(data["preprocess"])
    if not isinstance(data["variants"], dict):
        raise SlimserveError(f"{source} is malformed: variants must be an object")
    for name, entry in data["variants"].items():
        check_name("variant", name)
        files = entry.get("files") if isinstance(entry, dict) else None
        if not isinstance(files, dict) or not files:
            raise SlimserveError(f"{source}: variant {name!r} lists no files")
        for fmt, item in files.items():
            if fmt not in FORMATS:
                raise SlimserveError(f"{source}: variant {name!r} has unknown format {fmt!r}")
            if not isinstance(item, dict) or not {"path", "sha256", "bytes"} <= item.keys():
                raise SlimserveError(f"{source}: variant {name!r} {fmt} entry needs path, sha256, bytes")
    failed = data.get("failed", {})
    if not isinstance(failed, dict) or not all(
        isinstance(entry, str) or (isinstance(entry, dict) and isinstance(entry.get("reason"), str))
        for entry in failed.values()
    ):
        raise SlimserveError(f"{source} is malformed: failed must map variant names to reasons")
    return data


def read_manifest(bundle_dir: str | Path) -> Manifest:
    """Parse and validate ``bundle_dir/manifest.json`` (file hashes are checked on load)."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST_FILE
    if not path.is_file():
        raise SlimserveError(f"{bundle_dir} is not a slimserve bundle: {MANIFEST_FILE} is missing")
    return Manifest(validate_manifest(parse_json_file(path), str(path)), bundle_dir)


def write_manifest(bundle_dir: Path, data: dict[str, Any]) -> Path:
    """Validate and write; the writer and the reader share one definition of valid."""
    path = bundle_dir / MANIFEST_FILE
    validate_manifest(data, str(path))
    write_json(path, data)
    return path
