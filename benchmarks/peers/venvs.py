"""Virtual environments for peers that cannot share slimserve's environment.

nvidia-pytriton 0.7 requires numpy < 2 (and older protobuf and greenlet than locust's
gevent is built with); installing it next to slimserve would downgrade them. So it gets
its own venv, created only when the user asks (``slimserve bench peers --setup-venvs``).
The venv sees this interpreter's site-packages (ONNX Runtime, Pillow, slimserve's own
dependencies) and shadows only what the peer pins.
"""

import os
import subprocess
import sys
from pathlib import Path

from slimserve.errors import SlimserveError

REQUIREMENTS = {"pytriton": ["nvidia-pytriton==0.7.0"]}


def venv_root() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "slimserve" / "peer-venvs"
    return Path(os.environ.get("SLIMSERVE_PEER_VENVS", default))


def venv_python(name: str) -> Path:
    return venv_root() / name / "bin" / "python"


def setup_venv(name: str) -> Path:
    """Create (or complete) the named venv with its pinned requirements; returns its python."""
    folder = venv_root() / name
    python = venv_python(name)
    steps = (
        [[sys.executable, "-m", "venv", "--system-site-packages", str(folder)]] if not python.exists() else []
    )
    steps.append([str(python), "-m", "pip", "install", "--quiet", *REQUIREMENTS[name]])
    for step in steps:
        finished = subprocess.run(step, capture_output=True, text=True, check=False)
        if finished.returncode != 0:
            lines = [line for line in finished.stderr.splitlines() if line.strip()]
            raise SlimserveError(f"setting up the {name} venv failed: {lines[-1] if lines else step[0]}")
    return python
