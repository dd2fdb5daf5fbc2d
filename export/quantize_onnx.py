"""Static INT8 quantization of an ONNX model with onnxruntime.quantization (QDQ format).

The recipe comes from an ``Int8Preset`` (``export.int8_presets``): weights are per-channel
symmetric int8 (7-bit with ``reduce_range`` on CPUs without VNNI), biases are corrected for
the weights' rounding (``export.bias_correction``) before ORT quantizes, and activation
signedness depends on the target:

- ``cpu`` (default): uint8 activations, int8 weights (U8S8). VNNI's ``vpdpbusd`` multiplies
  u8 by s8, and ONNX Runtime's CPU provider fuses every QDQ Conv/Add/Gemm of a U8S8 graph
  into QLinearConv/QLinearAdd/QGemm. Measured on this AVX-512 VNNI CPU (batch 64, 2
  threads): ResNet-20 fp32 62-89 ms, U8S8 23-28 ms, S8S8 92-118 ms (ORT left 12 of 21 convs
  and every Add in float with transposes around them); default CNN fp32 53-71 ms, U8S8
  24-31 ms, S8S8 21-24 ms.
- ``tensorrt``: int8 activations and weights, both symmetric, which TensorRT requires.
"""

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from export.bias_correction import BiasCorrection
from export.formats import INPUT_NAME, compact_onnx
from export.int8_presets import Int8Preset
from training.eval_data import ImageSet

METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
ACTIVATION_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
QUANTIZABLE_OPS = ("Conv", "Gemm", "MatMul")
CALIBRATION_BATCH = 64


def equal_batch_size(count: int, largest: int = CALIBRATION_BATCH) -> int:
    """The largest batch size up to ``largest`` that divides ``count``: ORT's histogram
    calibrators (entropy, percentile) stack every batch's outputs into one array, which
    fails on a short last batch (244 training photos in batches of 64 did)."""
    return next(size for size in range(min(largest, count), 0, -1) if count % size == 0)


class CalibrationBatches(CalibrationDataReader):
    """Feeds calibration images to ORT's calibrator in batches of one size."""

    def __init__(self, images: np.ndarray) -> None:
        self._images = images
        self._size = equal_batch_size(len(images))
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = iter(
            {INPUT_NAME: self._images[start : start + self._size]}
            for start in range(0, len(self._images), self._size)
        )


class OnnxQuantizer:
    """Quantizes one float ONNX model repeatedly (methods, excluded layers) with calibration
    ranges computed once per method: ORT's calibration cache makes retries cheap."""

    def __init__(self, float_onnx: Path, calibration: ImageSet, preset: Int8Preset, work_dir: Path) -> None:
        self.calibration = calibration
        self.preset = preset
        self.work_dir = work_dir
        # ORT's recommended pre-processing: shape inference and graph optimisation, so that
        # e.g. BatchNorm is folded before ranges are collected.
        self.prepared = work_dir / "prepared.onnx"
        quant_pre_process(str(float_onnx), str(self.prepared), skip_symbolic_shape=True)
        self.layers = [
            node.name for node in onnx.load(str(self.prepared)).graph.node if node.op_type in QUANTIZABLE_OPS
        ]
        self.bias_correction = (
            BiasCorrection(self.prepared, calibration.images) if preset.bias_correction else None
        )

    def quantize(
        self,
        out: Path,
        method: str,
        *,
        exclude: tuple[str, ...] = (),
        only: tuple[str, ...] | None = None,
    ) -> Path:
        preset = self.preset
        source = self.prepared
        if self.bias_correction is not None:
            quantized = set(only) if only is not None else set(self.layers) - set(exclude)
            source = self.bias_correction.apply(
                self.prepared, self.work_dir / "corrected.onnx", preset.weight_levels, quantized
            )
        quantize_static(
            str(source),
            str(out),
            CalibrationBatches(self.calibration.images),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=preset.reduce_range,
            activation_type=ACTIVATION_TYPES[preset.activations],
            weight_type=QuantType.QInt8,
            calibrate_method=METHODS[method],
            nodes_to_exclude=list(exclude),
            nodes_to_quantize=list(only) if only is not None else None,
            extra_options={"ActivationSymmetric": preset.activation_symmetric, "WeightSymmetric": True},
            calibration_cache_path=self.work_dir / f"calibration-{method}.json",
        )
        compact_onnx(out)
        return out


def op_counts(path: Path) -> dict[str, int]:
    return dict(Counter(node.op_type for node in onnx.load(str(path)).graph.node))
