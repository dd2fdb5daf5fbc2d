"""The package layout the README describes: the shared contracts import no stage above them."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What slimserve/ must never import: the stages, the composition root, and the heavy
# runtimes (the service imports slimserve in every worker, torch-free).
ABOVE = {"training", "export", "service", "benchmarks", "commands"}
HEAVY = {"torch", "torchvision", "onnx", "onnxruntime", "torch_pruning", "bentoml"}


def imported_packages(path: Path) -> set[str]:
    """Top-level package of every import in the file, nested (function-level) ones included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("path", sorted((ROOT / "slimserve").glob("*.py")), ids=lambda p: p.name)
def test_slimserve_imports_no_stage_and_no_heavy_runtime(path: Path):
    assert imported_packages(path) & (ABOVE | HEAVY) == set()


def test_the_import_check_sees_nested_imports(tmp_path: Path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from training.train import train\n    import torch.nn\n")
    assert imported_packages(module) == {"os", "training", "torch"}


def test_the_composition_root_lives_outside_slimserve():
    assert not (ROOT / "slimserve" / "cli.py").exists() and not (ROOT / "slimserve" / "demo.py").exists()
    assert {"training", "export", "service", "benchmarks"} <= imported_packages(ROOT / "commands" / "demo.py")
