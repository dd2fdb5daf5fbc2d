"""The torch-free serving preprocessing equals torchvision's reference, and bad uploads are 4xx."""

import io

import numpy as np
import pytest
from PIL import Image

from service.errors import RequestError
from service.preprocess import Preprocessor, decode_image, open_image
from slimserve.imaging import to_spec_mode
from slimserve.spec import PreprocessSpec
from training.datasets import load_data
from training.transforms import eval_transform

MAX_PIXELS = 4096 * 4096


@pytest.fixture(scope="module")
def fashion():
    return load_data("fashion-mnist")


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def reference(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """torchvision's pipeline after the shared colour-mode step (what training's folder loader does)."""
    return eval_transform(spec)(to_spec_mode(image, spec)).numpy()


def test_equals_torchvision_on_fashion_mnist_test_images(fashion):
    spec = fashion.spec
    preprocess = Preprocessor(spec)
    reference_transform = eval_transform(spec)
    worst = 0.0
    for index in range(300):
        image, _ = fashion.test[index]
        served = preprocess(decode_image(encode(image), MAX_PIXELS))
        assert served.shape == (1, *spec.input_shape) and served.dtype == np.float32
        worst = max(worst, float(np.abs(served[0] - reference_transform(image).numpy()).max()))
    assert worst <= 1e-6


def _variants(base: Image.Image) -> dict[str, bytes]:
    """Real Fashion-MNIST pixels dressed up as the uploads users send."""
    gray = np.asarray(base)
    rgb = np.stack([gray, 255 - gray, gray // 2], axis=-1).astype(np.uint8)
    alpha = np.tile(np.linspace(0, 255, gray.shape[1], dtype=np.uint8), (gray.shape[0], 1))
    rgba = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    palette = Image.fromarray(rgb, "RGB").quantize(colors=16)
    palette.info["transparency"] = 0
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW on display
    big = Image.fromarray(rgb, "RGB").resize((97, 61), Image.Resampling.BICUBIC)
    return {
        "rgb-png": encode(Image.fromarray(rgb, "RGB")),
        "rgba-png": encode(rgba),
        "palette-png-transparent": encode(palette, transparency=0),
        "exif-rotated-jpeg": encode(big, "JPEG", exif=exif, quality=92),
        "resized-webp-lossless": encode(big, "WEBP", lossless=True),
        "la-png": encode(rgba.convert("LA")),
        "bmp": encode(big, "BMP"),
        "gif": encode(big.convert("P"), "GIF"),
    }


SPECS = {
    "gray-28-bilinear": PreprocessSpec(28, 28, 1, mean=(0.2860,), std=(0.3530,)),
    "rgb-32-bicubic": PreprocessSpec(
        32,
        32,
        3,
        mean=(0.49, 0.48, 0.45),
        std=(0.25, 0.24, 0.26),
        interpolation="bicubic",
        alpha_background=255,
    ),
    "rgb-24x40-nearest": PreprocessSpec(24, 40, 3, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="nearest"),
}


@pytest.mark.parametrize("spec_name", SPECS)
def test_equals_torchvision_on_converted_and_resized_images(fashion, spec_name):
    spec = SPECS[spec_name]
    preprocess = Preprocessor(spec)
    base, _ = fashion.test[7]
    for kind, data in _variants(base).items():
        with Image.open(io.BytesIO(data)) as original:
            original.load()
            expected = reference(original, spec)
        served = preprocess(decode_image(data, MAX_PIXELS))[0]
        assert served.shape == spec.input_shape, kind
        assert np.abs(served - expected).max() <= 1e-6, kind


def test_exif_orientation_is_applied(fashion):
    """A portrait photo stored landscape with an EXIF tag is seen upright."""
    base, _ = fashion.test[3]
    wide = Image.fromarray(np.asarray(base)[:, :14])  # 14 wide, 28 high
    exif = Image.Exif()
    exif[0x0112] = 6
    image = decode_image(encode(wide.rotate(90, expand=True), "JPEG", exif=exif, quality=95), MAX_PIXELS)
    spec = PreprocessSpec(28, 14, 1, mean=(0.0,), std=(1.0,))
    assert Preprocessor(spec).pixels(image).shape == (1, 28, 14)


def test_batch_equals_single_images(fashion):
    preprocess = Preprocessor(fashion.spec)
    images = [fashion.test[i][0] for i in range(5)]
    batch = preprocess.batch([open_image(encode(i), MAX_PIXELS) for i in images])
    singles = np.concatenate([preprocess(i) for i in images])
    assert np.array_equal(batch, singles)


def _png(size: tuple[int, int]) -> bytes:
    return encode(Image.new("L", size, 0))


@pytest.mark.parametrize(
    ("data", "status", "fragment"),
    [
        (b"", 400, "zero bytes"),
        (b"this is not an image", 400, "not a readable"),
        (encode(Image.new("RGB", (8, 8)), "TIFF"), 400, "not a readable"),
        (_png((64, 64))[:60], 400, "truncated"),
        (_png((600, 600)), 413, "limit is 250000"),
    ],
    ids=["empty", "garbage", "tiff-not-allowed", "truncated-png", "too-many-pixels"],
)
def test_bad_uploads_are_client_errors(data, status, fragment):
    with pytest.raises(RequestError) as caught:
        decode_image(data, max_pixels=500 * 500)
    assert caught.value.status == status
    assert fragment in caught.value.message


def test_pixel_limit_is_decided_before_decoding():
    """A truncated huge PNG is refused as too large (413), which only the header can tell."""
    huge = _png((5000, 5000))
    with pytest.raises(RequestError) as caught:
        open_image(huge[: len(huge) // 2], max_pixels=1_000_000)
    assert caught.value.status == 413
