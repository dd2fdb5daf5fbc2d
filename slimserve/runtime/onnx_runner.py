"""ONNX Runtime sessions: explicit threading and a provider list checked after creation.

onnxruntime is imported when a session is opened, never at import, and torch never:
a process that serves or benchmarks ONNX holds ONNX Runtime alone.
"""

from pathlib import Path

import numpy as np

from slimserve.allocator import apply_policy
from slimserve.errors import SlimserveError
from slimserve.runtime.options import RuntimeOptions
from slimserve.runtime.providers import CUDA, TENSORRT, ProviderReport, check_providers, requested_providers
from slimserve.runtime.runner import Runner


class OnnxRunner(Runner):
    """One ``InferenceSession`` on the requested provider, fallback reported or refused."""

    name = "onnx"

    def __init__(self, path: Path, options: RuntimeOptions) -> None:
        import onnxruntime as ort

        requested = requested_providers(options.providers, ort.get_available_providers())
        if (CUDA in requested or TENSORRT in requested) and hasattr(ort, "preload_dlls"):
            # Finds the CUDA/cuDNN wheels (nvidia-* packages) before the CUDA provider loads.
            ort.preload_dlls()
        # ONNX Runtime keeps its own arena, so the glibc policy is applied only when asked.
        self.allocator = apply_policy(bool(options.retain_freed_memory))
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=session_options(options), providers=requested
            )
        except Exception as exc:  # ORT raises its own pybind types
            raise SlimserveError(f"{options.label}: ONNX Runtime cannot load {path.name}: {exc}") from None
        self.providers: ProviderReport = check_providers(
            options.label, requested, self.session.get_providers(), options.strict
        )
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.options = options

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    @property
    def device(self) -> str:
        return self.providers.provider

    def describe(self) -> dict[str, object]:
        return {
            "backend": self.name,
            "threads": self.options.threads,
            **self.providers.to_dict(),
            "spinning": self.options.spinning,
            "allocator": self.allocator,
        }


def session_options(options: RuntimeOptions):  # -> onnxruntime.SessionOptions
    """The session options every ONNX Runtime caller gets."""
    import onnxruntime as ort

    session = ort.SessionOptions()
    if options.threads is not None:
        # One worker per core and intra-op threads per worker = cores / workers: more would
        # oversubscribe the cores and make every worker slower under load.
        session.intra_op_num_threads = options.threads
    session.inter_op_num_threads = 1  # one model call at a time; a second pool only contends
    session.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's pool threads spin after each run by default; in a server they would take the core
    # from the worker's event loop (measured: c=1 p50 12 ms with 2 spinning threads against
    # 3 ms without, on 2 cores). The model benchmark turns spinning on explicitly: it times
    # back-to-back calls in a process that does nothing else.
    session.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spinning else "0")
    session.log_severity_level = options.log_severity
    return session
