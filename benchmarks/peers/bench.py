"""Run every peer, one at a time, under the same locust load as `slimserve bench http`.

For each round and each peer (even rounds in reverse order, ``round_order``): check the
framework imports (in the peer's own venv where it has one), start its server on a free
loopback port, wait until it answers a real test image with a top-5, drive it at each
concurrency with ``benchmarks.http_bench.run_locust``, stop it. A peer that does not
import, start or answer is a row with the reason; the other peers still run.
"""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks.http_bench import (
    LOAD_GENERATOR,
    HttpBenchSettings,
    free_port,
    run_locust,
    served_variant,
    write_test_images,
)
from benchmarks.machine import machine_info
from benchmarks.peers.model import PeerSettings
from benchmarks.peers.registry import BODY_NOTES, PEER_NAMES, PEERS, Peer, encode_body, predictions
from benchmarks.peers.settings import PeerBenchSettings
from benchmarks.peers.venvs import venv_python
from slimserve.console import cli_console
from slimserve.errors import SlimserveError
from slimserve.manifest import Manifest, read_manifest

REPO_ROOT = Path(__file__).resolve().parents[2]


class PeerFailed(Exception):
    """A peer that could not be measured; the message is the table's reason."""


def interpreter(peer: Peer) -> Path:
    if peer.venv is None:
        return Path(sys.executable)
    python = venv_python(peer.venv)
    if not python.exists():
        raise PeerFailed(f"no {peer.venv} venv at {python.parent.parent}: run with --setup-venvs once")
    return python


def framework_version(peer: Peer, python: Path) -> str:
    """Import the framework in the interpreter that will serve it; its version, or why not."""
    code = f"import importlib.metadata as m, {peer.imports}; print(m.version({peer.distribution!r}))"
    try:
        found = subprocess.run(
            [str(python), "-c", code], capture_output=True, text=True, timeout=120, check=False
        )
    except subprocess.TimeoutExpired:
        raise PeerFailed(f"importing {peer.imports} took over 120 s") from None
    if found.returncode != 0:
        lines = [line for line in found.stderr.splitlines() if line.strip()]
        fix = "run with --setup-venvs" if peer.venv else "pip install -e '.[peers]'"
        raise PeerFailed(
            f"{peer.distribution} does not import ({lines[-1] if lines else 'no output'}); {fix}"
        )
    return found.stdout.strip()


def server_command(
    peer: Peer, python: Path, port: int, bundle_dir: Path, manifest: Manifest, settings: PeerSettings
) -> list[str]:
    common = ["--port", str(port)]
    if peer.name == "starlette":
        return [
            str(python), "-m", peer.module, "--bundle-dir", str(bundle_dir), "--variant", settings.variant,
            "--backend", "onnx", "--workers", str(settings.workers), "--threads", str(settings.threads), *common,
        ]  # fmt: skip
    if peer.distribution == "slimserve":
        # Started the way `slimserve serve` is: from the BentoML model store.
        return [
            str(python), "-m", peer.module, "serve", "--bundle", manifest.name, "--version", manifest.version,
            "--variants", settings.variant, "--backend", "onnx", "--providers", "cpu", "--host", "127.0.0.1",
            "--workers", str(settings.workers), "--threads", str(settings.threads),
            "--max-batch-size", str(settings.max_batch_size), *common,
        ]  # fmt: skip
    command = [str(python), "-m", peer.module, *common, *(["--batched"] if peer.batched else [])]
    if peer.distribution == "nvidia-pytriton":
        command += ["--grpc-port", str(free_port()), "--metrics-port", str(free_port())]
    return command


def probe(url: str, peer: Peer, body: bytes) -> list[dict[str, Any]] | None:
    """POST one real image; its top-5 when the peer answers 200, None while it is not up yet."""
    content_type = "image/png" if peer.suffix == ".png" else "application/json"
    request = urllib.request.Request(
        url + peer.path, data=body, headers={"Content-Type": content_type}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.load(response)
    except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
        return None
    try:
        return predictions(peer.body, answer)
    except (KeyError, IndexError, TypeError, json.JSONDecodeError):
        raise PeerFailed(f"answered a real image without a top-5: {json.dumps(answer)[:200]}") from None


ROOT_ERROR = re.compile(r"\b[A-Z]\w*Error: [^\n\"\\]+")


def _reason(log: Path) -> str:
    """The first ``SomethingError: message`` in the server's log (frameworks wrap the root cause in
    their own exceptions, often escaped inside a log string), else its last line."""
    text = log.read_text(errors="replace").replace("\\n", "\n")
    if found := ROOT_ERROR.search(text):
        return found.group(0).strip()[:300]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (its own session: only what it started), then SIGKILL."""
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):  # workers that outlived their parent
        os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def running_peer(
    peer: Peer,
    command: list[str],
    env: dict[str, str],
    port: int,
    log: Path,
    first_body: bytes,
    timeout: float,
) -> Iterator[tuple[str, float, list[dict[str, Any]]]]:
    """The peer's server from its first correct answer until the block ends; always stopped."""
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT, start_new_session=True
        )
    try:
        start = time.perf_counter()
        while (answer := probe(url, peer, first_body)) is None:
            if process.poll() is not None:
                raise PeerFailed(f"exited with code {process.returncode} before answering: {_reason(log)}")
            if time.perf_counter() - start > timeout:
                raise PeerFailed(f"no answer within {timeout:.0f} s: {_reason(log)}")
            time.sleep(0.5)
        yield url, time.perf_counter() - start, answer
    finally:
        stop(process)


