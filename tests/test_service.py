"""The BentoML service end to end: a real `slimserve serve` on a loopback port, real PNGs.

One server for the module (cold start is seconds): the tiny CNN is exported through
export's own API, one extra variant ``broken`` is added whose ONNX graph fails for
batches larger than one (a real ONNX Runtime error, to check the 503 path and that the
service stays up), and the bundle is registered in the session's BentoML store.
"""

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from export.pipeline import export_bundle
from export.registry import register_bundle
from export.variants import BUILDERS
from service.batching import MAX_BATCH_COST_RATIO
from service.config import ServeConfig
from service.store import load_variant
from slimserve.errors import SlimserveError
from slimserve.hashing import sha256_file
from slimserve.manifest import read_manifest, write_manifest
from slimserve.runtime import RuntimeOptions, open_runner
from slimserve.runtime.providers import CPU, CUDA, TENSORRT, nvidia_gpu_visible, requested_providers
from slimserve.runtime.torch_runners import TorchScriptRunner
from slimserve.samples import write_pngs
from training.checkpoint import load_checkpoint
from training.datasets import load_data
from training.transforms import eval_transform

REPO = Path(__file__).resolve().parent.parent
BUNDLE = "svc-cnn"
LIMITS = {
    "SLIMSERVE_MAX_BATCH_IMAGES": "4",
    "SLIMSERVE_MAX_BODY_BYTES": "300000",
    "SLIMSERVE_MAX_PIXELS": str(512 * 512),
    "SLIMSERVE_MAX_REQUEST_PIXELS": str(3 * 512 * 512),
    "SLIMSERVE_BODY_IDLE_TIMEOUT_S": "2",
}


def _add_broken_variant(bundle_dir: Path) -> None:
    """fp32's graph plus a Reshape of the logits to (1, classes): fine at batch 1, fails at 2."""
    manifest = read_manifest(bundle_dir)
    fp32 = manifest.variant("fp32")
    model = onnx.load(str(fp32.files["onnx"].verified_path(bundle_dir)))
    output = model.graph.output[0].name
    classes = len(manifest.classes)
    shape = onnx.helper.make_tensor("broken_shape", onnx.TensorProto.INT64, [2], [1, classes])
    model.graph.initializer.append(shape)
    model.graph.node.append(onnx.helper.make_node("Reshape", [output, "broken_shape"], ["broken_logits"]))
    model.graph.output[0].name = "broken_logits"
    (bundle_dir / "broken").mkdir()
    path = bundle_dir / "broken" / "model.onnx"
    onnx.save(model, str(path))
    data = json.loads(json.dumps(manifest.data))
    entry = {k: v for k, v in fp32.entry.items() if k != "files"}
    entry["files"] = {
        "onnx": {"path": "broken/model.onnx", "sha256": sha256_file(path), "bytes": path.stat().st_size}
    }
    data["variants"]["broken"] = entry
    write_manifest(bundle_dir, data)


def _add_nan_variant(bundle_dir: Path) -> None:
    """fp32's graph with its logits multiplied by NaN: loads and warms up (the shape is right),
    then every answer holds NaN, which JSON cannot carry: a real fault inside the route."""
    manifest = read_manifest(bundle_dir)
    fp32 = manifest.variant("fp32")
    model = onnx.load(str(fp32.files["onnx"].verified_path(bundle_dir)))
    output = model.graph.output[0].name
    model.graph.initializer.append(
        onnx.helper.make_tensor("nan", onnx.TensorProto.FLOAT, [1], [float("nan")])
    )
    model.graph.node.append(onnx.helper.make_node("Mul", [output, "nan"], ["nan_logits"]))
    model.graph.output[0].name = "nan_logits"
    (bundle_dir / "nan").mkdir()
    path = bundle_dir / "nan" / "model.onnx"
    onnx.save(model, str(path))
    data = json.loads(json.dumps(manifest.data))
    entry = {k: v for k, v in fp32.entry.items() if k != "files"}
    entry["files"] = {
        "onnx": {"path": "nan/model.onnx", "sha256": sha256_file(path), "bytes": path.stat().st_size}
    }
    data["variants"]["nan"] = entry
    write_manifest(bundle_dir, data)


