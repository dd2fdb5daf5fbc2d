"""Keep-alive connections spread over the workers (service.balance): the shares table, a
real two-worker server rebalancing connections that all landed on one worker, and
`slimserve bench burst`, which shows how a burst of connections splits."""

import http.client
import json
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import psutil
import pytest
from conftest import export_tiny_fp32
from test_service import fashion, sample_png  # noqa: F401

from commands.main import main
from service.balance import ConnectionShares, allowance, join

BUNDLE = "balance-cnn"  # its own bundle name: other modules register theirs in the same store
CONNECTIONS = 12


# ---------------------------------------------------------------- the shares table


def test_the_allowance_is_the_ceiling_of_a_share_plus_a_quarter_of_one():
    assert allowance(32, 2) == 20  # a burst's 32/0 or 26/6 is undone; 20/12 stays as it landed
    assert allowance(12, 2) == 7
    assert allowance(10, 2) == 6
    assert allowance(3, 2) == 2
    assert allowance(2, 2) == 1  # two connections on one worker of two: one moves
    assert allowance(1, 2) == 1


def test_a_worker_is_over_its_share_only_beyond_its_allowance(tmp_path: Path):
    first, second = (ConnectionShares(tmp_path / "table", index, 2) for index in (0, 1))
    second.publish(2)
    assert first.over_share(8)  # 10 open: the allowance is 6
    second.publish(4)
    assert not first.over_share(6)  # 10 open, 6 / 4
    assert not second.over_share(4)
    second.publish(0)
    assert first.over_share(2) and not first.over_share(1)  # 2 open, allowance 1


def test_connections_told_to_close_no_longer_count(tmp_path: Path):
    first, second = (ConnectionShares(tmp_path / "table", index, 2) for index in (0, 1))
    second.publish(2)
    assert first.over_share(6)  # 8 open: the allowance is 5
    first.closing = 3  # three of its six answers said `connection: close`: 3 stay, 3 elsewhere
    assert not first.over_share(6)  # the table holds 3 + 2: the allowance of 5 is 3
    assert not second.over_share(2)


def test_the_last_worker_out_removes_the_table(tmp_path: Path):
    path = tmp_path / "table"
    first, second = (ConnectionShares(path, index, 2) for index in (0, 1))
    first.publish(3)
    second.close()
    assert path.exists()
    first.close()
    assert not path.exists()


def test_no_table_outside_a_worker_or_for_a_single_worker():
    assert join(None, 2) is None  # the arbiter, `bentoml build`, a test in process
    assert join(1, 1) is None
    with pytest.raises(ValueError, match="outside"):
        ConnectionShares(Path("/nonexistent"), 2, 2)


# ---------------------------------------------------------------- a real two-worker server


@pytest.fixture(scope="module")
def bundle(tiny_cnn_run: Path, tmp_path_factory: pytest.TempPathFactory):
    return export_tiny_fp32(tiny_cnn_run, tmp_path_factory, BUNDLE)


def workers_of(server: subprocess.Popen) -> list[psutil.Process]:
    return [
        child
        for child in psutil.Process(server.pid).children(recursive=True)
        if "_bentoml_impl.worker.service" in " ".join(child.cmdline())
    ]


def held(worker: psutil.Process, port: int) -> int:
    """Established connections the worker holds on the service's port."""
    return sum(
        1
        for connection in worker.net_connections(kind="tcp")
        if connection.status == psutil.CONN_ESTABLISHED and connection.laddr.port == port
    )


def wait_until_loaded(port: int, workers: list[psutil.Process]) -> None:
    """Each worker answers /readyz 200 (the banner needs only one): asked with the other stopped."""
    for ready, stopped in (workers, workers[::-1]):
        stopped.send_signal(signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 60
            while True:
                client = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                client.request("GET", "/readyz", headers={"Connection": "close"})
                if client.getresponse().status == 200:
                    break
                assert time.monotonic() < deadline, f"worker {ready.pid} not ready in 60 s"
                time.sleep(0.2)
        finally:
            stopped.send_signal(signal.SIGCONT)


def all_on_one_worker(
    url: str, server: subprocess.Popen
) -> tuple[list[http.client.HTTPConnection], list[psutil.Process], int]:
    """``CONNECTIONS`` kept-alive connections, every one accepted by the first worker: the
    second is stopped (SIGSTOP) while they are opened, then resumed."""
    port = urlparse(url).port
    workers = workers_of(server)
    assert len(workers) == 2, workers
    wait_until_loaded(port, workers)
    workers[1].send_signal(signal.SIGSTOP)
    try:
        clients = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(CONNECTIONS)]
        for client in clients:
            client.connect()
        deadline = time.monotonic() + 20
        while held(workers[0], port) < CONNECTIONS:
            assert time.monotonic() < deadline, "the first worker did not accept every connection"
            time.sleep(0.05)
    finally:
        workers[1].send_signal(signal.SIGCONT)
    return clients, workers, port


