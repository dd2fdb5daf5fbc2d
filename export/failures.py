"""Why a variant could not be built, in one line that names the layer responsible.

Libraries report failures in their own vocabulary: torch.fx raises a TraceError from
inside a Proxy, the ONNX exporter wraps a DispatchError in two ConversionErrors whose first
lines only say which of its three steps failed, torch-pruning fails somewhere in its
dependency graph. None of them reliably names the layer of the user's model. So every step
that hands a model to a library runs inside ``export_step``, which records the step, the
format being written and the exact model object the library received (often a deep copy),
and ``describe_failure`` finds the layer in the traceback:

- a frame of an ``nn.Module`` method whose ``self`` is a submodule of that model: FX
  symbolic tracing, torch.export's non-strict mode, TorchScript tracing and torch-pruning
  all run the layer's own ``forward``;
- a frame holding the ``torch.fx.Node`` being converted: the dynamo ONNX exporter and
  torch.export keep the emitting module's path and class in ``node.meta["nn_module_stack"]``
  (so the TorchScript-based exporter's scope names are not needed).

The deepest such frame wins: it is the closest to where the library gave up. When no frame
names a layer (ONNX Runtime works on a graph, not on modules) the reason says so and names
the operator when the library mentioned one.
"""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

import torch
from torch import nn

from slimserve.errors import SlimserveError

MESSAGE_CHARS = 300
# ATen operators as the exporters spell them: "aten::kthvalue" (TorchScript) or
# "aten.kthvalue" (FX and dynamo, inside an OpOverload repr).
OP_PATTERN = re.compile(r"aten(?:::|\.)[A-Za-z0-9_]+")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


class StepFailed(Exception):
    """A library call failed inside ``export_step``; the library's exception is the cause."""

    def __init__(self, step: str, fmt: str | None, model: nn.Module | None) -> None:
        super().__init__(f"{step} failed")
        self.step = step
        self.format = fmt
        self.model = model


@contextmanager
def export_step(step: str, fmt: str | None = None, model: nn.Module | None = None) -> Iterator[None]:
    """Name what the block does to ``model`` (and for which file format) in case it fails.

    SlimserveErrors are already one line that names the fix, and an inner step knows more
    than an outer one, so both pass through unchanged.
    """
    try:
        yield
    except (SlimserveError, StepFailed):
        raise
    except Exception as exc:
        raise StepFailed(step, fmt, model) from exc


@dataclass(frozen=True)
class Layer:
    """A module of the model: its qualified name ('' for the model itself) and class name."""

    name: str
    kind: str
    op: str | None = None  # the ATen operator it emitted, when a converter names one

    def describe(self) -> str:
        where = f"layer '{self.name}'" if self.name else "the model's own forward"
        detail = self.kind + (f", operator {self.op}" if self.op else "")
        return f"{where} ({detail})"


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it, outermost first (the order Python prints them in reverse)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain


def _frames(exc: BaseException) -> Iterator[FrameType]:
    """Every traceback frame of the chain, shallowest first: the root cause's come last."""
    for link in exception_chain(exc):
        tb = link.__traceback__
        while tb is not None:
            yield tb.tb_frame
            tb = tb.tb_next


def _op_name(target: Any) -> str:
    return str(target).removesuffix(".default")


def find_layer(exc: BaseException, model: nn.Module | None) -> Layer | None:
    """The submodule of ``model`` whose code was running deepest when ``exc`` was raised."""
    names = {id(module): name for name, module in model.named_modules()} if model is not None else {}
    found: Layer | None = None
    for frame in _frames(exc):
        owner = frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and id(owner) in names:
            found = Layer(names[id(owner)], type(owner).__name__)
        node = frame.f_locals.get("node")
        if isinstance(node, torch.fx.Node) and node.meta.get("nn_module_stack"):
            path, kind = list(node.meta["nn_module_stack"].values())[-1]
            kind_name = kind.__name__ if isinstance(kind, type) else str(kind).rsplit(".", 1)[-1]
            op = _op_name(node.target) if node.op == "call_function" else None
            found = Layer(str(path), kind_name, op)
    return found


def find_op(exc: BaseException) -> str | None:
    """An ATen operator named in any message of the chain, the root cause's first."""
    for link in reversed(exception_chain(exc)):
        match = OP_PATTERN.search(str(link))
        if match:
            return match.group(0).replace("::", ".")
    return None


def library_message(exc: BaseException) -> str:
    """``Type: first line`` of the deepest exception that says something (the outer ones of
    a chain usually just say which stage failed)."""
    for link in reversed(exception_chain(exc)):
        if isinstance(link, StepFailed):
            continue
        lines = [line.strip() for line in ANSI_ESCAPE.sub("", str(link)).splitlines() if line.strip()]
        if lines:
            return f"{type(link).__name__}: {lines[0]}"[:MESSAGE_CHARS]
    return type(exc.__cause__ or exc).__name__


def describe_failure(variant: str, exc: BaseException, model: nn.Module | None = None) -> dict[str, Any]:
    """The manifest's ``failed`` entry for ``variant``: a one-line ``reason`` and its parts.

    ``model`` is where to look for the layer when the failure did not come from an
    ``export_step`` (which carries the model it worked on).
    """
    if isinstance(exc, SlimserveError):  # already one line that names the fix
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return _entry(f"variant '{variant}': {message}", error=message)
    step, fmt = None, None
    if isinstance(exc, StepFailed):
        step, fmt, model = exc.step, exc.format, exc.model if exc.model is not None else model
    layer = find_layer(exc, model)
    op = (layer.op if layer else None) or find_op(exc)
    message = library_message(exc)
    head = f"variant '{variant}'" + (f" ({fmt})" if fmt else "")
    if layer is not None:
        layer = Layer(layer.name, layer.kind, op)
        reason = f"{head}: {layer.describe()} " + (f"is not supported by {step}" if step else "failed")
    else:
        on_op = f" on operator {op}" if op else ""
        reason = f"{head}: {step or 'export'} failed{on_op} (layer not identified)"
    return _entry(
        f"{reason}: {message}",
        step=step,
        format=fmt,
        layer=layer.name if layer else None,
        layer_class=layer.kind if layer else None,
        op=op,
        error=message,
    )


def _entry(reason: str, **details: Any) -> dict[str, Any]:
    fields = {"step": None, "format": None, "layer": None, "layer_class": None, "op": None, "error": None}
    return {"reason": reason, **fields, **details}
