"""Shared fixtures: real Fashion-MNIST subsets and tiny models trained in the session.

Nothing here mocks torch, ONNX Runtime or BentoML. Fashion-MNIST comes from the Debian
package the README's test command installs; when it is missing the tests fail with the
fix, they do not skip.

Test tiers (declared in pyproject.toml): a test that uses an expensive fixture, directly
or through another fixture, is marked with that fixture's tier at collection, so the fast
tier (``make test-fast``) cannot pick up a training run or a server by sharing a fixture.
A fixture that trains, exports or serves goes into ``FIXTURE_TIERS``; the setup timer
below names any unlisted fixture that turns out slow.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from slimserve.local_server import free_port
from training.datasets import fashion_mnist_source_dir

# Fixtures whose setup trains, exports or serves, and the markers every test using them gets.
FIXTURE_TIERS: dict[str, tuple[str, ...]] = {
    "tiny_cnn_run": ("slow",),
    "tiny_mlp_run": ("slow",),
    "tiny_resnet_run": ("slow",),
    "start_server": ("http",),
}
# An unlisted fixture whose setup takes longer than this in the fast tier is named at the end.
FAST_FIXTURE_SECONDS = 5.0
TIERS = frozenset({"slow", "http"})
_running: list[pytest.Item] = []
_slow_setups: dict[str, float] = {}


def pytest_configure(config: pytest.Config) -> None:
    """Let the servers the suite starts hear Ctrl-C.

    Servers are stopped with SIGINT, as a user stops one. A suite started in the background
    by a non-interactive shell (``make test &``, ``nohup``, some CI runners) starts with
    SIGINT ignored, and an ignored signal stays ignored in every child across ``exec``: each
    ``slimserve serve`` then sat out Ctrl-C until the harness killed it 30 s later (14 min
    instead of 9 for ``make test``, and the killed servers' metric folders were left behind).
    A handled signal is reset to the default in a child, so Python's own handler here is
    enough."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give each test the tiers of the fixtures it uses (``fixturenames`` is the closure)."""
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            for marker in FIXTURE_TIERS.get(fixture, ()):
                item.add_marker(marker)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    _running.append(item)
    try:
        return (yield)
    finally:
        _running.pop()


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef, request: pytest.FixtureRequest):
    """Time each fixture set up for a fast-tier test: one that is slow belongs in FIXTURE_TIERS
    (or its tests need a marker), or ``make test-fast`` quietly grows."""
    start = time.perf_counter()
    try:
        return (yield)
    finally:
        elapsed = time.perf_counter() - start
        fast = bool(_running) and all(_running[-1].get_closest_marker(name) is None for name in TIERS)
        if fast and elapsed > FAST_FIXTURE_SECONDS:
            _slow_setups[fixturedef.argname] = max(elapsed, _slow_setups.get(fixturedef.argname, 0.0))


def pytest_terminal_summary(terminalreporter) -> None:
    for name, seconds in sorted(_slow_setups.items()):
        terminalreporter.write_line(
            f"fast-tier fixture {name!r} took {seconds:.0f} s to set up: mark its tests slow "
            "or add it to FIXTURE_TIERS in tests/conftest.py",
            yellow=True,
        )


@pytest.fixture(scope="session", autouse=True)
def isolated_homes(tmp_path_factory: pytest.TempPathFactory):
    """Keep the user's dataset cache and BentoML store out of the test session."""
    base = tmp_path_factory.mktemp("homes")
    saved = {
        key: os.environ.get(key) for key in ("SLIMSERVE_DATA_DIR", "BENTOML_HOME", "BENTOML_DO_NOT_TRACK")
    }
    os.environ["SLIMSERVE_DATA_DIR"] = str(base / "data")
    os.environ["BENTOML_HOME"] = str(base / "bentoml")
    os.environ["BENTOML_DO_NOT_TRACK"] = "true"
    if not (fashion_mnist_source_dir() / "train-images-idx3-ubyte.gz").exists():
        pytest.exit(
            "Fashion-MNIST is missing: sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist",
            returncode=1,
        )
    yield base
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _train_tiny(run_dir: Path, model: str, limit: int, epochs: int, **arch_kwargs) -> Path:
    from rich.console import Console

    from training.config import TrainConfig
    from training.train import train

    config = TrainConfig.from_recipe(model, "fast", epochs=epochs, limit=limit, arch_kwargs=arch_kwargs)
    train(config, run_dir, console=Console(quiet=True))
    return run_dir


@pytest.fixture(scope="session")
def tiny_cnn_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CNN trained for 2 epochs on 3000 real Fashion-MNIST images (~10 s)."""
    return _train_tiny(tmp_path_factory.mktemp("runs") / "cnn", "cnn", 3000, 2, widths=[16, 32], hidden=64)


@pytest.fixture(scope="session")
def tiny_mlp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train_tiny(tmp_path_factory.mktemp("runs") / "mlp", "mlp", 3000, 2, hidden=[128])


@pytest.fixture(scope="session")
def tiny_resnet_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train_tiny(tmp_path_factory.mktemp("runs") / "resnet", "resnet", 2000, 1, depth=8, width=8)


def export_tiny_fp32(run: Path, tmp_path_factory: pytest.TempPathFactory, name: str):
    """The tiny CNN run's fp32 bundle ``name``:v1 (300 test images), registered in the store.
    Each module that serves it names its own: modules register theirs in the same store."""
    from export.pipeline import export_bundle

    out = tmp_path_factory.mktemp("bundles")
    return export_bundle(run, out=out, name=name, version="v1", variants=["fp32"], limit=300)


def interrupt_group(process: subprocess.Popen, timeout: float) -> None:
    """Ctrl-C to a server started with ``start_new_session``, as a user would stop it; its
    whole process group is killed if it has not exited within ``timeout`` seconds."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def serve_subprocess(
    log: Path, env: dict[str, str], workers: int = 1
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`slimserve serve` with one worker (or ``workers``) on a free loopback port, from its
    start-up banner until the block ends; then Ctrl-C, as a user would stop it."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "commands.main",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    with open(log, "w") as out:
        process = subprocess.Popen(
            command,
            env={**os.environ, "COLUMNS": "200", **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while "Try:" not in log.read_text():
            assert process.poll() is None, f"slimserve serve exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"not ready in 120 s:\n{log.read_text()}"
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="session")
def start_server():
    """The `serve_subprocess` context manager, for module-scoped server fixtures."""
    return serve_subprocess
