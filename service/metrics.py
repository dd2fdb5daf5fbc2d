"""Per-variant Prometheus metrics, served by BentoML's /metrics next to its own.

BentoML's built-in HTTP metrics are per route; a route here serves several variants, so
counts and latencies are labelled by variant as well. Defined at import so every worker
registers the same families (BentoML aggregates them across workers).

The routes write through the ``*_for`` helpers: ``labels()`` checks its arguments and
takes a lock on every call, so each labelled child is looked up once per label set and
kept. Every label is bounded (loaded variants, fixed routes, status codes), so are the caches.
"""

from functools import cache
from typing import Any

import bentoml

predictions = bentoml.metrics.Counter(
    name="slimserve_predictions_total",
    documentation="Images classified, by variant, route and outcome",
    labelnames=["variant", "route", "outcome"],
)
inference_seconds = bentoml.metrics.Histogram(
    name="slimserve_inference_seconds",
    documentation="Model call latency per variant, without the wait for the model thread (one call may hold a whole batch)",
    labelnames=["variant"],
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
)
request_seconds = bentoml.metrics.Histogram(
    name="slimserve_request_seconds",
    documentation="Server-side time per prediction request (decode + queue + model), by variant",
    labelnames=["variant", "route"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
)
batch_size = bentoml.metrics.Histogram(
    name="slimserve_batch_size",
    documentation="Images per model call on the adaptive route (batched or straight to the model), by variant",
    labelnames=["variant"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)


@cache
def predictions_for(variant: str, route: str, outcome: str) -> Any:
    return predictions.labels(variant=variant, route=route, outcome=outcome)


@cache
def request_seconds_for(variant: str, route: str) -> Any:
    return request_seconds.labels(variant=variant, route=route)


@cache
def inference_seconds_for(variant: str) -> Any:
    return inference_seconds.labels(variant=variant)


@cache
def batch_size_for(variant: str) -> Any:
    return batch_size.labels(variant=variant)
