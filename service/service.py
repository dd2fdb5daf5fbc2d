"""The BentoML service: ``bentoml serve service.service:Slimserve``.

Configuration comes from ``SLIMSERVE_*`` variables (``service.config``), read at import
so the model references exist at class scope: ``bentoml build`` then packs exactly the
bundle variants this service serves, and a Bento carries them.
"""

import gc
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")  # telemetry off unless the user opts in

import anyio
import bentoml
import numpy as np

from service import connections, timeout
from service.batching import AdaptiveRoute, adaptive_dispatcher, decide, poll_every_loop_turn
from service.config import ServeConfig
from service.errors import RequestError
from service.http import ROUTES, PredictionFront
from service.limits import clip
from service.metrics import batch_size_for, inference_seconds_for
from service.openapi import publish
from service.preprocess import open_images
from service.prometheus import bound_http_metric_paths, use_own_multiprocess_dir
from service.store import LoadedVariant, load_variant, resolve_tags
from service.upload_page import UI_PATHS, build_ui_app

logger = logging.getLogger("slimserve.service")
CONFIG = ServeConfig.from_env()
TAGS = resolve_tags(CONFIG)
# BentoML's own routes plus ours: the only values the HTTP metrics' path label may take.
KNOWN_PATHS = frozenset(
    ("/", "/docs.json", "/schema.json", "/metrics", "/livez", "/readyz", "/healthz", *ROUTES, *UI_PATHS)
)
bound_http_metric_paths(KNOWN_PATHS)
use_own_multiprocess_dir()
connections.install(
    CONFIG.header_timeout_s,
    CONFIG.max_header_bytes,
    CONFIG.max_connections,
    CONFIG.worker_count if CONFIG.balance_connections else 1,
)
timeout.install()  # BentoML's traffic timeout (504), without a timer left armed per request
# /docs.json (Swagger UI at /) and /schema.json (BentoML's clients) describe our routes too.
publish(list(TAGS), CONFIG)
# Below these costs a thread hop (~50-100 us) costs more than the work it would move off
# the event loop, so small images are decoded and fast models run in place.
INLINE_PIXELS = 256 * 256
INLINE_MODEL_SECONDS = 0.001


def model_attribute(variant: str) -> str:
    return "model_" + variant.replace("-", "_").replace(".", "_")


def _overloaded() -> Any:
    raise RequestError(
        503,
        f"overloaded: the request would wait longer than max_latency_ms={CONFIG.max_latency_ms} in the "
        "batching queue; retry, or raise SLIMSERVE_MAX_LATENCY_MS",
    )


