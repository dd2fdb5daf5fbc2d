"""Bias correction for INT8 weights (Nagel et al., "Data-Free Quantization", 2019, section 4.2).

Rounding a convolution's weights shifts its output by ``(W_q - W) @ E[x]`` on average; the
shift is measured here from the float model's input means on calibration images and taken
out of the bias before ONNX Runtime quantizes the graph. Hand-written because
onnxruntime.quantization has no bias correction and the libraries that do (AIMET, NNCF)
are large toolkits built around their own graph formats; this is a few lines of numpy on
ONNX initializers. The weight grid copies ORT's symmetric per-channel scheme (``|q| <=
levels``, scale ``max|w| / levels``), so the correction matches the rounding ORT applies.
"""

from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper as numpy_helper
import onnxruntime as ort

from export.formats import INPUT_NAME

BATCH = 16


def fake_quantize(weight: np.ndarray, levels: int) -> np.ndarray:
    """Symmetric per-output-channel rounding onto ``[-levels, levels]``, back in float."""
    axes = tuple(range(1, weight.ndim))
    scale = np.abs(weight).max(axis=axes, keepdims=True) / levels
    scale[scale == 0] = 1.0
    return np.clip(np.round(weight / scale), -levels, levels) * scale


def _group(node: onnx.NodeProto) -> int:
    return next((attr.i for attr in node.attribute if attr.name == "group"), 1)


def output_shift(weight: np.ndarray, levels: int, input_mean: np.ndarray, group: int) -> np.ndarray:
    """Mean change of each output channel of a (grouped) Conv when its weights are rounded."""
    error = (fake_quantize(weight, levels) - weight).sum(axis=(2, 3))  # (out, in/group)
    out_channels, per_group = error.shape
    error = error.reshape(group, out_channels // group, per_group)
    return np.einsum("goi,gi->go", error, input_mean.reshape(group, per_group)).reshape(out_channels)


class BiasCorrection:
    """Input means of every biased Conv, measured once; ``apply`` corrects a chosen set."""

    def __init__(self, model_path: Path, images: np.ndarray) -> None:
        model = onnx.load(str(model_path))
        initializers = {tensor.name for tensor in model.graph.initializer}
        self.convs = [
            node for node in model.graph.node if node.op_type == "Conv" and node.input[1] in initializers
        ]
        if not self.convs:
            self.means: dict[str, np.ndarray] = {}
            return
        inputs = list(dict.fromkeys(node.input[0] for node in self.convs))
        for name in inputs:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        sums: dict[str, np.ndarray | float] = dict.fromkeys(inputs, 0.0)
        for start in range(0, len(images), BATCH):
            batch = images[start : start + BATCH]
            for name, value in zip(inputs, session.run(inputs, {INPUT_NAME: batch}), strict=True):
                # Mean over batch and space, weighted by the batch's size (every map of
                # one tensor has the same area).
                sums[name] = sums[name] + value.mean(axis=(0, 2, 3), dtype=np.float64) * len(batch)
        self.means = {node.name: sums[node.input[0]] / len(images) for node in self.convs}

    def apply(self, model_path: Path, out: Path, levels: int, layers: set[str]) -> Path:
        """A copy of the model whose Convs in ``layers`` have their biases corrected for
        rounding onto ``levels``; layers that stay fp32 keep their biases."""
        model = onnx.load(str(model_path))
        initializers = {tensor.name: tensor for tensor in model.graph.initializer}
        for node in self.convs:
            if node.name not in layers:
                continue
            weight = numpy_helper.to_array(initializers[node.input[1]])
            shift = output_shift(weight, levels, self.means[node.name], _group(node))
            target = next(n for n in model.graph.node if n.name == node.name)
            if len(target.input) < 3:  # a Conv without bias (a folded BN with zero shift) gets one
                bias = model.graph.initializer.add()
                bias.CopyFrom(
                    numpy_helper.from_array(np.zeros(weight.shape[0], np.float32), f"{node.name}.bias")
                )
                target.input.append(bias.name)
                initializers[bias.name] = bias
            bias = initializers[target.input[2]]
            corrected = numpy_helper.to_array(bias) - shift
            bias.CopyFrom(numpy_helper.from_array(corrected.astype(np.float32), bias.name))
        onnx.save(model, str(out))
        return out