def export_test_bundle(run: Path, out: Path, name: str):
    """The tiny CNN as fp32 (+ int8) plus the broken and nan variants, registered in the store."""
    variants = [v for v in ("fp32", "int8") if v in BUILDERS]
    manifest = export_bundle(
        run, out=out, name=name, version="v1", variants=variants, limit=300, register=False
    )
    _add_broken_variant(manifest.bundle_dir)
    _add_nan_variant(manifest.bundle_dir)
    manifest = read_manifest(manifest.bundle_dir)
    register_bundle(manifest)
    return manifest


@pytest.fixture(scope="module")
def bundle(tiny_cnn_run: Path, tmp_path_factory: pytest.TempPathFactory):
    return export_test_bundle(tiny_cnn_run, tmp_path_factory.mktemp("bundles"), BUNDLE)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Server:
    def __init__(self, url: str, process: subprocess.Popen, log: Path, cold_start: float) -> None:
        self.url, self.process, self.log, self.cold_start = url, process, log, cold_start
        self.client = httpx.Client(base_url=url, timeout=30)


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory: pytest.TempPathFactory, start_server):
    log = tmp_path_factory.mktemp("server") / "serve.log"
    start = time.perf_counter()
    with start_server(log, {**LIMITS, "SLIMSERVE_BUNDLE": BUNDLE}) as (url, process):
        yield Server(url, process, log, time.perf_counter() - start)


@pytest.fixture(scope="module")
def fashion():
    return load_data("fashion-mnist")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def sample_png(fashion) -> bytes:
    return png_bytes(fashion.test[0][0])


# ---------------------------------------------------------------- happy paths


@pytest.mark.http
def test_startup_banner_shows_url_variants_and_curl(server, bundle):
    text = server.log.read_text()
    assert f"{BUNDLE}:v1 at http://127.0.0.1:" in text
    for variant in bundle.variants:
        assert variant in text
    assert f"curl -F file=@image.png {server.url}/predict" in text


@pytest.mark.http
def test_three_input_styles_agree(server, sample_png, bundle):
    multipart = server.client.post("/predict", files={"file": ("a.png", sample_png, "image/png")})
    raw = server.client.post("/predict", content=sample_png, headers={"Content-Type": "image/png"})
    b64 = server.client.post("/predict", json={"image": base64.b64encode(sample_png).decode()})
    answers = [r.json() for r in (multipart, raw, b64)]
    assert [r.status_code for r in (multipart, raw, b64)] == [200, 200, 200]
    assert answers[0]["predictions"] == answers[1]["predictions"] == answers[2]["predictions"]
    first = answers[0]
    assert first["variant"] == bundle.data["default_variant"]
    assert first["version"] == "v1" and first["bundle"] == BUNDLE
    assert first["backend"] == "onnx" and first["provider"] == CPU
    assert len(first["predictions"]) == 5
    assert set(first["timing"]) == {"preprocess_ms", "model_ms", "total_ms"}
    probabilities = [p["probability"] for p in first["predictions"]]
    assert probabilities == sorted(probabilities, reverse=True)


@pytest.mark.http
def test_top_k_and_unbatched_route(server, sample_png, bundle):
    one = server.client.post(
        "/predict/unbatched?top_k=1", content=sample_png, headers={"Content-Type": "image/png"}
    )
    every = server.client.post("/predict?top_k=50", content=sample_png, headers={"Content-Type": "image/png"})
    assert one.status_code == every.status_code == 200
    assert len(one.json()["predictions"]) == 1
    ranked = every.json()["predictions"]
    assert len(ranked) == len(bundle.classes)  # k is capped at the class count
    assert abs(sum(p["probability"] for p in ranked) - 1.0) < 1e-6
    assert one.json()["predictions"][0] == ranked[0]
    assert {p["label"] for p in ranked} == set(bundle.classes)


