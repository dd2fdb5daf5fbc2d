"""Bringing an arbitrary decoded image into the spec's colour mode, torch-free.

Shared by the service and by training's folder loader, so a user's RGBA, palette or
rotated-by-EXIF photo is seen the same way when training and when serving.
"""

from PIL import Image, ImageOps

from slimserve.spec import PreprocessSpec


def to_spec_mode(image: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """Apply EXIF orientation, flatten transparency onto the spec's background, convert mode."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "P":
        # Palette images may carry transparency in their palette; RGBA makes it explicit.
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "RGB" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        fill = spec.alpha_background
        background = Image.new("RGBA", rgba.size, (fill, fill, fill, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert(spec.pil_mode)
