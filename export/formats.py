"""Writing the deployable formats: frozen TorchScript, ONNX, and torch.export.

All are produced from an eager model with the exporters torch ships (no hand-written
graph code). The files are opened and run by ``slimserve.runtime``, the same layer the
benchmarks and the service use, so every format is compared the same way.
TorchScript is deprecated upstream in favour of torch.export; it stays because users ask for
it, and the ``.pt2`` ExportedProgram is what PyTorch's newer deployment paths take.
"""

from pathlib import Path

import onnx
import torch
from torch import nn

from slimserve.errors import SlimserveError
from slimserve.runtime.torch_runners import quiet_torch_deprecations

ONNX_OPSET = 18
MAX_BATCH = 65536
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # named after their layer in ONNX files
PT2_SETTINGS = f"torch.export.export (non-strict), dynamic batch 1-{MAX_BATCH}, torch.export.save"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def example_batch(input_shape: tuple[int, int, int], batch: int = 2) -> torch.Tensor:
    """Batch 2, not 1: tracing and torch.export would otherwise specialise the batch dim to 1."""
    return torch.zeros((batch, *input_shape), dtype=torch.float32)


def write_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Trace then freeze: the file holds weights as constants and runs with torch alone."""
    model.eval()
    with quiet_torch_deprecations(), torch.no_grad():
        frozen = torch.jit.freeze(torch.jit.trace(model, example))
        frozen.save(str(path))


def _batch_dim() -> torch.export.Dim:
    return torch.export.Dim("batch", min=1, max=MAX_BATCH)


def write_pt2(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """An ExportedProgram with a symbolic batch axis; ``torch.export.load(path).module()``
    runs it with torch alone. The archive holds the graph as JSON and plain weights as raw
    tensor bytes; torch.export.save pickles only tensor subclasses and custom objects (float
    models have none) and the example input (read back with ``weights_only=True``)."""
    model.eval()
    with quiet_torch_deprecations(), torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=({0: _batch_dim()},), strict=False)
    torch.export.save(program, str(path))


def write_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """The dynamo exporter with a symbolic batch axis, then the strictest ONNX check."""
    model.eval()
    with quiet_torch_deprecations(), torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=ONNX_OPSET,
            dynamic_shapes=({0: _batch_dim()},),
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    compact_onnx(path)
    check_onnx(path)


def compact_onnx(path: Path) -> None:
    """Drop what a deployed file never reads: debug metadata and long tensor names.

    The dynamo exporter annotates every node with its FX node, Python class hierarchy and
    rewrite rules (65 KB of a 1.1 MB ResNet-20 file, and it leaks source paths into
    bundles). ONNX Runtime's quantizer names each tensor after its producer plus suffixes
    such as ``_QuantizeLinear_Output`` (18 KB of a 330 KB INT8 ResNet-20). Tensor names are
    internal wiring, so they become short ids. The layer path survives where people look
    for it: each weighted node (``node_Conv_306`` from the exporter) is first named after its
    layer (``stages.3.conv1``, from its weight's name), and ONNX Runtime's profiler, the
    quantizer's fp32-layer lists and fused kernels keep node names. The graph's input and
    output names are kept.
    """
    model = onnx.load(str(path))
    graph = model.graph
    _name_nodes_after_layers(graph)
    # Subgraphs (If/Loop bodies) may refer to outer tensors by name: leave such graphs' names alone.
    has_subgraphs = any(attr.g.node or attr.graphs for node in graph.node for attr in node.attribute)
    keep = {value.name for value in (*graph.input, *graph.output)}
    short: dict[str, str] = {}

    def rename(name: str) -> str:
        if has_subgraphs or not name or name in keep:  # "" marks an omitted optional input
            return name
        return short.setdefault(name, f"t{len(short)}")

    for node in graph.node:
        del node.metadata_props[:]
        node.input[:] = [rename(name) for name in node.input]
        node.output[:] = [rename(name) for name in node.output]
    for tensor in (*graph.initializer, *graph.value_info):
        tensor.name = rename(tensor.name)
    onnx.save(model, str(path))


def _name_nodes_after_layers(graph: onnx.GraphProto) -> None:
    """``Conv``/``Gemm``/``MatMul`` nodes whose weight is an initializer called
    ``<layer>.weight`` take the layer's name, unless another node already has it."""
    weights = {init.name for init in graph.initializer if init.name.endswith(".weight")}
    taken = {node.name for node in graph.node}
    for node in graph.node:
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in weights:
            layer = node.input[1].removesuffix(".weight")
            if layer not in taken:
                taken.add(layer)
                node.name = layer


def check_onnx(path: Path) -> None:
    try:
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    except onnx.checker.ValidationError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise SlimserveError(f"{path} fails onnx.checker: {first_line}") from None
