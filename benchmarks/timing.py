"""The timing loop: warm up, then time single calls back to back, bounded in count and time."""

import time
from collections.abc import Callable
from typing import Any


def time_calls(
    run: Callable[[], Any],
    *,
    warmup: int,
    repeats: int,
    max_seconds: float,
    min_repeats: int = 5,
    synchronize: Callable[[], None] | None = None,
) -> list[float]:
    """Seconds per call for up to ``repeats`` calls, stopping early after ``max_seconds``.

    Calls run in one uninterrupted block on one runtime: interleaving runtimes call by
    call lets ONNX Runtime's spinning worker threads steal the cores from whatever runs
    next. ``synchronize`` (torch.cuda.synchronize on a GPU) runs before each clock read,
    so asynchronous kernels are inside the measured interval. At least ``min_repeats``
    calls are timed even when the time budget runs out, so percentiles exist.
    """
    sync = synchronize or (lambda: None)
    for _ in range(warmup):
        run()
    sync()
    samples: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while len(samples) < repeats:
        start = time.perf_counter()
        run()
        sync()
        samples.append(time.perf_counter() - start)
        if len(samples) >= min_repeats and time.perf_counter() > deadline:
            break
    return samples