class Slimserve:
    """Every requested variant of one bundle version, verified, warmed up and ready."""

    def __init__(self) -> None:
        self.config = CONFIG
        self.variants: dict[str, LoadedVariant] = {}
        self.inline: dict[str, bool] = {}
        self.default_variant = ""
        self.dispatchers = {
            name: adaptive_dispatcher(CONFIG.max_latency_ms, CONFIG.max_batch_size, _overloaded)
            for name in TAGS
        }
        self.adaptive: dict[str, AdaptiveRoute] = {}
        self.model_limiter: anyio.CapacityLimiter | None = None
        # BentoML creates the service inside uvicorn's lifespan start-up, and uvicorn reads
        # no request until that returns: loading here would leave /readyz and /livez
        # hanging for the whole load. Loading in a thread lets them answer (503, then 200).
        self.loaded = threading.Event()
        self.load_error: str | None = None
        threading.Thread(target=self._load, name="slimserve-load", daemon=True).start()

    @bentoml.on_shutdown
    def _leave_connection_shares(self) -> None:
        """The worker's slot in the connection shares reads 0 (the last one out removes the table)."""
        connections.leave_shares()

    def _load(self) -> None:
        start = time.perf_counter()
        try:
            variants = {}
            for name, tag in TAGS.items():
                stored = getattr(self, model_attribute(name))
                variants[name] = load_variant(name, tag, Path(stored.path), CONFIG)
                single = _model_seconds(variants[name], 1)
                self.inline[name] = single is not None and single < INLINE_MODEL_SECONDS
                if self.inline[name]:
                    poll_every_loop_turn(self.dispatchers[name])
                decision = decide(
                    single or 0.0,
                    _model_seconds(variants[name], CONFIG.max_batch_size),
                    CONFIG.max_batch_size,
                )
                dispatcher = self.dispatchers[name]
                self.adaptive[name] = AdaptiveRoute(
                    decision,
                    dispatcher,
                    dispatcher(self._batch_callback(name)),
                    self._direct_callback(name),
                    connections.open_connections,
                )
                logger.info(
                    "loaded %s: %s; batching: %s", tag, variants[name].backend.describe(), decision.to_dict()
                )
        except Exception as exc:  # reported by /livez (503) so the supervisor restarts the worker
            self.load_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            logger.exception("loading the models failed")
            return
        first = next(iter(variants.values()))
        preferred = first.manifest.data.get("default_variant")
        self.default_variant = preferred if preferred in variants else first.name
        self.variants = variants
        _freeze_heap()
        self.loaded.set()
        logger.info("slimserve ready in %.2f s", time.perf_counter() - start)

    def __is_ready__(self) -> bool:
        return self.loaded.is_set()

    def __is_alive__(self) -> bool:
        return self.load_error is None

    def check_loaded(self) -> None:
        if not self.loaded.is_set():
            raise RequestError(503, "the models are still loading; retry when /readyz answers 200")

    def pick(self, name: Any) -> LoadedVariant:
        """The requested variant by name, checked against the loaded set only."""
        self.check_loaded()
        if name is None or name == "":
            return self.variants[self.default_variant]
        if not isinstance(name, str) or name not in self.variants:
            raise RequestError(404, f"unknown model {clip(name)}; loaded: {', '.join(self.variants)}")
        return self.variants[name]

    async def preprocess(self, variant: LoadedVariant, payloads: list[bytes]) -> np.ndarray:
        images = open_images(payloads, self.config.max_pixels, self.config.max_request_pixels)
        if sum(i.width * i.height for i in images) <= INLINE_PIXELS:
            return variant.preprocessor.batch(images)
        return await anyio.to_thread.run_sync(variant.preprocessor.batch, images)

    async def _run_model(self, variant: LoadedVariant, batch: np.ndarray) -> np.ndarray:
        try:
            if self.inline[variant.name]:
                logits, seconds = _timed_run(variant, batch)
            else:
                if self.model_limiter is None:
                    self.model_limiter = anyio.CapacityLimiter(1)
                logits, seconds = await anyio.to_thread.run_sync(
                    _timed_run, variant, batch, limiter=self.model_limiter
                )
        except Exception as exc:  # any backend failure: answer 503, keep serving
            logger.exception("model %s failed on a batch of %d", variant.tag, len(batch))
            raise RequestError(
                503, f"model {variant.name} failed: {str(exc).splitlines()[0][:300]}"
            ) from None
        inference_seconds_for(variant.name).observe(seconds)
        return logits

    async def infer_direct(self, variant: LoadedVariant, batch: np.ndarray) -> np.ndarray:
        return await self._run_model(variant, batch)

    def _direct_callback(self, name: str):
        """The adaptive route's call for a request that does not queue: a model call of its own."""
        sizes = batch_size_for(name)

        async def run(batch: np.ndarray) -> tuple[np.ndarray, int]:
            sizes.observe(len(batch))
            variant = self.variants[name]
            if self.inline[name]:  # runs in place on the event loop: there is nothing to wait behind
                return await self._run_model(variant, batch), len(batch)
            # Behind other calls for the model thread, the batcher's queue deadline still holds.
            try:
                with anyio.fail_after(self.config.max_latency_ms / 1000):
                    return await self._run_model(variant, batch), len(batch)
            except TimeoutError:
                return _overloaded()

        return run

    def _batch_callback(self, name: str):
        sizes = batch_size_for(name)

        async def run(items: tuple[np.ndarray, ...]) -> list[tuple[np.ndarray, int]]:
            variant = self.variants[name]
            batch = items[0] if len(items) == 1 else np.concatenate(items)
            sizes.observe(len(batch))
            logits = await self._run_model(variant, batch)
            out, offset = [], 0
            for item in items:
                out.append((logits[offset : offset + len(item)], len(batch)))
                offset += len(item)
            return out

        return run

    def batching(self, name: str) -> dict[str, object]:
        """Whether the adaptive route batches this variant, and why (for /models)."""
        return self.adaptive[name].decision.to_dict()

    async def infer_batched(self, variant: LoadedVariant, batch: np.ndarray) -> tuple[np.ndarray, int]:
        """The adaptive route (``service.batching``): this request's logits and the batch size used."""
        (logits, size), _ = await self.adaptive[variant.name](batch)
        return logits, size


