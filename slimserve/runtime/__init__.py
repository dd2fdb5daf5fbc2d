"""One way to run a model: export's parity gate, the benchmarks and the service open every
verified file here, with one set of session options (``RuntimeOptions``).

``open_runner(format, path, options)`` opens an ONNX, TorchScript or ``.pt2`` file and
``eager_runner(model, options)`` wraps an ``nn.Module``; both return a ``Runner``:
``run(batch) -> logits``, ``describe()`` for what it really runs on, and ``synchronize``
for CUDA timing. Torch-free at import, and opening ONNX never imports torch. Callers
verify the file's sha256 before opening it (``ArtifactFile.verified_path``).
"""

from pathlib import Path
from typing import Any

from slimserve.errors import SlimserveError
from slimserve.runtime.options import PROVIDER_CHOICES, RuntimeOptions
from slimserve.runtime.runner import Runner

FORMATS = ("onnx", "torchscript", "pt2")


def open_runner(fmt: str, path: Path, options: RuntimeOptions | None = None) -> Runner:
    """A hash-verified model file opened on the runtime its format needs."""
    options = options or RuntimeOptions()
    if fmt == "onnx":
        from slimserve.runtime.onnx_runner import OnnxRunner

        return OnnxRunner(path, options)
    if fmt == "torchscript":
        from slimserve.runtime.torch_runners import TorchScriptRunner

        return TorchScriptRunner(path, options)
    if fmt == "pt2":
        from slimserve.runtime.torch_runners import Pt2Runner

        return Pt2Runner(path, options)
    raise SlimserveError(f"unknown model format {fmt!r}; choose from {', '.join(FORMATS)}")


def eager_runner(model: Any, options: RuntimeOptions | None = None) -> Runner:
    """An ``nn.Module`` run in PyTorch eager mode with the same options as the files."""
    from slimserve.runtime.torch_runners import EagerRunner

    return EagerRunner(model, options or RuntimeOptions())


__all__ = ["FORMATS", "PROVIDER_CHOICES", "Runner", "RuntimeOptions", "eager_runner", "open_runner"]