@pytest.mark.http
def test_batch_matches_single_predictions(server, fashion):
    pngs = [png_bytes(fashion.test[i][0]) for i in range(3)]
    batch = server.client.post(
        "/predict/batch?top_k=2", files=[("files", (f"{i}.png", p, "image/png")) for i, p in enumerate(pngs)]
    )
    assert batch.status_code == 200
    results = batch.json()["results"]
    singles = [
        server.client.post("/predict?top_k=2", content=p, headers={"Content-Type": "image/png"}).json()
        for p in pngs
    ]
    assert len(results) == 3
    for result, single in zip(results, singles, strict=True):
        assert [p["index"] for p in result["predictions"]] == [p["index"] for p in single["predictions"]]
        for a, b in zip(result["predictions"], single["predictions"], strict=True):
            assert abs(a["probability"] - b["probability"]) < 1e-5
    as_json = server.client.post(
        "/predict/batch", json={"images": [base64.b64encode(p).decode() for p in pngs]}
    )
    assert [r["predictions"][0]["index"] for r in as_json.json()["results"]] == [
        r["predictions"][0]["index"] for r in results
    ]


@pytest.mark.http
def test_variant_selection_and_model_list(server, bundle, sample_png):
    for variant in set(bundle.variants) - {"nan"}:  # nan answers 500 by design
        answer = server.client.post(
            f"/predict?variant={variant}", content=sample_png, headers={"Content-Type": "image/png"}
        )
        assert answer.status_code == 200 and answer.json()["variant"] == variant
    listing = server.client.get("/models").json()
    assert listing["default_variant"] == bundle.data["default_variant"]
    described = {v["variant"]: v for v in listing["variants"]}
    assert set(described) == set(bundle.variants)
    fp32 = described["fp32"]
    assert listing["manifest"] == bundle.data  # once, not once per variant
    assert fp32["entry"]["files"] == bundle.data["variants"]["fp32"]["files"]
    assert all("manifest" not in v for v in listing["variants"])
    assert fp32["tag"] == f"{BUNDLE}-fp32:v1"
    # onnxruntime-gpu lists TensorRT and CUDA on every machine; auto asks for them only where
    # a GPU is visible, and the model list says what was asked for and what runs.
    expected = [TENSORRT, CUDA, CPU] if nvidia_gpu_visible() else [CPU]
    assert fp32["requested"] == expected and fp32["provider"] == fp32["active"][0]
    assert fp32["fell_back"] is (fp32["active"] != expected)
    assert listing["torch_imported"] is False


@pytest.mark.http
def test_models_say_per_variant_whether_the_adaptive_route_batches(server):
    """The start-up measurement behind each decision is in /models: batching is on exactly
    where a batch of max_batch_size cost at most MAX_BATCH_COST_RATIO of as many single calls."""
    listing = server.client.get("/models").json()
    for entry in listing["variants"]:
        decision = entry["batching"]
        if entry["variant"] == "broken":  # its graph fails beyond batch 1
            assert decision == {"enabled": False, "reason": "the model failed on a batch of 32 at start-up"}
            continue
        match = re.fullmatch(r"batch 32 costs ([0-9.]+)x of 32 single calls", decision["reason"])
        assert match, decision
        shown = float(match.group(1))  # rounded to 2 decimals: the exact ratio may sit on either side
        if abs(shown - MAX_BATCH_COST_RATIO) > 0.005:
            assert decision["enabled"] is (shown < MAX_BATCH_COST_RATIO)


@pytest.mark.http
def test_predict_on_a_model_batching_does_not_pay_for_goes_straight_to_the_model(server, sample_png):
    """``broken`` answers a batch of one and fails on any larger one, so 16 concurrent requests
    on /predict all succeed only if none of them was batched with another."""

    def ask(_: int) -> httpx.Response:
        return server.client.post(
            "/predict?variant=broken", content=sample_png, headers={"Content-Type": "image/png"}
        )

    calls_before = _metric(server, 'slimserve_batch_size_count{variant="broken"}')
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(48)))
    assert [a.status_code for a in answers] == [200] * 48
    assert {a.json()["batch_size"] for a in answers} == {1}
    assert _metric(server, 'slimserve_batch_size_count{variant="broken"}') - calls_before == 48


@pytest.mark.http
def test_served_process_never_imports_torch(server):
    """Every process under `slimserve serve` (BentoML's arbiter and workers) is free of libtorch."""
    processes = _descendants(server.process.pid)
    maps = {pid: Path(f"/proc/{pid}/maps").read_text() for pid in processes}
    assert any("libonnxruntime" in text for text in maps.values()), "no worker with ONNX Runtime found"
    for pid, text in maps.items():
        assert "libtorch" not in text, f"process {pid} has loaded torch"


