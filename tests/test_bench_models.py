"""`slimserve bench models` on a tiny real bundle, with few iterations (no timed assertions)."""

import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from benchmarks.models_bench import ModelBenchSettings, bench_models
from commands.main import main

ROW_FIELDS = {
    "variant", "runtime", "device", "precision", "batch_size", "samples", "p50_ms", "p90_ms", "p99_ms",
    "mean_ms", "min_ms", "images_per_s", "peak_rss_mb", "baseline_rss_mb", "load_s", "file_bytes", "macs",
    "gops", "share_of_peak", "allocator", "accuracy", "top1_agreement", "accuracy_source", "speedup", "accuracy_drop_points",
}  # fmt: skip
SETTINGS = ModelBenchSettings(
    batch_sizes=(1, 4), warmup=1, repeats=5, max_seconds=2.0, limit=64, select_batch=4, rounds=1
)


@pytest.fixture(scope="module")
def tiny_bundle(tiny_cnn_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.pipeline import export_bundle

    out = tmp_path_factory.mktemp("bundles")
    manifest = export_bundle(
        tiny_cnn_run, out=out, version="v1", variants=["fp32"], limit=200, register=False,
        console=Console(quiet=True),
    )  # fmt: skip
    return manifest.bundle_dir


@pytest.mark.slow
def test_bench_models_writes_complete_sane_report(tiny_bundle: Path, tmp_path: Path):
    argv = ["bench", "models", str(tiny_bundle), "--batch-sizes", "1,4", "--warmup", "1", "--repeats", "5"]
    argv += [
        "--max-seconds",
        "2",
        "--limit",
        "64",
        "--select-batch",
        "4",
        "--rounds",
        "2",
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 0
    report = json.loads((tmp_path / "bench-models.json").read_text())
    assert report["kind"] == "slimserve.bench-models"
    assert report["failures"] == []
    assert report["machine"]["peak"]["formula"].startswith("peak ops/s")
    assert report["settings"]["threads"] >= 1
    assert report["settings"]["malloc"] == "retain" and "mallopt" in report["settings"]["allocator"]
    runtimes = {(row["runtime"], row["device"]) for row in report["rows"]}
    assert {
        ("pytorch-eager", "cpu"),
        ("torchscript", "cpu"),
        ("onnxruntime", "CPUExecutionProvider"),
    } <= runtimes
    assert len(report["rows"]) == len(runtimes) * 2  # batch sizes 1 and 4
    for row in report["rows"]:
        assert row.keys() >= ROW_FIELDS, ROW_FIELDS - row.keys()
        assert 0 < row["min_ms"] <= row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["images_per_s"] > 0 and row["gops"] > 0 and row["share_of_peak"] > 0
        assert row["peak_rss_mb"] >= row["baseline_rss_mb"] > 0
        assert row["torch_imported"] == (row["runtime"] != "onnxruntime")  # ORT memory is ORT's alone
        assert row["file_bytes"] > 0 and row["macs"] > 0
        assert row["allocator"].startswith("glibc mallopt")  # applied in the worker, not just asked for
        assert row["rounds"] == 2 and row["samples"] >= 10
        low, high = row["speedup_range"]
        assert 0 < low <= row["speedup"] <= high
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["top1_agreement"] == 1.0  # every runtime of the fp32 variant agrees with eager fp32
        assert "64 test images" in row["accuracy_source"]
        assert row["accuracy_drop_points"] == pytest.approx(0.0)  # fp32 everywhere: same predictions
    eager = [row for row in report["rows"] if row["runtime"] == "pytorch-eager"]
    assert all(row["speedup"] == 1.0 for row in eager)
    if not report["machine"]["gpus"]:
        assert any("no GPU present" in note for note in report["notes"])
        assert not any("CUDA" in row["device"] or row["device"] == "cuda" for row in report["rows"])
    summary = report["summary"]
    assert summary["batch_size"] == 4 and summary["recommended"] is not None
    assert summary["pareto_front"]
    assert summary["fastest_batch1_within_budget"]["p50_ms"] > 0
    assert summary["best_int8_share_of_peak"] is None  # the tiny bundle has no INT8 variant
    markdown = (tmp_path / "bench-models.md").read_text()
    assert "Recommendation (batch 4)" in markdown
    assert f"({report['machine']['vector_isa']})" in markdown.splitlines()[2]  # the Machine line
    assert "no GPU present" in markdown or report["machine"]["gpus"]
    for plot in report["plots"]:
        assert Path(plot).read_bytes().startswith(b"\x89PNG")
    assert len(report["plots"]) == 2


@pytest.mark.slow
def test_bench_models_without_the_run_folder_uses_torchscript_as_reference(tiny_bundle: Path, tmp_path: Path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    manifest_path = bundle / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["parent"]["run_dir"] = str(tmp_path / "deleted-run")
    manifest_path.write_text(json.dumps(data))
    settings = ModelBenchSettings(
        batch_sizes=(2,), warmup=1, repeats=3, max_seconds=1.0, select_batch=2, rounds=1
    )
    report = bench_models(bundle, tmp_path / "out", settings, console=Console(quiet=True))
    assert not any(row["runtime"] == "pytorch-eager" for row in report["rows"])
    assert any("PyTorch eager rows are absent" in note for note in report["notes"])
    assert report["summary"]["reference"] == "fp32 torchscript (cpu)"
    assert all(row["accuracy_source"].startswith("manifest") for row in report["rows"])


def test_bench_models_cli_rejects_a_missing_bundle(tmp_path: Path, capsys: pytest.CaptureFixture):
    assert main(["bench", "models", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "not a slimserve bundle" in err and "Traceback" not in err


def test_bench_models_cli_rejects_bad_batch_sizes(capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "models", "x", "--batch-sizes", "0,8"])
    assert exit_info.value.code == 2
    assert "positive whole numbers" in capsys.readouterr().err


def _cell(variant, runtime, batch, p50_ms, speedup, drop, share, precision="int8"):
    return {
        "variant": variant, "runtime": runtime, "device": "cpu", "batch_size": batch, "p50_ms": p50_ms,
        "speedup": speedup, "speedup_range": [speedup * 0.9, speedup * 1.1], "accuracy_drop_points": drop,
        "share_of_peak": share, "precision": precision,
    }  # fmt: skip


def test_int8_speed_target_names_the_int8_cell_within_budget_with_both_batch1_latencies():
    from benchmarks.models_bench import int8_speed_target
    from benchmarks.report import int8_target_line

    rows = [
        _cell("fp32", "pytorch-eager", 1, 20.0, 1.0, 0.0, 0.05, precision="fp32"),
        _cell("fp32", "pytorch-eager", 32, 400.0, 1.0, 0.0, 0.08, precision="fp32"),
        _cell("int8", "onnxruntime", 1, 4.0, 5.0, 0.0, 0.02),
        _cell("int8", "onnxruntime", 32, 60.0, 6.7, 0.0, 0.10),
        # Faster, but outside the 0.5-point budget: not the target's figure.
        _cell("int8", "torchscript", 32, 40.0, 10.0, 1.3, 0.15),
    ]
    settings = ModelBenchSettings(batch_sizes=(1, 32), select_batch=32)
    target = int8_speed_target(rows, "fp32 pytorch-eager (cpu)", settings)
    assert (target["runtime"], target["batch_size"], target["speedup"]) == ("onnxruntime", 32, 6.7)
    assert target["batch1"] == {"p50_ms": 4.0, "share_of_peak": 0.02}
    assert target["reference_batch1"] == {"p50_ms": 20.0, "share_of_peak": 0.05}
    line = int8_target_line({"reference": "fp32 pytorch-eager (cpu)", "int8_speed_target": target})
    assert "6.70x" in line and "batch-1 p50 4.00 ms, 2.0% of peak" in line and "20.00 ms" in line
    assert int8_speed_target(rows[:2], "fp32 pytorch-eager (cpu)", settings) is None
