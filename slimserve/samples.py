"""Sample images written as the PNG files a client would send (the demo's curl lines, the
HTTP benchmark's request bodies, the service tests' uploads)."""

from collections.abc import Iterable
from pathlib import Path

from PIL import Image


def write_pngs(samples: Iterable[tuple[Image.Image, str]], folder: Path) -> list[Path]:
    """Each ``(image, class name)`` as ``folder/INDEX-CLASS.png``, in order; the class name
    in the file name says what the answer should be."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (image, class_name) in enumerate(samples):
        slug = class_name.lower().replace("/", "-").replace(" ", "-")
        path = folder / f"{index}-{slug}.png"
        image.save(path)
        paths.append(path)
    return paths
