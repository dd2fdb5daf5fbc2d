"""The torch-free serving preprocessing equals torchvision's reference, and bad uploads are 4xx."""

import io

import numpy as np
import pytest
from PIL import Image

from service.errors import RequestError
from service.preprocess import Preprocessor, decode_image, open_image
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


ORIENTATION = 0x0112  # the EXIF tag
# What each EXIF orientation asks a viewer to do to the stored pixels (EXIF 2.32, section 4.6.5.1).
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def upright_and_flattened(data: bytes, background: int) -> Image.Image:
    """The reference colour step, written apart from ``slimserve.imaging`` so that a change
    there shows: Pillow decodes, the EXIF table above turns the pixels upright, and numpy
    puts transparent pixels on the background with Pillow's rounding (exact for all
    256 x 256 value/alpha pairs)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        orientation = image.getexif().get(ORIENTATION, 1)
        if orientation in UPRIGHT:
            image = image.transpose(UPRIGHT[orientation])
        transparent = image.mode in ("P", "RGBA", "LA", "PA") or "transparency" in image.info
        if not transparent:
            return image
        rgba = np.asarray(image.convert("RGBA")).astype(np.int64)
        alpha = rgba[..., 3:]
        flat = (rgba[..., :3] * alpha + background * (255 - alpha) + 127) // 255
        return Image.fromarray(flat.astype(np.uint8), "RGB")


def reference(data: bytes, spec: PreprocessSpec) -> np.ndarray:
    """torchvision's eval pipeline (its own colour-mode conversion, resize and normalize)."""
    return eval_transform(spec)(upright_and_flattened(data, spec.alpha_background)).numpy()


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
    exif[ORIENTATION] = 6  # rotate 90 degrees clockwise on display
    big = Image.fromarray(rgb, "RGB").resize((97, 61), Image.Resampling.BICUBIC)
    return {
        "rgb-png": encode(Image.fromarray(rgb, "RGB")),
        "rgb-png-transparent-colour": encode(
            Image.fromarray(rgb, "RGB"), transparency=tuple(rgb[0, 0].tolist())
        ),
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
        expected = reference(data, spec)
        served = preprocess(decode_image(data, MAX_PIXELS))[0]
        assert served.shape == spec.input_shape, kind
        assert np.abs(served - expected).max() <= 1e-6, kind


def _asymmetric_rgb() -> Image.Image:
    """20 wide, 12 high, no two pixels alike: any flip or rotation moves some value."""
    rows, cols = np.mgrid[0:12, 0:20]
    pixels = np.stack([rows * 20 + cols, 255 - rows * 20, cols * 12], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_turns_the_pixels_upright(orientation):
    """Each EXIF orientation, in a lossless PNG: the served pixels are the stored ones turned
    as the tag says, value for value (a missing or wrong turn changes the size or the order)."""
    stored = _asymmetric_rgb()
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    upright = stored.transpose(UPRIGHT[orientation]) if orientation in UPRIGHT else stored
    width, height = upright.size
    spec = PreprocessSpec(height, width, 3, mean=(0.0,) * 3, std=(1.0,) * 3)
    served = Preprocessor(spec).pixels(decode_image(encode(stored, exif=exif), MAX_PIXELS))
    assert np.array_equal(served, np.asarray(upright).transpose(2, 0, 1))


def test_exif_rotated_jpeg_portrait_is_seen_upright(fashion):
    """A portrait photo stored landscape with orientation 6, as phones write them."""
    base, _ = fashion.test[3]
    portrait = Image.fromarray(np.asarray(base)[:, :14])  # 14 wide, 28 high
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    data = encode(portrait.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif, quality=95)
    spec = PreprocessSpec(28, 14, 1, mean=(0.0,), std=(1.0,))
    served = Preprocessor(spec)(decode_image(data, MAX_PIXELS))
    assert served.shape == (1, 1, 28, 14)
    assert np.abs(served[0] - reference(data, spec)).max() <= 1e-6
    # JPEG is lossy, so the upright pixels are near the portrait's, not equal to them.
    assert np.abs(served[0, 0] * 255 - np.asarray(portrait, dtype=np.float32)).mean() < 4


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


def test_pixel_limit_is_inclusive():
    """Exactly max_pixels is served; one pixel more is a 413 naming the size."""
    assert decode_image(_png((25, 4)), max_pixels=100).size == (25, 4)
    with pytest.raises(RequestError) as caught:
        decode_image(_png((101, 1)), max_pixels=100)
    assert caught.value.status == 413
    assert "101x1 pixels, the limit is 100" in caught.value.message
