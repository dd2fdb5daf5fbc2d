"""`slimserve bench http`: locust against the running service, beside a bare reference endpoint.

Each target (the service's adaptive-batching route, its unbatched route, and the bare
Starlette+uvicorn reference this benchmark starts itself) is driven at each concurrency
by a headless locust process, bounded by ``--duration`` and ``--requests``. The
in-process batch-1 figure of the same variant (same threads as one service worker) is
measured in this process. Only loopback targets are accepted: this is a load generator.
"""

import contextlib
import ipaddress
import json
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from benchmarks.machine import machine_info
from benchmarks.settings import HttpBenchSettings  # re-exported for callers
from benchmarks.stats import percentiles
from slimserve.console import cli_console
from slimserve.errors import SlimserveError
from slimserve.local_server import free_port, wait_ready
from slimserve.samples import write_pngs

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
# What drives every target here and in `bench peers` (benchmarks/locustfile.py says why this client).
LOAD_GENERATOR = (
    "locust (a User driving geventhttpclient's HTTPClient, the client under FastHttpUser; headless, one "
    "process on this machine: it shares the CPU with the server), closed loop without think time"
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
READY_TIMEOUT_S = 120.0


def check_loopback(url: str) -> str:
    """Normalised base URL; anything but a loopback http(s) address is refused."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise SlimserveError(f"{url!r} is not an http(s) URL like http://127.0.0.1:3000")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SlimserveError(
            f"refusing to load-test {host}: only loopback targets (127.0.0.1, ::1, localhost)"
        )
    return url.rstrip("/")


def get_json(url: str, timeout: float = 10.0) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.load(response)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SlimserveError(f"cannot reach {url}: {reason}; is the service running?") from None


def collect_images(images_dir: Path, count: int) -> list[Path]:
    if not images_dir.is_dir():
        raise SlimserveError(f"--images {images_dir} is not a folder")
    paths = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise SlimserveError(f"--images {images_dir} has no {', '.join(IMAGE_SUFFIXES)} files")
    return paths[:count]


def write_test_images(manifest: dict[str, Any], folder: Path, count: int) -> list[Path]:
    """Real test images of the bundle's dataset, as the files a client would send: a photo
    folder's own files (JPEGs as the camera wrote them), others as PNGs. The split is the
    one export scored, rebuilt from the parent run's metadata (``training.eval_data``)."""
    from benchmarks.inputs import manifest_run_metadata
    from training.datasets import PhotoFolder, limit_dataset
    from training.eval_data import run_data

    data = run_data(manifest_run_metadata(manifest))
    samples = limit_dataset(data.test, count, 0)
    if isinstance(data.test, PhotoFolder):
        indices = getattr(samples, "indices", range(len(data.test)))
        return copy_photos([data.test.samples[i][0] for i in indices], folder)
    named = ((image, data.classes[label]) for image, label in samples)  # type: ignore[attr-defined]
    return write_pngs(named, folder)


def copy_photos(paths: list[Path], folder: Path) -> list[Path]:
    """The photo files unchanged, numbered in order (two classes may hold the same name)."""
    folder.mkdir(parents=True, exist_ok=True)
    copies = [folder / f"{index}-{path.name}" for index, path in enumerate(paths)]
    for source, copy in zip(paths, copies, strict=True):
        shutil.copyfile(source, copy)
    return copies


def resized_images(paths: list[Path], size: tuple[int, int], folder: Path) -> list[Path]:
    """Each image re-encoded at ``size`` (width, height) as a quality-90 JPEG, EXIF
    orientation applied first, as a phone's 12 MP photo of the same scene would arrive."""
    from PIL import Image, ImageOps

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for index, path in enumerate(paths):
        with Image.open(path) as image:
            upright = ImageOps.exif_transpose(image).convert("RGB")
        target = folder / f"{index}-{path.stem}-{size[0]}x{size[1]}.jpg"
        upright.resize(size, Image.Resampling.BICUBIC).save(target, "JPEG", quality=90)
        out.append(target)
    return out


def run_locust(
    target: str, url: str, path: str, images_file: Path, users: int, settings: HttpBenchSettings, tmp: Path
) -> dict:
    """One headless locust run; returns its summary (bounded by duration and request count)."""
    out = tmp / f"locust-{target}-{users}.json"
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", url,
        "-u", str(users), "-r", str(users), "-t", f"{settings.duration_s:g}s", "--stop-timeout", "5",
        "--only-summary", "--loglevel", "ERROR", "--exit-code-on-error", "0",
        "--slim-path", path, "--slim-images", str(images_file),
        "--slim-max-requests", str(settings.requests), "--slim-out", str(out),
    ]  # fmt: skip
    try:
        finished = subprocess.run(
            command, capture_output=True, text=True, timeout=settings.duration_s + 90, check=False
        )
    except subprocess.TimeoutExpired:
        raise SlimserveError(f"locust did not finish within {settings.duration_s + 90:.0f} s") from None
    if finished.returncode != 0 or not out.is_file():
        lines = [line for line in finished.stderr.splitlines() if line.strip()]
        raise SlimserveError(f"locust failed ({finished.returncode}): {lines[-1] if lines else 'no output'}")
    return summarize_run(json.loads(out.read_text()), users)


