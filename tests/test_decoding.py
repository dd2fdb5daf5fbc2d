"""Faithful decoding: every Pillow mode against a reference conversion, and any bytes are
either a model input of the right shape and range or the service's own 4xx (hypothesis)."""

import base64
import colorsys
import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms

from service.errors import RequestError
from service.http import _b64
from service.preprocess import Preprocessor, open_images
from slimserve.imaging import to_spec_mode
from slimserve.spec import PreprocessSpec

GRAY = PreprocessSpec(height=28, width=28, channels=1, mean=(0.5,), std=(0.25,))
COLOUR = PreprocessSpec(height=16, width=16, channels=3, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
RNG = np.random.default_rng(0)


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int64)


def test_sixteen_bit_png_is_scaled_not_clipped():
    values = np.linspace(0, 65535, 28 * 28).round().astype(np.uint16).reshape(28, 28)
    decoded = Image.open(io.BytesIO(encode(Image.fromarray(values))))
    assert decoded.mode in ("I;16", "I")  # what Pillow gives for a 16-bit grayscale PNG
    got = as_array(to_spec_mode(decoded, GRAY))
    expected = np.round(values.astype(np.float64) * 255 / 65535)
    assert np.abs(got - expected).max() <= 0.5
    assert len(np.unique(got)) > 200  # a clipped image would hold little more than 0 and 255


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_sixteen_bit_modes_scale_like_the_png(mode):
    values = RNG.integers(0, 65536, size=(8, 8))
    image = Image.fromarray(values.astype(np.int32))
    image = image if mode == "I" else image.convert(mode)
    assert image.mode == mode
    expected = np.round(values * 255 / 65535)
    assert np.abs(as_array(to_spec_mode(image, GRAY)) - expected).max() <= 0.5


def test_float_mode_follows_pillows_eight_bit_scale():
    values = RNG.uniform(-20, 300, size=(8, 8)).astype(np.float32)
    got = as_array(to_spec_mode(Image.fromarray(values), GRAY))
    assert np.abs(got - np.clip(values, 0, 255)).max() <= 1