def drive(clients: list[http.client.HTTPConnection], image: bytes, rounds: int) -> int:
    """``rounds`` requests on each connection, in turn; every answer must be a correct 200
    (http.client reconnects after `connection: close`). Returns how many said close."""
    closes = 0
    for _ in range(rounds):
        for client in clients:
            client.request("POST", "/predict", body=image, headers={"Content-Type": "image/png"})
            answer = client.getresponse()
            body = answer.read()
            assert answer.status == 200, body
            assert len(json.loads(body)["predictions"]) == 5
            closes += answer.getheader("connection", "").lower() == "close"
    return closes


@pytest.mark.http
@pytest.mark.parametrize("balanced", [True, False], ids=["balanced", "unbalanced"])
def test_connections_that_all_landed_on_one_worker_are_spread_over_both(
    bundle,
    balanced: bool,
    sample_png: bytes,  # noqa: F811
    tmp_path: Path,
    start_server,
):
    env = {"SLIMSERVE_BUNDLE": BUNDLE, "SLIMSERVE_BALANCE_CONNECTIONS": str(balanced).lower()}
    with start_server(tmp_path / "serve.log", env, workers=2) as (url, server):
        clients, workers, port = all_on_one_worker(url, server)
        arbiter = workers[0].ppid()  # BentoML's, whose pid names the shares table
        closes = drive(clients, sample_png, rounds=10)
        split = sorted(held(worker, port) for worker in workers)
        for client in clients:
            client.close()
    if balanced:
        held_most = allowance(CONNECTIONS, 2)  # 7 of 12
        assert split[1] <= held_most and sum(split) == CONNECTIONS, split
        assert closes >= CONNECTIONS - held_most  # at least five moved; a reconnect may land back
    else:  # without the shares nothing moves them: the test above fails without the mechanism
        assert split == [0, CONNECTIONS], split
        assert closes == 0
    assert not list(Path("/dev/shm").glob(f"slimserve-connections-{arbiter}-*"))  # removed at exit


@pytest.mark.http
def test_bench_burst_reports_how_a_burst_of_connections_split_over_the_workers(
    bundle, tmp_path: Path, start_server, capsys: pytest.CaptureFixture
):
    env = {"SLIMSERVE_BUNDLE": BUNDLE, "SLIMSERVE_BALANCE_CONNECTIONS": "false"}
    with start_server(tmp_path / "serve.log", env, workers=2) as (url, server):
        wait_until_loaded(urlparse(url).port, workers_of(server))
        argv = ["bench", "burst", url, "--connections", "8", "--duration", "2", "--runs", "2"]
        assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "bench-burst.json").read_text())
    assert report["connections"] == 8 and report["path"] == "/predict" and len(report["runs"]) == 2
    for run in report["runs"]:
        # unbalanced, nothing closes: midway every connection is held by one of the two workers
        assert sum(run["split"]) == 8 and 1 <= len(run["split"]) <= 2, run["split"]
        assert run["split"] == sorted(run["split"], reverse=True)
        assert run["errors"] == 0 and run["closes"] == 0
        assert run["requests"] > 8 and run["req_per_s"] > 0 and 0 < run["p50_ms"] <= run["p99_ms"]
    markdown = (tmp_path / "out" / "bench-burst.md").read_text()
    assert "| run | split |" in markdown and report["machine"]["vector_isa"] in markdown
    assert "bench-burst.json" in capsys.readouterr().out


def test_bench_burst_cli_errors_are_one_line(capsys: pytest.CaptureFixture, tmp_path: Path):
    assert main(["bench", "burst", "http://192.0.2.1:3000", "--out", str(tmp_path)]) == 1
    assert "only loopback targets" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["bench", "burst", "http://127.0.0.1:3000", "--path", "predict"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "expected a route such as /predict" in err and "Traceback" not in err


def test_a_burst_without_answers_reports_no_percentiles_and_no_split():
    from benchmarks.connection_burst import Run, markdown

    summary = Run(errors=3, elapsed_s=2.0).summary()  # every request failed; no sockets listed
    assert summary["p50_ms"] is None and summary["p99_ms"] is None and summary["req_per_s"] == 0
    machine = {"vector_isa": "AVX2", "logical_cpus": 2}
    report = {"connections": 4, "path": "/predict", "url": "u", "duration_s": 2, "machine": machine}
    assert "| 1 | - | 0 | - | - | 0 | 3 |" in markdown({**report, "runs": [summary]})
    json.dumps(summary, allow_nan=False)  # strict JSON: no NaN stands in for a missing figure
