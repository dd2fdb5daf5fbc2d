"""Markdown and terminal tables for the benchmark reports (the JSON goes through slimserve.documents)."""

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from slimserve.documents import write_json

MODEL_COLUMNS = (
    ("variant", "variant", "{}"),
    ("runtime", "runtime", "{}"),
    ("device", "device", "{}"),
    ("batch", "batch_size", "{}"),
    ("p50 ms", "p50_ms", "{:.3f}"),
    ("p90 ms", "p90_ms", "{:.3f}"),
    ("p99 ms", "p99_ms", "{:.3f}"),
    ("img/s", "images_per_s", "{:,.0f}"),
    ("x ref", "speedup", "{:.2f}"),
    ("x ref range", "speedup_range", "{0[0]:.2f}-{0[1]:.2f}"),
    ("GOP/s", "gops", "{:.1f}"),
    ("% peak", "share_of_peak", "{:.1%}"),
    ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
    ("file KB", "file_bytes", "{:,.0f}"),
    ("MMACs", "macs", "{:.2f}"),
    ("accuracy", "accuracy", "{:.2%}"),
    ("drop pts", "accuracy_drop_points", "{:+.2f}"),
    ("agree fp32", "top1_agreement", "{:.2%}"),
)
SCALE = {"file_bytes": 1 / 1024, "macs": 1e-6}
# The terminal gets the columns that decide a deployment; Markdown and JSON get all of them.
TERMINAL_KEYS = ("variant", "runtime", "device", "batch_size", "p50_ms", "p99_ms", "images_per_s", "speedup")
TERMINAL_KEYS += ("share_of_peak", "peak_rss_mb", "accuracy")


