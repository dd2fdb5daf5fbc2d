"""Service settings, read from ``SLIMSERVE_*`` environment variables.

BentoML imports the service module in every worker process (and in ``bentoml build``),
so the environment is the one channel that reaches all of them; ``slimserve serve``
turns its options into these variables. Invalid values are one-line SlimserveErrors.
"""

import os
from dataclasses import asdict, dataclass, fields

from slimserve.cli_types import positive_int
from slimserve.errors import SlimserveError
from slimserve.runtime.options import PROVIDER_CHOICES
from slimserve.settings import option

BACKENDS = ("onnx", "torchscript")
ENV_PREFIX = "SLIMSERVE_"
_ENV_OR_DEFAULT = "{default}"


def cpu_count() -> int:
    """Cores this process may run on (cgroup/affinity aware, unlike os.cpu_count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class ServeConfig:
    """Every knob of the service; each field maps to ``SLIMSERVE_<FIELD>``."""

    # Every field is a `slimserve serve` option (slimserve.settings); unset options leave
    # the field to SLIMSERVE_<FIELD> or this default.
    bundle: str = option("", help="bundle name", unset="the only bundle in the store")
    version: str = option("latest", help="bundle version", unset=_ENV_OR_DEFAULT)
    variants: str = option("", help="comma-separated variants to load", unset="all")
    backend: str = option(
        "onnx", help="onnx (torch-free) or torchscript", choices=BACKENDS, unset=_ENV_OR_DEFAULT
    )
    providers: str = option(
        "auto",
        help="execution providers; auto: TensorRT > CUDA > CPU as available",
        choices=PROVIDER_CHOICES,
        unset=_ENV_OR_DEFAULT,
    )
    strict: bool = option(
        False,
        help="refuse to start when a requested accelerator is not actually used, or a variant fails its canary",
        unset=_ENV_OR_DEFAULT,
    )
    max_batch_size: int = option(
        32, help="adaptive batching: most images per model call", parse=positive_int, unset=_ENV_OR_DEFAULT
    )
    max_latency_ms: int = option(
        2000,
        help="adaptive batching: queue deadline; requests that would wait longer get 503",
        parse=positive_int,
        unset=_ENV_OR_DEFAULT,
    )
    max_batch_images: int = option(
        64, help="images per /predict/batch request", parse=positive_int, unset=_ENV_OR_DEFAULT
    )
    workers: int = option(0, help="worker processes", parse=positive_int, unset="{default}: one per core")
    threads: int = option(
        0, help="inference threads per worker", parse=positive_int, unset="{default}: cores / workers"
    )
    max_body_bytes: int = option(
        16 * 1024 * 1024, help="request body limit in bytes", parse=positive_int, unset=_ENV_OR_DEFAULT
    )
    max_pixels: int = option(
        4096 * 4096, help="decoded image limit in pixels", parse=positive_int, unset=_ENV_OR_DEFAULT
    )
    top_k: int = option(
        5, help="classes per answer unless top_k is sent", parse=positive_int, unset=_ENV_OR_DEFAULT
    )
    port: int = option(3000, help="port", parse=positive_int, unset=_ENV_OR_DEFAULT)
    access_log: bool = option(False, help="log every request", unset=_ENV_OR_DEFAULT)
    tracing: bool = option(
        False,
        help="OpenTelemetry spans on the prediction routes (needs a BentoML tracing exporter)",
        unset=_ENV_OR_DEFAULT,
    )
    timeout_s: int = option(
        60, help="per-request timeout in seconds", parse=positive_int, unset=_ENV_OR_DEFAULT
    )
    # Work and memory per request: decoded pixels summed over every image of one request
    # (a batch included), checked from the image headers before any pixel is decoded.
    max_request_pixels: int = option(
        4 * 4096 * 4096,
        help="decoded pixels per request, summed over a batch's images",
        parse=positive_int,
        unset=_ENV_OR_DEFAULT,
    )
    max_json_depth: int = option(
        8,
        help="nesting depth of a JSON body (the API's own bodies need 3)",
        parse=positive_int,
        unset=_ENV_OR_DEFAULT,
    )
    max_json_number_chars: int = option(
        24, help="characters of one JSON number", parse=positive_int, unset=_ENV_OR_DEFAULT
    )
    body_idle_timeout_s: int = option(
        10,
        help="a request body that stalls this long is answered 400 (short) or 408",
        parse=positive_int,
        unset=_ENV_OR_DEFAULT,
    )
    max_concurrency: int = option(
        256,
        help="requests in flight (split over workers); more get a JSON 429 (health routes excepted)",
        parse=positive_int,
        unset=_ENV_OR_DEFAULT,
    )
    # Connections (service.connections): uvicorn has no such settings that BentoML passes on.
    header_timeout_s: int = option(
        10,
        help="request line + headers not complete this long after the connection opens (kept-alive: the next request's first byte): 408, closed",
        parse=positive_int,
        unset=_ENV_OR_DEFAULT,
    )
    max_header_bytes: int = option(
        64 * 1024,
        help="request head larger than this: 431, closed",
        parse=positive_int,
        unset=_ENV_OR_DEFAULT,
    )
    max_connections: int = option(
        1024,
        help="open connections per worker; more are answered 503 and closed at once",
        parse=positive_int,
        unset=_ENV_OR_DEFAULT,
    )
    # Off by default: on a 2-core host it evened out burst-opened connections and cut their
    # p99, but /predict served 3-21% fewer req/s under locust's gradual users in 7 of 8
    # alternated pairs (BENCHMARKS.md, issue 16).
    balance_connections: bool = option(
        False,
        help="a worker holding more than its share of the open connections (plus a quarter) answers its next request with `connection: close`, so the client reconnects, usually to another worker",
        unset=_ENV_OR_DEFAULT,
    )
    # On SIGTERM/SIGINT, `slimserve serve` gives in-flight requests this long to finish (uvicorn's
    # timeout_graceful_shutdown); a bare `bentoml serve` waits for them without a limit.
    graceful_shutdown_s: int = option(
        25,
        help="seconds in-flight requests get to finish after SIGTERM/Ctrl-C",
        parse=positive_int,
        unset=_ENV_OR_DEFAULT,
    )
    warmup_runs: int = option(
        3,
        help="model runs per variant before readiness turns green",
        parse=positive_int,
        unset=_ENV_OR_DEFAULT,
    )

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
