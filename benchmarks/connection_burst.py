"""`slimserve bench burst`: keep-alive connections opened at once, how they split over the
service's workers, and what that split costs.

``slimserve bench burst URL`` drives the service at URL (loopback only) the way an asyncio
program, wrk or a proxy's upstream pool does: ``--connections`` kept-alive
connections opened in one burst (aiohttp, one pool, every user's first request started at
once), each posting real test images of the served bundle back to back for ``--duration``
seconds. Midway it counts the established connections each server process holds (psutil,
so the server must run on this machine), and it counts the answers that said ``connection:
close`` (a worker shedding connections above its allowance: ``service.balance``). Each of
``--runs`` runs opens fresh connections, so each is a new draw of the kernel's split.

`slimserve bench http` cannot show this: locust starts its users over a second, and
connections that arrive one by one split about evenly on their own.
"""

import asyncio
import collections
import json
import mimetypes
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import psutil
from rich.console import Console
from rich.markdown import Markdown

from benchmarks.http_bench import check_loopback, served_variant, write_test_images
from benchmarks.machine import machine_info
from benchmarks.settings import BurstBenchSettings
from benchmarks.stats import percentiles
from slimserve.console import cli_console

IMAGES = 16


@dataclass
class Run:
    """One burst: the split it landed in and what the clients saw."""

    latencies_s: list[float] = field(default_factory=list)
    closes: int = 0
    errors: int = 0
    split: list[int] = field(default_factory=list)  # established connections per server process, most first
    elapsed_s: float = 0.0

    def summary(self) -> dict[str, float | int | list[int] | None]:
        """The run's figures; no percentiles (None) from fewer than two answers."""
        latency = percentiles(self.latencies_s) if len(self.latencies_s) > 1 else {}
        return {
            "split": self.split,
            "requests": len(self.latencies_s),
            "req_per_s": len(self.latencies_s) / self.elapsed_s,
            "p50_ms": latency["p50"] * 1000 if latency else None,
            "p99_ms": latency["p99"] * 1000 if latency else None,
            "closes": self.closes,
            "errors": self.errors,
        }


def split_by_process(port: int) -> list[int]:
    """Established connections on ``port`` per process that accepted them (this one's
    client ends excluded), the fullest first."""
    own = os.getpid()
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:  # some systems list other processes' sockets only to root: no split
        return []
    held = collections.Counter(
        connection.pid
        for connection in connections
        if connection.status == psutil.CONN_ESTABLISHED
        and connection.laddr.port == port
        and connection.pid not in (None, own)
    )
    return sorted(held.values(), reverse=True)


async def _user(session: aiohttp.ClientSession, url: str, bodies: list[tuple[bytes, str]],
                offset: int, until: float, run: Run) -> None:  # fmt: skip
    index = offset
    while time.perf_counter() < until:
        body, content_type = bodies[index % len(bodies)]
        index += 1
        start = time.perf_counter()
        try:
            async with session.post(url, data=body, headers={"Content-Type": content_type}) as answer:
                await answer.read()
        except aiohttp.ClientError:  # reset, refused, cut short: the server's fault, counted
            run.errors += 1
            continue
        if answer.status != 200:
            run.errors += 1
            continue
        run.closes += answer.headers.get("Connection", "").lower() == "close"
        run.latencies_s.append(time.perf_counter() - start)


async def burst(url: str, bodies: list[tuple[bytes, str]], connections: int, duration_s: float) -> Run:
    """``connections`` users started at once on one fresh pool of as many connections."""
    run = Run()
    port = urlsplit(url).port or 80
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        until = start + duration_s
        users = [asyncio.create_task(_user(session, url, bodies, i, until, run)) for i in range(connections)]
        await asyncio.sleep(duration_s / 2)
        run.split = await asyncio.to_thread(split_by_process, port)
        await asyncio.gather(*users)
        run.elapsed_s = time.perf_counter() - start
    return run


def request_bodies(url: str, folder: Path) -> list[tuple[bytes, str]]:
    """Real test images of the served bundle with their content types, as ``bench http``'s
    locust users send them (``benchmarks.locustfile``, which this module cannot import:
    gevent patches the standard library when it loads)."""
    _, described = served_variant(url, None)
    paths = write_test_images(described["manifest"], folder, IMAGES)
    return [
        (path.read_bytes(), mimetypes.guess_type(path.name)[0] or "application/octet-stream")
        for path in paths
    ]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(report: dict[str, Any]) -> str:
    """The runs as a Markdown table, with what was driven and the CPU's vector ISA."""
    lines = [
        f"# {report['connections']} connections opened at once, POST {report['path']}",
        "",
        f"{report['url']}, {report['duration_s']:g} s per run, {report['machine']['vector_isa']}, "
        f"{report['machine']['logical_cpus']} logical CPUs; split: established connections per server "
        "process midway, the fullest first.",
        "",
        "| run | split | req/s | p50 ms | p99 ms | connection: close | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for number, row in enumerate(report["runs"], 1):
        lines.append(
            f"| {number} | {'/'.join(map(str, row['split'])) or '-'} | {row['req_per_s']:,.0f} "
            f"| {_ms(row['p50_ms'])} | {_ms(row['p99_ms'])} | {row['closes']} | {row['errors']} |"
        )
    return "\n".join(lines) + "\n"


def bench_burst(
    url: str, out: Path, settings: BurstBenchSettings, console: Console | None = None
) -> dict[str, Any]:
    """``settings.runs`` bursts against the service; bench-burst.json and .md into ``out``."""
    console = console or cli_console()
    url = check_loopback(url)
    with tempfile.TemporaryDirectory(prefix="slimserve-burst-") as folder:
        bodies = request_bodies(url, Path(folder))
    runs = []
    for number in range(1, settings.runs + 1):
        doing = (
            f"run {number}/{settings.runs}: {settings.connections} connections for {settings.duration_s:g} s"
        )
        with console.status(doing):
            run = asyncio.run(burst(url + settings.path, bodies, settings.connections, settings.duration_s))
        runs.append(run.summary())
    report = {
        "kind": "slimserve.bench-burst",
        "schema_version": 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "url": url,
        "path": settings.path,
        "connections": settings.connections,
        "duration_s": settings.duration_s,
        "settings": asdict(settings),
        "machine": machine_info(),
        "runs": runs,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench-burst.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (out / "bench-burst.md").write_text(table)
    console.print(Markdown(table))
    console.print(f"Report: {out / 'bench-burst.json'}, {out / 'bench-burst.md'}")
    return report
