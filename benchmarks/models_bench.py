"""`slimserve bench models`: every variant x runtime x batch size, in-process, one report."""

import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from benchmarks.inputs import load_test_images, save_array
from benchmarks.machine import machine_info, share_of_peak
from benchmarks.runtimes import EAGER, ONNXRUNTIME, TORCHSCRIPT
from benchmarks.selection import pareto_front, recommend
from benchmarks.settings import ModelBenchSettings  # re-exported for callers
from benchmarks.worker_process import WorkerResult, run_worker
from slimserve.allocator import POLICY
from slimserve.console import cli_console
from slimserve.documents import write_json
from slimserve.errors import SlimserveError
from slimserve.manifest import Manifest, read_manifest

if TYPE_CHECKING:
    from training.eval_data import ImageSet

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
REFERENCE_VARIANT = "fp32"


@dataclass(frozen=True)
class Measurement:
    """One variant on one runtime and device, timed at every batch size in one worker process."""

    variant: str
    runtime: str
    device: str  # torch device or ONNX Runtime provider


def plan(manifest: Manifest, gpu: bool, ort_providers: list[str]) -> tuple[list[Measurement], list[str]]:
    """The measurements to run, and notes on what is absent and why (never a silent gap)."""
    notes: list[str] = []
    measurements: list[Measurement] = []
    run_dir = manifest.data["parent"].get("run_dir")
    devices = ["cpu", "cuda"] if gpu else ["cpu"]
    providers = ["CPUExecutionProvider"]
    if gpu:
        providers = [p for p in GPU_PROVIDERS if p in ort_providers] + providers
    else:
        notes.append("no GPU present: CUDA/TensorRT and torch CUDA rows are absent, not zero")
    if REFERENCE_VARIANT not in manifest.variants:
        notes.append(f"the bundle has no {REFERENCE_VARIANT} variant: no reference, so no speed-ups")
    elif run_dir and Path(run_dir).is_dir():
        measurements += [Measurement(REFERENCE_VARIANT, EAGER, device) for device in devices]
    else:
        notes.append(
            f"the reference checkpoint {run_dir!r} is gone, so PyTorch eager rows are absent; "
            "speed-ups are relative to fp32 TorchScript instead"
        )
    for name, variant in manifest.variants.items():
        if "torchscript" in variant.files:
            quantized = variant.precision.startswith("int8")
            measurements += [
                Measurement(name, TORCHSCRIPT, d) for d in devices if not (quantized and d == "cuda")
            ]
            if quantized and gpu:
                notes.append(
                    f"{name}: quantized TorchScript has CPU kernels only, so it has no torch CUDA rows"
                )
        if "onnx" in variant.files:
            measurements += [Measurement(name, ONNXRUNTIME, provider) for provider in providers]
    return measurements, notes


def _job(
    manifest: Manifest,
    measurement: Measurement,
    settings: ModelBenchSettings,
    inputs: str,
    eval_inputs: str | None,
):
    return {
        "runtime": measurement.runtime,
        "device": measurement.device,
        "bundle_dir": str(manifest.bundle_dir),
        "variant": measurement.variant,
        "run_dir": manifest.data["parent"].get("run_dir"),
        "threads": settings.threads,
        "spinning": settings.ort_spinning,
        "malloc": settings.malloc,
        "batch_sizes": list(settings.batch_sizes),
        "warmup": settings.warmup,
        "repeats": settings.repeats,
        "max_seconds": settings.max_seconds,
        "inputs": inputs,
        "eval_inputs": eval_inputs,
    }


def _file_bytes(manifest: Manifest, measurement: Measurement) -> int | None:
    if measurement.runtime == EAGER:
        weights = Path(manifest.data["parent"]["run_dir"]) / "model.safetensors"
        return weights.stat().st_size if weights.is_file() else None
    fmt = "onnx" if measurement.runtime == ONNXRUNTIME else "torchscript"
    return manifest.variant(measurement.variant).files[fmt].bytes


