"""Operating the service: slow and broken clients, overload, SIGTERM under load, a slow
start, and start-up refusals. Every test talks to a real `slimserve serve` (or, for the
slow start, the `bentoml serve` command a container runs) over loopback sockets.
"""

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import bentoml
import httpx
import pytest
from conftest import export_tiny_fp32, free_port, interrupt_group
from test_service import fashion, sample_png  # noqa: F401

from service.config import ServeConfig
from service.launch import server_command, server_env

BUNDLE = "ops-cnn"  # its own bundle name: other modules register theirs in the same store
GUARDS = {
    "SLIMSERVE_HEADER_TIMEOUT_S": "2",
    "SLIMSERVE_MAX_HEADER_BYTES": "8192",
    "SLIMSERVE_MAX_CONNECTIONS": "12",
    "SLIMSERVE_MAX_CONCURRENCY": "2",
}


@pytest.fixture(scope="module")
def bundle(tiny_cnn_run: Path, tmp_path_factory: pytest.TempPathFactory):
    return export_tiny_fp32(tiny_cnn_run, tmp_path_factory, BUNDLE)


@pytest.fixture(scope="module")
def guarded(bundle, tmp_path_factory: pytest.TempPathFactory, start_server):
    log = tmp_path_factory.mktemp("guarded") / "serve.log"
    with start_server(log, {**GUARDS, "SLIMSERVE_BUNDLE": BUNDLE}) as (url, process):
        yield url, process, log


def address(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    return parsed.hostname, parsed.port


def read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or a reset)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def predict_head(length: int, extra: str = "") -> bytes:
    return (
        f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {length}\r\n"
        f"{extra}Connection: close\r\n\r\n"
    ).encode()


# ---------------------------------------------------------------- slow and broken clients


@pytest.mark.http
def test_a_head_sent_one_byte_at_a_time_is_answered_408_and_closed(guarded):
    url, _, _ = guarded
    head = predict_head(100)
    start = time.monotonic()
    with socket.create_connection(address(url), timeout=10) as sock:
        sent = 0
        try:
            for byte in head:  # a byte every 0.25 s: the 2 s deadline passes mid-head
                sock.sendall(bytes([byte]))
                sent += 1
                time.sleep(0.25)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_answer(sock)
    seconds = time.monotonic() - start
    assert sent < len(head)  # the server closed the connection before the head was complete
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {"error": "request head not received within 2 s"}
    assert 1.5 < seconds < 6


@pytest.mark.http
def test_an_idle_connection_is_closed_after_the_header_timeout(guarded):
    url, _, _ = guarded
    start = time.monotonic()
    with socket.create_connection(address(url), timeout=10) as sock:
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 408") and 1.5 < time.monotonic() - start < 6


@pytest.mark.http
def test_an_oversized_head_is_answered_431(guarded):
    url, _, _ = guarded
    with socket.create_connection(address(url), timeout=10) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n" + b"X-Filler: " + b"a" * 20_000)
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"request head larger than 8192 bytes" in answer


@pytest.mark.http
def test_connections_beyond_the_bound_are_refused_at_once_and_the_bound_frees_up(guarded):
    url, _, _ = guarded
    held = [socket.create_connection(address(url), timeout=5) for _ in range(12)]
    try:
        start = time.monotonic()
        with socket.create_connection(address(url), timeout=5) as extra:
            answer = read_answer(extra)
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"too many open connections: the limit is 12 per worker" in answer
        assert time.monotonic() - start < 1.5  # refused at once, not after the header timeout
        held[0].settimeout(0.2)
        with pytest.raises(TimeoutError):  # the connections within the bound are still open
            held[0].recv(1)
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.5)
    assert httpx.get(f"{url}/livez", timeout=5).status_code == 200


# ---------------------------------------------------------------- overload