def _rgb() -> Image.Image:
    return Image.fromarray(RNG.integers(0, 256, size=(12, 12, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("mode", "tolerance"), [("CMYK", 0), ("YCbCr", 3), ("HSV", 6)]
)  # HSV: 8-bit hue steps
def test_colour_modes_round_trip_to_the_rgb_they_came_from(mode, tolerance):
    rgb = _rgb()
    back = to_spec_mode(rgb.convert(mode), COLOUR)
    assert back.mode == "RGB"
    assert np.abs(as_array(back) - as_array(rgb)).max() <= tolerance


def test_hsv_matches_colorsys():
    hsv = Image.frombytes("HSV", (6, 6), RNG.integers(0, 256, size=(6, 6, 3), dtype=np.uint8).tobytes())
    got = as_array(to_spec_mode(hsv, COLOUR))
    for (y, x), pixel in np.ndenumerate(np.asarray(hsv)[..., 0]):
        h, s, v = (np.asarray(hsv)[y, x] / 255.0).tolist()
        expected = np.array(colorsys.hsv_to_rgb(h, s, v)) * 255
        assert np.abs(got[y, x] - expected).max() <= 2, (pixel, got[y, x], expected)


def test_lab_is_converted_colorimetrically_like_littlecms():
    rgb = _rgb()
    to_lab = ImageCms.buildTransform(
        ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB"
    )
    lab = ImageCms.applyTransform(rgb, to_lab)
    back = to_spec_mode(lab, COLOUR)
    # 8-bit LAB quantizes dark saturated colours coarsely, hence a mean, not a maximum
    assert np.abs(as_array(back) - as_array(rgb)).mean() < 2


def _composite(value: np.ndarray, alpha: np.ndarray, background: int) -> np.ndarray:
    return np.round((value * alpha + background * (255 - alpha)) / 255)


@pytest.mark.parametrize("background", [0, 255])
def test_la_and_palette_alpha_are_flattened_onto_the_background(background):
    spec = PreprocessSpec(height=8, width=8, channels=1, mean=(0.5,), std=(0.5,), alpha_background=background)
    gray = RNG.integers(0, 256, size=(8, 8))
    alpha = RNG.integers(0, 256, size=(8, 8))
    la = Image.fromarray(np.stack([gray, alpha], axis=-1).astype(np.uint8))
    assert np.abs(as_array(to_spec_mode(la, spec)) - _composite(gray, alpha, background)).max() <= 1
    # P with alpha: a palette of 4 grays, every 3rd pixel fully transparent via the tRNS chunk
    palette_image = Image.new("P", (8, 8))
    palette_image.putpalette([0, 0, 0, 80, 80, 80, 160, 160, 160, 240, 240, 240])
    indices = RNG.integers(0, 4, size=(8, 8)).astype(np.uint8)
    palette_image.putdata(indices.ravel().tolist())
    palette_image.info["transparency"] = bytes([255, 255, 0, 255])  # index 2 transparent
    decoded = Image.open(io.BytesIO(encode(palette_image)))
    expected = np.where(indices == 2, background, indices * 80)
    assert np.array_equal(as_array(to_spec_mode(decoded, spec)), expected)
    pa = decoded.convert("PA")
    assert np.array_equal(as_array(to_spec_mode(pa, spec)), expected)


def test_bilevel_becomes_black_and_white():
    bits = RNG.integers(0, 2, size=(8, 8)).astype(bool)
    image = Image.fromarray(bits)
    assert np.array_equal(as_array(to_spec_mode(image, GRAY)), bits * 255)


def test_premultiplied_alpha_modes_are_unpremultiplied_then_flattened():
    rgba = Image.fromarray(
        np.dstack([np.full((4, 4, 3), 200), np.full((4, 4), 255)]).astype(np.uint8), "RGBA"
    )
    assert as_array(to_spec_mode(rgba.convert("RGBa"), COLOUR)).min() == 200
    la = Image.fromarray(np.dstack([np.full((4, 4), 90), np.full((4, 4), 255)]).astype(np.uint8))
    assert as_array(to_spec_mode(la.convert("La"), GRAY)).tolist() == [[90] * 4] * 4


def test_line_wrapped_base64_is_accepted_and_other_junk_is_not():
    data = encode(_rgb())
    wrapped = base64.encodebytes(data).decode()  # 76-character lines, as `base64` writes them
    assert "\n" in wrapped and _b64(wrapped, "'image'") == data
    assert _b64("data:image/png;base64," + wrapped.replace("\n", "\r\n "), "'image'") == data
    with pytest.raises(RequestError, match="not valid base64"):
        _b64(wrapped.replace("\n", "*"), "'image'")


def test_request_pixel_budget_is_checked_from_headers():
    small = encode(Image.new("L", (100, 100)))
    assert len(open_images([small] * 3, 100 * 100, 3 * 100 * 100)) == 3
    with pytest.raises(RequestError, match="30000 pixels in this request, the limit is 29999") as caught:
        open_images([small] * 3, 100 * 100, 3 * 100 * 100 - 1)
    assert caught.value.status == 413


# ---------------------------------------------------------------- any bytes (hypothesis)

SEEDS = [
    encode(Image.new("L", (5, 7), 3)),
    encode(Image.new("RGBA", (9, 4), (1, 2, 3, 4))),
    encode(Image.fromarray(np.arange(30, dtype=np.uint16).reshape(5, 6) * 2000)),
    encode(Image.new("RGB", (6, 6), (9, 8, 7)), "JPEG"),
    encode(Image.new("P", (6, 3)), "GIF"),
    encode(Image.new("RGB", (3, 3)), "BMP"),
    encode(Image.new("RGB", (4, 4)), "WEBP"),
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A small valid file of an allowed format with a few bytes changed, cut or appended:
    random bytes alone rarely get past the magic number."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    data = data[: draw(st.integers(0, len(data)))]
    return bytes(data) + draw(st.binary(max_size=16))


def _check_decode(data: bytes, spec: PreprocessSpec) -> None:
    preprocessor = Preprocessor(spec)
    try:
        batch = preprocessor.batch(open_images([data], 64 * 64, 64 * 64))
    except RequestError as exc:
        assert exc.status in (400, 413) and exc.message
        return
    assert batch.shape == (1, *spec.input_shape) and batch.dtype == np.float32
    mean, std = np.asarray(spec.mean)[:, None, None], np.asarray(spec.std)[:, None, None]
    assert np.all(batch[0] >= (0 - mean) / std - 1e-5) and np.all(batch[0] <= (1 - mean) / std + 1e-5)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(mutated(), st.binary(max_size=256)), colour=st.booleans())
def test_any_bytes_give_a_model_input_or_the_services_own_error(data, colour):
    _check_decode(data, COLOUR if colour else GRAY)
