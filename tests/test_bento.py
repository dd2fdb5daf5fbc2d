"""The Bento runs from its own files: everything the service imports is packed, the pins
are the tested versions, and a built Bento serves from a fresh store with the checkout out
of the way, answering exactly as the source service does.

The editable install of this project puts the checkout on every interpreter's import path
(a meta-path finder installed by a ``.pth`` file), which once hid a module missing from the
Bento. The serving test therefore runs in a virtual environment that sees the installed
packages as plain directories, so no ``.pth`` file of theirs runs, and proves first that
``slimserve`` cannot be imported there at all without the Bento.
"""

import ast
import functools
import importlib.metadata
import json
import os
import re
import site
import subprocess
import sys
from pathlib import Path

import pytest
from bentoml._internal.bento.build_config import BentoPathSpec  # the matcher `bentoml build` uses
from conftest import free_port, interrupt_group
from deployment import (
    REPO,
    assert_same_predictions,
    bentofile,
    build_bento,
    png_bytes,
    registered_fp32_bundle,
    served_predictions,
    source_predictions,
    wait_ready,
    without_checkout,
)

BUNDLE = "bento-cnn"
# Packages whose import at module scope would break a torch-free image.
TORCH_SIDE_LIBRARIES = {"torch", "torchvision", "onnx", "onnxscript", "torch_pruning", "timm"}


def project_packages() -> set[str]:
    return {p.parent.name for p in REPO.glob("*/__init__.py")}


@functools.cache
def bento_path_spec() -> BentoPathSpec:
    config = bentofile()
    return BentoPathSpec(config["include"], config.get("exclude", []), str(REPO))


def packed(relpath: str) -> bool:
    return bento_path_spec().includes(relpath)


def module_file(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports_of(path: Path, module: str) -> list[tuple[str, bool]]:
    """(imported module, at module scope?) for every import in ``path``, lazy ones included."""
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(node) for node in tree.body}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}".strip(".")
            found.append((base, id(node) in top_level))
            found += [(f"{base}.{alias.name}", id(node) in top_level) for alias in node.names]
    return found


def project_closure(start: str) -> dict[str, Path]:
    """Every project module ``start`` imports, directly or not, with its parent packages."""
    mine = project_packages()
    todo, seen = [start], {}
    while todo:
        module = todo.pop()
        parts = module.split(".")
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[:depth])
            path = module_file(name)
            if name in seen or path is None:
                continue
            seen[name] = path
            todo += [m for m, _ in imports_of(path, name) if m.split(".")[0] in mine]
    return seen


def service_module() -> str:
    return bentofile()["service"].split(":")[0]


def packed_modules() -> dict[str, Path]:
    found = {}
    for path in REPO.rglob("*.py"):
        relpath = path.relative_to(REPO).as_posix()
        if packed(relpath):
            found[relpath.removesuffix(".py").removesuffix("/__init__").replace("/", ".")] = path
    return found


def test_every_module_the_service_imports_is_packed():
    closure = project_closure(service_module())
    assert {"service.service", "slimserve.runtime", "slimserve.allocator"} <= set(closure)
    missing = sorted(m for m, path in closure.items() if not packed(path.relative_to(REPO).as_posix()))
    assert not missing, f"the service imports {missing}, which bentofile.yaml leaves out of the Bento"


def test_no_packed_module_reaches_training_code_or_imports_torch_at_module_scope():
    modules = packed_modules()
    assert {m.split(".")[0] for m in modules} == {"service", "slimserve"}
    unpacked_project = project_packages() - {m.split(".")[0] for m in modules}
    assert {"training", "export", "benchmarks"} <= unpacked_project
    for module, path in modules.items():
        for imported, at_module_scope in imports_of(path, module):
            top = imported.split(".")[0]
            assert top not in unpacked_project, f"{module} imports {imported}: exclude it in bentofile.yaml"
            assert not (at_module_scope and top in TORCH_SIDE_LIBRARIES), (
                f"{module} imports {imported} at module scope; the Bento carries no torch"
            )


def test_pinned_packages_are_the_installed_ones():
    pins = bentofile()["python"]["packages"]
    assert pins, "bentofile.yaml pins no packages"
    for line in pins:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^\s;]+)", line)
        assert match, f"bentofile.yaml: {line!r} is not pinned with =="
        name, version = match.group(1), match.group(3)
        installed = importlib.metadata.version(name)
        assert installed == version, f"bentofile.yaml pins {line}, the tests run with {name}=={installed}"
    names = {re.split(r"[\[=]", line)[0] for line in pins}
    assert {"bentoml", "onnxruntime-gpu", "numpy", "pillow"} <= names


def _requirement_names(distribution: str, extras: set[str]) -> set[str]:
    """Distributions ``distribution`` (with ``extras``) installs, itself included, transitively."""
    todo, seen = [(distribution, extras)], set()
    while todo:
        name, wanted = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # an extra's requirement that is not installed here cannot be checked
        for line in requires:
            requirement, _, marker = line.partition(";")
            extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
            if extra and extra.group(1) not in wanted:
                continue
            match = re.match(r"\s*([A-Za-z0-9_.-]+)(\[([^\]]*)\])?", requirement)
            todo.append((match.group(1), set(filter(None, (match.group(3) or "").split(",")))))
    return seen


