"""PNG plots for the model and HTTP benchmarks."""

from pathlib import Path
from typing import Any

from benchmarks.report import short_device
from benchmarks.selection import pareto_front


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> Path:
    """Lay out, write the PNG and free the figure (pyplot keeps every open one alive)."""
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _label(row: dict[str, Any]) -> str:
    return f"{row['variant']} / {row['runtime']} / {short_device(row['device'])}"


def plot_latency(report: dict[str, Any], path: Path) -> Path:
    """p50 latency vs batch size, one panel per variant, one line per runtime (log-log)."""
    plt = _pyplot()
    variants = list(dict.fromkeys(row["variant"] for row in report["rows"]))
    columns = min(3, len(variants))
    rows_of_panels = -(-len(variants) // columns)
    fig, axes = plt.subplots(
        rows_of_panels, columns, figsize=(4.4 * columns, 3.8 * rows_of_panels), dpi=110, squeeze=False
    )
    for ax in axes.flat[len(variants) :]:
        ax.set_visible(False)
    runtimes = dict.fromkeys(f"{row['runtime']} ({short_device(row['device'])})" for row in report["rows"])
    colors = {
        runtime: f"C{index % 10}" for index, runtime in enumerate(runtimes)
    }  # same colour in every panel
    for ax, variant in zip(axes.flat, variants, strict=False):
        rows = [row for row in report["rows"] if row["variant"] == variant]
        for runtime in dict.fromkeys(f"{row['runtime']} ({short_device(row['device'])})" for row in rows):
            series = sorted(
                (row for row in rows if f"{row['runtime']} ({short_device(row['device'])})" == runtime),
                key=lambda row: row["batch_size"],
            )
            sizes = [row["batch_size"] for row in series]
            color = colors[runtime]
            ax.plot(sizes, [row["p50_ms"] for row in series], marker="o", label=runtime, color=color)
            ax.fill_between(
                sizes,
                [row["p50_ms"] for row in series],
                [row["p99_ms"] for row in series],
                alpha=0.15,
                color=color,
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(report["settings"]["batch_sizes"], [str(b) for b in report["settings"]["batch_sizes"]])
        ax.set_yscale("log")
        ax.set_title(variant)
        ax.set_xlabel("batch size")
        ax.set_ylabel("latency ms (p50, band to p99)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(
        f"{report['bundle']['name']}:{report['bundle']['version']}, {report['settings']['threads']} threads"
    )
    return _save(plt, fig, path)


def plot_accuracy_throughput(report: dict[str, Any], path: Path) -> Path | None:
    """Accuracy vs images/s at the selection batch size, Pareto front joined, recommendation starred."""
    summary = report["summary"]
    rows = [
        row
        for row in report["rows"]
        if row["batch_size"] == summary["batch_size"] and row.get("accuracy") is not None
    ]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=110)
    for row in rows:
        ax.scatter(row["images_per_s"], row["accuracy"] * 100, s=30)
        ax.annotate(
            _label(row),
            (row["images_per_s"], row["accuracy"] * 100),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    front = [rows[i] for i in pareto_front([(r["images_per_s"], r["accuracy"]) for r in rows])]
    ax.plot(
        [r["images_per_s"] for r in front],
        [r["accuracy"] * 100 for r in front],
        "k--",
        lw=1,
        label="Pareto front",
    )
    if summary["reference_accuracy"] is not None:
        floor = (summary["reference_accuracy"] * 100) - summary["max_accuracy_drop_points"]
        ax.axhline(
            floor,
            color="tab:red",
            lw=0.8,
            ls=":",
            label=f"accuracy budget (-{summary['max_accuracy_drop_points']} pt)",
        )
    best = summary["recommended"]
    if best:
        ax.scatter(
            best["images_per_s"],
            best["accuracy"] * 100,
            marker="*",
            s=260,
            color="gold",
            edgecolors="black",
            zorder=5,
            label=f"recommended: {_label(best)}",
        )
    ax.set_xscale("log")
    ax.margins(x=0.25, y=0.1)
    ax.set_xlabel(f"images/s at batch {summary['batch_size']} (log)")
    ax.set_ylabel("test accuracy %")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    return _save(plt, fig, path)


def plot_http(report: dict[str, Any], path: Path) -> Path:
    """Requests/s and p50/p99 latency vs concurrency, one line per target."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for target, rows in report["results"].items():
        rows = sorted(rows, key=lambda row: row["concurrency"])
        levels = [row["concurrency"] for row in rows]
        left.plot(levels, [row["ok_per_s"] or 0 for row in rows], marker="o", label=target)
        timed = [row for row in rows if "p50_ms" in row]
        line = right.plot(
            [r["concurrency"] for r in timed], [r["p50_ms"] for r in timed], marker="o", label=f"{target} p50"
        )
        right.plot(
            [r["concurrency"] for r in timed],
            [r["p99_ms"] for r in timed],
            ls="--",
            color=line[0].get_color(),
            label=f"{target} p99",
        )
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(report["settings"]["concurrency"], [str(c) for c in report["settings"]["concurrency"]])
        ax.set_xlabel("concurrent clients")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    left.set_ylabel("successful requests/s")
    right.set_ylabel("latency ms")
    right.set_yscale("log")
    fig.suptitle(f"{report['url']} variant {report['variant']}")
    return _save(plt, fig, path)
