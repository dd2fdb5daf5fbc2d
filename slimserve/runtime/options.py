"""The one set of options every runner is opened with: export, benchmarks and service alike."""

from dataclasses import dataclass

from slimserve.errors import SlimserveError

PROVIDER_CHOICES = ("auto", "cpu", "cuda", "tensorrt")


@dataclass(frozen=True)
class RuntimeOptions:
    """How a model file is opened; a figure measured with one set holds wherever it is used.

    ``threads=None`` leaves the library's default (every core), which export's parity gate
    uses; the service and the benchmarks pin a count. ``spinning`` is off unless asked for
    (the model benchmark turns it on to time ONNX Runtime at its fastest; see
    ``slimserve.runtime.onnx_runner``). ``retain_freed_memory=None`` applies the allocator
    policy to torch runtimes only (ONNX Runtime has its own arena); the benchmark sets it
    explicitly so every worker runs with the same policy.
    """

    threads: int | None = None
    providers: str = "cpu"  # auto, cpu, cuda or tensorrt (tensorrt: ONNX Runtime only)
    strict: bool = True  # refuse, rather than report, a fallback from the provider asked for
    spinning: bool = False
    retain_freed_memory: bool | None = None
    label: str = "model"  # names the model in warnings and errors
    log_severity: int = 3  # ONNX Runtime's own provider-load errors; the outcome is reported here

    def __post_init__(self) -> None:
        if self.providers not in PROVIDER_CHOICES:
            raise SlimserveError(
                f"providers must be one of {', '.join(PROVIDER_CHOICES)}, got {self.providers!r}"
            )
        if self.threads is not None and self.threads < 1:
            raise SlimserveError(f"threads must be at least 1, got {self.threads}")
