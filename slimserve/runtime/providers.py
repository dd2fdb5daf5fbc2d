"""Which ONNX Runtime execution providers to ask for, and whether we really got them.

ONNX Runtime falls back to CPU silently when CUDA or TensorRT libraries are missing
(onnxruntime-gpu lists those providers as available whether or not they can load), so
the session's providers are compared with the request after creation: a mismatch is a
warning and shows in the model list, or, in strict mode, a refusal to start.
"""

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from slimserve.errors import SlimserveError

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
PREFERENCE = (TENSORRT, CUDA, CPU)
CHOICES = {"tensorrt": [TENSORRT, CUDA, CPU], "cuda": [CUDA, CPU], "cpu": [CPU]}
GPU_INSTALL_HINT = (
    "install the CUDA 13 runtime next to onnxruntime-gpu "
    "(pip install 'onnxruntime-gpu[cuda,cudnn]' nvidia-cublas) on a host with an NVIDIA driver >= 580; "
    "TensorRT also needs its own libraries (pip install 'tensorrt-cu13>=10.13,<11', folder on LD_LIBRARY_PATH)"
)

logger = logging.getLogger("slimserve.runtime")


def nvidia_gpu_visible(dev: Path = Path("/dev")) -> bool:
    """Whether this process can see an NVIDIA GPU, judged without loading any CUDA library.

    onnxruntime-gpu lists the CUDA and TensorRT providers on every machine; asking for them
    where no GPU exists makes ONNX Runtime try to load them and print its own errors before
    it falls back. The driver's device nodes (``/dev/nvidia0``..., or ``/dev/dxg`` under
    WSL2) are what every CUDA process opens, and container runtimes only pass them in when
    a GPU is attached; ``CUDA_VISIBLE_DEVICES`` set to empty or -1 hides GPUs on purpose.
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return False
    return any(dev.glob("nvidia[0-9]*")) or (dev / "dxg").exists()


def requested_providers(choice: str, available: list[str], gpu_visible: bool | None = None) -> list[str]:
    """Providers to request, best first; ``auto`` takes TensorRT > CUDA > CPU as available,
    and only CPU when no GPU is visible. Explicit choices are honoured either way, so a
    missing GPU then shows up as a reported (or, when strict, refused) fallback."""
    if choice == "auto":
        if not (nvidia_gpu_visible() if gpu_visible is None else gpu_visible):
            return [CPU]
        return [p for p in PREFERENCE if p in available] or [CPU]
    wanted = CHOICES[choice]
    if wanted[0] not in available:
        raise SlimserveError(
            f"providers={choice}: this onnxruntime build has no {wanted[0]} "
            f"(available: {', '.join(available)}); {GPU_INSTALL_HINT}"
        )
    return [p for p in wanted if p in available]


@dataclass(frozen=True)
class ProviderReport:
    """What was asked for and what the session actually runs on."""

    requested: list[str]
    active: list[str]

    @property
    def provider(self) -> str:
        return self.active[0]

    @property
    def fell_back(self) -> bool:
        return self.active[0] != self.requested[0]

    def to_dict(self) -> dict[str, object]:
        return {
            "provider": self.provider,
            "requested": self.requested,
            "active": self.active,
            "fell_back": self.fell_back,
        }


def check_providers(name: str, requested: list[str], active: list[str], strict: bool) -> ProviderReport:
    """Warn about (or, when strict, refuse) a session that silently dropped accelerators."""
    report = ProviderReport(requested=list(requested), active=list(active))
    if report.fell_back:
        message = (
            f"{name}: asked ONNX Runtime for {requested[0]} but the session runs on {report.provider} "
            f"(its libraries could not be loaded); {GPU_INSTALL_HINT}"
        )
        if strict:
            raise SlimserveError(f"strict mode: {message}")
        logger.warning(message)
    return report
