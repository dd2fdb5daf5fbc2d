"""PyTorch runners: frozen TorchScript, torch.export ``.pt2`` and an eager ``nn.Module``.

torch is imported when one of these is opened, never at import. Every torch runner goes
through ``_prepare_torch``: the thread counts, the quantized engine and the allocator
policy are set there and only there.
"""

import contextlib
import io
import logging
import warnings
from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from slimserve.allocator import apply_policy
from slimserve.errors import SlimserveError
from slimserve.runtime.options import RuntimeOptions
from slimserve.runtime.runner import Runner

logger = logging.getLogger("slimserve.runtime")
QUANTIZED_ENGINE = "x86"  # the engine export quantizes for (export.quantize_torch)


@contextmanager
def quiet_torch_deprecations() -> Iterator[None]:
    """TorchScript, torch.ao.quantization and quantized tensors warn on every call that they
    are deprecated; the issue asks for TorchScript anyway, so keep the terminal readable."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\..*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def _prepare_torch(options: RuntimeOptions) -> str:
    """Threads, quantized engine and allocator for this process; returns the allocator policy."""
    import torch

    if options.threads is not None:
        torch.set_num_threads(options.threads)
    # One model call at a time; extra pools only contend. Torch takes this once per process,
    # before any parallel work (a benchmark worker opens its model again for each batch
    # size; export has run torch long before), so later calls keep what is set.
    if torch.get_num_interop_threads() != 1:
        # Refused once parallel work has started; describe() reports the count in force.
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)
    if QUANTIZED_ENGINE in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = QUANTIZED_ENGINE
    # Without it every call page-faults its activations back in (slimserve.allocator); the
    # policy is per process, and a torch-backed worker serves nothing else.
    retain = True if options.retain_freed_memory is None else options.retain_freed_memory
    return apply_policy(retain)


def _device(options: RuntimeOptions) -> Any:  # -> torch.device
    """CUDA when asked for (or ``auto`` and present), else CPU; a missing GPU is reported or refused."""
    import torch

    if options.providers == "tensorrt":
        raise SlimserveError("providers=tensorrt applies to the onnx backend; use auto, cpu or cuda")
    wants_cuda = options.providers in ("auto", "cuda")
    if options.providers == "cuda" and not torch.cuda.is_available():
        message = f"{options.label}: providers=cuda but torch sees no CUDA device; running on CPU"
        if options.strict:
            raise SlimserveError(f"strict mode: {message}")
        logger.warning(message)
    return torch.device("cuda" if wants_cuda and torch.cuda.is_available() else "cpu")


class TorchRunner(Runner):
    """What the torch formats share: device, threads, allocator, numpy in and out."""

    def __init__(self, options: RuntimeOptions) -> None:
        import torch

        self._torch = torch
        self.options = options
        self.allocator = _prepare_torch(options)
        self.torch_device = _device(options)
        self.synchronize = torch.cuda.synchronize if self.torch_device.type == "cuda" else None

    @abstractmethod
    def _module_for(self, rows: int) -> Any:
        """The module that runs a batch of ``rows`` images."""

    def run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        module = self._module_for(len(batch))
        with torch.inference_mode():
            out = module(torch.from_numpy(batch).to(self.torch_device, non_blocking=True))
        return out.float().cpu().numpy()

    @property
    def device(self) -> str:
        return self.torch_device.type

    def describe(self) -> dict[str, object]:
        provider = f"torch-{self.torch_device.type}"
        requested = "cuda" if self.options.providers == "cuda" else self.options.providers
        return {
            "backend": self.name,
            "threads": self._torch.get_num_threads(),
            "interop_threads": self._torch.get_num_interop_threads(),
            "provider": provider,
            "requested": [requested],
            "active": [provider],
            "fell_back": requested == "cuda" and self.torch_device.type != "cuda",
            "allocator": self.allocator,
        }


class TorchScriptRunner(TorchRunner):
    """A frozen TorchScript archive, read once right after its hash check."""

    name = "torchscript"

    def __init__(self, path: Path, options: RuntimeOptions) -> None:
        super().__init__(options)
        try:
            # TorchScript archives hold code and tensors, not pickled Python objects; the
            # file's sha256 was verified against the manifest before this call.
            self._archive = path.read_bytes()
            self.module = self._load()
        except Exception as exc:  # torch raises RuntimeError subclasses from C++
            raise SlimserveError(f"{options.label}: torch cannot load {path.name}: {exc}") from None
        # PyTorch's oneDNN INT8 convolutions cache one primitive per layer, for the first
        # input shape they see, and rebuild it on every call of another shape (+0.4 ms per
        # call measured on the pruned INT8 ResNet-20, a tenth of its batch-64 time). Callers
        # vary the batch size (adaptive batching, a last partial batch), so a quantized model
        # gets one module per size.
        nodes = {node.kind() for node in self.module.graph.nodes()}
        self.per_batch_size = any(kind.startswith("quantized::") for kind in nodes)
        self._modules: dict[int, Any] = {}

    def _load(self) -> Any:
        """A module from the bytes read once: later loads never re-read the file. Choosing
        TorchScript is deliberate (the README says it is deprecated upstream), so torch's
        FutureWarning would only clutter every worker's start-up."""
        with quiet_torch_deprecations():
            module = self._torch.jit.load(io.BytesIO(self._archive), map_location=self.torch_device)
        return module.eval()

    def _module_for(self, rows: int) -> Any:
        if not self.per_batch_size:
            return self.module
        if rows not in self._modules:  # at most one per batch size the caller uses
            self._modules[rows] = self.module if not self._modules else self._load()
        return self._modules[rows]

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "module_per_batch_size": self.per_batch_size}


class Pt2Runner(TorchRunner):
    """A torch.export ExportedProgram. Only for files whose sha256 the manifest vouches for:
    ``torch.export.load`` would unpickle tensor subclasses or custom objects if a file held any."""

    name = "pt2"

    def __init__(self, path: Path, options: RuntimeOptions) -> None:
        super().__init__(options)
        try:
            with quiet_torch_deprecations():
                self.module = self._torch.export.load(str(path)).module().to(self.torch_device)
        except Exception as exc:  # torch raises RuntimeError subclasses from C++
            raise SlimserveError(f"{options.label}: torch cannot load {path.name}: {exc}") from None

    def _module_for(self, rows: int) -> Any:
        return self.module


class EagerRunner(TorchRunner):
    """An ``nn.Module`` in memory: export's reference and the benchmark's PyTorch row."""

    name = "eager"

    def __init__(self, model: Any, options: RuntimeOptions) -> None:
        super().__init__(options)
        model.eval()
        self.module = model if self.torch_device.type == "cpu" else model.to(self.torch_device)

    def _module_for(self, rows: int) -> Any:
        return self.module
