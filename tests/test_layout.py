"""The package layout the README describes: the shared contracts import no stage above them."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What slimserve/ must never import, anywhere: the stages and the composition root.
ABOVE = {"training", "export", "service", "benchmarks", "commands"}
# What slimserve/ must not import when a module is imported (the service imports it in every
# worker, torch-free); a function may import a runtime when it opens a model with it.
HEAVY = {"torch", "torchvision", "onnx", "onnxruntime", "torch_pruning", "bentoml"}
CONTRACTS = sorted((ROOT / "slimserve").rglob("*.py"))


def _packages(nodes) -> set[str]:
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def imported_packages(path: Path) -> set[str]:
    """Top-level package of every import in the file, those inside functions included."""
    return _packages(ast.walk(ast.parse(path.read_text(), filename=str(path))))


def imported_on_import(path: Path) -> set[str]:
    """Top-level package of every import that runs when the module is imported."""
    nodes, pending = [], [ast.parse(path.read_text(), filename=str(path))]
    while pending:
        node = pending.pop()
        nodes.append(node)
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            pending.extend(ast.iter_child_nodes(node))
    return _packages(nodes)


@pytest.mark.parametrize("path", CONTRACTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_slimserve_imports_no_stage(path: Path):
    assert imported_packages(path) & ABOVE == set()


@pytest.mark.parametrize("path", CONTRACTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_slimserve_imports_no_heavy_runtime_at_import(path: Path):
    assert imported_on_import(path) & HEAVY == set()


def test_the_import_checks_see_what_they_claim(tmp_path: Path):
    module = tmp_path / "m.py"
    module.write_text(
        "import os\nif True:\n    import numpy\n\ndef f():\n    from training.train import train\n"
        "    import torch.nn\n"
    )
    assert imported_packages(module) == {"os", "numpy", "training", "torch"}
    assert imported_on_import(module) == {"os", "numpy"}


def test_the_composition_root_lives_outside_slimserve():
    assert not (ROOT / "slimserve" / "cli.py").exists() and not (ROOT / "slimserve" / "demo.py").exists()
    assert {"training", "export", "service", "benchmarks"} <= imported_packages(ROOT / "commands" / "demo.py")


def test_every_command_s_help_is_built_without_torch_or_numpy():
    """Settings dataclasses live in torch-free modules, so generating the parsers stays instant."""
    code = (
        "import sys; from commands.main import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'numpy', 'onnxruntime', 'bentoml') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