def summarize_run(state: dict[str, Any], users: int) -> dict[str, Any]:
    ok = state["latencies_ms"]
    errors = sum(state["errors"].values())
    total = len(ok) + errors
    elapsed = (max(state["ends"]) - min(state["starts"])) if total else 0.0
    summary: dict[str, Any] = {
        "concurrency": users,
        "requests": total,
        "ok": len(ok),
        "errors": errors,
        "errors_by_status": state["errors"],
        "error_rate": errors / total if total else None,
        "elapsed_s": elapsed,
        "requests_per_s": total / elapsed if elapsed else None,
        "ok_per_s": len(ok) / elapsed if elapsed else None,
    }
    if len(ok) >= 2:
        summary.update({f"{k}_ms": v for k, v in percentiles(ok).items()})
        summary["mean_ms"] = sum(ok) / len(ok)
    summary.update(cpu_per_request(state, total))
    return summary


def cpu_per_request(state: dict[str, Any], requests: int) -> dict[str, float]:
    """CPU milliseconds per request the load generator spent, and the whole machine (server,
    load generator, anything else) spent, over the run; the connection-opening requests
    count too, since their work is inside the same readings."""
    cpu = state.get("cpu", {})
    handled = requests + state.get("warmups", 0)
    if not handled or "start" not in cpu or "end" not in cpu:
        return {}
    start, end = cpu["start"], cpu["end"]
    out = {"cpu_ms_load_generator": (end["load_generator_s"] - start["load_generator_s"]) * 1000 / handled}
    if start["machine_s"] is not None and end["machine_s"] is not None:
        out["cpu_ms_machine"] = (end["machine_s"] - start["machine_s"]) * 1000 / handled
    return out