def _accuracy(
    manifest: Manifest,
    measurement: Measurement,
    predictions: list[int] | None,
    data: "ImageSet | None",
    reference: np.ndarray | None,
) -> dict[str, Any]:
    """Re-measured with this runtime on ``--limit`` test images when given, else what export measured."""
    if data is not None and predictions is not None:
        predicted = np.asarray(predictions)
        return {
            "accuracy": float((predicted == data.labels).mean()),
            "top1_agreement": None if reference is None else float((predicted == reference).mean()),
            "accuracy_source": f"re-evaluated by this benchmark on {len(data.labels)} test images, per runtime",
        }
    images = manifest.data.get("evaluation", {}).get("images")
    source = f"manifest: measured by export on {images} test images, per format"
    if measurement.runtime == EAGER:
        accuracy = manifest.data["parent"].get("test_accuracy")
        return {"accuracy": accuracy, "top1_agreement": 1.0, "accuracy_source": source}
    entry = manifest.variant(measurement.variant).entry
    fmt = "onnx" if measurement.runtime == ONNXRUNTIME else "torchscript"
    return {
        "accuracy": entry.get("accuracy_by_format", {}).get(fmt, entry.get("test_accuracy")),
        "top1_agreement": entry.get("top1_agreement_by_format", {}).get(fmt, entry.get("top1_agreement")),
        "accuracy_source": source,
    }


def achieved_gops(macs: int | None, images_per_s: float) -> float | None:
    """1 MAC = 2 ops; None where the manifest has no MAC count."""
    return None if not macs else 2.0 * float(macs) * images_per_s / 1e9


def _rows(
    manifest: Manifest,
    measurement: Measurement,
    result: WorkerResult,
    peak: dict[str, Any],
    accuracy: dict[str, Any],
) -> list[dict[str, Any]]:
    variant = manifest.variant(measurement.variant)
    macs = variant.entry.get("macs")
    rows = []
    for batch in result.batches:
        gops = achieved_gops(macs, batch["images_per_s"])
        rows.append(
            {
                "variant": measurement.variant,
                "runtime": measurement.runtime,
                "device": result.info.get("device", measurement.device),
                "precision": variant.precision,
                **batch,
                "peak_rss_mb": result.info.get("peak_rss_mb"),
                "baseline_rss_mb": result.info.get("baseline_rss_mb"),
                "torch_imported": result.info.get("torch_imported"),
                "load_s": result.info.get("load_s"),
                "allocator": result.info.get("allocator"),
                "file_bytes": _file_bytes(manifest, measurement),
                "macs": macs,
                "gops": gops,
                "share_of_peak": None if gops is None else share_of_peak(gops, variant.precision, peak),
                **accuracy,
            }
        )
    return rows


def _add_ratios(rows: list[dict[str, Any]]) -> str:
    """Speed-up against the reference (eager FP32 on CPU, else fp32 TorchScript) at each batch size.

    Throughput is batch / p50, so the speed-up is also the ratio of p50 latencies.
    """
    reference_runtime = EAGER if any(row["runtime"] == EAGER for row in rows) else TORCHSCRIPT
    reference = {
        row["batch_size"]: row
        for row in rows
        if row["variant"] == REFERENCE_VARIANT
        and row["runtime"] == reference_runtime
        and row["device"] == "cpu"
    }
    for row in rows:
        base = reference.get(row["batch_size"])
        row["speedup"] = None if base is None else row["images_per_s"] / base["images_per_s"]
        known = base is not None and None not in (base["accuracy"], row["accuracy"])
        row["accuracy_drop_points"] = (base["accuracy"] - row["accuracy"]) * 100.0 if known else None
    return f"{REFERENCE_VARIANT} {reference_runtime} (cpu)"


def _within_budget(row: dict[str, Any], settings: ModelBenchSettings) -> bool:
    drop = row.get("accuracy_drop_points")
    return drop is not None and drop <= settings.max_accuracy_drop + 1e-9


KEY = ("variant", "runtime", "device")


def _cell(rows: list[dict[str, Any]], like: dict[str, Any], batch: int) -> dict[str, Any] | None:
    return next((r for r in rows if r["batch_size"] == batch and all(r[k] == like[k] for k in KEY)), None)