@pytest.mark.http
def test_metrics_include_per_variant_counters_and_latency(server, sample_png):
    server.client.post("/predict?variant=fp32", content=sample_png, headers={"Content-Type": "image/png"})
    text = server.client.get("/metrics").text
    assert 'slimserve_predictions_total{outcome="ok",route="predict",variant="fp32"}' in text
    assert 'slimserve_inference_seconds_bucket{le="0.001",variant="fp32"}' in text
    assert "slimserve_request_seconds_count" in text
    assert "bentoml_service_request_duration_seconds" in text
    assert server.client.get("/readyz").status_code == 200
    assert server.client.get("/livez").status_code == 200


def _metrics(server: "Server") -> dict[str, float]:
    """Every sample line of /metrics: series (name and labels) -> value."""
    lines = server.client.get("/metrics").text.splitlines()
    return {
        line.rpartition(" ")[0]: float(line.rpartition(" ")[2]) for line in lines if line[:1] not in ("#", "")
    }


BENTO_LABELS = 'runner_name="slimserve",service_name="slimserve",service_version="not available"'


@pytest.mark.http
def test_a_prediction_writes_every_series_bentoml_and_slimserve_write(server, sample_png):
    """The routes answer from their own ASGI app, inside BentoML's middlewares: one good and
    one refused request each still move BentoML's HTTP series and slimserve's own by one."""
    before = _metrics(server)
    ok = server.client.post(
        "/predict/unbatched?variant=fp32", content=sample_png, headers={"Content-Type": "image/png"}
    )
    refused = server.client.post(
        "/predict/unbatched?variant=fp32", content=b"x", headers={"Content-Type": "image/png"}
    )
    assert (ok.status_code, refused.status_code) == (200, 400)
    after = _metrics(server)

    def moved(series: str) -> float:
        return after.get(series, 0.0) - before.get(series, 0.0)

    for code in (200, 400):
        labels = f'endpoint="/predict/unbatched",http_response_code="{code}",{BENTO_LABELS}'
        assert moved(f"bentoml_service_request_total{{{labels}}}") == 1
        assert moved(f"bentoml_service_request_duration_seconds_count{{{labels}}}") == 1
        assert moved(f"bentoml_service_request_duration_seconds_sum{{{labels}}}") > 0
    assert after[f'bentoml_service_request_in_progress{{endpoint="/predict/unbatched",{BENTO_LABELS}}}'] == 0

    def stamp(metrics: dict[str, float]) -> float:  # a gauge per worker process (a pid label)
        return max(
            v for k, v in metrics.items() if k.startswith("bentoml_service_last_request_timestamp_seconds{")
        )

    assert stamp(after) > stamp(before)
    for outcome in ("ok", "400"):
        assert (
            moved(
                f'slimserve_predictions_total{{outcome="{outcome}",route="predict_unbatched",variant="fp32"}}'
            )
            == 1
        )
    assert moved('slimserve_request_seconds_count{route="predict_unbatched",variant="fp32"}') == 2
    assert moved('slimserve_inference_seconds_count{variant="fp32"}') == 1  # the refused one never ran


@pytest.mark.http
def test_wrong_methods_are_json_405s_naming_the_allowed_ones(server):
    refused = server.client.get("/predict/batch")
    assert refused.status_code == 405 and refused.headers["allow"] == "POST"
    assert refused.json() == {"error": "method 'GET' not allowed on /predict/batch"}
    models = server.client.post("/models")
    assert models.status_code == 405 and models.headers["allow"] == "GET, HEAD"
    assert server.client.head("/models").status_code == 200


