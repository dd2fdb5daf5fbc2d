"""INT8 that keeps its answers: the CPU preset by ISA, and bias correction on real photos.

The slow test quantizes the packaged ImageNet EfficientNet-Lite0 (at 128 px to stay near a
minute) through the export's own ``OnnxQuantizer`` and counts how many hymenoptera photos
change their top-1 answer against fp32.
"""

import dataclasses
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from export.bias_correction import fake_quantize, output_shift
from export.formats import INPUT_NAME, example_batch, write_onnx
from export.int8_presets import PRESETS, cpu_flags, cpu_preset, resolve_preset
from export.quantize_onnx import OnnxQuantizer
from service.preprocess import Preprocessor, load_image, open_image
from slimserve.spec import PreprocessSpec
from training import pretrained
from training.eval_data import ImageSet

HYMENOPTERA = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "hymenoptera"
SIZE = 128  # the packaged lite0 at a reduced input: same weights, a quarter of the work


@pytest.mark.parametrize(
    ("flags", "preset"),
    [
        ({"avx2", "avx512f", "avx512_vnni"}, "avx512_vnni"),
        ({"avx2", "avx_vnni"}, "avx512_vnni"),  # AVX-VNNI: the same int32 accumulation
        ({"avx2", "avx512f", "amx_int8"}, "avx512_vnni"),
        ({"avx2", "fma"}, "avx2"),
        ({"avx2", "avx512f"}, "avx2"),  # AVX-512 without VNNI still saturates int16
        ({"asimd", "asimddp"}, "arm64"),
        (set(), "avx2"),  # unknown CPU: the recipe that is safe everywhere
    ],
)
def test_cpu_preset_follows_the_vector_isa(flags, preset):
    assert cpu_preset(flags).name == preset
    assert resolve_preset("cpu", flags).name == preset
    assert resolve_preset("tensorrt", flags).name == "tensorrt"


def test_presets_are_data_with_reduce_range_only_without_vnni(tmp_path):
    assert PRESETS["avx2"].reduce_range and PRESETS["avx2"].weight_levels == 64
    assert not PRESETS["avx512_vnni"].reduce_range and PRESETS["avx512_vnni"].weight_levels == 127
    assert PRESETS["tensorrt"].activations == "int8" and PRESETS["tensorrt"].activation_symmetric
    assert PRESETS["avx2"].to_dict()["name"] == "avx2"
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n\nprocessor\t: 1\n")
    assert cpu_preset(cpu_flags(cpuinfo)).name == "avx512_vnni"
    assert cpu_flags(tmp_path / "missing") == set()


def test_output_shift_is_the_mean_error_of_rounded_weights():
    """For a 1x1 grouped conv the mean output change is exactly (W_q - W) @ E[x] per group."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(8, 2, 1, 1)).astype(np.float32)  # 4 groups of 2 inputs
    x = rng.normal(loc=1.0, size=(500, 8)).astype(np.float32)
    error = (fake_quantize(weight, 7) - weight)[:, :, 0, 0]
    grouped = x.reshape(500, 4, 2)
    measured = np.einsum("goi,ngi->ngo", error.reshape(4, 2, 2), grouped).reshape(500, 8).mean(axis=0)
    np.testing.assert_allclose(output_shift(weight, 7, x.mean(axis=0), group=4), measured, rtol=1e-4)


@pytest.fixture(scope="module")
def lite0_128(tmp_path_factory):
    model, weights = pretrained.load_pretrained("tf_efficientnet_lite0", "imagenet")
    spec = PreprocessSpec(SIZE, SIZE, 3, weights.mean, weights.std, weights.interpolation, resize_shorter=146)
    path = tmp_path_factory.mktemp("lite0") / "lite0-128.onnx"
    write_onnx(model, example_batch((3, SIZE, SIZE)), path)
    preprocess = Preprocessor(spec)

    def photos(split: str, count: int) -> np.ndarray:
        files = sorted((HYMENOPTERA / split).rglob("*.jpg"))[:: 2 if split == "val" else 4][:count]
        return np.concatenate([preprocess(load_image(open_image(f.read_bytes(), 10**8))) for f in files])

    return path, photos("train", 48), photos("val", 76)


def _answers(path: Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAME: images})[0].argmax(axis=1)


@pytest.mark.slow
def test_bias_correction_keeps_more_answers_than_plain_qdq(lite0_128, tmp_path):
    path, calibration, photos = lite0_128
    reference = _answers(path, photos)
    calibration_set = ImageSet(calibration, np.zeros(len(calibration), dtype=np.int64))

    def changed(preset_name: str, bias_correction: bool) -> int:
        preset = dataclasses.replace(PRESETS[preset_name], bias_correction=bias_correction)
        work = tmp_path / f"{preset_name}-{bias_correction}"
        work.mkdir()
        quantized = OnnxQuantizer(path, calibration_set, preset, work).quantize(work / "q.onnx", "minmax")
        return int((_answers(quantized, photos) != reference).sum())

    # The AVX2 recipe (7-bit weights) computes the same on every x86 CPU, so this holds on any.
    plain_avx2, corrected_avx2 = changed("avx2", False), changed("avx2", True)
    assert corrected_avx2 < plain_avx2, (corrected_avx2, plain_avx2)
    # The recipe export picks for this CPU keeps the answers here. A full-range recipe is exact
    # only where the CPU accumulates in int32 (VNNI, AMX, NEON dot products): on an AVX2 CPU
    # vpmaddubsw saturates, and it must lose more answers than the avx2 recipe does.
    here = cpu_preset(cpu_flags()).name
    if here == "avx2":
        corrected = corrected_avx2
        full_range = changed("avx512_vnni", True)
        assert full_range > corrected, (full_range, corrected)
    else:
        plain, corrected = changed(here, False), changed(here, True)
        assert corrected <= plain, (corrected, plain)
    assert corrected <= 0.08 * len(photos), f"{here}: {corrected} of {len(photos)} photos changed"
