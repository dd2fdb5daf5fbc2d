"""The one runtime layer: every format opens through it, agrees with eager, and reports
(or refuses) what it really runs on.

A small CNN with seeded random weights is written once per module with export's own
writers (TorchScript, ONNX, ``.pt2``, and an INT8 TorchScript); nothing is trained, so
the module takes seconds. Inputs are real Fashion-MNIST test images.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from export.formats import example_batch, write_onnx, write_pt2, write_torchscript
from export.quantize_torch import quantize_model
from slimserve.errors import SlimserveError
from slimserve.runtime import FORMATS, RuntimeOptions, eager_runner, open_runner
from slimserve.runtime.providers import CPU, CUDA
from training.datasets import load_data
from training.eval_data import evaluation_images
from training.models import build_model

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    data = load_data("fashion-mnist")
    return evaluation_images(data, data.spec, "test", 64, seed=0).images


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_model("cnn", in_channels=1, num_classes=10, input_size=(28, 28), widths=[8, 16], hidden=32)
    return net.eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, model, images) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("runtime")
    example = example_batch((1, 28, 28))
    paths = {"onnx": folder / "model.onnx", "torchscript": folder / "model.ts", "pt2": folder / "model.pt2"}
    write_onnx(model, example, paths["onnx"])
    write_torchscript(model, example, paths["torchscript"])
    write_pt2(model, example, paths["pt2"])
    paths["int8-torchscript"] = folder / "int8.ts"
    write_torchscript(quantize_model(model, images[:32]), example, paths["int8-torchscript"])
    return paths


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_opens_through_the_layer_and_agrees_with_eager(fmt, files, model, images):
    reference = eager_runner(model).run(images)
    runner = open_runner(fmt, files[fmt], RuntimeOptions(threads=1, label="t"))
    out = runner.run(images)
    assert out.dtype == np.float32 and out.shape == (len(images), 10)
    assert np.abs(out - reference).max() < 1e-4
    assert (out.argmax(1) == reference.argmax(1)).all()
    assert np.array_equal(runner(images), out)  # a Runner is also the callable export's predict takes
    info = runner.describe()
    assert info["backend"] == fmt and info["fell_back"] is False
    assert runner.device == ("CPUExecutionProvider" if fmt == "onnx" else "cpu")
    assert runner.synchronize is None  # only CUDA timing needs to wait for the device


def test_torch_runtimes_get_the_allocator_policy_and_onnx_keeps_its_arena(files):
    torchscript = open_runner("torchscript", files["torchscript"], RuntimeOptions(threads=1))
    assert torchscript.describe()["allocator"].startswith("glibc mallopt")
    assert torchscript.describe()["threads"] == torch.get_num_threads() == 1
    onnx = open_runner("onnx", files["onnx"], RuntimeOptions(threads=1))
    assert onnx.describe()["allocator"] == "C library default"
    assert onnx.describe()["spinning"] is False  # off unless a caller (the benchmark) asks
    asked = open_runner("onnx", files["onnx"], RuntimeOptions(threads=1, retain_freed_memory=True))
    assert asked.describe()["allocator"].startswith("glibc mallopt")


def test_int8_torchscript_keeps_one_module_per_batch_size(files, images):
    """oneDNN's INT8 convolutions cache a primitive for the first input shape they see, so
    a quantized TorchScript file gets a module per batch size; a float one keeps one."""
    runner = open_runner("torchscript", files["int8-torchscript"], RuntimeOptions(threads=1))
    assert runner.describe()["module_per_batch_size"]
    batch = images[:4]
    together = runner.run(batch)
    one_by_one = np.concatenate([runner.run(batch[i : i + 1]) for i in range(4)])
    assert np.abs(together - one_by_one).max() < 1e-5
    assert set(runner._modules) == {4, 1}
    assert runner._modules[4] is runner.module and runner._modules[1] is not runner.module
    runner.run(images[:4])
    assert len(runner._modules) == 2  # a size seen before reuses its module
    fp32 = open_runner("torchscript", files["torchscript"], RuntimeOptions(threads=1))
    fp32.run(images[:4]), fp32.run(images[:1])
    assert not fp32.describe()["module_per_batch_size"] and fp32._modules == {}


def test_auto_runs_on_cpu_alone_when_no_gpu_is_visible(files, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")  # hides any GPU, as a container without one
    runner = open_runner("onnx", files["onnx"], RuntimeOptions(providers="auto", threads=1))
    info = runner.describe()
    assert info["requested"] == [CPU] and info["active"] == [CPU] and not info["fell_back"]


def test_explicit_cuda_without_a_gpu_is_a_reported_fallback_or_refused_in_one_line(files, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    lenient = open_runner("onnx", files["onnx"], RuntimeOptions(providers="cuda", threads=1, strict=False))
    info = lenient.describe()
    assert info["requested"] == [CUDA, CPU] and info["active"] == [CPU] and info["fell_back"] is True
    with pytest.raises(SlimserveError) as refused:
        open_runner(
            "onnx", files["onnx"], RuntimeOptions(providers="cuda", threads=1, strict=True, label="t")
        )
    message = str(refused.value)
    assert message.startswith("strict mode: t: asked ONNX Runtime for CUDAExecutionProvider")
    assert "\n" not in message


def test_torch_cuda_request_without_cuda_is_reported_or_refused(files, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    if torch.cuda.is_available():  # CUDA was initialised before the variable could hide it
        pytest.fail("run this module in a process that has not initialised CUDA")
    lenient = open_runner("torchscript", files["torchscript"], RuntimeOptions(providers="cuda", strict=False))
    assert lenient.device == "cpu" and lenient.describe()["fell_back"] is True
    with pytest.raises(
        SlimserveError, match=r"^strict mode: t: providers=cuda but torch sees no CUDA device"
    ):
        open_runner("pt2", files["pt2"], RuntimeOptions(providers="cuda", strict=True, label="t"))
    with pytest.raises(SlimserveError, match="providers=tensorrt applies to the onnx backend"):
        open_runner("torchscript", files["torchscript"], RuntimeOptions(providers="tensorrt"))


def test_bad_options_and_unreadable_files_are_one_line_errors(files, tmp_path):
    with pytest.raises(SlimserveError, match="providers must be one of auto, cpu, cuda, tensorrt"):
        RuntimeOptions(providers="rocm")
    with pytest.raises(SlimserveError, match="threads must be at least 1"):
        RuntimeOptions(threads=0)
    with pytest.raises(SlimserveError, match="unknown model format 'tflite'"):
        open_runner("tflite", files["onnx"])
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(SlimserveError, match=r"^m: ONNX Runtime cannot load broken\.onnx"):
        open_runner("onnx", broken, RuntimeOptions(label="m"))
    with pytest.raises(SlimserveError, match=r"^m: torch cannot load broken\.onnx"):
        open_runner("torchscript", broken, RuntimeOptions(label="m"))


def test_opening_onnx_never_imports_torch(files):
    """The service and ONNX Runtime benchmark workers hold ONNX Runtime alone."""
    code = (
        "import json, sys\n"
        "import numpy as np\n"
        "from slimserve.runtime import RuntimeOptions, open_runner\n"
        f"runner = open_runner('onnx', {str(files['onnx'])!r}, RuntimeOptions(threads=1))\n"
        "logits = runner.run(np.zeros((3, 1, 28, 28), np.float32))\n"
        "print(json.dumps({'shape': list(logits.shape), 'torch': 'torch' in sys.modules}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO, check=True
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"shape": [3, 10], "torch": False}
