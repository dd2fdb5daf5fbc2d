"""`slimserve bench peers`: real peer servers on loopback answer like slimserve, and a tiny run reports them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from benchmarks.http_bench import free_port, write_test_images
from benchmarks.peers.bench import (
    _reason,
    peer_settings,
    round_order,
    running_peer,
    server_command,
)
from benchmarks.peers.registry import KSERVE_B64_BATCHED, PEERS, encode_body, predictions
from benchmarks.peers.settings import PeerBenchSettings
from commands.main import main
from slimserve.manifest import Manifest, read_manifest

BUNDLE = "peerscnn"


@pytest.fixture(scope="module")
def bundle(tiny_cnn_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    from export.pipeline import export_bundle

    manifest = export_bundle(
        tiny_cnn_run, out=tmp_path_factory.mktemp("bundles"), name=BUNDLE, version="v1", variants=["fp32"],
        limit=200, register=True, console=Console(quiet=True),
    )  # fmt: skip
    return read_manifest(manifest.bundle_dir)


def in_process_top5(manifest: Manifest, png: bytes) -> list[dict]:
    """The service's own path, in this process: its backend class, preprocessing and top-k."""
    from service.preprocess import Preprocessor, decode_image
    from slimserve.runtime import RuntimeOptions, open_runner
    from slimserve.topk import top_k

    path = manifest.variant("fp32").files["onnx"].verified_path(manifest.bundle_dir)
    backend = open_runner("onnx", path, RuntimeOptions(threads=1, providers="cpu", strict=True, label="test"))
    logits = backend.run(Preprocessor(manifest.spec)(decode_image(png, 4096 * 4096)))
    return top_k(logits[0], 5, manifest.classes)


@pytest.mark.http
@pytest.mark.slow
@pytest.mark.parametrize("name", ["starlette", "mosec", "mosec-batched"])
def test_peer_server_answers_a_real_png_with_slimserves_top5(bundle: Manifest, name: str, tmp_path: Path):
    peer = next(p for p in PEERS if p.name == name)
    served = peer_settings(bundle.bundle_dir, bundle, PeerBenchSettings(workers=1, threads=1))
    png = write_test_images(bundle.data, tmp_path / "images", 1)[0].read_bytes()
    port = free_port()
    command = server_command(peer, Path(sys.executable), port, bundle.bundle_dir, bundle, served)
    env = {**os.environ, **served.to_env()}
    body = encode_body(png, peer.body)
    with running_peer(peer, command, env, port, tmp_path / "server.log", body, 120) as (url, ready_s, answer):
        assert url == f"http://127.0.0.1:{port}" and ready_s > 0
    expected = in_process_top5(bundle, png)
    assert len(answer) == 5
    assert [p["label"] for p in answer] == [p["label"] for p in expected]
    np.testing.assert_allclose(
        [p["probability"] for p in answer], [p["probability"] for p in expected], rtol=1e-5
    )


@pytest.mark.http
@pytest.mark.slow
def test_tiny_peer_run_writes_rows_and_reports_a_peer_that_does_not_import(
    bundle: Manifest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # A real venv without PyTriton in it: the peer must fail to import and still be a row.
    venvs = tmp_path / "venvs"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venvs / "pytriton")], check=True)
    monkeypatch.setenv("SLIMSERVE_PEER_VENVS", str(venvs))
    out = tmp_path / "out"
    argv = ["bench", "peers", str(bundle.bundle_dir), "--peers", "starlette,mosec,pytriton", "--rounds", "1"]
    argv += ["--concurrency", "1,4", "--duration", "3", "--requests", "40", "--image-count", "8"]
    argv += ["--workers", "1", "--threads", "1", "--out", str(out)]
    assert main(argv) == 0
    report = json.loads((out / "bench-peers.json").read_text())
    assert list(report["peers"]) == ["starlette", "mosec", "pytriton"]
    for name in ("starlette", "mosec"):
        info = report["peers"][name]
        assert info["status"] == "ok" and info["workers"] == 1 and info["threads"] == 1
        assert info["version"] and info["batching"] is None
        rows = report["results"][name]
        assert [row["concurrency"] for row in rows] == [1, 4]
        for row in rows:
            assert row["errors"] == 0 and 0 < row["ok"] <= 40 and row["ok_per_s"] > 0
            assert 0 < row["p50_ms"] <= row["p99_ms"]
        assert set(report["summary"][name]) == {"1", "4"}
    triton = report["peers"]["pytriton"]
    assert triton["status"] == "failed" and "No module named 'pytriton'" in triton["reason"]
    assert triton["reason"].endswith("run with --setup-venvs")
    assert report["results"]["pytriton"] == []
    assert [report["peers"][name]["rounds"][0]["position"] for name in report["peers"]] == [1, 2, 3]
    assert report["vector_isa"] == report["machine"]["vector_isa"] != ""
    markdown = (out / "bench-peers.md").read_text()
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in table[1:]] == ["| starlette", "| mosec", "| pytriton"]
    assert "failed: nvidia-pytriton does not import" in table[3] and "mosec 0.9.8" in table[2]
    assert report["vector_isa"] in markdown
    assert Path(report["plots"][0]).read_bytes().startswith(b"\x89PNG")


def test_even_rounds_run_the_peers_in_reverse_so_each_has_the_same_mean_position():
    rounds = [[peer.name for peer in round_order(PEERS, index)] for index in (1, 2, 3, 4)]
    assert rounds[0] == [peer.name for peer in PEERS] == rounds[2]
    assert rounds[1] == rounds[0][::-1] == rounds[3]
    mean_positions = {name: sum(r.index(name) for r in rounds[:2]) / 2 for name in rounds[0]}
    assert len(set(mean_positions.values())) == 1


def test_bodies_round_trip_and_kserve_answers_are_unwrapped():
    body = json.loads(encode_body(b"\x89PNG-bytes", KSERVE_B64_BATCHED))
    assert body["inputs"][0]["shape"] == [1, 1] and body["inputs"][0]["datatype"] == "BYTES"
    answer = {"outputs": [{"data": [json.dumps({"predictions": [{"label": "a"}]})]}]}
    assert predictions(KSERVE_B64_BATCHED, answer) == [{"label": "a"}]


def test_the_reason_is_the_root_error_even_inside_an_escaped_log_string(tmp_path: Path):
    log = tmp_path / "peer.log"
    log.write_text(
        'E1201 stub.cc] "init failed: Traceback:\\n  File x\\nAttributeError: no attribute y\\n"\n;\n'
    )
    assert _reason(log) == "AttributeError: no attribute y"
    log.write_text("starting\nbound to port 1\n")
    assert _reason(log) == "bound to port 1"


def test_unknown_peer_and_missing_bundle_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture):
    assert main(["bench", "peers", str(tmp_path), "--peers", "nginx", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "unknown peer(s) nginx" in err and "Traceback" not in err
    assert main(["bench", "peers", str(tmp_path), "--peers", "mosec", "--out", str(tmp_path)]) == 1
    assert "has no manifest.json" in capsys.readouterr().err
