"""The benchmarked runtimes, and how a benchmark job opens its model through ``slimserve.runtime``.

The benchmark runs each model on the same runtime layer, with the same session options,
as export's parity gate and the service; a job only chooses threads, provider, spinning
and allocator policy. Torch is imported only by the torch runtimes, so an ONNX Runtime
worker's memory figure is ONNX Runtime's alone.
"""

from pathlib import Path
from typing import Any

from slimserve.manifest import read_manifest
from slimserve.runtime import Runner, RuntimeOptions, eager_runner, open_runner
from slimserve.runtime.providers import CPU, CUDA, TENSORRT

EAGER = "pytorch-eager"
TORCHSCRIPT = "torchscript"
ONNXRUNTIME = "onnxruntime"
# A job names an ONNX Runtime block by the provider it must run on; the runtime layer takes
# the choice a user would type.
PROVIDER_CHOICE = {CPU: "cpu", CUDA: "cuda", TENSORRT: "tensorrt"}


def job_options(job: dict[str, Any]) -> RuntimeOptions:
    """Strict: a benchmark row must run on the device it is labelled with."""
    device = job["device"]
    return RuntimeOptions(
        threads=int(job["threads"]),
        providers=PROVIDER_CHOICE.get(device, device),
        strict=True,
        spinning=bool(job["spinning"]),
        retain_freed_memory=job["malloc"] == "retain",
        label=f"{job['variant']} {job['runtime']} ({device})",
    )


def open_job(job: dict[str, Any]) -> Runner:
    """The job's model, opened as the service would open it (its file's sha256 checked first)."""
    options = job_options(job)
    if job["runtime"] == EAGER:
        # The FP32 reference: the training checkpoint rebuilt in PyTorch, verified by hash.
        from training.checkpoint import load_checkpoint

        return eager_runner(load_checkpoint(Path(job["run_dir"])).model, options)
    manifest = read_manifest(job["bundle_dir"])
    fmt = "onnx" if job["runtime"] == ONNXRUNTIME else "torchscript"
    path = manifest.variant(job["variant"]).files[fmt].verified_path(manifest.bundle_dir)
    return open_runner(fmt, path, options)