def _timed_run(variant: LoadedVariant, batch: np.ndarray) -> tuple[np.ndarray, float]:
    """The model call and its own duration: timed where it runs, so the latency metric
    leaves out the wait for the model thread (under load, most of a request's time)."""
    start = time.perf_counter()
    logits = variant.backend.run(batch)
    return logits, time.perf_counter() - start


def _freeze_heap() -> None:
    """Move every object alive once the models are loaded out of the garbage collector's reach.

    A worker holds ~150k long-lived objects (BentoML, Starlette, ONNX Runtime's bindings,
    the manifests) that are never garbage, yet CPython's full collection walks all of them:
    measured with ``gc.callbacks`` under load on the Fashion-MNIST CNN, one full collection
    every 15-40 s per worker, 120-280 ms each (busy 2-core host), stalling every request in
    flight on that worker: the worst of the c=32 tail. ``gc.freeze`` (the standard library's
    own answer for long-lived servers) leaves later full collections only the objects made
    since (0.4-0.7 ms each, with ``service.timeout``); the collector stays on for those.
    """
    gc.collect()
    gc.freeze()


def _model_seconds(variant: LoadedVariant, size: int) -> float | None:
    """CPU seconds of one model call on ``size`` images (every thread of the worker): the
    least of five, after one untimed call (ORT allocates for a new shape on its first run).

    CPU time, not wall time: a batch only pays off when requests queue, i.e. when the cores
    are saturated, and then CPU seconds are what every image costs. Wall time on a busy
    host charges a 4 ms batch for every preemption it sits through and a 0.15 ms call for
    almost none: for the Fashion-MNIST INT8 CNN the wall-time ratio of batch 32 to 32 single
    calls read 0.87 at one start-up and 2.6 at the next (batching on, then off), while its
    CPU-time ratio stays at 0.77-0.80. None when the model cannot run a batch of that size."""
    sample = np.zeros((size, *variant.manifest.spec.input_shape), dtype=np.float32)
    try:
        variant.backend.run(sample)
        return min(_cpu_seconds(variant, sample) for _ in range(5))
    except Exception:  # a graph fixed to another batch size: ORT raises its own pybind types
        logger.info("%s cannot run a batch of %d; it is served one request at a time", variant.tag, size)
        return None


def _cpu_seconds(variant: LoadedVariant, batch: np.ndarray) -> float:
    start = time.process_time()
    variant.backend.run(batch)
    return time.process_time() - start


# Model references at class scope (BentoML reads them when the class is decorated, and a
# Bento packs exactly these); the variant set comes from the store, hence setattr.
for _name, _tag in TAGS.items():
    setattr(Slimserve, model_attribute(_name), bentoml.models.BentoModel(_tag))

Slimserve = bentoml.service(
    name="slimserve",
    workers=CONFIG.worker_count,
    threads=CONFIG.thread_count,
    traffic={"timeout": CONFIG.timeout_s, "max_concurrency": CONFIG.max_concurrency},
    resources={"cpu": str(CONFIG.worker_count * CONFIG.thread_count)}
    | ({"gpu": 1} if CONFIG.providers in ("cuda", "tensorrt") else {}),
    logging={"access": {"enabled": CONFIG.access_log}},
    # BentoML wraps every request in OpenTelemetry spans even with no exporter configured
    # (sample rate 0); skipping them on the hot routes saves ~0.2 ms per request.
    tracing={} if CONFIG.tracing else {"excluded_urls": "/predict,/models"},
)(Slimserve)
Slimserve.mount_asgi_app(build_ui_app(), path="/", name="upload_page")
# The prediction routes are answered by this middleware itself (service.http).
Slimserve.add_asgi_middleware(PredictionFront, config=CONFIG)
