"""Shared fixtures: real Fashion-MNIST subsets and tiny models trained in the session.

Nothing here mocks torch, ONNX Runtime or BentoML. Fashion-MNIST comes from the Debian
package the README's test command installs; when it is missing the tests fail with the
fix, they do not skip.
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


@contextlib.contextmanager
def serve_subprocess(log: Path, env: dict[str, str]) -> Iterator[tuple[str, subprocess.Popen]]:
    """`slimserve serve` with one worker on a free loopback port, from its start-up banner
    until the block ends; then Ctrl-C, as a user would stop it."""
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
        "1",
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
