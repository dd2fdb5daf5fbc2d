"""Inference backends: a verified model file in, ``run(batch) -> logits`` out.

ONNX Runtime is the default and keeps the process free of torch; TorchScript imports
torch when (and only when) it is chosen.
"""

import io
import logging
import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from service.providers import CPU, CUDA, TENSORRT, check_providers, requested_providers
from slimserve.allocator import apply_policy
from slimserve.errors import SlimserveError

logger = logging.getLogger("slimserve.service")


class Backend(Protocol):
    name: str

    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict[str, object]: ...


class OnnxBackend:
    """An ONNX Runtime session with explicit threading and a checked provider list."""

    name = "onnx"

    def __init__(self, path: Path, *, label: str, providers: str, threads: int, strict: bool) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        requested = requested_providers(providers, available)
        if (CUDA in requested or TENSORRT in requested) and hasattr(ort, "preload_dlls"):
            # Finds the CUDA/cuDNN wheels (nvidia-* packages) before the CUDA provider loads.
            ort.preload_dlls()
        options = ort.SessionOptions()
        # One worker per core and intra-op threads per worker = cores / workers: more would
        # oversubscribe the cores and make every worker slower under load.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ORT's pool threads spin after each run by default; here they would take the core
        # from this worker's event loop (measured: c=1 p50 12 ms with 2 spinning threads
        # against 3 ms without, on 2 cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # ORT's own provider-load errors; we report the outcome ourselves
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=requested)
        except Exception as exc:  # ORT raises its own pybind types
            raise SlimserveError(f"{label}: ONNX Runtime cannot load {path.name}: {exc}") from None
        self.providers = check_providers(label, requested, self.session.get_providers(), strict)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.threads = threads

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def describe(self) -> dict[str, object]:
        return {"backend": self.name, "threads": self.threads, **self.providers.to_dict()}


class TorchScriptBackend:
    """A frozen TorchScript module on CUDA when asked for (or auto and present), else CPU."""

    name = "torchscript"

    def __init__(self, path: Path, *, label: str, providers: str, threads: int, strict: bool) -> None:
        import torch

        self._torch = torch
        if providers == "tensorrt":
            raise SlimserveError("providers=tensorrt applies to the onnx backend; use auto, cpu or cuda")
        wants_cuda = providers in ("auto", "cuda")
        if providers == "cuda" and not torch.cuda.is_available():
            message = f"{label}: providers=cuda but torch sees no CUDA device; running on CPU"
            if strict:
                raise SlimserveError(f"strict mode: {message}")
            logger.warning(message)
        self.device = torch.device("cuda" if wants_cuda and torch.cuda.is_available() else "cpu")
        torch.set_num_threads(threads)
        # Without it every request page-faults its activations back in (slimserve.allocator);
        # the policy is per process, and a torch-backed worker serves nothing else.
        self.allocator = apply_policy(retain=True)
        try:
            # TorchScript archives hold code and tensors, not pickled Python objects; the
            # file's sha256 was verified against the manifest before this call. Choosing this
            # backend is deliberate (the README says TorchScript is deprecated upstream), so
            # torch's FutureWarning would only clutter every worker's start-up.
            self._archive = path.read_bytes()
            self.module = self._load()
        except Exception as exc:  # torch raises RuntimeError subclasses from C++
            raise SlimserveError(f"{label}: torch cannot load {path.name}: {exc}") from None
        # PyTorch's oneDNN INT8 convolutions cache one primitive per layer, for the first
        # input shape they see, and rebuild it on every call of another shape (+0.4 ms per
        # call measured on the pruned INT8 ResNet-20, a tenth of its batch-64 time). Adaptive
        # batching varies the batch size, so a quantized model gets one module per size.
        nodes = {node.kind() for node in self.module.graph.nodes()}
        self.per_batch_size = any(kind.startswith("quantized::") for kind in nodes)
        self._modules: dict[int, Any] = {}
        self.requested = ["cuda" if providers == "cuda" else ("auto" if wants_cuda else "cpu")]
        self.threads = threads

    def _load(self) -> Any:
        """A module from the bytes read once, right after the hash check: later loads never re-read the file."""
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r".*torch\.jit\.load.* is deprecated", category=FutureWarning
            )
            return self._torch.jit.load(io.BytesIO(self._archive), map_location=self.device).eval()

    def _module_for(self, rows: int) -> Any:
        if not self.per_batch_size:
            return self.module
        if rows not in self._modules:  # at most one per batch size the limits allow
            self._modules[rows] = self.module if not self._modules else self._load()
        return self._modules[rows]

    def run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        module = self._module_for(len(batch))
        with torch.inference_mode():
            out = module(torch.from_numpy(batch).to(self.device, non_blocking=True))
        return out.float().cpu().numpy()

    def describe(self) -> dict[str, object]:
        provider = f"torch-{self.device.type}"
        return {
            "backend": self.name,
            "threads": self.threads,
            "provider": provider,
            "requested": self.requested,
            "active": [provider],
            "fell_back": self.requested == ["cuda"] and self.device.type != "cuda",
            "allocator": self.allocator,
            "module_per_batch_size": self.per_batch_size,
        }


def create_backend(
    kind: str, path: Path, *, label: str, providers: str, threads: int, strict: bool
) -> Backend:
    backend = OnnxBackend if kind == "onnx" else TorchScriptBackend
    return backend(path, label=label, providers=providers, threads=threads, strict=strict)


__all__ = ["CPU", "Backend", "OnnxBackend", "TorchScriptBackend", "create_backend"]
