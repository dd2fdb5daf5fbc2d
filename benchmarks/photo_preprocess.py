"""The service's preprocessing time for one phone-sized JPEG, in-process.

``python -m benchmarks.photo_preprocess PHOTO`` re-encodes PHOTO as a ``--size`` JPEG
(default 4000x3000, 12 MP, quality 90) and times what the service does with an upload of it:
``open_image`` (header and pixel limits) and ``Preprocessor.batch`` (reduced-size JPEG
decode, resize of the shorter side, centre crop, normalization) with EfficientNet-Lite0's
spec (256 -> 224, bicubic, mean = std = 0.5). Prints the median and p90 after a warm-up.
"""

import argparse
import io
import statistics
import time

from PIL import Image

from benchmarks.settings import width_by_height
from service.preprocess import Preprocessor, open_image
from slimserve.spec import PreprocessSpec

WARMUP = 10
LITE0 = PreprocessSpec(
    224, 224, 3, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic", resize_shorter=256
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("photo", help="any photo Pillow reads")
    parser.add_argument("--size", type=width_by_height, default=(4000, 3000), help="WxH (default 4000x3000)")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    with Image.open(args.photo) as opened:
        photo = opened.convert("RGB").resize(args.size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    preprocess = Preprocessor(LITE0)
    seconds = []
    for _ in range(WARMUP + args.repeats):
        start = time.perf_counter()
        preprocess.batch([open_image(data, args.size[0] * args.size[1])])
        seconds.append(time.perf_counter() - start)
    timed = sorted(seconds[WARMUP:])
    print(
        f"{args.size[0]}x{args.size[1]} JPEG ({len(data):,} bytes): preprocess p50 "
        f"{statistics.median(timed) * 1000:.1f} ms, p90 {timed[int(0.9 * len(timed))] * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
