"""The torch-free serving preprocessing equals torchvision's reference, and bad uploads are 4xx."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.errors import RequestError
from service.preprocess import Preprocessor, decode_image, open_image
from slimserve.errors import SlimserveError
from slimserve.imaging import draft_for, resized_size, to_spec_mode
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


# --- photos: resize the shorter side + centre crop, reduced-size JPEG decode -----------------

HYMENOPTERA = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "hymenoptera"
LARGEST_PHOTO = "val/ants/ants-devouring-remains-of-large-dead-insect-on-red-tile-in-Stellenbosch-South-Africa-closeup-1-DHD.jpg"
PHOTO_SPECS = {
    "imagenet-256-224-bilinear": PreprocessSpec(
        224, 224, 3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize_shorter=256
    ),
    "lite0-256-224-bicubic": PreprocessSpec(
        224, 224, 3, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic", resize_shorter=256
    ),
    "gray-odd-crop": PreprocessSpec(61, 37, 1, mean=(0.5,), std=(0.25,), resize_shorter=83),
}


@pytest.fixture(scope="module")
def photo_uploads(tmp_path_factory) -> dict[str, bytes]:
    """Real hymenoptera photos re-encoded as the JPEGs phones and scanners produce."""
    folder = tmp_path_factory.mktemp("photos")
    with Image.open(HYMENOPTERA / LARGEST_PHOTO) as opened:
        photo = opened.convert("RGB")  # 2592 x 1944
    with Image.open(HYMENOPTERA / "train/bees/16838648_415acd9e3f.jpg") as opened:
        small = opened.convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    uploads = {
        "large-4000px": encode(photo.resize((4000, 3000), Image.Resampling.BICUBIC), "JPEG", quality=90),
        "large-exif-rotated": encode(photo, "JPEG", exif=exif, quality=90),
        "cmyk": encode(photo.convert("CMYK"), "JPEG", quality=90),
        "grayscale": encode(photo.convert("L"), "JPEG", quality=90),
        "small-portrait": encode(small.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95),
        "odd-size-png": encode(small.resize((301, 203))),
    }
    for name, data in uploads.items():  # on disk too, as a user's folder would hold them
        (folder / f"{name}.jpg").write_bytes(data)
    return uploads


def torchvision_reference(data: bytes, spec: PreprocessSpec) -> np.ndarray:
    """torchvision's Resize(shorter) + CenterCrop after the shared decode and colour steps."""
    with Image.open(io.BytesIO(data)) as image:
        return eval_transform(spec)(to_spec_mode(draft_for(image, spec), spec)).numpy()


@pytest.mark.parametrize("spec_name", PHOTO_SPECS)
def test_crop_equals_torchvision_on_large_rotated_cmyk_and_gray_jpegs(photo_uploads, spec_name):
    spec = PHOTO_SPECS[spec_name]
    preprocess = Preprocessor(spec)
    for kind, data in photo_uploads.items():
        served = preprocess.batch([open_image(data, 50_000_000)])[0]
        assert served.shape == spec.input_shape, kind
        assert np.abs(served - torchvision_reference(data, spec)).max() <= 1e-6, kind


def test_resized_size_matches_torchvision_for_every_aspect():
    from torchvision.transforms.v2 import functional as F

    for width, height in [(2592, 1944), (1944, 2592), (301, 203), (256, 256), (257, 1000), (999, 256)]:
        expected_h, expected_w = F._geometry._compute_resized_output_size((height, width), [224])
        assert resized_size(width, height, 224) == (expected_w, expected_h)


def test_exif_rotated_photo_is_cropped_upright(photo_uploads):
    """The crop of the EXIF-rotated upload equals the crop of the photo rotated by hand."""
    spec = PHOTO_SPECS["imagenet-256-224-bilinear"]
    with Image.open(io.BytesIO(photo_uploads["large-exif-rotated"])) as stored:
        upright = encode(stored.convert("RGB").transpose(Image.Transpose.ROTATE_270), "PNG")
    rotated = Preprocessor(spec).batch([open_image(photo_uploads["large-exif-rotated"], 50_000_000)])[0]
    by_hand = Preprocessor(spec).batch([open_image(upright, 50_000_000)])[0]
    landscape = Preprocessor(spec)(decode_image(photo_uploads["large-4000px"], 50_000_000))[0]
    # JPEG re-encoding and the reduced decode differ a little; a sideways crop differs a lot.
    assert np.abs(rotated - by_hand).mean() < 0.05
    assert np.abs(rotated - landscape).mean() > 0.3


def test_reduced_jpeg_decode_stays_close_to_a_full_decode(photo_uploads):
    """``draft_for`` decodes a 4000x3000 JPEG at 1/8 scale (500x375, still >= 256 on the
    shorter side); after resize + crop the pixels stay within a few grey levels of a full
    decode: measured 0.4 mean, 2 at the 99th percentile and 8 at most, in levels of 255
    (bilinear; bicubic 0.5 / 2 / 9), on a hymenoptera photo."""
    spec = PreprocessSpec(224, 224, 3, mean=(0.0,) * 3, std=(1.0,) * 3, resize_shorter=256)
    data = photo_uploads["large-4000px"]
    with Image.open(io.BytesIO(data)) as image:
        draft_for(image, spec)
        image.load()
        assert image.size == (500, 375)
    drafted = torchvision_reference(data, spec) * 255
    with Image.open(io.BytesIO(data)) as image:
        full = eval_transform(spec)(to_spec_mode(image, spec)).numpy() * 255
    difference = np.abs(drafted - full)
    assert difference.mean() < 1.0
    assert np.percentile(difference, 99) <= 4


def test_specs_without_crop_fields_still_load():
    """Version-1 metadata (no version, no resize_shorter) is a plain resize; newer is refused."""
    old = {"height": 28, "width": 28, "channels": 1, "mean": [0.286], "std": [0.353]}
    spec = PreprocessSpec.from_dict(old)
    assert spec.resize_shorter is None and spec.decode_shorter == 28
    cropped = PHOTO_SPECS["lite0-256-224-bicubic"]
    assert PreprocessSpec.from_dict(cropped.to_dict()) == cropped
    with pytest.raises(SlimserveError, match="version 3"):
        PreprocessSpec.from_dict({**cropped.to_dict(), "version": 3})
