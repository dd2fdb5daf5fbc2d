"""Photo models through export, serve and bench: a timm and a torchvision backbone.

Real architectures kept cheap on two cores by a 40-photo hymenoptera subset at 64 px
(shorter side 72, then the centre crop): timm's EfficientNet-Lite0 with the packaged
ImageNet weights and a frozen backbone (TF-"same" padding, depthwise convolutions), and
torchvision's ResNet-18 from scratch for one epoch (its ImageNet weights are not on the
machine). The export gate is the one a 224 px model passes: fp32 ONNX and TorchScript
within 1e-4 of eager with every top-1 kept, INT8 calibrated on the run's own training
photos. The served answer for a
12 MP JPEG is compared with the runtime layer fed the service's own preprocessing of the
same bytes.
"""

import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from benchmarks.models_bench import bench_models
from benchmarks.settings import ModelBenchSettings
from export.pipeline import export_bundle
from export.registry import register_bundle
from export.settings import ExportSettings
from slimserve.manifest import Manifest
from slimserve.runtime import RuntimeOptions, open_runner
from training.config import TrainConfig
from training.train import train

HYMENOPTERA = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "hymenoptera"
PHOTOS = 40  # train and test photos each: enough for both classes, cheap to decode
BUNDLE = "photo-timm"


CALIBRATION = 32


def _train_photo_model(run_dir: Path, model: str, **recipe: object) -> Path:
    config = TrainConfig.from_recipe(
        model, dataset=f"folder:{HYMENOPTERA}", limit=PHOTOS, image_size=64, resize_shorter=72, threads=2,
        **recipe,
    )  # fmt: skip
    train(config, run_dir, console=Console(quiet=True))
    return run_dir


def _export(run: Path, out: Path, name: str) -> Manifest:
    return export_bundle(
        run, out=out, name=name, version="v1", variants=["fp32", "int8"], limit=PHOTOS, register=False,
        settings=ExportSettings(calibration_images=CALIBRATION), console=Console(quiet=True),
    )  # fmt: skip


