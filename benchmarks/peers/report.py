"""The peer benchmark's table (terminal and Markdown) and plot, in the house style of benchmarks.report."""

from pathlib import Path
from typing import Any

from rich.table import Table

from benchmarks.plots import _pyplot, _save
from benchmarks.report import _markdown_table, cell

BUSY_NOTE = (
    "Ranges are over rounds; the same machine runs the load generator, so compare peers within a round "
    "and read absolute figures only from a quiet machine."
)


def _range(values: list[float | None], fmt: str) -> str:
    """Low-high over rounds; a round without a figure (no successful request) is counted, not hidden."""
    found = [v for v in values if v is not None]
    if not found:
        return "-"
    low, high = cell(min(found), fmt), cell(max(found), fmt)
    text = low if low == high else f"{low}-{high}"
    return text if len(found) == len(values) else f"{text} ({len(found)} of {len(values)} rounds)"


def _batching(info: dict[str, Any]) -> str:
    batching = info["batching"]
    if not batching:
        return "off"
    wait = batching["max_wait_ms"]
    return f"max {batching['max_batch_size']}, wait {wait if isinstance(wait, str) else f'{wait:g} ms'}"


def headers(report: dict[str, Any]) -> list[str]:
    levels = report["settings"]["concurrency"]
    per_level = [h for level in levels for h in (f"c={level} req/s", f"c={level} p99 ms")]
    return ["server", "version", "workers x threads", "batching", "body", *per_level, "errors", "status"]


def rows(report: dict[str, Any]) -> list[list[str]]:
    out = []
    for name, info in report["peers"].items():
        summary = report["summary"].get(name, {})
        figures = []
        for level in report["settings"]["concurrency"]:
            at = summary.get(str(level), {})
            figures += [_range(at.get("ok_per_s", []), "{:,.0f}"), _range(at.get("p99_ms", []), "{:.1f}")]
        errors = sum(at["errors"] for at in summary.values())
        requests = sum(at["requests"] for at in summary.values())
        failed = [str(r["round"]) for r in info["rounds"] if "failed" in r]
        status = {
            "ok": "ok",
            "failed": f"failed: {info.get('reason')}",
            "partial": f"round {', '.join(failed)} failed: {info.get('reason')}",
        }[info["status"]]
        out.append(
            [
                name,
                f"{info['framework']} {info.get('version', '?')}",
                f"{info['workers']} x {info['threads']}",
                _batching(info),
                info["body"],
                *figures,
                f"{errors}/{requests}" if requests else "-",
                status,
            ]
        )
    return out


def peers_table(report: dict[str, Any]) -> Table:
    bundle = report["bundle"]
    table = Table(
        title=f"peers serving {bundle['name']}:{bundle['version']} {report['variant']} on "
        f"{report['machine']['cpu_model']} ({report['vector_isa']})"
    )
    for header in headers(report):
        table.add_column(header, justify="left" if "req/s" not in header and "p99" not in header else "right")
    for row in rows(report):
        row[4] = row[4].split(" (")[0]  # the body format without its why: the terminal is narrow
        table.add_row(*row)
    return table


def peers_markdown(report: dict[str, Any]) -> str:
    machine, settings = report["machine"], report["settings"]
    bundle = report["bundle"]
    lines = [
        f"# Peer benchmark: {bundle['name']}:{bundle['version']}, variant {report['variant']}",
        "",
        f"- Machine: {machine['cpu_model']}, {machine['physical_cores']} physical cores, vector ISA "
        f"{report['vector_isa']} (flags {', '.join(machine['flags'])}); GPUs: not used",
        f"- Versions: {', '.join(f'{k} {v}' for k, v in machine['versions'].items())}",
        f"- Per request, every server: {settings['model']}",
        f"- Layout: {settings['workers']} worker(s) x {settings['threads']} ONNX Runtime thread(s) each, "
        "as `slimserve serve` lays out this machine",
        f"- Load: {settings['load_generator']}",
        f"- Bounds per server, concurrency and round: {settings['duration_s']:g} s or {settings['requests']} "
        f"requests; {settings['images']} image files; {settings['rounds']} round(s), "
        "even rounds in reverse order (a drift of the machine's speed over a round cancels over two)",
        f"- Throughput: {settings['requests_per_s']}",
        f"- {BUSY_NOTE}",
        f"- Created: {report['created_at']}; the whole run took {report['wall_s']:.0f} s",
        "",
        _markdown_table(headers(report), rows(report)),
        "",
        "## Front ends",
        "",
    ]
    lines += [f"- {name}: {info['front_end']}; `{info['path']}`" for name, info in report["peers"].items()]
    lines += ["", *[f"![{Path(plot).stem}]({Path(plot).name})" for plot in report.get("plots", [])]]
    return "\n".join(lines) + "\n"


def plot_peers(report: dict[str, Any], path: Path) -> Path:
    """Requests/s per server, one panel per concurrency: a bar to the best round, a dot per round."""
    plt = _pyplot()
    levels = report["settings"]["concurrency"]
    names = list(report["peers"])
    fig, axes = plt.subplots(1, len(levels), figsize=(5.5 * len(levels), 0.45 * len(names) + 1.6), dpi=110)
    axes = [axes] if len(levels) == 1 else list(axes)
    for ax, level in zip(axes, levels, strict=True):
        for y, name in enumerate(names):
            values = [v for v in report["summary"].get(name, {}).get(str(level), {}).get("ok_per_s", []) if v]
            if not values:
                ax.text(0, y, "  not measured", va="center", fontsize=7, color="tab:red")
                continue
            color = "tab:green" if name.startswith("slimserve") else "tab:blue"
            ax.barh(y, max(values), color=color, alpha=0.35)
            ax.scatter(values, [y] * len(values), color=color, s=14, zorder=3)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("successful requests/s (dots: rounds)")
        ax.set_title(f"concurrency {level}")
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(
        f"{report['bundle']['name']}:{report['bundle']['version']} {report['variant']} on "
        f"{report['machine']['cpu_model']} ({report['vector_isa']})",
        fontsize=9,
    )
    return _save(plt, fig, path)
