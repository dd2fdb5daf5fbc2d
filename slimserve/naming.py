"""Default folder names for runs, so ``train`` and ``distill`` agree on where a run lands."""

from pathlib import Path

RUNS_ROOT = Path("runs")


def default_run_dir(model: str, dataset: str, suffix: str = "") -> Path:
    """``runs/MODEL-DATASET[-SUFFIX]``; a ``folder:PATH`` dataset becomes ``folder-PATH`` with
    its slashes as underscores, so the run stays one folder below ``runs``."""
    dataset = dataset.replace("folder:", "folder-").replace("/", "_").strip("_")
    return RUNS_ROOT / "-".join(part for part in (model, dataset, suffix) if part)
