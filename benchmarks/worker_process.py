"""Running one benchmark job (one variant on one runtime and device, every batch size) in a
fresh ``benchmarks.worker`` process, bounded by a watchdog, and collecting its events."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.worker import PREFIX

LOAD_MARGIN_S = 180.0  # importing torch and loading a model on a busy 2-core machine


@dataclass
class WorkerResult:
    """What one worker reported; ``error`` is set when its job failed."""

    job: dict[str, Any]
    batches: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def worker_env(threads: int) -> dict[str, str]:
    """Pin the OpenMP/MKL pools to the same thread count every runtime gets."""
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = str(threads)
    return env


def run_worker(job: dict[str, Any], on_batch: Callable[[dict[str, Any]], None]) -> WorkerResult:
    """Run one worker to completion (bounded by a timeout derived from the job's own bounds)."""
    result = WorkerResult(job=job)
    timeout = LOAD_MARGIN_S + len(job["batch_sizes"]) * (float(job["max_seconds"]) * 2 + 30)
    with tempfile.TemporaryDirectory(prefix="slimserve-bench-") as tmp:
        job_file = Path(tmp) / "job.json"
        job_file.write_text(json.dumps(job))
        # stderr goes to a file: a chatty worker must not fill a pipe nobody is reading.
        with (Path(tmp) / "stderr.txt").open("w+") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.worker", str(job_file)],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=worker_env(int(job["threads"])),
            )
            watchdog = threading.Timer(timeout, process.kill)
            watchdog.start()
            try:
                _read_events(process, result, on_batch)
                process.wait()
            finally:
                watchdog.cancel()
            stderr.seek(0)
            lines = [line for line in stderr.read().splitlines() if line.strip()]
    if process.returncode == -signal.SIGKILL:
        result.error = f"worker exceeded its {timeout:.0f} s bound and was stopped"
    elif process.returncode != 0 and result.error is None:
        result.error = f"worker exited with {process.returncode}: {lines[-1] if lines else 'no output'}"
    return result


def _read_events(
    process: subprocess.Popen, result: WorkerResult, on_batch: Callable[[dict[str, Any]], None]
) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        if not line.startswith(PREFIX):
            continue
        event = json.loads(line[len(PREFIX) :])
        kind = event.pop("event")
        if kind == "batch":
            result.batches.append(event)
            on_batch(event)
        elif kind == "error":
            result.error = event["message"]
        else:
            result.info.update(event)