@pytest.mark.http
@pytest.mark.slow
def test_served_predictions_equal_in_process_pytorch_on_100_pngs(server, fashion, tiny_cnn_run, tmp_path):
    """100 real test images as PNG files, sent concurrently so adaptive batching forms real batches."""
    samples = (fashion.test[index] for index in range(100))
    paths = write_pngs(((image, fashion.classes[label]) for image, label in samples), tmp_path)
    checkpoint = load_checkpoint(tiny_cnn_run)
    transform = eval_transform(checkpoint.spec)
    with torch.inference_mode():
        batch = torch.stack([transform(Image.open(p)) for p in paths])
        expected = torch.softmax(checkpoint.model(batch), dim=1).numpy()

    def ask(path: Path) -> dict:
        response = server.client.post(
            "/predict?variant=fp32&top_k=1", content=path.read_bytes(), headers={"Content-Type": "image/png"}
        )
        assert response.status_code == 200, response.text
        return response.json()

    batched_before = _metric(server, 'slimserve_batch_size_sum{variant="fp32"}')
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, paths))
    # Every image went through one model call of the adaptive route exactly once, batched or not.
    assert _metric(server, 'slimserve_batch_size_sum{variant="fp32"}') - batched_before == 100
    served_top1 = np.array([a["predictions"][0]["index"] for a in answers])
    assert np.array_equal(served_top1, expected.argmax(1))
    served_p = np.array([a["predictions"][0]["probability"] for a in answers])
    assert np.abs(served_p - expected.max(1)).max() < 1e-4


def _metric(server: Server, series: str) -> float:
    for line in server.client.get("/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


# ---------------------------------------------------------------- errors


def _truncated_png(fashion) -> bytes:
    data = png_bytes(fashion.test[1][0].resize((200, 200)))
    return data[: len(data) // 2]


def _tiff() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (28, 28)).save(buffer, format="TIFF")
    return buffer.getvalue()


@pytest.mark.http
@pytest.mark.parametrize(
    ("case", "status", "fragment"),
    [
        ("empty", 400, "zero bytes"),
        ("not-an-image", 400, "not a readable"),
        ("tiff", 400, "not a readable PNG, JPEG, WebP, BMP or GIF"),
        ("truncated", 400, "truncated"),
        ("bad-base64", 400, "not valid base64"),
        ("json-list", 400, "must be an object"),
        ("too-many-pixels", 413, "limit is 262144"),
        ("body-too-large", 413, "request body too large"),
        ("wrong-content-type", 415, "unsupported content type 'text/plain'"),
        ("unknown-model", 404, "unknown model 'nope'; loaded: "),
        ("batch-too-large", 413, "limit is 4"),
        ("bad-top-k", 400, "top_k must be"),
        ("misspelt-option", 400, "unknown parameter 'model'; accepted: variant, top_k"),
        ("misspelt-json-field", 400, "unknown parameter 'topk'"),
        ("two-files-to-predict", 400, "exactly one image"),
    ],
)
def test_errors_are_json_objects_with_the_right_status(server, fashion, sample_png, case, status, fragment):
    png = {"Content-Type": "image/png"}
    requests = {
        "empty": lambda: server.client.post("/predict", content=b"", headers=png),
        "not-an-image": lambda: server.client.post("/predict", content=b"hello world", headers=png),
        "tiff": lambda: server.client.post("/predict", files={"file": ("a.tif", _tiff(), "image/tiff")}),
        "truncated": lambda: server.client.post("/predict", content=_truncated_png(fashion), headers=png),
        "bad-base64": lambda: server.client.post("/predict", json={"image": "%%% not base64"}),
        "json-list": lambda: server.client.post("/predict", json=["a"]),
        "too-many-pixels": lambda: server.client.post(
            "/predict", content=png_bytes(Image.new("L", (600, 600))), headers=png
        ),
        "body-too-large": lambda: server.client.post("/predict", content=os.urandom(400_000), headers=png),
        "wrong-content-type": lambda: server.client.post(
            "/predict", content=b"hi", headers={"Content-Type": "text/plain"}
        ),
        "unknown-model": lambda: server.client.post("/predict?variant=nope", content=sample_png, headers=png),
        "batch-too-large": lambda: server.client.post(
            "/predict/batch", files=[("files", (f"{i}.png", sample_png, "image/png")) for i in range(5)]
        ),
        "bad-top-k": lambda: server.client.post("/predict?top_k=zero", content=sample_png, headers=png),
        "misspelt-option": lambda: server.client.post("/predict?model=fp32", content=sample_png, headers=png),
        "misspelt-json-field": lambda: server.client.post(
            "/predict", json={"image": base64.b64encode(sample_png).decode(), "topk": 2}
        ),
        "two-files-to-predict": lambda: server.client.post(
            "/predict",
            files=[("a", ("a.png", sample_png, "image/png")), ("b", ("b.png", sample_png, "image/png"))],
        ),
    }
    response = requests[case]()
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}
    assert fragment in body["error"]


