"""BentoML model store registration: how the service finds a variant by name and version.

Each variant becomes the BentoML model ``NAME-VARIANT:VERSION``. Its folder holds the full
``manifest.json`` and the variant's files at the same relative paths as in the bundle, so
``read_manifest(model.path)`` and ``ArtifactFile.verified_path(model.path)`` work on the
store copy exactly as on the bundle. The service reads only the store, never this code.
"""

import shutil
from pathlib import Path
from typing import Any

import bentoml

from export.canary import copy_canary
from slimserve.errors import SlimserveError
from slimserve.manifest import MANIFEST_FILE, Manifest
from slimserve.store_names import model_name, store_labels


def _metadata_safe(value: Any) -> Any:
    """BentoML metadata takes basic types only: drop ``None`` (JSON null) entries."""
    if isinstance(value, dict):
        return {str(k): _metadata_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_metadata_safe(v) for v in value if v is not None]
    return value


def variant_metadata(manifest: Manifest, variant: str) -> dict[str, Any]:
    """The variant entry plus the bundle-level fields a consumer needs without the file."""
    data = manifest.data
    bundle_fields = {
        key: data[key]
        for key in ("name", "version", "created_at", "dataset", "classes", "preprocess", "parent")
        if key in data
    }
    return _metadata_safe(
        {
            **manifest.variant(variant).entry,
            "variant": variant,
            "bundle": bundle_fields,
            "default_variant": data.get("default_variant"),
            "schema_version": data["schema_version"],
        }
    )


def register_bundle(manifest: Manifest) -> list[str]:
    """Copy every variant of a written bundle into the BentoML store; returns the tags."""
    tags = []
    for variant_name, variant in manifest.variants.items():
        tag = f"{model_name(manifest.name, variant_name)}:{manifest.version}"
        try:
            bentoml.models.get(tag)
        except bentoml.exceptions.NotFound:
            pass
        else:
            raise SlimserveError(
                f"BentoML model {tag} already exists; export with a new --version "
                f"or remove it with: bentoml models delete {tag} -y"
            )
        with bentoml.models.create(
            tag,
            labels=store_labels(manifest.name, variant_name),
            metadata=variant_metadata(manifest, variant_name),
        ) as model:
            target = Path(model.path)
            shutil.copy2(manifest.bundle_dir / MANIFEST_FILE, target / MANIFEST_FILE)
            copy_canary(manifest.bundle_dir, manifest.data, target)
            for artifact in variant.files.values():
                source = artifact.verified_path(manifest.bundle_dir)
                destination = target / artifact.path
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, destination)
        tags.append(tag)
    return tags