@dataclass
class Bodies:
    """The test images written once as each body format, with the list files locust reads."""

    folder: Path
    images: list[Path]
    lists: dict[str, Path] = field(default_factory=dict)

    def list_file(self, body: str) -> Path:
        if body not in self.lists:
            folder = self.folder / body
            folder.mkdir(parents=True, exist_ok=True)
            paths = []
            for image in self.images:
                path = folder / (image.stem + (".png" if body == "raw" else ".json"))
                path.write_bytes(encode_body(image.read_bytes(), body))
                paths.append(path.resolve())
            self.lists[body] = folder / "images.txt"
            self.lists[body].write_text("\n".join(str(p) for p in paths))
        return self.lists[body]

    def first(self, body: str) -> bytes:
        list_file = self.list_file(body)
        return Path(list_file.read_text().splitlines()[0]).read_bytes()


def default_variant(manifest: Manifest) -> str:
    preferred = manifest.data.get("default_variant")
    return preferred if preferred in manifest.variants else next(iter(manifest.variants))


def peer_settings(bundle_dir: Path, manifest: Manifest, settings: PeerBenchSettings) -> PeerSettings:
    variant = settings.variant or default_variant(manifest)
    files = manifest.variant(variant).files
    if "onnx" not in files:
        raise SlimserveError(f"variant {variant} has no ONNX file; every peer serves the ONNX file")
    cores = len(os.sched_getaffinity(0))
    workers = settings.workers or cores
    return PeerSettings(
        bundle_dir=str(bundle_dir.resolve()),
        variant=variant,
        workers=workers,
        threads=settings.threads or max(1, cores // workers),
        max_batch_size=settings.max_batch_size,
        batch_wait_ms=settings.batch_wait_ms,
    )


def describe(peer: Peer, served: PeerSettings) -> dict[str, Any]:
    """The row's settings: what a reader needs to judge the figure."""
    batching = (
        {"max_batch_size": served.max_batch_size, "max_wait_ms": served.batch_wait_ms}
        if peer.batched
        else None
    )
    if peer.distribution == "slimserve" and peer.batched:
        batching = {"max_batch_size": served.max_batch_size, "max_wait_ms": "adaptive (BentoML)"}
    return {
        "name": peer.name,
        "framework": peer.distribution,
        "front_end": peer.front_end,
        "workers": served.workers,
        "threads": served.threads,
        "batching": batching,
        "body": BODY_NOTES[peer.body],
        "path": peer.path,
    }


def measure(
    peer: Peer,
    round_index: int,
    bundle_dir: Path,
    manifest: Manifest,
    served: PeerSettings,
    bodies: Bodies,
    settings: PeerBenchSettings,
    tmp: Path,
    logs: Path,
    console: Console,
    facts: dict[str, Any],
) -> list[dict[str, Any]]:
    """One round of one peer: one locust row per concurrency; its version and start-up into ``facts``."""
    python = interpreter(peer)
    facts["version"] = framework_version(peer, python)
    port = free_port()
    command = server_command(peer, python, port, bundle_dir, manifest, served)
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, **served.to_env(), "PYTHONPATH": pythonpath}
    log = logs / f"{peer.name}-round{round_index}.log"
    load = HttpBenchSettings(duration_s=settings.duration_s, requests=settings.requests)
    images_file = bodies.list_file(peer.body)
    rows = []
    first = bodies.first(peer.body)
    facts["log"] = str(log)
    with running_peer(peer, command, env, port, log, first, settings.ready_timeout_s) as (
        url,
        ready_s,
        answer,
    ):
        facts.update(ready_s=ready_s, first_answer=answer)
        if peer.distribution == "slimserve":  # whether /predict batches at all, as /models reports it
            facts["batching_decision"] = served_variant(url, served.variant)[1].get("batching")
        for users in settings.concurrency:
            try:
                row = run_locust(peer.name, url, peer.path, images_file, users, load, tmp)
            except SlimserveError as exc:
                raise PeerFailed(f"load test at concurrency {users}: {exc}") from None
            rows.append({"round": round_index, **row})
            console.print(
                f"  round {round_index} {peer.name:<20} x{users:<3} {row['ok_per_s'] or 0:8.1f} req/s, "
                f"p50 {row.get('p50_ms', float('nan')):7.2f} ms, p99 {row.get('p99_ms', float('nan')):7.2f} ms, "
                f"errors {row['errors']}"
            )
    return rows


