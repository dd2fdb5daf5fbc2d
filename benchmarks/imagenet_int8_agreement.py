"""Top-1 agreement of the 1000-class ImageNet EfficientNet-Lite0's INT8 ONNX with its fp32 ONNX
on every hymenoptera photo, for each INT8 preset, with and without bias correction.

`python -m benchmarks.imagenet_int8_agreement [--data DIR]`: the packaged ImageNet weights at
their own preprocessing (shorter side 256, centre 224), quantized through the export's own
``OnnxQuantizer`` (minmax calibration on 64 train photos, as export calibrates), answers
compared on all train and val photos. The preset ``export`` picks for this CPU is marked:
without VNNI, a full-range preset saturates int16 in ``vpmaddubsw`` and loses answers, which
is what the issue measured on an AVX2 CPU. A measurement for BENCHMARKS.md, not part of export.
"""

import argparse
import dataclasses
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmarks.machine import vector_isa
from export.checks import predict
from export.formats import example_batch, write_onnx
from export.int8_presets import PRESETS, cpu_flags, resolve_preset
from export.quantize_onnx import OnnxQuantizer
from service.preprocess import Preprocessor
from slimserve.runtime import open_runner
from slimserve.spec import PreprocessSpec
from training import pretrained
from training.eval_data import ImageSet

HYMENOPTERA = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "hymenoptera"
CALIBRATION_PHOTOS = 64


def photos(preprocess: Preprocessor, folder: Path) -> np.ndarray:
    """Every JPEG under ``folder``, preprocessed with the weights' own spec exactly as the service
    preprocesses an upload (``Preprocessor.payload``: reduced-size JPEG decode included); sorted,
    so repeatable."""
    files = sorted(folder.rglob("*.jpg"))
    return np.concatenate([preprocess.payload(f.read_bytes(), 10**9) for f in files])


def answers(path: Path, images: np.ndarray) -> np.ndarray:
    """Top-1 classes from the ONNX file, opened by the runtime layer as export and serve open it."""
    return predict(open_runner("onnx", path), images).argmax(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HYMENOPTERA, help="folder with train/ and val/ photos")
    args = parser.parse_args()
    model, weights = pretrained.load_pretrained("tf_efficientnet_lite0", "imagenet")
    spec = PreprocessSpec(
        weights.crop,
        weights.crop,
        3,
        weights.mean,
        weights.std,
        weights.interpolation,
        resize_shorter=weights.resize_shorter,
    )
    preprocess = Preprocessor(spec)
    train, val = photos(preprocess, args.data / "train"), photos(preprocess, args.data / "val")
    every = np.concatenate([train, val])
    rng = np.random.default_rng(0)
    calibration = ImageSet(
        train[rng.permutation(len(train))[:CALIBRATION_PHOTOS]], np.zeros(CALIBRATION_PHOTOS, np.int64)
    )
    chosen = resolve_preset("cpu").name
    print(f"CPU vector ISA: {vector_isa(cpu_flags())}; export's preset here: {chosen}; {len(every)} photos")
    with tempfile.TemporaryDirectory() as work:
        fp32 = Path(work) / "fp32.onnx"
        write_onnx(model.eval(), example_batch((3, spec.height, spec.width)), fp32)
        reference = answers(fp32, every)
        rows = []
        cells = [(name, bc) for name in PRESETS if name != "arm64" for bc in (False, True)]
        for name, bias_correction in tqdm(cells, desc="presets"):
            preset = dataclasses.replace(PRESETS[name], bias_correction=bias_correction)
            cell = Path(work) / f"{name}-{bias_correction}"
            cell.mkdir()
            quantized = OnnxQuantizer(fp32, calibration, preset, cell).quantize(cell / "q.onnx", "minmax")
            changed = int((answers(quantized, every) != reference).sum())
            rows.append((name, bias_correction, changed))
    print("| preset | bias correction | top-1 agreement | photos changed |")
    print("|---|---|---|---|")
    for name, bias_correction, changed in rows:
        mark = " (export's choice here)" if name == chosen else ""
        agreement = 1 - changed / len(every)
        print(f"| `{name}`{mark} | {'yes' if bias_correction else 'no'} | {agreement:.1%} | {changed} |")


if __name__ == "__main__":
    main()
