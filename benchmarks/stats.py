"""Latency statistics shared by the in-process and HTTP benchmarks."""

from collections.abc import Sequence

import numpy as np

PERCENTILES = (50, 90, 99)


def percentiles(samples: Sequence[float], points: Sequence[float] = PERCENTILES) -> dict[str, float]:
    """``{"p50": ..., "p90": ..., "p99": ...}`` with linear interpolation between order statistics.

    numpy's default ("linear", type 7 of Hyndman & Fan) is what most load tools and
    spreadsheets use, so figures compare directly. Percentiles of fewer than two samples
    are meaningless and refused.
    """
    if len(samples) < 2:
        raise ValueError(f"need at least 2 samples for percentiles, got {len(samples)}")
    values = np.percentile(np.asarray(samples, dtype=np.float64), list(points))
    return {f"p{point:g}": float(value) for point, value in zip(points, values, strict=True)}


def latency_summary(seconds: Sequence[float], batch_size: int) -> dict[str, float]:
    """Per-call latency percentiles in ms plus throughput from the median call.

    Images/s comes from the p50 latency rather than the mean so one descheduled call on
    a shared machine does not move the throughput figure; the mean is reported too.
    """
    ms = [value * 1000.0 for value in seconds]
    summary = {f"{key}_ms": value for key, value in percentiles(ms).items()}
    summary["mean_ms"] = float(np.mean(ms))
    summary["min_ms"] = float(np.min(ms))
    summary["images_per_s"] = batch_size / (summary["p50_ms"] / 1000.0)
    return summary