@contextlib.contextmanager
def reference_server(
    bundle_dir: Path, variant: str, backend: str, workers: int, threads: int
) -> Iterator[tuple[str, float]]:
    """Start the bare reference on a free loopback port; always stopped on exit (by its pid)."""
    port = free_port()
    command = [
        sys.executable, "-m", "benchmarks.reference_server", "--bundle-dir", str(bundle_dir),
        "--variant", variant, "--backend", backend, "--port", str(port), "--workers", str(workers),
        "--threads", str(threads),
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    # The log goes to a file (a pipe nobody reads could fill up and stall the server).
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            try:
                ready_s = wait_ready(url, process, READY_TIMEOUT_S, server="the reference server")
            except SlimserveError as exc:
                log.seek(0)
                lines = [line for line in log.read().splitlines() if line.strip()]
                raise SlimserveError(f"{exc}: {lines[-1] if lines else 'no output'}") from None
            yield url, ready_s
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def resolve_bundle(settings: HttpBenchSettings, described: dict[str, Any]) -> Path:
    """The folder holding the served variant's files: --bundle, else the BentoML store entry it came from."""
    if settings.bundle_dir is not None:
        return settings.bundle_dir
    import bentoml

    try:
        return Path(bentoml.models.get(described["tag"]).path)
    except bentoml.exceptions.NotFound:
        raise SlimserveError(
            f"{described['tag']} is not in this BentoML store; pass --bundle bundles/NAME/VERSION"
        ) from None


def in_process(
    bundle_dir: Path, variant: str, backend_kind: str, threads: int, images: list[Path], repeats: int
) -> dict[str, Any]:
    """Batch-1 latency of the same variant on the service's backend class in this process:
    model only, and decode+preprocess+model through the service's own path (header limits,
    then ``Preprocessor.batch``, which decodes a large JPEG at reduced size: a full decode of
    a 12 MP photo took 213 ms here against the service's 27 ms end to end)."""
    from benchmarks.reference_server import cpu_backend
    from benchmarks.stats import latency_summary
    from benchmarks.timing import time_calls
    from service.preprocess import Preprocessor
    from slimserve.manifest import read_manifest

    manifest = read_manifest(bundle_dir)
    backend = cpu_backend(manifest, variant, backend_kind, threads, f"in-process {variant}")
    preprocess = Preprocessor(manifest.spec)
    payloads = [p.read_bytes() for p in images]
    batches = [preprocess.payload(data, 4096 * 4096) for data in payloads]
    index = {"i": 0}

    def model_only() -> None:
        index["i"] += 1
        backend.run(batches[index["i"] % len(batches)])

    def end_to_end() -> None:
        index["i"] += 1
        batch = preprocess.payload(payloads[index["i"] % len(payloads)], 4096 * 4096)
        backend.run(batch)

    bounds = {"warmup": 20, "repeats": repeats, "max_seconds": 20.0}
    return {
        "backend": backend_kind,
        "threads": threads,
        "model_only": latency_summary(time_calls(model_only, **bounds), 1),
        "decode_preprocess_model": latency_summary(time_calls(end_to_end, **bounds), 1),
    }


def comparisons(results: dict[str, list[dict[str, Any]]], local: dict[str, Any] | None) -> dict[str, Any]:
    """The ratios the targets are stated in, per concurrency."""
    by = {target: {row["concurrency"]: row for row in rows} for target, rows in results.items()}
    out: dict[str, Any] = {
        "batching_gain": {},
        "batching_cpu_saving": {},
        "share_of_reference": {},
        "added_p50_ms_at_concurrency_1": {},
    }
    for level, row in by.get("adaptive", {}).items():
        unbatched = by.get("unbatched", {}).get(level)
        if unbatched and unbatched.get("ok_per_s") and row.get("ok_per_s"):
            out["batching_gain"][level] = row["ok_per_s"] / unbatched["ok_per_s"]
        if unbatched and unbatched.get("cpu_ms_machine") and row.get("cpu_ms_machine"):
            # On a saturated CPU, requests/s follow CPU per request: this is what batching saved.
            out["batching_cpu_saving"][level] = unbatched["cpu_ms_machine"] / row["cpu_ms_machine"]
    for target in ("adaptive", "unbatched"):
        for level, row in by.get(target, {}).items():
            reference = by.get("reference", {}).get(level)
            if reference and reference.get("ok_per_s") and row.get("ok_per_s"):
                out["share_of_reference"].setdefault(target, {})[level] = (
                    row["ok_per_s"] / reference["ok_per_s"]
                )
    if local is not None:
        for target in ("adaptive", "unbatched", "reference"):
            row = by.get(target, {}).get(1)
            if row and "p50_ms" in row:
                out["added_p50_ms_at_concurrency_1"][target] = {
                    "vs_model_only": row["p50_ms"] - local["model_only"]["p50_ms"],
                    "vs_decode_preprocess_model": row["p50_ms"] - local["decode_preprocess_model"]["p50_ms"],
                }
    return out


def bench_http(
    url: str, out: Path, settings: HttpBenchSettings, console: Console | None = None
) -> dict[str, Any]:
    """Run every target x concurrency; write bench-http.json/.md and a plot into ``out``."""
    console = console or cli_console()
    url = check_loopback(url)
    models, described = served_variant(url, settings.variant)
    out.mkdir(parents=True, exist_ok=True)
    if settings.images_dir is not None:
        images = collect_images(settings.images_dir, settings.image_count)
    else:
        images = write_test_images(described["manifest"], out / "images", settings.image_count)
    if settings.image_size is not None:
        images = resized_images(images, settings.image_size, out / "images-resized")
    threads = int(models["threads_per_worker"])
    backend_kind = str(described.get("backend", "onnx"))
    bundle_dir = _local_bundle(settings, described, backend_kind)
    local = None
    if bundle_dir is not None and settings.in_process_repeats > 0:
        with console.status("in-process batch-1 latency"):
            local = in_process(
                bundle_dir, described["variant"], backend_kind, threads, images, settings.in_process_repeats
            )
    with tempfile.TemporaryDirectory(prefix="slimserve-http-") as tmp_name:
        load = _LoadRuns(settings, images, Path(tmp_name), console)
        with load.progress:
            reference = load.drive_all(url, models, described, bundle_dir)
    report = {
        "kind": "slimserve.bench-http",
        "schema_version": 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "url": url,
        "variant": described["variant"],
        "bundle": {"name": described["bundle"], "version": described["version"], "tag": described["tag"]},
        "service": {
            "workers": int(models["workers"]),
            "threads_per_worker": threads,
            "backend": described.get("backend"),
            "provider": described.get("provider"),
            "adaptive_batching": models.get("adaptive_batching"),
            # The start-up decision of the worker that answered /models: whether /predict
            # queues for batches at all on this variant, and the measurement behind it.
            "batching_decision": described.get("batching"),
        },
        "machine": machine_info(),
        "settings": _settings_doc(settings, len(images)),
        "reference": reference,
        "in_process": local,
        "results": load.results,
        "comparisons": comparisons(load.results, local),
    }
    _write_reports(report, out, console)
    return report


def served_variant(url: str, variant: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The service's ``GET /models`` and its entry for ``variant`` (default: the service's
    default variant); refuses anything that is not a slimserve service serving it."""
    models = get_json(f"{url}/models")
    if not isinstance(models, dict) or not {"variants", "default_variant", "workers"} <= models.keys():
        raise SlimserveError(f"{url} does not look like a slimserve service: GET /models lists no variants")
    variant = variant or models["default_variant"]
    described = next((v for v in models["variants"] if v["variant"] == variant), None)
    if described is None:
        known = ", ".join(v["variant"] for v in models["variants"])
        raise SlimserveError(f"the service does not serve variant {variant!r}; it serves {known}")
    # /models lists the bundle's manifest once for all its variants.
    return models, described | {"manifest": models["manifest"]}


def _local_bundle(settings: HttpBenchSettings, described: dict[str, Any], backend_kind: str) -> Path | None:
    """The served variant's folder, when the reference or the in-process figure needs it;
    both run the service's backend, so its file must be there."""
    if not (settings.reference or settings.in_process_repeats > 0):
        return None
    bundle_dir = resolve_bundle(settings, described)
    variant = described["variant"]
    if backend_kind not in described["manifest"]["variants"][variant]["files"]:
        raise SlimserveError(
            f"variant {variant} has no {backend_kind} file, which the reference and in-process figures run; "
            "pass --no-reference --in-process-repeats 0"
        )
    return bundle_dir


class _LoadRuns:
    """Drives each target at every concurrency with locust, under one progress bar;
    ``results`` collects each target's rows in order."""

    def __init__(self, settings: HttpBenchSettings, images: list[Path], tmp: Path, console: Console) -> None:
        self.settings = settings
        self.tmp = tmp
        self.images_file = tmp / "images.txt"
        self.images_file.write_text("\n".join(str(p.resolve()) for p in images))
        self.results: dict[str, list[dict[str, Any]]] = {}
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=True,
        )  # fmt: skip
        targets = 3 if settings.reference else 2
        self.task = self.progress.add_task("load", total=targets * len(settings.concurrency))

    def drive_all(
        self, url: str, models: dict[str, Any], described: dict[str, Any], bundle_dir: Path | None
    ) -> dict[str, Any] | None:
        """The service's adaptive and unbatched routes, then the bare reference on the same
        backend, workers and threads; returns how the reference ran (None without one)."""
        settings = self.settings
        variant = described["variant"]
        self.drive("adaptive", url, f"{settings.adaptive_path}?variant={variant}")
        self.drive("unbatched", url, f"{settings.unbatched_path}?variant={variant}")
        if not settings.reference or bundle_dir is None:
            return None
        workers, threads = int(models["workers"]), int(models["threads_per_worker"])
        backend = str(described.get("backend", "onnx"))
        with reference_server(bundle_dir, variant, backend, workers, threads) as (reference_url, ready_s):
            self.drive("reference", reference_url, "/predict")
        return {"workers": workers, "threads": threads, "backend": backend, "ready_s": ready_s}

    def drive(self, target: str, base: str, path: str) -> None:
        progress = self.progress
        for users in self.settings.concurrency:
            progress.update(self.task, description=f"{target} x{users}")
            row = run_locust(target, base, path, self.images_file, users, self.settings, self.tmp)
            self.results.setdefault(target, []).append(row)
            progress.advance(self.task)
            progress.console.print(
                f"  {target:<10} concurrency {users:>3}: {row['ok_per_s'] or 0:8.1f} req/s, "
                f"p50 {row.get('p50_ms', float('nan')):7.2f} ms, errors {row['errors']}"
            )


def _settings_doc(settings: HttpBenchSettings, images: int) -> dict[str, Any]:
    return {
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
        "concurrency": list(settings.concurrency),
        "images": images,
        "load_generator": f"{LOAD_GENERATOR}; raw image bodies with their content type; "
        "each user's first (connection-opening) request is not counted",
        "requests_per_s": "ok_per_s = successful responses / (last response - first request start)",
    }


def _write_reports(report: dict[str, Any], out: Path, console: Console) -> None:
    """bench-http.json (with the plot's path), bench-http.md and the plot; the table on the terminal."""
    from benchmarks.plots import plot_http
    from benchmarks.report import http_markdown, http_table, write_load_report

    write_load_report(report, out, "http", plot_http, http_markdown, http_table, console)
