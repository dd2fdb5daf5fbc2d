"""Bytes -> checked image -> model input, with numpy and Pillow only (no torch).

This is the serving twin of ``training.transforms.eval_transform``; a test holds the two
equal on real images. Both follow ``PreprocessSpec``: colour mode via the shared
``slimserve.imaging.to_spec_mode``, resize (and center crop) via
``slimserve.imaging.resize_to_spec`` (what torchvision does for PIL images), then scale
and normalize in float32. Large JPEGs are decoded at reduced scale (``draft_for``).
"""

import io
import warnings

import numpy as np
from PIL import Image

from service.errors import RequestError
from slimserve.imaging import draft_for, resize_to_spec, to_spec_mode
from slimserve.spec import PreprocessSpec

# Pillow plugin names; only these decoders ever see request bytes.
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
ALLOWED_TEXT = "PNG, JPEG, WebP, BMP or GIF"


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Identify the format and size from the header; no pixel is decoded yet.

    Pillow opens lazily, so the pixel-count limit is enforced here before decoding, and
    only decoders of allowed formats ever see request bytes.
    """
    if not data:
        raise RequestError(400, "empty image: the request carried zero bytes")
    try:
        with warnings.catch_warnings():
            # Our own max_pixels bound replaces Pillow's bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError:
        raise RequestError(413, f"image too large: over {max_pixels} pixels") from None
    except (OSError, SyntaxError, ValueError):
        raise RequestError(400, f"not a readable {ALLOWED_TEXT} image") from None
    width, height = image.size
    if width * height > max_pixels:
        raise RequestError(413, f"image too large: {width}x{height} pixels, the limit is {max_pixels}")
    return image


def load_image(image: Image.Image) -> Image.Image:
    """Decode every pixel now, so a truncated file is a 400 here rather than a 500 later."""
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise RequestError(400, f"corrupt or truncated {image.format} image: {exc}") from None
    return image


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    return load_image(open_image(data, max_pixels))


def open_images(payloads: list[bytes], max_pixels: int, max_request_pixels: int) -> list[Image.Image]:
    """Every image of one request opened from its header, and the request's pixel budget checked.

    The per-image limit alone lets 64 tiny PNGs each declaring 4096x4096 cost a gigapixel
    of decoding; the budget refuses such a request before any pixel is decoded.
    """
    images = [open_image(data, max_pixels) for data in payloads]
    total = sum(image.width * image.height for image in images)
    if total > max_request_pixels:
        for image in images:
            image.close()
        raise RequestError(
            413,
            f"images too large together: {total} pixels in this request, the limit is {max_request_pixels}",
        )
    return images


class Preprocessor:
    """The spec compiled once: mode, size, filter and a per-channel lookup table.

    The table maps each uint8 value to ``(v * float32(1/255) - mean) / std`` computed in
    float32, the exact arithmetic of torchvision's ToDtype(scale=True) + Normalize, so a
    gather replaces three passes over the pixels.
    """

    def __init__(self, spec: PreprocessSpec) -> None:
        self.spec = spec
        levels = np.arange(256, dtype=np.float32) * np.float32(1.0 / 255.0)
        mean = np.asarray(spec.mean, dtype=np.float32)[:, None]
        std = np.asarray(spec.std, dtype=np.float32)[:, None]
        self.table = (levels[None, :] - mean) / std  # (C, 256) float32

    def pixels(self, image: Image.Image) -> np.ndarray:
        """uint8 (C, H, W) in the spec's mode and size."""
        image = resize_to_spec(to_spec_mode(image, self.spec), self.spec)
        array = np.asarray(image)
        return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (..., C, H, W) -> float32 normalized, same shape."""
        channels = self.spec.channels
        out = np.empty(pixels.shape, dtype=np.float32)
        for c in range(channels):
            np.take(self.table[c], pixels[..., c, :, :], out=out[..., c, :, :])
        return out

    def __call__(self, image: Image.Image) -> np.ndarray:
        """PIL image -> float32 (1, C, H, W), ready to be a batch of one or joined into one."""
        return self.normalize(self.pixels(image)[None])

    def batch(self, images: list[Image.Image]) -> np.ndarray:
        """A request's opened images -> float32 (N, C, H, W), decoding one image at a time.

        Each image is decoded (a large JPEG at reduced size, ``draft_for``), brought to the
        spec's size and closed before the next is decoded, so a request holds at most one
        full-size image at once (plus the small model-sized arrays), whatever its count.
        The images are closed either way; decoding errors surface as 400s.
        """
        spec = self.spec
        try:
            pixels = np.empty((len(images), spec.channels, spec.height, spec.width), dtype=np.uint8)
            for index, image in enumerate(images):
                pixels[index] = self.pixels(load_image(draft_for(image, spec)))
                image.close()
        finally:
            for image in images:
                image.close()
        return self.normalize(pixels)

    def payload(self, data: bytes, max_pixels: int) -> np.ndarray:
        """One image's bytes -> float32 (1, C, H, W) exactly as a request's image: header
        limits first (``open_image``), then ``batch`` (a large JPEG decoded at reduced size).
        The path every in-process or bare comparison with the service must take."""
        return self.batch([open_image(data, max_pixels)])
