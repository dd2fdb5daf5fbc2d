"""The comparison table `slimserve export` prints: one row per variant, fp32 first, then
one row per failed variant naming the format, step and layer it failed on."""

from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from slimserve.manifest import Manifest


def _size(num_bytes: int | None, reference: int | None) -> str:
    if not num_bytes:
        return "-"
    size = f"{num_bytes / 1024:,.0f}K" if num_bytes < 10 * 1024**2 else f"{num_bytes / 1024**2:,.1f}M"
    return f"{size} ({num_bytes / reference:.2f}x)" if reference else size


def _count(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1e6:.2f}M" if value >= 1e5 else f"{value / 1e3:.1f}k"


def print_report(manifest: Manifest, console: Console) -> None:
    data = manifest.data
    fp32 = data["variants"].get("fp32")
    fp32_onnx = fp32["files"]["onnx"]["bytes"] if fp32 and "onnx" in fp32["files"] else None
    table = Table(
        title=f"{manifest.name}:{manifest.version}  (test images: {data['evaluation']['images']}, "
        f"fp32 eager accuracy {data['parent']['test_accuracy']:.2%})",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("variant", no_wrap=True)
    table.add_column("prec", no_wrap=True)
    for column in ("accuracy", "drop", "agree", "ONNX (vs fp32)", "gzip", "MACs", "params", "zeros"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("parity ONNX/TS/PT2", justify="right", no_wrap=True)
    for name, entry in data["variants"].items():
        onnx_bytes = entry["files"].get("onnx", {}).get("bytes")
        parity = " / ".join(
            f"{entry['parity'][fmt]['max_abs_diff']:.0e}" if fmt in entry["parity"] else "-"
            for fmt in ("onnx", "torchscript", "pt2")
        )
        marker = " *" if name == data.get("default_variant") else ""
        table.add_row(
            name + marker,
            entry["precision"],
            f"{entry['test_accuracy']:.2%}",
            f"{entry['accuracy_drop']:+.2f}",
            f"{entry['top1_agreement']:.2%}",
            _size(onnx_bytes, fp32_onnx),
            _size(entry["files"].get("onnx", {}).get("gzip_bytes"), None),
            _count(entry.get("macs")),
            _count(entry.get("params")),
            f"{entry['sparsity']:.0%}",
            parity,
        )
    console.print(table)
    console.print(
        "* default variant. drop: accuracy points lost vs fp32; agree: top-1 agreement with fp32; "
        "parity: max |logit diff| vs the eager model each file was made from."
    )
    for name, entry in data["variants"].items():
        if entry.get("notes"):
            console.print(f"[bold]{name}[/]: {entry['notes']}")
        # A variant without one of its files says so, with the reason, never silently.
        for fmt, reason in entry.get("skipped_formats", {}).items():
            console.print(f"[yellow]{name}: no {fmt} file[/] - {escape(reason)}")
    if manifest.failed:
        console.print(_failures_table(manifest.failed))
    console.print(f"Bundle: [bold]{manifest.bundle_dir}[/]")


def _layer(entry: dict[str, Any]) -> str:
    op = f" op {entry['op']}" if entry.get("op") else ""
    if entry.get("layer") is None:
        return ("not identified" + op) if entry.get("step") else "-"
    return f"{entry['layer'] or '(model)'} ({entry['layer_class']}){op}"


def _failures_table(failed: dict[str, dict[str, Any]]) -> Table:
    """One row per failed variant: where it failed (format, step, layer) and the library's
    own message; bundles from before failures named their layer only have the reason."""
    table = Table(title="[red]failed variants[/]", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("variant", "format", "step", "layer", "error"):
        table.add_column(column, overflow="fold")
    for name, entry in failed.items():
        cells = (entry.get("format"), entry.get("step"), _layer(entry), entry.get("error") or entry["reason"])
        table.add_row(name, *(escape(cell or "-") for cell in cells))
    return table