def _latency_and_share(row: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if row is None else {k: row[k] for k in ("p50_ms", "share_of_peak")}


def _label(row: dict[str, Any]) -> str:
    return f"{row['variant']} {row['runtime']} ({row['device']})"


def int8_speed_target(
    rows: list[dict[str, Any]], reference_name: str, settings: ModelBenchSettings
) -> dict[str, Any] | None:
    """The issue's speed figure for this model: the fastest INT8 cell within the accuracy
    budget at the largest batch size, its speed-up over the reference, and beside it the
    batch-1 p50 and share of peak of that cell and of the reference."""
    largest = max(settings.batch_sizes)
    candidates = [
        row
        for row in rows
        if row["batch_size"] == largest
        and row["precision"].startswith("int8")
        and row["speedup"] is not None
        and _within_budget(row, settings)
    ]
    best = max(candidates, key=lambda row: row["speedup"], default=None)
    if best is None:
        return None
    reference = next((row for row in rows if _label(row) == reference_name), None)
    return {
        **{k: best[k] for k in (*KEY, "batch_size", "speedup", "speedup_range", "share_of_peak")},
        "accuracy_drop_points": best["accuracy_drop_points"],
        "batch1": _latency_and_share(_cell(rows, best, 1)),
        "reference_batch1": None if reference is None else _latency_and_share(_cell(rows, reference, 1)),
    }


def summarize(rows: list[dict[str, Any]], reference_name: str, settings: ModelBenchSettings) -> dict:
    """Pareto front and recommendation at the selection batch size, and the figures the
    issue's targets are stated in: best batch-1 latency, best INT8 share of peak."""
    at_batch = [row for row in rows if row["batch_size"] == settings.select_batch]
    reference = next((row for row in at_batch if _label(row) == reference_name), None)
    judged = [row for row in at_batch if row.get("accuracy") is not None]
    front = pareto_front([(row["images_per_s"], row["accuracy"]) for row in judged])
    best = (
        None if reference is None else recommend(at_batch, reference["accuracy"], settings.max_accuracy_drop)
    )
    batch1 = [row for row in rows if row["batch_size"] == 1 and _within_budget(row, settings)]
    fastest1 = min(batch1, key=lambda row: row["p50_ms"], default=None)
    largest = max(settings.batch_sizes)
    int8 = [
        row
        for row in rows
        if row["batch_size"] == largest and row["precision"].startswith("int8") and row["share_of_peak"]
    ]
    top_int8 = max(int8, key=lambda row: row["share_of_peak"], default=None)
    return {
        "batch_size": settings.select_batch,
        "reference": reference_name,
        "reference_accuracy": None if reference is None else reference["accuracy"],
        "max_accuracy_drop_points": settings.max_accuracy_drop,
        "pareto_front": [{k: judged[i][k] for k in KEY} for i in front],
        "recommended": None if best is None else {k: best[k] for k in (*KEY, "images_per_s", "accuracy")},
        "fastest_batch1_within_budget": None
        if fastest1 is None
        else {
            **{k: fastest1[k] for k in (*KEY, "p50_ms", "accuracy_drop_points")},
            "latency_ratio": fastest1["speedup"],
        },
        "best_int8_share_of_peak": None
        if top_int8 is None
        else {k: top_int8[k] for k in (*KEY, "batch_size", "gops", "share_of_peak")},
        "int8_speed_target": int8_speed_target(rows, reference_name, settings),
    }


def _torch_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _settings_doc(settings: ModelBenchSettings) -> dict[str, Any]:
    """The settings plus, in words, how each figure was measured."""
    return {
        **asdict(settings),
        "batch_sizes": list(settings.batch_sizes),
        "timing": "one worker process per variant x runtime; per batch size: the model loaded afresh, "
        "warm-up calls, then back-to-back timed calls (perf_counter) until --repeats or --max-seconds",
        "batch_size_note": "each batch size is timed as a process serving only that size: PyTorch's oneDNN "
        "INT8 convolutions (TorchScript INT8 rows) cache one primitive per layer for the first input shape "
        "they see and rebuild it on every call of another shape, so one module fed mixed batch sizes runs "
        "slower than these rows (the service's TorchScript backend keeps one module per batch size)",
        "throughput": "images/s = batch size / p50 latency",
        "aggregation": f"{settings.rounds} round(s) of the whole matrix; a cell's latencies are the median over "
        "rounds, its speed-up the median of each round's ratio to the same round's reference, "
        "speedup_range their minimum and maximum",
        "gops": "2 x MACs per image x images/s (1 MAC = 2 ops); MACs from the manifest",
        "peak_rss": "VmHWM (peak resident set) of the worker process after timing, runtime library "
        "included; baseline_rss_mb is the same process after importing the runtime, before the model",
        "allocator": "every worker, every runtime alike: "
        + (POLICY if settings.malloc == "retain" else "the C library's default malloc policy")
        + "; each row's allocator field says what its worker actually ran with",
        "thread_policy": f"{settings.threads} intra-op threads for every runtime (torch.set_num_threads, "
        "ORT intra_op_num_threads), 1 inter-op thread, OMP/MKL_NUM_THREADS set alike",
    }


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def _run_matrix(
    manifest: Manifest,
    measurements: list[Measurement],
    settings: ModelBenchSettings,
    data: "ImageSet",
    eval_data: "ImageSet | None",
    peak: dict[str, Any],
    console: Console,
) -> tuple[list[list[dict[str, Any]]], list[dict[str, str]]]:
    """Run every measurement in its own worker, round after round, printing each cell as it lands;
    a failed measurement is recorded with its error and the others still run. Returns each
    round's rows; accuracy is evaluated in the first round only (it cannot change)."""
    rounds: list[list[dict[str, Any]]] = []
    failures: list[dict[str, str]] = []
    reference: np.ndarray | None = None
    accuracy: dict[Measurement, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="slimserve-bench-") as tmp, _progress(console) as progress:
        inputs = save_array(data.images[: max(settings.batch_sizes)], Path(tmp) / "inputs.npy")
        eval_inputs = None if eval_data is None else save_array(eval_data.images, Path(tmp) / "eval.npy")
        cells = len(measurements) * len(settings.batch_sizes)
        task = progress.add_task("benchmarking", total=cells * settings.rounds)
        for round_index in range(settings.rounds):
            rows: list[dict[str, Any]] = []
            for measurement in measurements:
                label = f"{measurement.variant} / {measurement.runtime} / {measurement.device}"
                if settings.rounds > 1:
                    label = f"round {round_index + 1}: {label}"
                progress.update(task, description=label)

                def on_batch(batch: dict[str, Any], label: str = label) -> None:
                    progress.advance(task)
                    progress.console.print(
                        f"  {label:<48} batch {batch['batch_size']:>4}: p50 {batch['p50_ms']:8.3f} ms, "
                        f"{batch['images_per_s']:10.0f} img/s"
                    )

                first = round_index == 0
                job = _job(manifest, measurement, settings, inputs, eval_inputs if first else None)
                result = run_worker(job, on_batch)
                if result.error:
                    failures.append({**asdict(measurement), "round": round_index + 1, "error": result.error})
                    progress.console.print(f"  [red]{label}: {result.error}[/red]")
                    continue
                if measurement not in accuracy:
                    predictions = result.info.get("predictions")
                    if (
                        predictions is not None
                        and reference is None
                        and measurement.variant == REFERENCE_VARIANT
                    ):
                        # Blocks run eager first, so this is eager fp32, or fp32 TorchScript when eager is gone.
                        reference = np.asarray(predictions)
                    accuracy[measurement] = _accuracy(
                        manifest, measurement, predictions, eval_data, reference
                    )
                rows += _rows(manifest, measurement, result, peak, accuracy[measurement])
            rounds.append(rows)
    return rounds, failures


MEDIAN_KEYS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms")


def merge_rounds(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per cell: median latencies over rounds, the ratio's median and range.

    Medians keep p50 <= p90 <= p99 (each holds in every round, and the median is monotone);
    images/s and GOP/s follow from the median p50, as they do within a round.
    """
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for rows in rounds:
        for row in rows:
            key = (row["variant"], row["runtime"], row["device"], row["batch_size"])
            cells.setdefault(key, []).append(row)
    merged = []
    for measured in cells.values():
        row = dict(measured[0])
        for key in MEDIAN_KEYS:
            row[key] = float(np.median([m[key] for m in measured]))
        row["images_per_s"] = row["batch_size"] / (row["p50_ms"] / 1000.0)
        if row["gops"] is not None:
            row["gops"] = achieved_gops(row["macs"], row["images_per_s"])
            shares = [m["share_of_peak"] for m in measured]
            row["share_of_peak"] = None if None in shares else float(np.median(shares))
        row["peak_rss_mb"] = max(m["peak_rss_mb"] for m in measured)
        row["samples"] = sum(m["samples"] for m in measured)
        row["rounds"] = len(measured)
        speedups = [m["speedup"] for m in measured if m["speedup"] is not None]
        row["speedup"] = float(np.median(speedups)) if speedups else None
        row["speedup_range"] = [min(speedups), max(speedups)] if speedups else None
        merged.append(row)
    return merged


def bench_models(
    bundle_dir: Path, out: Path, settings: ModelBenchSettings, console: Console | None = None
) -> dict[str, Any]:
    """Run the matrix, write bench-models.json/.md and the plots into ``out``; returns the report."""
    import onnxruntime as ort

    from benchmarks.plots import plot_accuracy_throughput, plot_latency
    from benchmarks.report import int8_target_line, models_markdown, models_table

    console = console or cli_console()
    if settings.select_batch not in settings.batch_sizes:
        raise SlimserveError(
            f"--select-batch {settings.select_batch} is not among --batch-sizes "
            f"{','.join(map(str, settings.batch_sizes))}"
        )
    manifest = read_manifest(bundle_dir)
    machine = machine_info(settings.clock_ghz)
    gpu = bool(machine["gpus"]) or _torch_gpu()
    measurements, notes = plan(manifest, gpu, ort.get_available_providers())
    out.mkdir(parents=True, exist_ok=True)
    max_batch = max(settings.batch_sizes)
    data = load_test_images(manifest, max(max_batch, settings.limit or 0))
    eval_data = None if settings.limit is None else data.head(settings.limit)
    rounds, failures = _run_matrix(
        manifest, measurements, settings, data, eval_data, machine["peak"], console
    )
    if not any(rounds):
        raise SlimserveError(f"every benchmark measurement failed; first error: {failures[0]['error']}")
    # Every round's ratios, each against the same round's reference; the name is the same.
    reference_names = [_add_ratios(rows) for rows in rounds if rows]
    reference_name = reference_names[0]
    rows = merge_rounds(rounds)
    over = max((row["share_of_peak"] or 0.0 for row in rows), default=0.0)
    if over > 1:
        peak = machine["peak"]
        notes.append(
            f"a share of peak reaches {over:.0%}: the cores ran faster than the {peak['clock_ghz']} GHz "
            f"the peak assumes ({peak['clock_source']}); state the real clock with --clock-ghz"
        )
    report = {
        "kind": "slimserve.bench-models",
        "schema_version": 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "bundle": {"dir": str(manifest.bundle_dir), "name": manifest.name, "version": manifest.version},
        # Per image, as the runtimes were fed (N, C, H, W): 224 px photo models time ~60x the pixels of 28 px ones.
        "input_shape": list(manifest.spec.input_shape),
        "machine": machine,
        "settings": _settings_doc(settings),
        "notes": notes,
        "failures": failures,
        "rows": rows,
        "summary": summarize(rows, reference_name, settings),
    }
    json_path = out / "bench-models.json"
    write_json(json_path, report, allow_nan=False)
    plots = [
        plot_latency(report, out / "latency-vs-batch.png"),
        plot_accuracy_throughput(report, out / "accuracy-vs-throughput.png"),
    ]
    report["plots"] = [str(p) for p in plots if p is not None]
    write_json(json_path, report, allow_nan=False)
    (out / "bench-models.md").write_text(models_markdown(report))
    console.print(models_table(report))
    target = int8_target_line(report["summary"])
    console.print(target or "no INT8 cell within the accuracy budget has a speed-up: no INT8 target figure")
    for note in notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    console.print(f"Report: {json_path}, {out / 'bench-models.md'}, plots: {', '.join(report['plots'])}")
    return report
