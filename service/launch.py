"""Start ``bentoml serve`` on the service, wait for readiness, show what is running.

Variants are loaded once here first (sha256, providers, strict mode): a problem is one
line on the terminal instead of a worker that BentoML restarts in a loop. The banner is
printed from the running server's own model list, so it shows what the workers really use.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from service.config import ServeConfig
from slimserve.console import cli_console
from slimserve.errors import SlimserveError
from slimserve.local_server import wait_ready

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICE_TARGET = "service.service:Slimserve"
# Beyond the graceful period: BentoML's arbiter stopping its workers and cleaning up.
SHUTDOWN_MARGIN_S = 15


def preflight(config: ServeConfig) -> dict[str, str]:
    """Resolve and load every variant in this process, turning problems into SlimserveErrors."""
    import bentoml

    from service.store import load_variant, resolve_tags

    tags = resolve_tags(config)
    for name, tag in tags.items():
        load_variant(name, tag, Path(bentoml.models.get(tag).path), config)
    return tags


def server_command(config: ServeConfig, host: str) -> list[str]:
    return [
        sys.executable, "-m", "bentoml", "serve", SERVICE_TARGET,
        "--host", host, "--port", str(config.port), "--working-dir", str(REPO_ROOT),
        # uvicorn's wait for in-flight requests after SIGTERM/SIGINT (unbounded by default).
        "--timeout-graceful-shutdown", str(config.graceful_shutdown_s),
    ]  # fmt: skip


def server_env(config: ServeConfig) -> dict[str, str]:
    env = {**os.environ, **config.to_env()}
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")
    return env


def _short(provider: str) -> str:
    return provider.removesuffix("ExecutionProvider")


def print_banner(console: Console, url: str, models: dict, cold_start: float) -> None:
    first = models["variants"][0]
    table = Table(title=f"{first['bundle']}:{first['version']} at {url} (ready in {cold_start:.1f} s)")
    for column in ("variant", "backend", "provider", "requested", "note"):
        table.add_column(column)
    for v in models["variants"]:
        default = " *" if v["variant"] == models["default_variant"] else ""
        note = f"fell back from {_short(v['requested'][0])}" if v["fell_back"] else ""
        table.add_row(
            v["variant"] + default, v["backend"], _short(v["provider"]), _short(v["requested"][0]), note
        )
    console.print(table)
    batching = models["adaptive_batching"]
    console.print(
        f"* default variant. {models['workers']} worker(s) x {models['threads_per_worker']} thread(s); "
        f"adaptive batching: max {batching['max_batch_size']} images, {batching['max_latency_ms']} ms deadline"
    )
    console.print("Try:", style="bold")
    console.print(f"  curl -F file=@image.png {url}/predict", soft_wrap=True)
    console.print(
        f"  curl -H 'Content-Type: image/png' --data-binary @image.png '{url}/predict?top_k=3'",
        soft_wrap=True,
    )
    console.print(f"  curl {url}/models   |   {url}/metrics   |   {url}/readyz", soft_wrap=True)


def model_list(url: str, timeout: float) -> dict:
    """``/models`` once the worker that answers has loaded: ``/readyz`` says one worker is
    ready, and the next request may reach another that is still loading (503)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=5) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or time.monotonic() > deadline:
                raise SlimserveError(f"{url}/models answered {exc.code}") from None
        time.sleep(0.1)


class Terminated(KeyboardInterrupt):
    """SIGTERM: a requested stop, which exits 0 once the server has drained and stopped."""


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def serve(
    config: ServeConfig,
    host: str = "0.0.0.0",
    ready_timeout: float = 120,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Serve until stopped; ``on_ready`` runs once the banner is out (the demo prints its
    phase times there, the server's start included)."""
    console = cli_console()
    # A supervisor (systemd, a container runtime, a script) stops us with SIGTERM, whose
    # default action would kill this process alone and orphan the BentoML server: take the
    # same clean shutdown path as Ctrl-C instead.
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    tags = preflight(config)
    console.print(f"loading {', '.join(tags.values())} ({config.backend}, providers={config.providers})")
    url = f"http://{'localhost' if host in ('0.0.0.0', '::') else host}:{config.port}"
    process = subprocess.Popen(server_command(config, host), env=server_env(config))
    try:
        try:
            cold_start = wait_ready(url, process, ready_timeout)
        except SlimserveError as exc:
            raise SlimserveError(f"{exc}; see its log above") from None
        models = model_list(url, ready_timeout)
        print_banner(console, url, models, cold_start)
        if on_ready is not None:
            on_ready()
        process.wait()
    except KeyboardInterrupt as stop:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=config.graceful_shutdown_s + SHUTDOWN_MARGIN_S)
        if not isinstance(stop, Terminated):
            raise
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=config.graceful_shutdown_s + SHUTDOWN_MARGIN_S)
    if process.returncode not in (0, -signal.SIGINT, -signal.SIGTERM):
        raise SlimserveError(f"the server exited with code {process.returncode}")