@pytest.mark.http
def test_streamed_body_over_limit_is_cut_off_with_413(server):
    """No Content-Length (chunked upload): the middleware counts bytes as they arrive."""

    def chunks():
        for _ in range(40):
            yield b"\0" * 10_000

    response = server.client.post("/predict", content=chunks(), headers={"Content-Type": "image/png"})
    assert response.status_code == 413
    assert response.json() == {"error": "request body too large: the limit is 300000 bytes"}


@pytest.mark.http
def test_model_failure_is_503_and_service_stays_up(server, sample_png):
    files = [("files", (f"{i}.png", sample_png, "image/png")) for i in range(2)]
    failed = server.client.post("/predict/batch?variant=broken", files=files)
    assert failed.status_code == 503
    assert failed.json()["error"].startswith("model broken failed: ")
    again = server.client.post(
        "/predict?variant=broken", content=sample_png, headers={"Content-Type": "image/png"}
    )
    assert again.status_code == 200 and again.json()["variant"] == "broken"
    assert server.process.poll() is None


@pytest.mark.http
def test_unexpected_error_is_json_500_with_a_logged_counted_request_id(server, sample_png):
    before = _metric(
        server, 'slimserve_predictions_total{outcome="500",route="predict_unbatched",variant="nan"}'
    )
    failed = server.client.post(
        "/predict/unbatched?variant=nan", content=sample_png, headers={"Content-Type": "image/png"}
    )
    assert failed.status_code == 500
    body = failed.json()
    request_id = body["request_id"]
    assert failed.headers["x-request-id"] == request_id and request_id in body["error"]
    assert "Traceback" not in failed.text
    after = _metric(
        server, 'slimserve_predictions_total{outcome="500",route="predict_unbatched",variant="nan"}'
    )
    assert after - before == 1
    deadline = time.monotonic() + 10
    while f"(request id {request_id})" not in server.log.read_text():
        assert time.monotonic() < deadline, "the request id never reached the log"
        time.sleep(0.2)
    assert "ValueError" in server.log.read_text()  # the traceback is in the log, not the answer
    ok = server.client.post("/predict/unbatched", content=sample_png, headers={"Content-Type": "image/png"})
    assert ok.status_code == 200


@pytest.mark.http
def test_unknown_paths_share_one_metrics_label(server):
    for index in range(5):
        assert server.client.get(f"/no/such/path/{index}").status_code == 404
    assert server.client.get("/no/such/path/x").json() == {
        "error": "no route '/no/such/path/x'; see POST /predict, /predict/unbatched, /predict/batch; GET /models, /ui (upload page), / (API docs)"
    }
    text = server.client.get("/metrics").text
    assert "/no/such/path" not in text
    assert 'endpoint="other"' in text
    assert 'endpoint="/predict"' in text


@pytest.mark.http
def test_a_second_server_on_the_same_bentoml_home_leaves_the_first_ones_metrics_alive(
    server, sample_png, start_server, tmp_path
):
    series = 'slimserve_predictions_total{outcome="ok",route="predict_unbatched",variant="fp32"}'
    home = Path(os.environ["BENTOML_HOME"])
    folders_before = set(home.glob("prometheus_multiproc_*"))  # the first server's, and any a killed one left
    with start_server(
        tmp_path / "second.log", {**LIMITS, "SLIMSERVE_BUNDLE": BUNDLE, "SLIMSERVE_VARIANTS": "fp32"}
    ) as (
        url,
        _,
    ):
        before = _metric(server, series)
        for _ in range(3):
            server.client.post(
                "/predict/unbatched?variant=fp32", content=sample_png, headers={"Content-Type": "image/png"}
            )
        assert _metric(server, series) - before == 3  # the first server's /metrics still moves
        assert httpx.get(f"{url}/metrics", timeout=30).status_code == 200
    # The second server's folder is gone with it; the first one's remains.
    assert set(home.glob("prometheus_multiproc_*")) == folders_before


# ---------------------------------------------------------------- providers and backends (in process)


