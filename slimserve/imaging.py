"""Bringing an arbitrary decoded image into the spec's colour mode, torch-free.

Shared by the service and by training's folder loader, so a user's RGBA, palette, 16-bit
or rotated-by-EXIF photo is seen the same way when training and when serving.

Pillow's ``convert`` is right for every mode but two kinds: it clips 16-bit samples at 255
instead of scaling them, and it cannot convert premultiplied ``La``. Those are handled
here; every other mode (CMYK, YCbCr, LAB, HSV, P, PA, LA, 1, F) goes through Pillow's own
conversion, which tests/test_decoding.py holds against reference conversions.
"""

import math

import numpy as np
from PIL import Image, ImageOps

from slimserve.spec import PreprocessSpec

SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
PREMULTIPLIED = {"RGBa": "RGBA", "La": "LA"}


def _scaled_to_8_bit(image: Image.Image) -> Image.Image:
    """16-bit samples (0..65535) -> 8-bit L by scaling, rounding to nearest (v * 255 / 65535).

    Mode "I" (32-bit) is what Pillow gives for some 16-bit files, so it is read on the same
    scale; values outside 0..65535 are clipped.
    """
    values = np.asarray(image.convert("I"), dtype=np.int64).clip(0, 65535)
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), mode="L")


RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


def draft_for(image: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """Let a not-yet-decoded JPEG decode at 1/2, 1/4 or 1/8 scale when that still leaves
    the shorter side at least ``spec.decode_shorter`` pixels.

    A 12 MP phone photo decodes ~5x faster this way (libjpeg scales in the DCT), and the
    resize that follows sees at least as many pixels as it outputs, so the result stays
    close to a full decode (tests/test_preprocess.py measures how close). Training and
    serving both call this, so both see the same pixels. A no-op for other formats and
    for images already decoded.
    """
    if image.format == "JPEG" and getattr(image, "tile", None):
        width, height = image.size
        scale = spec.decode_shorter / min(width, height)
        if scale < 1:
            image.draft(image.mode, (math.ceil(width * scale), math.ceil(height * scale)))
    return image


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """Output size of torchvision's ``Resize(shorter)``: the shorter side becomes ``shorter``,
    the longer one is truncated (``int``), as ``_compute_resized_output_size`` does."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def resize_to_spec(image: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """Resize (and center-crop) an image already in the spec's mode, as torchvision does.

    Hand-written because the service must stay torch-free; torchvision's ``Resize`` on a
    PIL image is Pillow's ``resize`` with the same filter, and ``CenterCrop`` rounds the
    offsets with ``int(round((size - crop) / 2))``; a parity test holds the two equal.
    """
    resample = RESAMPLE[spec.interpolation]
    if spec.resize_shorter is None:
        size = (spec.width, spec.height)
        return image if image.size == size else image.resize(size, resample)
    size = resized_size(*image.size, spec.resize_shorter)
    if image.size != size:
        image = image.resize(size, resample)
    left = round((size[0] - spec.width) / 2.0)
    top = round((size[1] - spec.height) / 2.0)
    return image.crop((left, top, left + spec.width, top + spec.height))


def to_spec_mode(image: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """Apply EXIF orientation, flatten transparency onto the spec's background, convert mode."""
    image = ImageOps.exif_transpose(image)
    if image.mode in SIXTEEN_BIT:
        image = _scaled_to_8_bit(image)
    elif image.mode in PREMULTIPLIED:
        image = image.convert(PREMULTIPLIED[image.mode])
    if image.mode == "P":
        # Palette images may carry transparency in their palette; RGBA makes it explicit.
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode in ("RGB", "L") and "transparency" in image.info):
        rgba = image.convert("RGBA")
        fill = spec.alpha_background
        background = Image.new("RGBA", rgba.size, (fill, fill, fill, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert(spec.pil_mode)