@pytest.mark.http
def test_overload_beyond_max_concurrency_gets_fast_429_while_livez_answers(guarded, sample_png):  # noqa: F811
    """Two requests hold both slots (SLIMSERVE_MAX_CONCURRENCY=2) by sending half their body;
    a burst of eight more is refused at once, health checks still answer, and the two held
    requests complete once their bodies arrive."""
    url, _, _ = guarded
    half = len(sample_png) // 2
    holders = [socket.create_connection(address(url), timeout=30) for _ in range(2)]
    try:
        for sock in holders:
            sock.sendall(predict_head(len(sample_png)) + sample_png[:half])
        time.sleep(0.5)  # both inside the route, waiting for the rest of their body

        def burst(_: int) -> tuple[int, dict, float]:
            start = time.monotonic()
            answer = httpx.post(f"{url}/predict", content=sample_png,
                                headers={"Content-Type": "image/png"}, timeout=10)  # fmt: skip
            return answer.status_code, answer.json(), time.monotonic() - start

        with ThreadPoolExecutor(8) as pool:
            refused = list(pool.map(burst, range(8)))
        start = time.monotonic()
        live = httpx.get(f"{url}/livez", timeout=5)
        live_seconds = time.monotonic() - start
        for sock in holders:
            sock.sendall(sample_png[half:])
        held = [read_answer(sock) for sock in holders]
    finally:
        for sock in holders:
            sock.close()
    print(
        f"overload: 8 x 429 in at most {max(r[2] for r in refused):.3f} s; /livez 200 in {live_seconds:.3f} s"
    )
    assert [(status, body) for status, body, _ in refused] == [(429, {"error": "Too many requests"})] * 8
    assert max(seconds for _, _, seconds in refused) < 2
    assert live.status_code == 200 and live_seconds < 2
    assert all(answer.startswith(b"HTTP/1.1 200") for answer in held), [a[:100] for a in held]
    after = httpx.post(
        f"{url}/predict", content=sample_png, headers={"Content-Type": "image/png"}, timeout=10
    )
    assert after.status_code == 200


@pytest.mark.http
def test_models_lists_each_variants_canary_outcome(guarded):
    url, _, _ = guarded
    (variant,) = httpx.get(f"{url}/models", timeout=10).json()["variants"]
    canary = variant["canary"]
    assert canary["status"] == "passed" and canary["top1_agreement"] == 1.0 and canary["images"] > 0


# ---------------------------------------------------------------- shutdown


@dataclass
class Upload:
    """One request of the SIGTERM test, as its client saw it.

    ``accepted``: the server answered ``100 Continue`` to the request's ``Expect`` header,
    which uvicorn sends when the application starts reading the body: from then on the
    server owns the request. A request the server never accepted may be refused (connection
    refused, closed or reset before any answer, or an explicit 429/503); an accepted one
    must end in a 200 with predictions, or it is lost.
    """

    started: float
    accepted: float | None = None
    finished: float | None = None
    status: int | None = None
    ok: bool = False
    error: str = ""


def _status(answer: bytes) -> int | None:
    line = answer.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) > 1 and line[1].isdigit() else None