def test_config_from_environment_round_trips_and_rejects_bad_values():
    config = ServeConfig.from_env(
        {"SLIMSERVE_WORKERS": "2", "SLIMSERVE_STRICT": "yes", "SLIMSERVE_VARIANTS": "a, b"}
    )
    assert config.strict and config.variant_list == ["a", "b"] and config.worker_count == 2
    assert config.thread_count == max(1, len(os.sched_getaffinity(0)) // 2)
    assert ServeConfig.from_env(config.to_env()) == config
    for variable, value, message in [
        ("SLIMSERVE_PORT", "x", "SLIMSERVE_PORT must be a whole number"),
        ("SLIMSERVE_STRICT", "maybe", "SLIMSERVE_STRICT must be true or false"),
        ("SLIMSERVE_PROVIDERS", "rocm", "providers must be one of auto, cpu, cuda, tensorrt"),
        ("SLIMSERVE_MAX_BATCH_SIZE", "0", "SLIMSERVE_MAX_BATCH_SIZE must be at least 1"),
    ]:
        with pytest.raises(SlimserveError, match=message):
            ServeConfig.from_env({variable: value})


def test_provider_preference_and_explicit_choices():
    everything = [TENSORRT, CUDA, CPU]
    assert requested_providers("auto", everything, gpu_visible=True) == everything
    assert requested_providers("auto", [CUDA, CPU], gpu_visible=True) == [CUDA, CPU]
    assert requested_providers("auto", [CPU], gpu_visible=True) == [CPU]
    assert requested_providers("auto", everything, gpu_visible=False) == [CPU]
    assert requested_providers("cpu", everything) == [CPU]
    assert requested_providers("cuda", everything) == [CUDA, CPU]
    with pytest.raises(SlimserveError, match="no CUDAExecutionProvider"):
        requested_providers("cuda", [CPU])


def test_gpu_visibility_follows_device_nodes_and_cuda_visible_devices(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    (tmp_path / "nvidiactl").touch()  # the control node alone: driver installed, no GPU passed in
    assert not nvidia_gpu_visible(tmp_path)
    (tmp_path / "nvidia0").touch()
    assert nvidia_gpu_visible(tmp_path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert not nvidia_gpu_visible(tmp_path)
    wsl = tmp_path / "wsl"
    wsl.mkdir()
    (wsl / "dxg").touch()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert nvidia_gpu_visible(wsl)


def test_silent_cuda_fallback_is_detected_and_strict_refuses(bundle):
    import onnxruntime

    assert CUDA in onnxruntime.get_available_providers(), "this check needs onnxruntime-gpu installed"
    path = bundle.variant("fp32").files["onnx"].verified_path(bundle.bundle_dir)
    cuda = open_runner("onnx", path, RuntimeOptions(label="t", providers="cuda", threads=1, strict=False))
    assert cuda.providers.requested == [CUDA, CPU]
    assert cuda.providers.active == [CPU] and cuda.providers.fell_back
    cpu = open_runner("onnx", path, RuntimeOptions(label="t", providers="cpu", threads=1, strict=True))
    assert cpu.describe()["provider"] == CPU and not cpu.providers.fell_back
    with pytest.raises(SlimserveError, match="strict mode: t: asked ONNX Runtime for CUDAExecutionProvider"):
        open_runner("onnx", path, RuntimeOptions(label="t", providers="cuda", threads=1, strict=True))


def test_torchscript_backend_agrees_with_onnx(bundle, fashion):
    from service.preprocess import Preprocessor

    config = ServeConfig(backend="torchscript", providers="cpu", threads=1)
    stored = Path(__import__("bentoml").models.get(f"{BUNDLE}-fp32:v1").path)
    ts = load_variant("fp32", f"{BUNDLE}-fp32:v1", stored, config)
    assert isinstance(ts.backend, TorchScriptRunner) and ts.backend.describe()["provider"] == "torch-cpu"
    assert ts.backend.describe()["allocator"].startswith("glibc mallopt")
    onnx_variant = load_variant("fp32", f"{BUNDLE}-fp32:v1", stored, ServeConfig(providers="cpu", threads=1))
    batch = Preprocessor(bundle.spec).batch([fashion.test[i][0] for i in range(16)])
    assert np.abs(ts.backend.run(batch) - onnx_variant.backend.run(batch)).max() < 1e-4
    assert not ts.backend.describe()["module_per_batch_size"]  # fp32: one module for every size


def test_torchscript_int8_keeps_one_module_per_batch_size(bundle, fashion):
    """oneDNN's INT8 convolutions cache a primitive for the first input shape only, so each
    batch size the service sees gets its own module, loaded from the bytes read at start-up."""
    from service.preprocess import Preprocessor

    config = ServeConfig(backend="torchscript", providers="cpu", threads=1)
    stored = Path(__import__("bentoml").models.get(f"{BUNDLE}-int8:v1").path)
    backend = load_variant("int8", f"{BUNDLE}-int8:v1", stored, config).backend
    assert backend.describe()["module_per_batch_size"]
    batch = Preprocessor(bundle.spec).batch([fashion.test[i][0] for i in range(4)])
    together = backend.run(batch)
    one_by_one = np.concatenate([backend.run(batch[i : i + 1]) for i in range(4)])
    assert np.abs(together - one_by_one).max() < 1e-5
    assert set(backend._modules) == {1, 4}  # the warm-up's size, then this batch's
    assert backend._modules[1] is backend.module and backend._modules[4] is not backend.module


def test_tampered_model_file_is_refused(bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle.bundle_dir, copy)
    with open(copy / "fp32" / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(SlimserveError, match="sha256 mismatch"):
        load_variant("fp32", "x", copy, ServeConfig(providers="cpu"))


def test_serve_cli_unknown_bundle_is_one_line(bundle):
    result = subprocess.run(
        [sys.executable, "-m", "commands.main", "serve", "--bundle", "nope", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no bundle 'nope' in the model store" in lines[0]


# ---------------------------------------------------------------- Bento


@pytest.mark.slow
def test_bentoml_build_references_the_models_and_writes_a_gpu_ready_dockerfile(bundle, tmp_path):
    """`bentoml build` offline; Docker cannot run here, so the check stops at the Dockerfile."""
    env = {**os.environ, "SLIMSERVE_BUNDLE": BUNDLE, "SLIMSERVE_VARIANTS": "fp32"}
    bentoml_cli = [sys.executable, "-m", "bentoml"]
    built = subprocess.run(
        [*bentoml_cli, "build", "-f", str(REPO / "bentofile.yaml"), str(REPO), "-o", "tag"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    info = json.loads(
        subprocess.run(
            [*bentoml_cli, "get", tag, "-o", "json"], env=env, capture_output=True, text=True, check=True
        ).stdout
    )
    assert [m["tag"] for m in info["services"][0]["models"]] == [f"{BUNDLE}-fp32:v1"]
    assert {e["name"]: e["value"] for e in info["envs"]}["BENTOML_DO_NOT_TRACK"] == "true"

    bento_dir = Path(os.environ["BENTOML_HOME"]) / "bentos" / "slimserve" / tag.split(":")[1]
    dockerfile = (bento_dir / "env" / "docker" / "Dockerfile").read_text()
    assert "ENV NVIDIA_VISIBLE_DEVICES=$NVIDIA_VISIBLE_DEVICES" in dockerfile
    assert "ARG NVIDIA_DRIVER_CAPABILITIES=compute,utility" in dockerfile
    requirements = (bento_dir / "env" / "python" / "requirements.txt").read_text()
    assert "onnxruntime-gpu[cuda,cudnn]==1.31.1" in requirements and "nvidia-cublas" in requirements
    assert "torch" not in requirements and "onnx==" not in requirements
    packaged = {p.relative_to(bento_dir / "src").parts[0] for p in (bento_dir / "src").rglob("*.py")}
    assert packaged == {"service", "slimserve"}  # no training or export code in the Bento

    archive = tmp_path / "slimserve.bento"
    subprocess.run([*bentoml_cli, "export", tag, str(archive)], env=env, check=True, capture_output=True)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert f"./models/{BUNDLE}-fp32/v1/fp32/model.onnx" in names
    assert f"./models/{BUNDLE}-fp32/v1/manifest.json" in names


def test_serve_cli_strict_refuses_a_silent_cuda_fallback(bundle):
    env = {**os.environ, "SLIMSERVE_BUNDLE": BUNDLE, "SLIMSERVE_VARIANTS": "fp32"}
    result = subprocess.run(
        [sys.executable, "-m", "commands.main", "serve", "--providers", "cuda", "--strict", "--port", "1"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "slimserve serve: error: strict mode: svc-cnn-fp32:v1: asked ONNX Runtime for CUDA"
    )
