"""Bounded Prometheus series and a multiprocess folder of this server's own.

BentoML 1.4 labels its HTTP metrics (``bentoml_service_request_*``) with the raw request
path: ``RunnerTrafficMetricsMiddleware.__call__`` in
``bentoml/_internal/server/http/instruments.py`` reads ``scope["path"]``, so every
distinct unknown path a client invents adds about 20 series, without bound. BentoML has no
setting for this, and its metrics middleware is the outermost one, before any middleware
a service can add. The least invasive fix found: BentoML's app factory
(``_bentoml_impl/server/app.py``, ``middlewares``) imports the class from that module when
it builds the app in each worker, so a subclass put there first sees the request; it
labels known routes by their path and everything else as ``other``, and hands the inner
app the real path. For HTTP it also writes BentoML's series itself from labelled children
looked up once, instead of four ``labels()`` calls per request (same series, same values).

BentoML also keeps its Prometheus multiprocess files in ``$BENTOML_HOME/prometheus_multiproc_dir``
and empties that folder whenever a server starts (``bentoml.serving.ensure_prometheus_dir``):
a second server on the same BentoML home deletes the live files of the first, whose
``/metrics`` then freezes. ``use_own_multiprocess_dir`` points BentoML's own setting
(``BentoMLContainer.prometheus_multiproc_dir``, what its pytest plugin sets too) at a
fresh folder per server process, removed when that process exits.
"""

import atexit
import os
import shutil
import tempfile
from timeit import default_timer
from typing import Any

from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml._internal.server.http import instruments

OTHER_PATH = "other"
ORIGINAL_PATH = "slimserve.original_path"


class _RestorePath:
    """Inside the metrics middleware: give the app the request's real path back."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if ORIGINAL_PATH in scope:
            scope = {**scope, "path": scope[ORIGINAL_PATH]}
        await self.app(scope, receive, send)


def bounded_metrics_middleware(known_paths: frozenset[str]) -> type:
    """BentoML's HTTP metrics middleware with its ``endpoint`` label limited to ``known_paths`` + other.

    For HTTP requests it writes BentoML's very series and values itself, from labelled
    children it looks up once per label set: BentoML's ``__call__`` calls ``labels()`` four
    times per request, and each call validates its arguments and takes a lock. Every label
    here is bounded (known paths + other, status codes, the service's names), so is the cache.
    WebSocket traffic keeps BentoML's own code.
    """
    base = instruments.RunnerTrafficMetricsMiddleware
    if getattr(base, "slimserve_bounded", False):
        base = base.__mro__[1]

    class BoundedPathMetricsMiddleware(base):  # type: ignore[misc,valid-type]
        slimserve_bounded = True

        def __init__(self, app: Any, **options: Any) -> None:
            super().__init__(_RestorePath(app), **options)
            self.inner = app
            self.series: dict[str, tuple[Any, Any, dict[int, tuple[Any, Any]]]] = {}

        def _names(self) -> dict[str, str]:
            context = instruments.server_context
            return {
                "service_name": context.bento_name,
                "service_version": context.bento_version,
                "runner_name": context.service_name,
            }

        def _series_of(self, endpoint: str) -> tuple[Any, Any, dict[int, tuple[Any, Any]]]:
            """The endpoint's last-request gauge (None on skipped paths), in-progress gauge and
            per-status (count, duration) children, as BentoML's ``__call__`` labels them."""
            names = self._names()
            stamp = None
            if not endpoint.startswith(tuple(self.skip_paths)):
                stamp = self.metrics_last_request_timestamp.labels(**names)
            in_progress = self.metrics_request_in_progress.labels(endpoint=endpoint, **names)
            series = self.series[endpoint] = (stamp, in_progress, {})
            return series

        def _finished(self, endpoint: str, status: int, by_status: dict) -> tuple[Any, Any]:
            names = {"endpoint": endpoint, **self._names(), "http_response_code": status}
            children = by_status[status] = (
                self.metrics_request_total.labels(**names),
                self.metrics_request_duration.labels(**names),
            )
            return children

        async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                if scope["type"] == "websocket" and scope["path"] not in known_paths:
                    scope = {**scope, "path": OTHER_PATH, ORIGINAL_PATH: scope["path"]}
                await super().__call__(scope, receive, send)
                return
            if not self._is_setup:
                self._setup()
            path = scope["path"]
            if path == "/metrics":
                await self.inner(scope, receive, send)
                return
            endpoint = path if path in known_paths else OTHER_PATH
            stamp, in_progress, by_status = self.series.get(endpoint) or self._series_of(endpoint)
            if stamp is not None:
                stamp.set_to_current_time()
            start = default_timer()
            status = 0

            async def counted_send(message: dict) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                elif message["type"] == "http.response.body" and not message.get("more_body", False):
                    total, duration = by_status.get(status) or self._finished(endpoint, status, by_status)
                    total.inc()
                    duration.observe(max(default_timer() - start, 0))
                await send(message)

            in_progress.inc()
            try:
                await self.inner(scope, receive, counted_send)
            finally:
                in_progress.dec()

    return BoundedPathMetricsMiddleware


def bound_http_metric_paths(known_paths: frozenset[str]) -> None:
    instruments.RunnerTrafficMetricsMiddleware = bounded_metrics_middleware(known_paths)


def use_own_multiprocess_dir() -> str | None:
    """In the process that starts the server (not in its workers, which inherit
    ``PROMETHEUS_MULTIPROC_DIR``), give this server a multiprocess folder of its own."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        return None
    home = BentoMLContainer.bentoml_home.get()
    os.makedirs(home, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="prometheus_multiproc_", dir=home)
    BentoMLContainer.prometheus_multiproc_dir.set(folder)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder
