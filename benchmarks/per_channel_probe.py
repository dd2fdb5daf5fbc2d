"""How much per-channel weight scales already buy over per-tensor ones: the ceiling of what
cross-layer equalization (which equalizes per-tensor weight ranges) could still add.

`python -m benchmarks.per_channel_probe RUN_DIR BUNDLE_DIR`: the bundle's fp32 ONNX through
plain ORT static QDQ (u8 activations, s8 weights, minmax on up to 512 train images, no bias
correction), once per-tensor and once per-channel; prints the spread of per-channel weight
ranges in the depthwise convolutions and each model's top-1 agreement with fp32 on the test
split. A measurement for BENCHMARKS.md, not part of export.
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper as numpy_helper
from onnxruntime.quantization import (
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from export.checks import predict
from export.data import checkpoint_data, image_set
from export.quantize_onnx import CalibrationBatches
from slimserve.runtime import open_runner
from training.checkpoint import load_checkpoint


def depthwise_spread(model_path: Path) -> list[float]:
    """max/min of the per-output-channel weight ranges of each depthwise (grouped) Conv."""
    model = onnx.load(str(model_path))
    weights = {t.name: t for t in model.graph.initializer}
    spreads = []
    for node in model.graph.node:
        if node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute):
            weight = numpy_helper.to_array(weights[node.input[1]])
            ranges = np.abs(weight).reshape(weight.shape[0], -1).max(1)
            spreads.append(float(ranges.max() / max(ranges.min(), 1e-12)))
    return spreads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("bundle_dir", type=Path)
    args = parser.parse_args()
    checkpoint = load_checkpoint(args.run_dir)
    data = checkpoint_data(checkpoint)
    test = image_set(data, checkpoint, "test", None, 0)
    calibration = image_set(data, checkpoint, "train", 512, 0)
    fp32 = args.bundle_dir / "fp32" / "model.onnx"
    reference = predict(open_runner("onnx", fp32), test.images).argmax(1)
    with tempfile.TemporaryDirectory() as work:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        spreads = depthwise_spread(prepared)
        if spreads:
            print(f"{len(spreads)} depthwise convs; channel range max/min: median {np.median(spreads):.3g}")
        for per_channel in (False, True):
            out = Path(work) / f"int8-{per_channel}.onnx"
            quantize_static(
                str(prepared), str(out), CalibrationBatches(calibration.images), quant_format=QuantFormat.QDQ,
                per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )  # fmt: skip
            predicted = predict(open_runner("onnx", out), test.images).argmax(1)
            changed = int((predicted != reference).sum())
            print(
                f"per_channel={per_channel}: {changed} of {len(reference)} changed their answer, "
                f"accuracy {(predicted == test.labels).mean():.2%}"
            )


if __name__ == "__main__":
    main()
