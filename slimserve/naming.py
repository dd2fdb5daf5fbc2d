"""Default names for runs and bundles, so ``train``, ``distill`` and ``export`` agree on them."""

from pathlib import Path

RUNS_ROOT = Path("runs")


def dataset_slug(name: str) -> str:
    """A short name for run and bundle folders: a ``folder:PATH`` dataset's own folder name
    (``folder:/data/photos`` -> ``photos``), any other dataset's name as it is."""
    if name.startswith("folder:"):
        return Path(name[len("folder:") :]).resolve().name or "folder"
    return name


def model_slug(model: str) -> str:
    """``timm:tf_efficientnet_lite0`` -> ``tf_efficientnet_lite0``: the library prefix is in the metadata."""
    return model.split(":")[-1]


def default_run_dir(model: str, dataset: str, suffix: str = "") -> Path:
    """``runs/MODEL-DATASET[-SUFFIX]``, named by ``model_slug`` and ``dataset_slug``."""
    return RUNS_ROOT / "-".join(part for part in (model_slug(model), dataset_slug(dataset), suffix) if part)
