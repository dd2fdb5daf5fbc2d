"""Which ONNX Runtime execution providers to ask for, and whether we really got them.

ONNX Runtime falls back to CPU silently when CUDA or TensorRT libraries are missing
(onnxruntime-gpu lists those providers as available whether or not they can load), so
the session's providers are compared with the request after creation: a mismatch is a
warning and shows in the model list, or, in strict mode, a refusal to start.
"""

import logging
from dataclasses import dataclass

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

logger = logging.getLogger("slimserve.service")


def requested_providers(choice: str, available: list[str]) -> list[str]:
    """Providers to request, best first; ``auto`` takes TensorRT > CUDA > CPU as available."""
    if choice == "auto":
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