def cell(value: Any, fmt: str, key: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if key in SCALE:
        value = value * SCALE[key]
    return fmt.format(value)


def _markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def model_cells(row: dict[str, Any]) -> list[str]:
    return [cell(row.get(key), fmt, key) for _, key, fmt in MODEL_COLUMNS]


def short_device(device: str) -> str:
    return device.removesuffix("ExecutionProvider").lower()


def models_table(report: dict[str, Any]) -> Table:
    summary = report["summary"]
    columns = [column for column in MODEL_COLUMNS if column[1] in TERMINAL_KEYS]
    table = Table(
        title=f"{report['bundle']['name']}:{report['bundle']['version']} on {cpu_words(report['machine'])}"
    )
    for header, _, _ in columns:
        table.add_column(header, justify="left" if header in ("variant", "runtime", "device") else "right")
    recommended = summary["recommended"] or {}
    for row in report["rows"]:
        is_best = row["batch_size"] == summary["batch_size"] and all(
            row[key] == recommended.get(key) for key in ("variant", "runtime", "device")
        )
        cells = [cell(row.get(key), fmt, key) for _, key, fmt in columns]
        cells[2] = short_device(cells[2])
        table.add_row(*cells, style="bold green" if is_best else None)
    return table


def cpu_words(machine: dict[str, Any]) -> str:
    """The CPU and its vector ISA, e.g. ``AMD EPYC 9B14 (AVX-512 + VNNI + BF16)``: the ISA
    decides which kernels ran, so every report header and table title names it, and any
    environment variable that held the kernels below it."""
    limits = "".join(f"; {name}={value}" for name, value in machine.get("isa_limits", {}).items())
    return f"{machine['cpu_model']} ({machine.get('vector_isa', 'vector ISA not recorded')}{limits})"


def _peak_lines(machine: dict[str, Any]) -> list[str]:
    peak = machine["peak"]
    lines = [f"- Peak formula: {peak['formula']}"]
    if peak.get("units"):
        units = peak["units"]
        lines.append(
            f"- Assumed vector units ({units['name']}): FP32 {peak['fp32_ops_per_cycle_per_core']} ops/cycle/core, "
            f"INT8 {peak['int8_ops_per_cycle_per_core']} ops/cycle/core; {units['note']}"
        )
        lines.append(
            f"- Peak here: {peak['cores']} cores x {peak['clock_ghz']} GHz ({peak['clock_source']}) = "
            f"FP32 {peak['fp32_gops']:.0f} GOP/s, INT8 {peak['int8_gops']:.0f} GOP/s"
        )
    else:
        lines.append(f"- {peak['note']}")
    return lines


def _latency_words(figures: dict[str, Any] | None) -> str:
    if figures is None:
        return "batch 1 not timed"
    return f"batch-1 p50 {figures['p50_ms']:.2f} ms, {cell(figures['share_of_peak'], '{:.1%}')} of peak"


def int8_target_line(summary: dict[str, Any]) -> str | None:
    """The issue's speed target in one line: the INT8 cell within the budget against the
    reference at the largest batch size, with both cells' batch-1 latency and share of peak."""
    target = summary.get("int8_speed_target")
    if not target:
        return None
    low, high = target["speedup_range"] or (target["speedup"], target["speedup"])
    return (
        f"INT8 within the budget vs {summary['reference']} at batch {target['batch_size']}: "
        f"{target['variant']}/{target['runtime']}/{short_device(target['device'])} "
        f"{target['speedup']:.2f}x (rounds {low:.2f}-{high:.2f}), "
        f"{cell(target['share_of_peak'], '{:.1%}')} of the INT8 peak; {_latency_words(target['batch1'])}; "
        f"reference {_latency_words(target['reference_batch1'])}"
    )


def models_markdown(report: dict[str, Any]) -> str:
    machine, settings, summary = report["machine"], report["settings"], report["summary"]
    bundle = report["bundle"]
    lines = [
        f"# Model benchmark: {bundle['name']}:{bundle['version']}",
        "",
        f"- Machine: {cpu_words(machine)}, {machine['physical_cores']} physical cores, "
        f"{machine['memory_gib']} GiB, flags {', '.join(machine['flags'])}; GPUs: "
        f"{', '.join(machine['gpus']) or 'no GPU present'}",
        f"- Versions: {', '.join(f'{k} {v}' for k, v in machine['versions'].items())}",
        *_peak_lines(machine),
        f"- Threads: {settings['thread_policy']}",
        f"- Allocator: {settings['allocator']}",
        f"- Timing: {settings['timing']}; warm-up {settings['warmup']}, repeats {settings['repeats']}, "
        f"max {settings['max_seconds']} s per batch size",
        f"- Batch sizes: {settings['batch_size_note']}",
        f"- Throughput: {settings['throughput']}; GOP/s: {settings['gops']}",
        f"- Peak RSS: {settings['peak_rss']}",
        f"- Speed-up (x ref) is against {summary['reference']} at the same batch size; "
        "it is also the ratio of p50 latencies",
        f"- Rounds: {settings['aggregation']}",
        f"- Created: {report['created_at']}",
        "",
    ]
    sources = sorted({row["accuracy_source"] for row in report["rows"]})
    lines += [f"- Accuracy: {source}" for source in sources]
    lines += [f"- Note: {note}" for note in report["notes"]]
    lines += [
        f"- Failed: {f['variant']} / {f['runtime']} / {f['device']}: {f['error']}" for f in report["failures"]
    ]
    lines += [
        "",
        _markdown_table([h for h, _, _ in MODEL_COLUMNS], [model_cells(r) for r in report["rows"]]),
        "",
    ]
    best = summary["recommended"]
    lines.append(f"## Recommendation (batch {summary['batch_size']})")
    lines.append("")
    if best:
        lines.append(
            f"Deploy **{best['variant']} on {best['runtime']} ({best['device']})**: {best['images_per_s']:,.0f} img/s "
            f"at {best['accuracy']:.2%} accuracy, the fastest within {summary['max_accuracy_drop_points']} points of "
            f"the reference ({summary['reference']}, {summary['reference_accuracy']:.2%})."
        )
    else:
        lines.append("No variant could be recommended: the reference row or accuracies are missing.")
    front = ", ".join(f"{p['variant']}/{p['runtime']}/{p['device']}" for p in summary["pareto_front"])
    lines += ["", f"Pareto front (accuracy vs images/s): {front}", ""]
    fastest = summary["fastest_batch1_within_budget"]
    if fastest:
        lines.append(
            f"- Lowest batch-1 latency within the budget: {fastest['variant']}/{fastest['runtime']}/"
            f"{fastest['device']}, p50 {fastest['p50_ms']:.3f} ms, {cell(fastest['latency_ratio'], '{:.2f}')}x "
            "lower than the reference"
        )
    target = int8_target_line(summary)
    if target:
        lines.append(f"- {target}")
    top = summary["best_int8_share_of_peak"]
    if top:
        lines.append(
            f"- Best INT8 share of the INT8 peak: {top['variant']}/{top['runtime']}/{top['device']} at batch "
            f"{top['batch_size']}: {top['gops']:.1f} GOP/s = {top['share_of_peak']:.1%}"
        )
    lines.append("")
    lines += [f"![{Path(plot).stem}]({Path(plot).name})" for plot in report.get("plots", [])]
    return "\n".join(lines) + "\n"


HTTP_COLUMNS = (
    ("target", "target", "{}"),
    ("concurrency", "concurrency", "{}"),
    ("requests", "requests", "{:,}"),
    ("req/s", "ok_per_s", "{:,.1f}"),
    ("p50 ms", "p50_ms", "{:.2f}"),
    ("p90 ms", "p90_ms", "{:.2f}"),
    ("p99 ms", "p99_ms", "{:.2f}"),
    ("errors", "error_rate", "{:.2%}"),
    ("CPU ms/req: locust", "cpu_ms_load_generator", "{:.2f}"),
    ("all", "cpu_ms_machine", "{:.2f}"),
)


def _http_rows(report: dict[str, Any]) -> list[list[str]]:
    return [
        [cell({**row, "target": target}.get(key), fmt) for _, key, fmt in HTTP_COLUMNS]
        for target, rows in report["results"].items()
        for row in rows
    ]


def http_table(report: dict[str, Any]) -> Table:
    table = Table(
        title=f"{report['url']} variant {report['variant']} ({report['bundle']['tag']}) "
        f"on {cpu_words(report['machine'])}"
    )
    for header, _, _ in HTTP_COLUMNS:
        table.add_column(header, justify="left" if header == "target" else "right")
    for row in _http_rows(report):
        table.add_row(*row)
    return table


def _comparison_lines(report: dict[str, Any]) -> list[str]:
    comparisons = report["comparisons"]
    lines = [
        f"- Adaptive batching vs unbatched, req/s ratio at concurrency {level}: {ratio:.2f}x"
        for level, ratio in comparisons["batching_gain"].items()
    ]
    lines += [
        f"- CPU per request, unbatched over adaptive, at concurrency {level}: {saving:.2f}x "
        "(whole machine, load generator included)"
        for level, saving in comparisons.get("batching_cpu_saving", {}).items()
    ]
    for target, levels in comparisons["share_of_reference"].items():
        lines += [
            f"- {target} req/s as a share of the bare reference at concurrency {level}: {share:.0%}"
            for level, share in levels.items()
        ]
    for target, added in comparisons["added_p50_ms_at_concurrency_1"].items():
        lines.append(
            f"- {target} p50 at concurrency 1 minus in-process batch-1 p50: "
            f"{added['vs_model_only']:+.2f} ms (model only), "
            f"{added['vs_decode_preprocess_model']:+.2f} ms (decode + preprocess + model)"
        )
    return lines


def _decision_words(decision: dict[str, Any] | None) -> str:
    if not decision:
        return "not reported"
    return f"{'yes' if decision['enabled'] else 'no'} ({decision['reason']})"


def http_markdown(report: dict[str, Any]) -> str:
    machine, settings, service = report["machine"], report["settings"], report["service"]
    lines = [
        f"# HTTP benchmark: {report['url']}, variant {report['variant']} ({report['bundle']['tag']})",
        "",
        f"- Machine: {cpu_words(machine)}, {machine['physical_cores']} physical cores; GPUs: "
        f"{', '.join(machine['gpus']) or 'no GPU present'}",
        f"- Versions: {', '.join(f'{k} {v}' for k, v in machine['versions'].items())}",
        f"- Service: {service['workers']} worker(s) x {service['threads_per_worker']} thread(s), backend "
        f"{service['backend']} on {service['provider']}, adaptive batching {service['adaptive_batching']}; "
        f"/predict batches this variant: {_decision_words(service.get('batching_decision'))}",
        f"- Load: {settings['load_generator']}",
        f"- Bounds per target and concurrency: {settings['duration_s']:g} s or {settings['requests']} requests; "
        f"{settings['images']} image files",
        f"- Throughput: {settings['requests_per_s']}",
        f"- Created: {report['created_at']}",
    ]
    if report["reference"]:
        ref = report["reference"]
        lines.append(
            f"- Reference: bare Starlette + uvicorn (uvloop, httptools), {ref['workers']} worker(s) x "
            f"{ref['threads']} thread(s), the service's {ref.get('backend', 'onnx')} backend on CPU, "
            "same decode/preprocess (service.preprocess), batch 1"
        )
    local = report["in_process"]
    if local:
        lines.append(
            f"- In-process batch 1 ({local.get('backend', 'onnx')} backend, {local['threads']} thread(s)): "
            "model only p50 "
            f"{local['model_only']['p50_ms']:.3f} ms; decode + preprocess + model p50 "
            f"{local['decode_preprocess_model']['p50_ms']:.3f} ms"
        )
    lines += [
        "",
        _markdown_table([h for h, _, _ in HTTP_COLUMNS], _http_rows(report)),
        "",
        "## Comparisons",
        "",
    ]
    lines += _comparison_lines(report) or ["- none (a target is missing)"]
    lines += ["", *[f"![{Path(plot).stem}]({Path(plot).name})" for plot in report.get("plots", [])]]
    return "\n".join(lines) + "\n"


def write_load_report(
    report: dict[str, Any],
    out: Path,
    name: str,
    plot: Callable[[dict[str, Any], Path], Path],
    markdown: Callable[[dict[str, Any]], str],
    table: Callable[[dict[str, Any]], Table],
    console: Console,
) -> None:
    """``out/bench-NAME.json`` (written first, so a failing plot leaves the figures; then
    again with the plot's path), ``bench-NAME.md``, ``NAME-load.png`` and the table."""
    json_path, markdown_path = out / f"bench-{name}.json", out / f"bench-{name}.md"
    write_json(json_path, report, allow_nan=False)
    report["plots"] = [str(plot(report, out / f"{name}-load.png"))]
    write_json(json_path, report, allow_nan=False)
    markdown_path.write_text(markdown(report))
    console.print(table(report))
    console.print(f"Report: {json_path}, {markdown_path}, plot: {report['plots'][0]}")
