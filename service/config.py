"""Service settings, read from ``SLIMSERVE_*`` environment variables.

BentoML imports the service module in every worker process (and in ``bentoml build``),
so the environment is the one channel that reaches all of them; ``slimserve serve``
turns its options into these variables. Invalid values are one-line SlimserveErrors.
"""

import os
from dataclasses import asdict, dataclass, fields

from slimserve.errors import SlimserveError
from slimserve.runtime.options import PROVIDER_CHOICES

BACKENDS = ("onnx", "torchscript")
ENV_PREFIX = "SLIMSERVE_"


def cpu_count() -> int:
    """Cores this process may run on (cgroup/affinity aware, unlike os.cpu_count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class ServeConfig:
    """Every knob of the service; each field maps to ``SLIMSERVE_<FIELD>``."""

    bundle: str = ""  # empty: the only bundle in the store
    version: str = "latest"
    variants: str = ""  # comma-separated; empty: all variants of the bundle version
    backend: str = "onnx"
    providers: str = "auto"
    strict: bool = False  # refuse to start when a requested accelerator is not really used
    max_batch_size: int = 32  # adaptive batching: most images per model call
    max_latency_ms: int = 2000  # adaptive batching: hard deadline, queued requests past it get 503
    max_batch_images: int = 64  # images per /predict/batch request
    workers: int = 0  # 0: one per core
    threads: int = 0  # inference threads per worker; 0: cores / workers
    max_body_bytes: int = 16 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    top_k: int = 5
    port: int = 3000
    access_log: bool = False
    tracing: bool = False  # OpenTelemetry spans on the prediction routes (needs a BentoML tracing exporter)
    timeout_s: int = 60
    # Work and memory per request: decoded pixels summed over every image of one request
    # (a batch included), checked from the image headers before any pixel is decoded.
    max_request_pixels: int = 4 * 4096 * 4096
    max_json_depth: int = 8  # nesting of a JSON body; the API's own bodies need 3
    max_json_number_chars: int = 24  # characters of one JSON number (no 5000-digit integers)
    body_idle_timeout_s: int = 10  # a request body that stalls this long is answered 400 (or 408)
    max_concurrency: int = (
        256  # requests in flight (split over workers); more get BentoML's JSON 429 (health excluded)
    )
    # Connections (service.connections): uvicorn has no such settings that BentoML passes on.
    header_timeout_s: int = (
        10  # a request line + headers not complete this long after the first byte: 408, closed
    )
    max_header_bytes: int = 64 * 1024  # a request head larger than this: 431, closed
    max_connections: int = 1024  # open connections per worker; more are answered 503 and closed at once
    # On SIGTERM/SIGINT, `slimserve serve` gives in-flight requests this long to finish (uvicorn's
    # timeout_graceful_shutdown); a bare `bentoml serve` waits for them without a limit.
    graceful_shutdown_s: int = 25
    warmup_runs: int = 3  # model runs per variant before readiness turns green

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise SlimserveError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.providers not in PROVIDER_CHOICES:
            raise SlimserveError(
                f"providers must be one of {', '.join(PROVIDER_CHOICES)}, got {self.providers!r}"
            )
        for field in fields(self):
            value = getattr(self, field.name)
            if field.type is int and field.name not in ("workers", "threads") and value < 1:
                raise SlimserveError(f"{ENV_PREFIX}{field.name.upper()} must be at least 1, got {value}")
            if field.name in ("workers", "threads") and value < 0:
                raise SlimserveError(f"{ENV_PREFIX}{field.name.upper()} must be 0 (auto) or more")

    @property
    def variant_list(self) -> list[str]:
        return [v.strip() for v in self.variants.split(",") if v.strip()]

    @property
    def worker_count(self) -> int:
        return self.workers or cpu_count()

    @property
    def thread_count(self) -> int:
        """Threads per worker such that workers x threads does not oversubscribe the cores."""
        return self.threads or max(1, cpu_count() // self.worker_count)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "ServeConfig":
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field in fields(cls):
            raw = environ.get(ENV_PREFIX + field.name.upper())
            if raw is None or raw == "":
                continue
            values[field.name] = _parse(field.name, field.type, raw)
        return cls(**values)  # type: ignore[arg-type]

    def to_env(self) -> dict[str, str]:
        """The variables that reproduce this config in another process."""
        return {
            ENV_PREFIX + name.upper(): (str(value).lower() if isinstance(value, bool) else str(value))
            for name, value in asdict(self).items()
        }


def _parse(name: str, kind: object, raw: str) -> object:
    variable = ENV_PREFIX + name.upper()
    if kind is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise SlimserveError(f"{variable} must be true or false, got {raw!r}")
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise SlimserveError(f"{variable} must be a whole number, got {raw!r}") from None
    return raw.strip()