def test_every_library_a_packed_module_imports_is_installed_by_the_pins():
    """The Bento's image installs only bentofile.yaml's packages: a packed module that imports
    another library (safetensors for the canary, once) would fail at import in the container
    while every test on this machine passed."""
    installed_by_pins = set()
    for line in bentofile()["python"]["packages"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[([^\]]*)\])?==.*", line)
        installed_by_pins |= _requirement_names(match.group(1), set((match.group(3) or "").split(",")))
    providers = importlib.metadata.packages_distributions()
    mine = project_packages()
    for module, path in packed_modules().items():
        for imported, _at_module_scope in imports_of(path, module):
            top = imported.split(".")[0]
            if top in mine or top in sys.stdlib_module_names or not top or top in TORCH_SIDE_LIBRARIES:
                continue  # torch-side imports are lazy and checked above
            distributions = {re.sub(r"[-_.]+", "-", d).lower() for d in providers.get(top, [])}
            assert distributions & installed_by_pins, (
                f"{module} imports {imported} ({', '.join(sorted(distributions)) or 'not installed'}), "
                "which no package pinned in bentofile.yaml installs: pin it there"
            )


# ---------------------------------------------------------------- built and served


@pytest.fixture(scope="module")
def bento_bundle(tiny_cnn_run: Path, tmp_path_factory: pytest.TempPathFactory):
    return registered_fp32_bundle(tiny_cnn_run, tmp_path_factory.mktemp("bento-bundles"), BUNDLE)


@pytest.fixture(scope="module")
def sample_png() -> bytes:
    from training.datasets import load_data

    return png_bytes(load_data("fashion-mnist").test[7][0])


def isolated_python(venv: Path) -> Path:
    """A venv that imports the installed packages but runs none of their ``.pth`` files."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = Path(
        subprocess.check_output(
            [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            text=True,
        ).strip()
    )
    # Plain directory lines: Python appends them to sys.path without reading their .pth files.
    (purelib / "host_site_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return venv / "bin" / "python"


@pytest.mark.slow
@pytest.mark.http
def test_bento_serves_from_a_fresh_store_without_the_checkout(bento_bundle, sample_png, tmp_path):
    build_env = {**os.environ, "SLIMSERVE_BUNDLE": BUNDLE, "SLIMSERVE_VARIANTS": "fp32"}
    tag, bento_dir = build_bento(build_env)
    packed_files = {p.relative_to(bento_dir / "src").as_posix() for p in (bento_dir / "src").rglob("*.py")}
    assert "slimserve/allocator.py" in packed_files and "service/service.py" in packed_files
    assert not any(f.startswith(("training/", "export/", "benchmarks/")) for f in packed_files)

    # Deployed as a user would: the Bento archive imported into a store of its own.
    archive = tmp_path / "slimserve.bento"
    subprocess.run([sys.executable, "-m", "bentoml", "export", tag, str(archive)], env=build_env, check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    python = isolated_python(tmp_path / "venv")
    env = without_checkout(os.environ) | {"BENTOML_HOME": str(tmp_path / "deployed-home")}
    for key in ("SLIMSERVE_BUNDLE", "SLIMSERVE_VERSION", "SLIMSERVE_VARIANTS"):
        env.pop(key, None)

    def run(*args: str, env: dict[str, str] = env, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(python), *args], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=timeout
        )

    probe = run("-c", "import importlib.util as u; print(u.find_spec('slimserve'), u.find_spec('service'))")
    assert probe.stdout.split() == ["None", "None"], probe.stdout + probe.stderr
    imported = run("-m", "bentoml", "import", str(archive), timeout=120)
    assert imported.returncode == 0, imported.stderr[-2000:]
    deployed = Path(env["BENTOML_HOME"]) / "bentos" / tag.replace(":", "/")
    # The packed src/ alone on the path: every module the service imports comes from it.
    where = run(
        "-c",
        "import json, sys, service.service; print(json.dumps([m.__file__ for n, m in sys.modules.items() "
        "if n.split('.')[0] in ('service', 'slimserve') and getattr(m, '__file__', None)]))",
        timeout=120,
        env=env | {"PYTHONPATH": str(deployed / "src")},
    )
    assert where.returncode == 0, where.stderr[-3000:]
    files = json.loads(where.stdout.strip().splitlines()[-1])
    assert any(f.endswith("slimserve/runtime/__init__.py") for f in files), files
    assert all(Path(f).is_relative_to(deployed / "src") for f in files), files

    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [str(python), "-m", "bentoml", "serve", tag, "--host", "127.0.0.1", "--port", str(port)],
            cwd=elsewhere, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, lambda: server.poll() is None, log)
        answer = served_predictions(url, sample_png)
    finally:
        interrupt_group(server, 30)
    assert (answer["bundle"], answer["version"], answer["variant"]) == (BUNDLE, "v1", "fp32")
    expected = source_predictions(bento_bundle.bundle_dir, f"{BUNDLE}-fp32:v1", "fp32", sample_png)
    assert_same_predictions(answer["predictions"], expected)