@pytest.fixture(scope="module")
def timm_bundle(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    root = tmp_path_factory.mktemp("photo-timm")
    run = _train_photo_model(
        root / "run",
        "tf_efficientnet_lite0",
        recipe="transfer",
        weights="imagenet",
        freeze="backbone",
        epochs=10,
    )
    return _export(run, root / "bundles", BUNDLE)


@pytest.fixture(scope="module")
def tv_bundle(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    root = tmp_path_factory.mktemp("photo-tv")
    run = _train_photo_model(root / "run", "tv:resnet18", recipe="fast", epochs=1)
    return _export(run, root / "bundles", "photo-tv")


def _assert_passes_the_export_gate(manifest: Manifest, arch: str) -> None:
    data = manifest.data
    assert data["parent"]["arch"] == arch
    assert data["preprocess"]["resize_shorter"] == 72 and data["preprocess"]["height"] == 64
    assert data["evaluation"]["images"] == PHOTOS
    assert data["failed"] == {}, data["failed"]
    fp32 = data["variants"]["fp32"]
    for fmt in ("onnx", "torchscript"):
        parity = fp32["parity"][fmt]
        assert parity["passed"] and parity["max_abs_diff"] <= 1e-4 and parity["top1_agreement"] == 1.0
        assert parity["images"] == PHOTOS
    assert fp32["top1_agreement"] == 1.0
    int8 = data["variants"]["int8"]
    assert int8["precision"] == "int8"
    # Calibrated on the run's own training photos, decoded with its spec.
    for fmt in ("onnx", "torchscript"):
        assert int8["export_settings"][fmt]["calibration_images"] == CALIBRATION
    assert abs(fp32["test_accuracy"] - int8["test_accuracy"]) * 100 <= data["settings"]["max_accuracy_drop"]
    for variant in ("fp32", "int8"):
        assert (manifest.bundle_dir / variant / "model.onnx").is_file()


@pytest.mark.slow
def test_timm_model_exports_fp32_and_int8_through_the_parity_gate(timm_bundle):
    _assert_passes_the_export_gate(timm_bundle, "timm:tf_efficientnet_lite0")
    # ImageNet features at 64 px still tell ants from bees: the gate is not passed by a constant model.
    assert timm_bundle.data["parent"]["test_accuracy"] >= 0.65


@pytest.mark.slow
def test_torchvision_model_exports_fp32_and_int8_through_the_parity_gate(tv_bundle):
    _assert_passes_the_export_gate(tv_bundle, "tv:resnet18")


def _large_jpeg() -> bytes:
    """A hymenoptera photo upscaled to 4000x3000 (12 MP) and saved as a phone would."""
    source = sorted((HYMENOPTERA / "val" / "bees").glob("*.jpg"))[0]
    with Image.open(source) as image:
        large = image.convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    large.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.slow
@pytest.mark.http
def test_served_answer_for_a_12_megapixel_jpeg_equals_the_in_process_one(timm_bundle, tmp_path, start_server):
    from service.preprocess import Preprocessor, open_images

    register_bundle(timm_bundle)
    payload = _large_jpeg()
    assert len(payload) > 1_000_000  # a real large upload, within the default 16 MB body limit
    runner = open_runner("onnx", timm_bundle.bundle_dir / "fp32" / "model.onnx", RuntimeOptions(threads=1))
    batch = Preprocessor(timm_bundle.spec).batch(open_images([payload], 4096 * 4096, 4096 * 4096))
    assert batch.shape == (1, 3, 64, 64)
    logits = runner(batch)[0].astype(np.float64)
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()

    with start_server(tmp_path / "serve.log", {"SLIMSERVE_BUNDLE": BUNDLE}) as (url, _process):
        response = httpx.post(
            f"{url}/predict?variant=fp32&top_k=2", content=payload, headers={"Content-Type": "image/jpeg"},
            timeout=60,
        )  # fmt: skip
    assert response.status_code == 200, response.text
    served = response.json()["predictions"]
    assert [p["index"] for p in served] == list(np.argsort(-expected)[:2])
    assert max(abs(p["probability"] - expected[p["index"]]) for p in served) < 1e-5


@pytest.mark.slow
def test_bench_models_on_a_photo_bundle_times_every_runtime_at_its_input_shape(timm_bundle, tmp_path):
    settings = ModelBenchSettings(
        batch_sizes=(1, 8), warmup=1, repeats=3, max_seconds=2.0, select_batch=8, rounds=1, threads=1
    )
    report = bench_models(timm_bundle.bundle_dir, tmp_path / "out", settings, console=Console(quiet=True))
    rows = report["rows"]
    runtimes = {row["runtime"] for row in rows}
    # The eager reference rebuilds the timm model from the run's checkpoint.
    assert "pytorch-eager" in runtimes and any(r.startswith("onnxruntime") for r in runtimes), runtimes
    assert {row["batch_size"] for row in rows} == {1, 8}
    assert report["input_shape"] == [3, 64, 64]
    assert all(row["peak_rss_mb"] > 0 for row in rows)
    assert all(row["images_per_s"] > 0 for row in rows)
    assert json.loads((tmp_path / "out" / "bench-models.json").read_text())["rows"] == rows


@pytest.mark.slow
def test_bench_http_sends_the_test_split_photos_and_re_encodes_them_at_a_given_size(timm_bundle, tmp_path):
    from benchmarks.http_bench import resized_images, write_test_images
    from benchmarks.settings import width_by_height

    photos = write_test_images(timm_bundle.data, tmp_path / "photos", 3)
    # The camera's own files from the split export scored (val/), not images re-made at 64 px.
    assert len(photos) == 3 and all(p.suffix == ".jpg" for p in photos)
    val_names = {p.name for p in (HYMENOPTERA / "val").rglob("*.jpg")}
    assert all(p.name.split("-", 1)[1] in val_names for p in photos)
    assert all(Image.open(p).width > 64 for p in photos)
    large = resized_images(photos[:1], width_by_height("4000x3000"), tmp_path / "large")
    with Image.open(large[0]) as image:
        assert image.format == "JPEG" and image.size == (4000, 3000)
    with pytest.raises(Exception, match="WIDTHxHEIGHT"):
        width_by_height("4000")


def test_calibration_batches_are_equal_so_histogram_calibrators_accept_a_photo_split():
    from export.quantize_onnx import equal_batch_size

    assert equal_batch_size(244) == 61  # the hymenoptera train split, minus its GIF
    assert equal_batch_size(512) == 64 and equal_batch_size(32) == 32 and equal_batch_size(241) == 1


def test_tf_same_padding_becomes_constant_and_fx_int8_traces_it():
    """timm's Conv2dSame pads from the input's shape at run time; FX quantization cannot trace that."""
    import timm
    import torch

    from export.quantize_torch import quantize_model
    from export.static_padding import StaticSameConv2d, with_static_same_padding

    model = timm.create_model("tf_efficientnet_lite0", num_classes=2).eval()
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        reference = model(images)
        static = with_static_same_padding(
            timm.create_model("tf_efficientnet_lite0", num_classes=2).eval(), images
        )
        static.load_state_dict(model.state_dict())  # same weight names: nothing renamed
        assert (
            sum(isinstance(m, StaticSameConv2d) for m in static.modules()) == 5
        )  # stem + 4 stride-2 depthwise
        assert torch.equal(static(images), reference)
        quantized = quantize_model(model, images.numpy())
        assert quantized(images).shape == (4, 2)
