"""The prediction routes: one image as multipart, raw body or base64 JSON; a batch; the model list.

A plain Starlette app mounted into the BentoML service. BentoML's typed ``@bentoml.api``
inputs accept images only as multipart, answer 500 for undecodable bytes and wrap 4xx
errors in a list, so these routes parse requests themselves and answer every refusal
as ``{"error": "..."}`` with the status that names the problem.
"""

import base64
import binascii
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import bentoml
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.config import ServeConfig
from service.errors import RequestError
from service.limits import BodyLimitMiddleware
from service.metrics import predictions, request_seconds
from slimserve.topk import top_k

logger = logging.getLogger("slimserve.service")
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/bmp", "image/x-ms-bmp", "image/gif")
ACCEPTED = "multipart/form-data, application/json (base64) or image/png, image/jpeg, image/webp, image/bmp, image/gif"


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _b64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise RequestError(400, f"{where} must be a base64 string")
    if value.startswith("data:"):
        value = value.partition(",")[2]  # data URLs as browsers produce them
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"{where} is not valid base64") from None


OPTIONS = ("variant", "top_k")


async def read_payloads(request: Request, many: bool, max_images: int) -> tuple[list[bytes], dict[str, Any]]:
    """The image bytes of a request and its options (query parameters, or JSON fields)."""
    options: dict[str, Any] = dict(request.query_params)
    media_type = _media_type(request)
    if media_type == "multipart/form-data":
        try:
            form = await request.form(max_files=max_images, max_fields=16)
        except HTTPException as exc:  # Starlette's multipart limits and parse errors
            status = 413 if "Too many files" in str(exc.detail) else 400
            detail = f"too many images: the limit is {max_images}" if status == 413 else exc.detail
            raise RequestError(status, f"multipart form rejected: {detail}") from None
        try:
            uploads = [value for _, value in form.multi_items() if not isinstance(value, str)]
            options.update({k: v for k, v in form.multi_items() if isinstance(v, str)})
            payloads = [await upload.read() for upload in uploads]
        finally:
            await form.close()
        if not payloads:
            raise RequestError(400, "the multipart form has no file; send the image as a file field")
    elif media_type in IMAGE_TYPES:
        if many:
            raise RequestError(415, f"a batch is a multipart form or JSON list, not {media_type}")
        payloads = [await request.body()]
    elif media_type == "application/json":
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError(400, "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise RequestError(400, "the JSON body must be an object")
        key = "images" if many else "image"
        if key not in body:
            raise RequestError(400, f"the JSON body needs {key!r} (base64)")
        if many:
            if not isinstance(body[key], list):
                raise RequestError(400, "'images' must be a list of base64 strings")
            payloads = [_b64(v, f"images[{i}]") for i, v in enumerate(body[key][: max_images + 1])]
        else:
            payloads = [_b64(body[key], "'image'")]
        options.update({k: v for k, v in body.items() if k != key})
    else:
        raise RequestError(415, f"unsupported content type {media_type or '(none)'!r}; send {ACCEPTED}")
    if many and len(payloads) > max_images:
        raise RequestError(413, f"too many images in one batch: the limit is {max_images}")
    if not many and len(payloads) != 1:
        raise RequestError(
            400, f"send exactly one image here ({len(payloads)} given); batches go to /predict/batch"
        )
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:  # a misspelt option would otherwise fall back to the default silently
        raise RequestError(400, f"unknown parameter {unknown[0]!r}; accepted: {', '.join(OPTIONS)}")
    return payloads, options


def parse_top_k(value: Any, default: int) -> int:
    if value is None:
        return default
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise RequestError(400, f"top_k must be a whole number, got {value!r}") from None
    if k < 1:
        raise RequestError(400, f"top_k must be at least 1, got {k}")
    return k


Handler = Callable[[Any, Request], Awaitable[JSONResponse]]


def _endpoint(route: str, handler: Handler) -> Callable[[Request], Awaitable[JSONResponse]]:
    """Shared envelope: find the service, time the request, count it, map errors to JSON."""

    async def endpoint(request: Request) -> JSONResponse:
        service = bentoml.get_current_service()
        start = time.perf_counter()
        request.state.start = start
        request.state.variant = "unknown"
        try:
            response = await handler(service, request)
            outcome = "ok"
        except RequestError as exc:
            response = error_response(exc.status, exc.message)
            outcome = str(exc.status)
        if route != "models":
            variant = request.state.variant
            predictions.labels(variant=variant, route=route, outcome=outcome).inc(
                getattr(request.state, "images", 1)
            )
            request_seconds.labels(variant=variant, route=route).observe(time.perf_counter() - start)
        return response

    return endpoint


async def _predict(service: Any, request: Request, mode: str) -> JSONResponse:
    config: ServeConfig = service.config
    payloads, options = await read_payloads(request, many=mode == "batch", max_images=config.max_batch_images)
    variant = service.pick(options.get("variant"))
    request.state.variant = variant.name
    request.state.images = len(payloads)
    k = parse_top_k(options.get("top_k"), config.top_k)
    start = request.state.start
    batch = await service.preprocess(variant, payloads)
    decoded = time.perf_counter()
    if mode == "adaptive":
        logits, batch_size = await service.infer_batched(variant, batch)
    else:
        logits, batch_size = await service.infer_direct(variant, batch), len(payloads)
    done = time.perf_counter()
    timing = {
        "preprocess_ms": round((decoded - start) * 1000, 3),
        "model_ms": round((done - decoded) * 1000, 3),
        "total_ms": round((done - start) * 1000, 3),
    }
    head = {
        "variant": variant.name,
        "bundle": variant.manifest.name,
        "version": variant.manifest.version,
        "backend": variant.backend.name,
        "provider": variant.backend.describe()["provider"],
    }
    if mode == "batch":
        results = [{"predictions": top_k(row, k, variant.classes)} for row in logits]
        return JSONResponse({**head, "results": results, "timing": timing})
    return JSONResponse(
        {
            **head,
            "predictions": top_k(logits[0], k, variant.classes),
            "batch_size": batch_size,
            "timing": timing,
        }
    )


async def _models(service: Any, request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "default_variant": service.default_variant,
            "variants": [v.describe() for v in service.variants.values()],
            "workers": service.config.worker_count,
            "threads_per_worker": service.config.thread_count,
            "adaptive_batching": {
                "max_batch_size": service.config.max_batch_size,
                "max_latency_ms": service.config.max_latency_ms,
            },
            "torch_imported": "torch" in sys.modules,
        }
    )


def build_app(config: ServeConfig) -> Starlette:
    async def predict(service: Any, request: Request) -> JSONResponse:
        return await _predict(service, request, "adaptive")

    async def predict_unbatched(service: Any, request: Request) -> JSONResponse:
        return await _predict(service, request, "direct")

    async def predict_batch(service: Any, request: Request) -> JSONResponse:
        return await _predict(service, request, "batch")

    routes = [
        Route("/predict", _endpoint("predict", predict), methods=["POST"]),
        Route("/predict/unbatched", _endpoint("predict_unbatched", predict_unbatched), methods=["POST"]),
        Route("/predict/batch", _endpoint("predict_batch", predict_batch), methods=["POST"]),
        Route("/models", _endpoint("models", _models), methods=["GET"]),
    ]
    return Starlette(
        routes=routes, middleware=[Middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)]
    )