def slow_upload(url: str, body: bytes, pieces: int = 4, pause: float = 0.15) -> Upload:
    """POST one PNG in ``pieces`` with pauses, so that requests are mid-body when SIGTERM comes."""
    upload = Upload(started=time.monotonic())
    try:
        with socket.create_connection(address(url), timeout=60) as sock:
            sock.sendall(predict_head(len(body), "Expect: 100-continue\r\n"))
            first = b""
            while b"\r\n\r\n" not in first:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                first += chunk
            if not first.startswith(b"HTTP/1.1 100"):
                upload.status = _status(first)
                return upload
            upload.accepted = time.monotonic()
            step = -(-len(body) // pieces)
            for offset in range(0, len(body), step):
                sock.sendall(body[offset : offset + step])
                time.sleep(pause)
            answer = first.partition(b"\r\n\r\n")[2] + read_answer(sock)
            upload.finished = time.monotonic()
        upload.status = _status(answer)
        payload = answer.partition(b"\r\n\r\n")[2]
        upload.ok = upload.status == 200 and bool(json.loads(payload)["predictions"])
    except (OSError, ValueError) as exc:
        upload.error = type(exc).__name__
    return upload


@pytest.mark.http
def test_sigterm_under_load_finishes_accepted_requests_and_loses_none(
    bundle,
    sample_png,  # noqa: F811
    tmp_path,
    start_server,
):
    grace = 10
    env = {"SLIMSERVE_BUNDLE": BUNDLE, "SLIMSERVE_GRACEFUL_SHUTDOWN_S": str(grace)}
    with start_server(tmp_path / "serve.log", env) as (url, process):
        uploads: list[Upload] = []
        lock = threading.Lock()
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                upload = slow_upload(url, sample_png)
                with lock:
                    uploads.append(upload)
                if upload.accepted is None:
                    time.sleep(0.05)  # refused: the server is going away; try again shortly

        threads = [threading.Thread(target=client) for _ in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(3)
        sigterm_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace + 20)
        finally:
            exited_after = time.monotonic() - sigterm_at
            stop.set()
            for thread in threads:
                thread.join(timeout=90)
    accepted = [u for u in uploads if u.accepted is not None]
    lost = [u for u in accepted if not u.ok]
    in_flight = [u for u in accepted if u.accepted < sigterm_at and u.ok and u.finished > sigterm_at]
    refused = [u for u in uploads if u.accepted is None]
    counts = {
        "requests": len(uploads), "accepted": len(accepted), "lost": len(lost),
        "in_flight_at_sigterm": len(in_flight), "refused": len(refused),
        "refused_kinds": sorted({u.error or str(u.status) for u in refused}),
        "exit_s": round(exited_after, 2),
    }  # fmt: skip
    print("SIGTERM under load:", counts)
    assert not lost, counts
    assert len(in_flight) >= 4, counts  # the test really caught requests mid-body
    assert all(u.status in (None, 429, 503) for u in refused), counts
    assert process.returncode == 0, counts
    assert exited_after < grace + 15, counts


# ---------------------------------------------------------------- start-up


@pytest.mark.http
def test_readiness_answers_503_promptly_while_the_models_load(bundle, sample_png, tmp_path):  # noqa: F811
    """`bentoml serve` (what a container runs) with a warm-up long enough to watch: /readyz,
    /predict and /models answer 503 at once while loading, /livez 200, then /readyz turns 200."""
    port = free_port()
    config = ServeConfig(bundle=BUNDLE, port=port, workers=1, warmup_runs=150_000)
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "serve.log", "w") as log:
        process = subprocess.Popen(
            server_command(config, "127.0.0.1"), env=server_env(config), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    answers: list[tuple[int, float]] = []
    try:
        deadline = time.monotonic() + 240
        with httpx.Client(timeout=120) as client:
            while time.monotonic() < deadline:
                assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                start = time.monotonic()
                try:
                    status = client.get(f"{url}/readyz").status_code
                except httpx.TransportError:  # nothing listening yet
                    time.sleep(0.2)
                    continue
                answers.append((status, time.monotonic() - start))
                if status == 200:
                    break
                if len(answers) == 3:
                    loading = client.post(f"{url}/predict", content=sample_png,
                                          headers={"Content-Type": "image/png"})  # fmt: skip
                    live = client.get(f"{url}/livez").status_code
                    models = client.get(f"{url}/models")
                time.sleep(0.2)
    finally:
        interrupt_group(process, 40)
    statuses = [status for status, _ in answers]
    assert statuses[-1] == 200, statuses
    waiting = answers[1:-1]  # the first may have waited for the worker's imports
    assert len(waiting) >= 3 and {status for status, _ in waiting} == {503}, statuses
    assert max(seconds for _, seconds in waiting) < 1.0, answers
    assert loading.status_code == 503
    assert loading.json() == {"error": "the models are still loading; retry when /readyz answers 200"}
    assert live == 200
    assert models.status_code == 503 and models.json() == loading.json()  # no empty model list


def _store_copy(bundle, name: str) -> Path:
    """The bundle registered again under another name; returns the fp32 model's store folder."""
    from export.registry import register_bundle
    from slimserve.manifest import read_manifest, write_manifest

    copy = bundle.bundle_dir.parent.parent / name / "v1"
    shutil.copytree(bundle.bundle_dir, copy)
    data = read_manifest(copy).data
    write_manifest(copy, {**data, "name": name})
    register_bundle(read_manifest(copy))
    return Path(bentoml.models.get(f"{name}-fp32:v1").path)


def _serve_cli(bundle_name: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "commands.main", "serve", "--bundle", bundle_name, "--port", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_missing_model_file_refuses_to_start_with_one_line(bundle):
    stored = _store_copy(bundle, "ops-missing")
    (stored / "fp32" / "model.onnx").unlink()
    result = _serve_cli("ops-missing")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert (
        lines[0].startswith("slimserve serve: error: ")
        and "model.onnx is listed in the manifest but missing" in lines[0]
    )


def test_a_model_file_with_the_wrong_hash_refuses_to_start_with_one_line(bundle):
    stored = _store_copy(bundle, "ops-tampered")
    with open(stored / "fp32" / "model.onnx", "ab") as f:
        f.write(b"\0")
    result = _serve_cli("ops-tampered")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "sha256 mismatch" in lines[0]
