"""The bad-input suite: over 40 kinds of bad or unusual request against a live server,
each answered with the expected status and message (JSON, never a 5xx), then a valid
image still gets the right answer."""

import base64
import io
import json
import socket
import time
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image
from test_service import LIMITS, Server, export_test_bundle, fashion, png_bytes, sample_png  # noqa: F401

BUNDLE = "bad-input-cnn"  # its own bundle name: test_service registers svc-cnn in the same store

PNG = {"Content-Type": "image/png"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def nested(depth: int) -> bytes:
    return b'{"image": ' + b"[" * depth + b"]" * depth + b"}"


def cases(sample: bytes) -> dict:
    """name -> (method, path, keyword arguments for httpx, expected status, message fragment)."""
    image = b64(sample)
    big = png_bytes(Image.new("L", (500, 500)))
    return {
        "empty-body": ("POST", "/predict", {"content": b"", "headers": PNG}, 400, "zero bytes"),
        "not-an-image": ("POST", "/predict", {"content": b"hello", "headers": PNG}, 400, "not a readable"),
        "tiff": ("POST", "/predict", {"content": encoded(Image.new("L", (8, 8)), "TIFF"), "headers": PNG},
                 400, "not a readable PNG, JPEG, WebP, BMP or GIF"),
        "truncated-png": ("POST", "/predict", {"content": png_bytes(Image.effect_noise((200, 200), 50))[:900],
                                                "headers": PNG}, 400, "truncated"),
        "png-magic-only": ("POST", "/predict", {"content": b"\x89PNG\r\n\x1a\n", "headers": PNG}, 400, "not a readable"),
        "bad-base64": ("POST", "/predict", {"json": {"image": "%%%"}}, 400, "not valid base64"),
        "base64-not-image": ("POST", "/predict", {"json": {"image": b64(b"plain text")}}, 400, "not a readable"),
        "data-url-garbage": ("POST", "/predict", {"json": {"image": "data:image/png;base64,AAAA"}}, 400,
                             "not a readable"),
        "json-list": ("POST", "/predict", {"json": ["a"]}, 400, "must be an object"),
        "json-string": ("POST", "/predict", {"json": "a"}, 400, "must be an object"),
        "json-null": ("POST", "/predict", {"content": b"null", "headers": {"Content-Type": "application/json"}}, 400, "must be an object"),
        "json-invalid": ("POST", "/predict", {"content": b"{", "headers": {"Content-Type": "application/json"}},
                         400, "not valid JSON"),
        "json-not-utf8": ("POST", "/predict", {"content": b'{"image": "\xff"}',
                                                "headers": {"Content-Type": "application/json"}}, 400, "not valid JSON"),
        "json-missing-image": ("POST", "/predict", {"json": {"top_k": 1}}, 400, "needs 'image'"),
        "json-image-number": ("POST", "/predict", {"json": {"image": 5}}, 400, "must be a base64 string"),
        "top-k-1e400": ("POST", "/predict", {"content": b'{"image": "%s", "top_k": 1e400}' % image.encode(),
                                              "headers": {"Content-Type": "application/json"}}, 400, "out of range"),
        "top-k-infinity": ("POST", "/predict", {"content": b'{"image": "%s", "top_k": Infinity}' % image.encode(),
                                                 "headers": {"Content-Type": "application/json"}}, 400,
                           "Infinity is not valid JSON"),
        "top-k-nan": ("POST", "/predict", {"content": b'{"image": "%s", "top_k": NaN}' % image.encode(),
                                            "headers": {"Content-Type": "application/json"}}, 400, "NaN is not valid"),
        "top-k-5000-digits": ("POST", "/predict", {"content": b'{"image": "%s", "top_k": %s}' % (image.encode(), b"9" * 5000),
                                                    "headers": {"Content-Type": "application/json"}}, 400, "longer than"),
        "top-k-5000-digits-query": ("POST", "/predict?top_k=" + "9" * 5000, {"content": sample, "headers": PNG}, 400,
                                    "characters)"),
        "top-k-zero": ("POST", "/predict?top_k=0", {"content": sample, "headers": PNG}, 400, "at least 1"),
        "top-k-negative": ("POST", "/predict?top_k=-3", {"content": sample, "headers": PNG}, 400, "at least 1"),
        "top-k-float": ("POST", "/predict", {"json": {"image": image, "top_k": 2.5}}, 400, "whole number, got 2.5"),
        "top-k-bool": ("POST", "/predict", {"json": {"image": image, "top_k": True}}, 400, "whole number, got True"),
        "top-k-word": ("POST", "/predict?top_k=three", {"content": sample, "headers": PNG}, 400, "whole number"),
        "nested-10000-predict": ("POST", "/predict", {"content": nested(10000),
                                                      "headers": {"Content-Type": "application/json"}}, 400, "nested deeper"),
        "nested-10000-unbatched": ("POST", "/predict/unbatched", {"content": nested(10000),
                                                                  "headers": {"Content-Type": "application/json"}}, 400,
                                   "nested deeper"),
        "nested-10000-batch": ("POST", "/predict/batch", {"content": nested(10000),
                                                          "headers": {"Content-Type": "application/json"}}, 400, "nested deeper"),
        "nested-20": ("POST", "/predict", {"content": nested(20), "headers": {"Content-Type": "application/json"}},
                      400, "nested deeper than 8"),
        "empty-batch": ("POST", "/predict/batch", {"json": {"images": []}}, 400, "the batch is empty"),
        "batch-not-list": ("POST", "/predict/batch", {"json": {"images": image}}, 400, "must be a list"),
        "batch-item-number": ("POST", "/predict/batch", {"json": {"images": [1]}}, 400, "images[0] must be a base64"),
        "batch-too-many": ("POST", "/predict/batch", {"json": {"images": [image] * 5}}, 413, "limit is 4"),
        "batch-pixel-budget": ("POST", "/predict/batch", {"json": {"images": [b64(big)] * 4}}, 413,
                               "1000000 pixels in this request, the limit is 786432"),
        "image-too-many-pixels": ("POST", "/predict", {"content": png_bytes(Image.new("L", (600, 600))), "headers": PNG},
                                  413, "limit is 262144"),
        "body-too-large": ("POST", "/predict", {"content": b"\0" * 400_000, "headers": PNG}, 413, "request body too large"),
        "unknown-variant": ("POST", "/predict?variant=nope", {"content": sample, "headers": PNG}, 404, "unknown model 'nope'"),
        "huge-variant-name": ("POST", "/predict?variant=" + "v" * 10_000, {"content": sample, "headers": PNG}, 404,
                              "(10002 characters)"),
        "variant-number": ("POST", "/predict", {"json": {"image": image, "variant": 5}}, 404, "unknown model 5"),
        "unknown-option": ("POST", "/predict?model=fp32", {"content": sample, "headers": PNG}, 400,
                           "unknown parameter 'model'"),
        "huge-unknown-option": ("POST", "/predict?" + "x" * 5000 + "=1", {"content": sample, "headers": PNG}, 400,
                                "(5002 characters)"),
        "text-plain": ("POST", "/predict", {"content": b"hi", "headers": {"Content-Type": "text/plain"}}, 415,
                       "unsupported content type 'text/plain'"),
        "no-content-type": ("POST", "/predict", {"content": b"hi"}, 415, "'(none)'"),
        "raw-image-to-batch": ("POST", "/predict/batch", {"content": sample, "headers": PNG}, 415, "a batch is"),
        "multipart-without-file": ("POST", "/predict", {"data": {"top_k": "1"}, "files": {}}, 415, "unsupported"),
        "multipart-field-only": ("POST", "/predict", {"content": b'--b\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n1\r\n--b--\r\n',
                                                       "headers": {"Content-Type": "multipart/form-data; boundary=b"}}, 400,
                                 "has no file"),
        "multipart-no-boundary": ("POST", "/predict", {"content": b"xx", "headers": {"Content-Type": "multipart/form-data"}},
                                  400, "multipart form rejected"),
        "two-files-to-predict": ("POST", "/predict", {"files": [("a", ("a.png", sample, "image/png")),
                                                               ("b", ("b.png", sample, "image/png"))]}, 400, "exactly one image"),
        "get-predict": ("GET", "/predict", {}, 405, "method 'GET' not allowed on /predict"),
        "put-models": ("PUT", "/models", {}, 405, "method 'PUT' not allowed on /models"),
        "unknown-path": ("GET", "/nope", {}, 404, "no route '/nope'"),
        "trailing-slash": ("POST", "/predict/", {"content": sample, "headers": {**PNG, "Host": "evil.example"}}, 404,
                           "no route '/predict/'"),
    }  # fmt: skip


@pytest.fixture(scope="module")
def server(tiny_cnn_run, tmp_path_factory: pytest.TempPathFactory, start_server):
    export_test_bundle(tiny_cnn_run, tmp_path_factory.mktemp("bundles"), BUNDLE)
    log = tmp_path_factory.mktemp("server") / "serve.log"
    with start_server(log, {**LIMITS, "SLIMSERVE_BUNDLE": BUNDLE, "SLIMSERVE_VARIANTS": "fp32"}) as (
        url,
        process,
    ):
        yield Server(url, process, log, 0.0)


@pytest.fixture(scope="module")
def reference(server, sample_png):  # noqa: F811
    answer = server.client.post("/predict/unbatched?variant=fp32&top_k=3", content=sample_png, headers=PNG)
    assert answer.status_code == 200
    return answer.json()["predictions"]


@pytest.mark.http
def test_every_bad_input_is_its_own_json_4xx_and_the_service_still_answers(server, sample_png, reference):  # noqa: F811
    table = cases(sample_png)
    assert len(table) >= 40
    wrong = {}
    for name, (method, path, kwargs, status, fragment) in table.items():
        response = server.client.request(method, path, **kwargs)
        try:
            body = response.json()
        except json.JSONDecodeError:
            body = None
        error = body.get("error", "") if isinstance(body, dict) else ""
        if response.status_code != status or fragment not in error or set(body or {}) != {"error"}:
            wrong[name] = (response.status_code, response.text[:300])
        assert len(response.content) < 1000, f"{name}: {len(response.content)} bytes answered"
        assert "location" not in response.headers, f"{name}: redirected to {response.headers['location']}"
    assert wrong == {}
    again = server.client.post("/predict/unbatched?variant=fp32&top_k=3", content=sample_png, headers=PNG)
    assert again.status_code == 200 and again.json()["predictions"] == reference


@pytest.mark.http
def test_unusual_but_valid_images_get_the_right_answer(server, fashion, reference):  # noqa: F811
    image = fashion.test[0][0]
    eight = np.asarray(image, dtype=np.uint16)
    sixteen = png_bytes(Image.fromarray(eight * 257))  # the same picture as a 16-bit PNG
    wrapped = base64.encodebytes(png_bytes(image)).decode()  # line-wrapped base64
    rgba = png_bytes(image.convert("RGBA"))
    cmyk_jpeg = encoded(image.convert("CMYK"), "JPEG")
    for name, kwargs in {
        "16-bit": {"content": sixteen, "headers": PNG},
        "wrapped-base64": {"json": {"image": wrapped}},
        "rgba": {"content": rgba, "headers": PNG},
        "cmyk-jpeg": {"content": cmyk_jpeg, "headers": {"Content-Type": "image/jpeg"}},
    }.items():
        response = server.client.post("/predict/unbatched?variant=fp32&top_k=3", **kwargs)
        assert response.status_code == 200, (name, response.text)
        top = response.json()["predictions"][0]
        assert top["index"] == reference[0]["index"], name
        if name in ("16-bit", "wrapped-base64", "rgba"):  # lossless: the same tensor, the same answer
            assert abs(top["probability"] - reference[0]["probability"]) < 1e-5, name


def _raw_request(url: str, head: bytes, body: bytes, wait: float) -> tuple[bytes, float]:
    parsed = urlparse(url)
    start = time.monotonic()
    with socket.create_connection((parsed.hostname, parsed.port), timeout=wait) as sock:
        sock.sendall(head + body)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if b"}" in chunk:
                    break
        except TimeoutError:
            pass
    return b"".join(chunks), time.monotonic() - start


@pytest.mark.http
def test_short_body_is_answered_400_after_the_idle_timeout_not_504(server, sample_png):  # noqa: F811
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n" % (
        len(sample_png) + 1000
    )
    answer, seconds = _raw_request(server.url, head, sample_png, wait=20)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"request body shorter than its Content-Length" in answer
    assert seconds < 10  # SLIMSERVE_BODY_IDLE_TIMEOUT_S=2 in this module's server
