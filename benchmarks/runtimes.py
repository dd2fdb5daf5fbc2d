"""Each benchmarked runtime as a function from a float32 NCHW batch to logits.

Torch is imported only by the torch runtimes, so an ONNX Runtime worker's memory figure
is ONNX Runtime's alone. ``Runner.synchronize`` is set for CUDA so timing waits for the
GPU (CUDA launches return before the kernels finish).
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slimserve.errors import SlimserveError

EAGER = "pytorch-eager"
TORCHSCRIPT = "torchscript"
ONNXRUNTIME = "onnxruntime"
RUNTIMES = (EAGER, TORCHSCRIPT, ONNXRUNTIME)


@dataclass(frozen=True)
class Runner:
    run: Callable[[np.ndarray], np.ndarray]
    device: str  # what actually executes: "cpu", "cuda", or the ORT provider in use
    synchronize: Callable[[], None] | None = None


def _torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    # One model call at a time; extra pools only contend. Torch takes this once per process
    # (a worker loads its model again for each batch size), before any parallel work.
    if torch.get_num_interop_threads() != 1:
        torch.set_num_interop_threads(1)


def _torch_runner(model, device: str) -> Runner:
    import torch

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(batch).to(device)).float().cpu().numpy()

    sync = torch.cuda.synchronize if device == "cuda" else None
    return Runner(run=run, device=device, synchronize=sync)


def load_eager(run_dir: Path, threads: int, device: str) -> Runner:
    """The FP32 reference: the training checkpoint rebuilt in PyTorch, verified by hash."""
    from training.checkpoint import load_checkpoint

    _torch_threads(threads)
    checkpoint = load_checkpoint(run_dir)
    return _torch_runner(checkpoint.model.to(device).eval(), device)


def load_torchscript(path: Path, threads: int, device: str) -> Runner:
    import torch

    _torch_threads(threads)
    if "x86" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "x86"  # the engine export quantizes for
    model = torch.jit.load(str(path), map_location=device).eval()
    return _torch_runner(model, device)


def load_onnxruntime(path: Path, threads: int, provider: str, spinning: bool) -> Runner:
    """One session with exactly the requested provider; a silent fallback is an error."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), options, providers=providers)
    if session.get_providers()[0] != provider:
        raise SlimserveError(f"{provider} did not initialise (ONNX Runtime fell back to CPU)")
    input_name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: batch})[0]

    return Runner(run=run, device=provider)