def round_order(peers: list[Peer], round_index: int) -> list[Peer]:
    """The registry's order in odd rounds, the reverse in even ones.

    One round of every peer takes ~7 minutes, and this VM's speed drifted by 1.4-2x within
    minutes (BENCHMARKS.md), so a fixed order gave the peers run last a different machine from
    the peers run first (mosec-batched and slimserve 4-5 minutes apart) in every round. Reversing
    every other round puts each peer at the same mean position over two rounds, so a steady
    drift cancels in their sums (the classic ABBA counterbalancing); each round's position
    is recorded with its figures.
    """
    return peers if round_index % 2 else peers[::-1]


def summarize(rows: list[dict[str, Any]], concurrency: tuple[int, ...]) -> dict[str, Any]:
    """Per concurrency: requests/s and p99 of every round (the table shows their range)."""
    out: dict[str, Any] = {}
    for level in concurrency:
        at = [row for row in rows if row["concurrency"] == level]
        if at:
            out[str(level)] = {
                "ok_per_s": [row["ok_per_s"] for row in at],
                "p50_ms": [row.get("p50_ms") for row in at],
                "p99_ms": [row.get("p99_ms") for row in at],
                "errors": sum(row["errors"] for row in at),
                "requests": sum(row["requests"] for row in at),
            }
    return out


def bench_peers(
    bundle_dir: Path, out: Path, settings: PeerBenchSettings, console: Console | None = None
) -> dict[str, Any]:
    """Every peer x round x concurrency; writes bench-peers.json/.md and a plot into ``out``."""
    from benchmarks.peers.report import peers_markdown, peers_table, plot_peers
    from benchmarks.report import write_load_report

    console = console or cli_console()
    unknown = sorted(set(settings.peers) - set(PEER_NAMES))
    if unknown:
        raise SlimserveError(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(PEER_NAMES)}")
    if not (bundle_dir / "manifest.json").is_file():
        raise SlimserveError(
            f"{bundle_dir} has no manifest.json; pass bundles/NAME/VERSION from 'slimserve export'"
        )
    manifest = read_manifest(bundle_dir)
    served = peer_settings(bundle_dir, manifest, settings)
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    images = write_test_images(manifest.data, out / "images", settings.image_count)
    bodies = Bodies(out / "bodies", images)
    peers = [peer for peer in PEERS if peer.name in settings.peers]
    info = {peer.name: {**describe(peer, served), "status": "ok", "rounds": []} for peer in peers}
    results: dict[str, list[dict[str, Any]]] = {peer.name: [] for peer in peers}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="slimserve-peers-") as tmp_name:
        for round_index in range(1, settings.rounds + 1):
            for position, peer in enumerate(round_order(peers, round_index), start=1):
                console.print(f"[bold]round {round_index}: {peer.name}[/bold]")
                facts: dict[str, Any] = {"round": round_index, "position": position}
                try:
                    results[peer.name] += measure(
                        peer, round_index, bundle_dir, manifest, served, bodies, settings, Path(tmp_name), logs,
                        console, facts,
                    )  # fmt: skip
                except PeerFailed as exc:
                    info[peer.name].update(
                        status="failed" if not results[peer.name] else "partial", reason=str(exc)
                    )
                    facts["failed"] = str(exc)
                    console.print(f"  [red]{peer.name} failed[/red]: {exc}")
                else:
                    if info[peer.name]["status"] == "failed":  # an earlier round failed, this one did not
                        info[peer.name]["status"] = "partial"
                if "version" in facts:
                    info[peer.name]["version"] = facts.pop("version")
                info[peer.name]["rounds"].append(facts)
    machine = machine_info()
    report = {
        "kind": "slimserve.bench-peers",
        "schema_version": 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "bundle": {"name": manifest.name, "version": manifest.version, "dir": str(bundle_dir)},
        "variant": served.variant,
        "machine": machine,
        "vector_isa": machine["vector_isa"],
        "settings": {
            **{k: v for k, v in asdict(settings).items() if k not in ("peers", "concurrency")},
            "peers": list(settings.peers),
            "concurrency": list(settings.concurrency),
            "workers": served.workers,
            "threads": served.threads,
            "images": len(images),
            "model": "the variant's ONNX file on ONNX Runtime CPU with slimserve's session options "
            "(benchmarks.reference_server.cpu_backend), service.preprocess decode + preprocess, top-5 JSON",
            "load_generator": f"{LOAD_GENERATOR}, one server at a time; each user's first "
            "(connection-opening) request is not counted",
            "requests_per_s": "ok_per_s = successful responses / (last response - first request start)",
        },
        "wall_s": time.perf_counter() - started,
        "peers": info,
        "results": results,
        "summary": {name: summarize(rows, settings.concurrency) for name, rows in results.items()},
    }
    write_load_report(report, out, "peers", plot_peers, peers_markdown, peers_table, console)
    return report
