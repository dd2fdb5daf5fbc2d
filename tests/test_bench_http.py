"""`slimserve bench http` against a real `slimserve serve` on loopback, with a small bounded load."""

import json
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console

from benchmarks.http_bench import check_loopback, summarize_run
from commands.main import main
from slimserve.errors import SlimserveError
from slimserve.local_server import free_port

BUNDLE = "benchcnn"
REQUESTS = 40


@pytest.fixture(scope="module")
def bundle(tiny_cnn_run: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    from export.pipeline import export_bundle

    export_bundle(
        tiny_cnn_run, out=tmp_path_factory.mktemp("bundles"), name=BUNDLE, version="v1", variants=["fp32"],
        limit=200, register=True, console=Console(quiet=True),
    )  # fmt: skip


@pytest.fixture(scope="module", params=["onnx", "torchscript"])
def served(bundle: None, request: pytest.FixtureRequest, tmp_path_factory, start_server):
    """The tiny CNN exported, registered and served by `slimserve serve` (one worker) on each backend."""
    log = tmp_path_factory.mktemp("server") / "serve.log"
    env = {"SLIMSERVE_BUNDLE": BUNDLE, "SLIMSERVE_BACKEND": request.param}
    with start_server(log, env) as (url, _process):
        yield url, request.param


@pytest.mark.http
@pytest.mark.slow
def test_bench_http_against_the_service_and_the_reference_reports_zero_errors(served, tmp_path: Path):
    url, backend = served
    argv = ["bench", "http", url, "--concurrency", "1,4", "--duration", "10", "--requests", str(REQUESTS)]
    argv += ["--image-count", "8", "--in-process-repeats", "20", "--out", str(tmp_path)]
    assert main(argv) == 0
    report = json.loads((tmp_path / "bench-http.json").read_text())
    assert set(report["results"]) == {"adaptive", "unbatched", "reference"}
    for target, rows in report["results"].items():
        assert [row["concurrency"] for row in rows] == [1, 4], target
        for row in rows:
            assert row["errors"] == 0 and row["error_rate"] == 0.0, (target, row["errors_by_status"])
            assert 0 < row["ok"] == row["requests"] <= REQUESTS
            assert row["ok_per_s"] > 0
            assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
            # The machine's CPU readings include the load generator's own.
            assert 0 < row["cpu_ms_load_generator"] < row["cpu_ms_machine"]
    assert report["service"]["workers"] == 1 and report["reference"]["workers"] == 1
    # /predict's start-up batching decision is recorded with the figures it explains
    decision = report["service"]["batching_decision"]
    assert set(decision) == {"enabled", "reason"} and "single calls" in decision["reason"]
    # the reference and the in-process figure run the service's own backend
    assert report["service"]["backend"] == report["reference"]["backend"] == backend
    assert report["in_process"]["backend"] == backend and report["in_process"]["model_only"]["p50_ms"] > 0
    comparisons = report["comparisons"]
    assert set(comparisons["batching_gain"]) == {"1", "4"}  # JSON object keys
    assert set(comparisons["batching_cpu_saving"]) == {"1", "4"}
    assert all(saving > 0 for saving in comparisons["batching_cpu_saving"].values())
    assert set(comparisons["share_of_reference"]) == {"adaptive", "unbatched"}
    assert set(comparisons["added_p50_ms_at_concurrency_1"]) == {"adaptive", "unbatched", "reference"}
    sent = sorted((tmp_path / "images").glob("*.png"))
    assert len(sent) == 8 and Image.open(sent[0]).size == (28, 28)  # real Fashion-MNIST test images
    markdown = (tmp_path / "bench-http.md").read_text()
    assert "bare reference" in markdown
    assert (
        f"/predict batches this variant: {'yes' if decision['enabled'] else 'no'} ({decision['reason']})"
        in markdown
    )
    assert Path(report["plots"][0]).read_bytes().startswith(b"\x89PNG")


def test_only_loopback_targets_are_accepted():
    assert check_loopback("http://127.0.0.1:3000/") == "http://127.0.0.1:3000"
    assert check_loopback("http://localhost:3000") == "http://localhost:3000"
    assert check_loopback("http://[::1]:3000") == "http://[::1]:3000"
    for url in ("http://10.0.0.1:3000", "http://example.com", "ftp://127.0.0.1", "127.0.0.1:3000"):
        with pytest.raises(SlimserveError):
            check_loopback(url)


def test_bench_http_cli_errors_are_one_line(capsys: pytest.CaptureFixture, tmp_path: Path):
    assert main(["bench", "http", "http://192.0.2.1:3000", "--out", str(tmp_path)]) == 1
    assert "only loopback targets" in capsys.readouterr().err
    assert main(["bench", "http", f"http://127.0.0.1:{free_port()}", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "is the service running?" in err and "Traceback" not in err


def test_summarize_run_counts_errors_and_rates():
    state = {
        "latencies_ms": [1.0, 2.0, 3.0],
        "errors": {"503": 1},
        "starts": [10.0, 10.5],
        "ends": [11.0, 12.0],
    }
    summary = summarize_run(state, users=2)
    assert summary["requests"] == 4 and summary["ok"] == 3 and summary["error_rate"] == 0.25
    assert "cpu_ms_machine" not in summary  # no readings, no figure
    state["warmups"] = 2
    state["cpu"] = {
        "start": {"load_generator_s": 1.0, "machine_s": 100.0},
        "end": {"load_generator_s": 1.012, "machine_s": 100.03},
    }
    summary = summarize_run(state, users=2)  # 4 counted + 2 connection-opening requests
    assert summary["cpu_ms_load_generator"] == pytest.approx(2.0)
    assert summary["cpu_ms_machine"] == pytest.approx(5.0)
    assert summary["elapsed_s"] == 2.0 and summary["ok_per_s"] == 1.5
    assert summary["p50_ms"] == 2.0
