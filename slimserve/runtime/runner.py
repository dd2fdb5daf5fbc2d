"""What every opened model is: a float32 NCHW batch in, logits out, and a true account of
what it runs on."""

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the CLI builds its parsers from settings that import this package
    import numpy as np


class Runner(ABC):
    """A model opened on one runtime and provider by ``slimserve.runtime``.

    ``synchronize`` is ``torch.cuda.synchronize`` for a torch model on CUDA (kernel
    launches return before the kernels finish, so a timer must wait for them) and None
    wherever ``run`` returns only when the work is done.
    """

    name: str  # the format it runs: onnx, torchscript, pt2 or eager
    synchronize: Callable[[], None] | None = None

    @abstractmethod
    def run(self, batch: "np.ndarray") -> "np.ndarray": ...

    @property
    @abstractmethod
    def device(self) -> str:
        """What executes: ``cpu``/``cuda`` for torch, the active provider for ONNX Runtime."""

    @abstractmethod
    def describe(self) -> dict[str, object]:
        """Backend, threads, provider asked for and provider running, allocator policy."""

    def __call__(self, batch: "np.ndarray") -> "np.ndarray":
        return self.run(batch)
