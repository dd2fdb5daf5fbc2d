"""Finding a bundle's variants in the BentoML model store and loading them, verified.

Export registers each variant as ``NAME-VARIANT:VERSION`` with the labels of
``slimserve.store_names``; the service picks one bundle version and loads every requested
variant of it. Model tags come from the store and the config, never from request data.
"""

import io
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml
from PIL import Image

from service.canary import check_canary, run_canary
from service.config import BACKENDS, ServeConfig
from service.preprocess import Preprocessor, open_image
from slimserve.errors import SlimserveError
from slimserve.manifest import Manifest, read_manifest
from slimserve.runtime import Runner, RuntimeOptions, open_runner
from slimserve.store_names import BUNDLE_LABEL, VARIANT_LABEL, is_bundle_model

logger = logging.getLogger("slimserve.service")


def bundle_models() -> list[bentoml.Model]:
    return [m for m in bentoml.models.list() if is_bundle_model(m.info.labels)]


def resolve_tags(config: ServeConfig) -> dict[str, str]:
    """``{variant: tag}`` for the configured bundle, version and variants."""
    models = bundle_models()
    if not models:
        raise SlimserveError(
            f"no slimserve bundle in the BentoML model store under {_store_home()}; "
            "create one with: slimserve export RUN_DIR"
        )
    bundles = sorted({m.info.labels[BUNDLE_LABEL] for m in models})
    bundle = config.bundle
    if not bundle:
        if len(bundles) > 1:
            raise SlimserveError(
                f"the model store holds several bundles ({', '.join(bundles)}); "
                "choose one with --bundle or SLIMSERVE_BUNDLE"
            )
        bundle = bundles[0]
    elif bundle not in bundles:
        raise SlimserveError(f"no bundle {bundle!r} in the model store; it has {', '.join(bundles)}")
    mine = [m for m in models if m.info.labels[BUNDLE_LABEL] == bundle]
    versions = {m.tag.version for m in mine}
    if config.version == "latest":
        version = max(mine, key=lambda m: m.info.creation_time).tag.version
    elif config.version in versions:
        version = config.version
    else:
        raise SlimserveError(
            f"bundle {bundle} has no version {config.version!r}; it has {', '.join(sorted(versions))}"
        )
    found = {m.info.labels[VARIANT_LABEL]: str(m.tag) for m in mine if m.tag.version == version}
    wanted = config.variant_list or sorted(found)
    unknown = [v for v in wanted if v not in found]
    if unknown:
        raise SlimserveError(
            f"bundle {bundle}:{version} has no variant {', '.join(unknown)}; it has {', '.join(sorted(found))}"
        )
    return {v: found[v] for v in wanted}


def _store_home() -> str:
    return os.environ.get("BENTOML_HOME", "~/bentoml")


@dataclass
class LoadedVariant:
    """One variant ready to answer: its manifest, preprocessing and a warmed-up backend."""

    name: str
    tag: str
    manifest: Manifest
    preprocessor: Preprocessor
    backend: Runner
    load_seconds: float
    canary: dict[str, Any]  # the start-up canary's outcome on this machine (service.canary)

    @property
    def classes(self) -> list[str]:
        return self.manifest.classes

    def describe(self) -> dict[str, object]:
        return {
            "variant": self.name,
            "bundle": self.manifest.name,
            "version": self.manifest.version,
            "tag": self.tag,
            **self.backend.describe(),
            "load_seconds": round(self.load_seconds, 3),
            "canary": self.canary,
            "manifest": self.manifest.data,
        }


def load_variant(name: str, tag: str, model_dir: Path, config: ServeConfig) -> LoadedVariant:
    """Read the manifest, verify the file's sha256, create and warm up the backend, run the canary."""
    start = time.perf_counter()
    manifest = read_manifest(model_dir)
    variant = manifest.variant(name)
    files = variant.files
    if config.backend not in files:
        servable = [fmt for fmt in BACKENDS if fmt in files]
        raise SlimserveError(
            f"{tag} has no {config.backend} file (servable: {', '.join(servable) or 'none'}); "
            "choose --backend accordingly"
        )
    path = files[config.backend].verified_path(model_dir)
    preprocessor = Preprocessor(manifest.spec)
    options = RuntimeOptions(
        threads=config.thread_count, providers=config.providers, strict=config.strict, label=tag
    )
    backend = open_runner(config.backend, path, options)
    # The whole request path once before readiness turns green: Pillow loads its decoder
    # plugins on first use (~20 ms) and ORT allocates its arenas on the first runs.
    spec = manifest.spec
    sample = io.BytesIO()
    Image.new(spec.pil_mode, (spec.width, spec.height)).save(sample, format="PNG")
    batch = preprocessor.batch([open_image(sample.getvalue(), config.max_pixels)])
    for _ in range(config.warmup_runs):
        logits = backend.run(batch)
    if logits.shape != (1, len(manifest.classes)):
        raise SlimserveError(
            f"{tag}: model output shape {tuple(logits.shape)} does not match "
            f"{len(manifest.classes)} classes in the manifest"
        )
    canary = run_canary(backend, manifest, model_dir)
    check_canary(canary, tag, config.strict)
    return LoadedVariant(name, tag, manifest, preprocessor, backend, time.perf_counter() - start, canary)
