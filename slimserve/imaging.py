"""Bringing an arbitrary decoded image into the spec's colour mode, torch-free.

Shared by the service and by training's folder loader, so a user's RGBA, palette, 16-bit
or rotated-by-EXIF photo is seen the same way when training and when serving.

Pillow's ``convert`` is right for every mode but two kinds: it clips 16-bit samples at 255
instead of scaling them, and it cannot convert premultiplied ``La``. Those are handled
here; every other mode (CMYK, YCbCr, LAB, HSV, P, PA, LA, 1, F) goes through Pillow's own
conversion, which tests/test_decoding.py holds against reference conversions.
"""

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
