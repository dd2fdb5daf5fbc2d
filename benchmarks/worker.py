"""One benchmark block in a fresh process: one variant on one runtime, every batch size.

Run as ``python -m benchmarks.worker JOB.json``; prints one ``BENCH {json}`` line per
event on stdout. A process per block gives each runtime honest memory figures
(``ru_maxrss`` of a process that only ever held this runtime and this model) and
guarantees that no thread pool of an earlier runtime is still spinning while this one is
timed. Torch is never imported for ONNX Runtime blocks.
"""

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.runtimes import ONNXRUNTIME, open_job
from benchmarks.stats import latency_summary
from benchmarks.timing import time_calls
from slimserve.errors import SlimserveError
from slimserve.runtime import Runner

PREFIX = "BENCH "


def peak_rss_mb() -> float:
    """This process's peak resident set so far: ``VmHWM`` of /proc/self/status.

    Not ``ru_maxrss``: Linux carries the parent's high-water mark across fork and exec,
    so a worker started by a parent holding torch would report the parent's memory.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("/proc/self/status has no VmHWM line")


def emit(event: str, **fields: Any) -> None:
    print(PREFIX + json.dumps({"event": event, **fields}), flush=True)


def _import_runtime(runtime: str) -> None:
    """Import the runtime's library before the baseline memory reading, so the model's share shows."""
    if runtime == ONNXRUNTIME:
        import onnxruntime  # noqa: F401
    else:
        import torch  # noqa: F401


def predict(runner: Runner, images: np.ndarray, batch_size: int) -> list[int]:
    return [
        int(label)
        for start in range(0, len(images), batch_size)
        for label in runner.run(images[start : start + batch_size]).argmax(axis=1)
    ]


def run_job(job: dict[str, Any]) -> None:
    _import_runtime(job["runtime"])
    emit("imported", baseline_rss_mb=peak_rss_mb())
    started = time.perf_counter()
    runner = open_job(job)  # applies the job's allocator policy before the model allocates
    emit(
        "loaded",
        load_s=time.perf_counter() - started,
        device=runner.device,
        allocator=runner.describe()["allocator"],
        loaded_rss_mb=peak_rss_mb(),
    )
    inputs = np.load(job["inputs"])
    for index, batch_size in enumerate(job["batch_sizes"]):
        if index:
            # A fresh load per batch size, for every runtime alike: each batch size is timed
            # as a process serving that one size would run it, with no state left by earlier
            # shapes (the per-shape INT8 cache this matters most for is handled, and its cost
            # measured, in slimserve.runtime.torch_runners; the report states it).
            del runner
            runner = open_job(job)
        batch = np.ascontiguousarray(inputs[:batch_size])
        samples = time_calls(
            lambda batch=batch, runner=runner: runner.run(batch),
            warmup=int(job["warmup"]),
            repeats=int(job["repeats"]),
            max_seconds=float(job["max_seconds"]),
            synchronize=runner.synchronize,
        )
        emit("batch", batch_size=batch_size, samples=len(samples), **latency_summary(samples, batch_size))
    peak = peak_rss_mb()  # before evaluation, which holds a larger input array
    predictions = None
    if job.get("eval_inputs"):
        predictions = predict(runner, np.load(job["eval_inputs"]), max(job["batch_sizes"]))
    emit("done", peak_rss_mb=peak, torch_imported="torch" in sys.modules, predictions=predictions)


def main() -> int:
    job = json.loads(Path(sys.argv[1]).read_text())
    try:
        run_job(job)
    except SlimserveError as exc:
        emit("error", message=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
