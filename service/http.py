"""The prediction routes: one image as multipart, raw body or base64 JSON; a batch; the model list.

Bare ASGI, dispatched by ``PredictionFront``, a service-level ASGI middleware of the BentoML
service (``add_asgi_middleware``): BentoML's own outer layers (its traffic metrics,
timeout, concurrency cap) wrap these routes as before, but its router, context
middleware and a second, mounted Starlette app no longer sit between them and the
handlers (``service.responses`` says why). BentoML's typed ``@bentoml.api`` inputs accept
images only as multipart, answer 500 for undecodable bytes and wrap 4xx errors in a list,
so these routes parse requests themselves and answer every refusal as
``{"error": "..."}`` with the status that names the problem.
"""

import base64
import binascii
import json
import logging
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import bentoml
import numpy as np
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from service.config import ServeConfig
from service.errors import RequestError
from service.limits import BodyAborted, BodyLimitMiddleware, clip, json_messages, parse_json
from service.metrics import predictions_for, request_seconds_for
from service.responses import Answer, Call, error_answer, send_answer
from slimserve.topk import top_k

logger = logging.getLogger("slimserve.service")
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/bmp", "image/x-ms-bmp", "image/gif")
ACCEPTED = "multipart/form-data, application/json (base64) or image/png, image/jpeg, image/webp, image/bmp, image/gif"


def _b64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise RequestError(400, f"{where} must be a base64 string")
    if value.startswith("data:"):
        value = value.partition(",")[2]  # data URLs as browsers produce them
    # `base64` and MIME encoders wrap lines (RFC 2045); whitespace carries no data, anything
    # else outside the alphabet is still refused by validate=True.
    value = "".join(value.split())
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"{where} is not valid base64") from None


def form_value(value: str) -> str:
    """A form field as sent, or the string inside when it is a JSON string literal.

    BentoML's HTTP client JSON-encodes every non-file form field (``variant="fp32"``
    arrives as ``"fp32"`` with the quotes); BentoML's own servers decode them the same way.
    Only string literals are decoded: ``top_k=3`` reads the same either way, and
    ``variant=null`` stays a (wrong) name instead of silently meaning the default.
    """
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        if isinstance(decoded, str):
            return decoded
    return value


OPTIONS = ("variant", "top_k")


async def read_payloads(call: Call, many: bool, config: ServeConfig) -> tuple[list[bytes], dict[str, Any]]:
    """The image bytes of a request and its options (query parameters, or JSON fields)."""
    max_images = config.max_batch_images
    options: dict[str, Any] = call.query()
    media_type = call.media_type()
    if media_type == "multipart/form-data":
        try:
            form = await call.form(max_files=max_images, max_fields=16)
        except HTTPException as exc:  # Starlette's multipart limits and parse errors
            status = 413 if "Too many files" in str(exc.detail) else 400
            detail = f"too many images: the limit is {max_images}" if status == 413 else exc.detail
            raise RequestError(status, f"multipart form rejected: {detail}") from None
        try:
            uploads = [value for _, value in form.multi_items() if not isinstance(value, str)]
            options.update({k: form_value(v) for k, v in form.multi_items() if isinstance(v, str)})
            payloads = [await upload.read() for upload in uploads]
        finally:
            await form.close()
        if not payloads:
            raise RequestError(400, "the multipart form has no file; send the image as a file field")
    elif media_type in IMAGE_TYPES:
        if many:
            raise RequestError(415, f"a batch is a multipart form or JSON list, not {media_type}")
        payloads = [await call.body()]
    elif media_type == "application/json":
        body = parse_json(await call.body(), config.max_json_depth, config.max_json_number_chars)
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
    if many and not payloads:
        raise RequestError(400, "the batch is empty: send at least one image")
    if many and len(payloads) > max_images:
        raise RequestError(413, f"too many images in one batch: the limit is {max_images}")
    if not many and len(payloads) != 1:
        raise RequestError(
            400, f"send exactly one image here ({len(payloads)} given); batches go to /predict/batch"
        )
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:  # a misspelt option would otherwise fall back to the default silently
        raise RequestError(400, f"unknown parameter {clip(unknown[0])}; accepted: {', '.join(OPTIONS)}")
    return payloads, options


def parse_top_k(value: Any, default: int) -> int:
    """A whole number >= 1 from a query string or a JSON integer; k above the class count is capped later.

    Floats (2.5, 1e400), booleans and digit strings longer than 9 are refused rather than
    truncated or converted: int() of an infinite float or a huge digit string raises.
    """
    if value is None:
        return default
    digits = value.strip() if isinstance(value, str) else None
    if isinstance(value, int) and not isinstance(value, bool):
        k = value
    elif digits and digits.lstrip("+-").isdigit() and digits.isascii() and len(digits) <= 9:
        k = int(digits)
    else:
        raise RequestError(400, f"top_k must be a whole number, got {clip(value)}")
    if k < 1:
        raise RequestError(400, f"top_k must be at least 1, got {clip(k)}")
    return k


Handler = Callable[[Any, Call], Awaitable[Answer]]


def internal_error(route: str) -> Answer:
    """Log the current exception with a fresh request id and answer a JSON 500 naming it.

    The id is the only link between what the client sees and the traceback in the log.
    """
    request_id = uuid.uuid4().hex[:16]
    logger.exception("unexpected error on %s (request id %s)", route, request_id)
    return Answer(
        {
            "error": f"internal error; quote request id {request_id} when reporting it",
            "request_id": request_id,
        },
        500,
        {"x-request-id": request_id},
    )


async def _answer(route: str, handler: Handler, service: Any, call: Call) -> Answer:
    """Shared envelope: run the handler, count and time the request, map errors to JSON."""
    try:
        answer = await handler(service, call)
        outcome = "ok"
    except RequestError as exc:
        answer = error_answer(exc.status, exc.message)
        outcome = str(exc.status)
    except BodyAborted:  # BodyLimitMiddleware answers these
        raise
    except ClientDisconnect:  # the client left mid-body: nobody reads the answer
        answer = error_answer(400, "the client disconnected before the body was complete")
        outcome = "400"
    except Exception:  # a bug or fault of ours: JSON 500, logged and counted, never a traceback
        answer = internal_error(route)
        outcome = "500"
    if route != "models":
        predictions_for(call.variant, route, outcome).inc(call.images)
        request_seconds_for(call.variant, route).observe(time.perf_counter() - call.start)
    return answer


async def _predict(service: Any, call: Call, mode: str) -> Answer:
    config: ServeConfig = service.config
    payloads, options = await read_payloads(call, many=mode == "batch", config=config)
    variant = service.pick(options.get("variant"))
    call.variant = variant.name
    call.images = len(payloads)
    k = parse_top_k(options.get("top_k"), config.top_k)
    start = call.start
    batch = await service.preprocess(variant, payloads)
    decoded = time.perf_counter()
    if mode == "adaptive":
        logits, batch_size = await service.infer_batched(variant, batch)
    else:
        logits, batch_size = await service.infer_direct(variant, batch), len(payloads)
    done = time.perf_counter()
    if not np.isfinite(logits).all():  # JSON has no NaN (orjson would write null): a fault of ours
        raise ValueError(f"model {variant.name} returned non-finite logits")
    timing = {
        "preprocess_ms": round((decoded - start) * 1000, 3),
        "model_ms": round((done - decoded) * 1000, 3),
        "total_ms": round((done - start) * 1000, 3),
    }
    head = _answer_head(variant)
    if mode == "batch":
        results = [{"predictions": top_k(row, k, variant.classes)} for row in logits]
        return Answer({**head, "results": results, "timing": timing})
    return Answer(
        {
            **head,
            "predictions": top_k(logits[0], k, variant.classes),
            "batch_size": batch_size,
            "timing": timing,
        }
    )


_HEADS: dict[str, dict[str, Any]] = {}


def _answer_head(variant: Any) -> dict[str, Any]:
    """The fields every answer of a variant starts with, built once per variant (``describe()``
    assembles the backend's whole report, far more than the one field needed per request)."""
    head = _HEADS.get(variant.tag)
    if head is None:
        head = _HEADS[variant.tag] = {
            "variant": variant.name,
            "bundle": variant.manifest.name,
            "version": variant.manifest.version,
            "backend": variant.backend.name,
            "provider": variant.backend.describe()["provider"],
        }
    return head


def _compact(description: dict[str, Any]) -> dict[str, Any]:
    """A variant's description without the bundle manifest (listed once), plus its own manifest entry."""
    manifest = description["manifest"]
    entry = manifest.get("variants", {}).get(description["variant"], {})
    return {k: v for k, v in description.items() if k != "manifest"} | {"entry": entry}


async def _models(service: Any, call: Call) -> Answer:
    # Another worker may already be ready (readiness is per worker): no empty list meanwhile.
    service.check_loaded()
    described = [v.describe() for v in service.variants.values()]
    return Answer(
        {
            "default_variant": service.default_variant,
            "variants": [_compact(d) | {"batching": service.batching(d["variant"])} for d in described],
            # Every variant of a service comes from one bundle version, hence one manifest.
            "manifest": described[0]["manifest"] if described else None,
            "workers": service.config.worker_count,
            "threads_per_worker": service.config.thread_count,
            "adaptive_batching": {
                "max_batch_size": service.config.max_batch_size,
                "max_latency_ms": service.config.max_latency_ms,
            },
            "torch_imported": "torch" in sys.modules,
        }
    )


async def _predict_adaptive(service: Any, call: Call) -> Answer:
    return await _predict(service, call, "adaptive")


async def _predict_direct(service: Any, call: Call) -> Answer:
    return await _predict(service, call, "direct")


async def _predict_batch(service: Any, call: Call) -> Answer:
    return await _predict(service, call, "batch")


# path -> (the metrics' route label, allowed methods, handler); HEAD wherever GET, as Starlette.
ROUTE_TABLE: dict[str, tuple[str, tuple[str, ...], Handler]] = {
    "/predict": ("predict", ("POST",), _predict_adaptive),
    "/predict/unbatched": ("predict_unbatched", ("POST",), _predict_direct),
    "/predict/batch": ("predict_batch", ("POST",), _predict_batch),
    "/models": ("models", ("GET", "HEAD"), _models),
}
ROUTES = tuple(ROUTE_TABLE)
ROUTES_TEXT = (
    "POST /predict, /predict/unbatched, /predict/batch; GET /models, /ui (upload page), / (API docs)"
)


class PredictionRoutes:
    """The prediction routes as one ASGI app: method check, envelope, answer."""

    def __init__(self) -> None:
        self.service: Any = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path, method = scope["path"], scope["method"]
        route, methods, handler = ROUTE_TABLE[path]
        if method not in methods:
            message = f"method {clip(method)} not allowed on {path}"
            await send_answer(send, error_answer(405, message, {"allow": ", ".join(methods)}))
            return
        if self.service is None:  # created by BentoML's lifespan, before any request is served
            self.service = bentoml.get_current_service()
        call = Call(scope, receive, time.perf_counter())
        await send_answer(send, await _answer(route, handler, self.service, call))


def _with_cors(app: Any) -> Any:
    """BentoML's CORS middleware (when configured) around the routes: it sits behind the
    service middlewares in BentoML's stack, so a request dispatched early would miss it."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    if not BentoMLContainer.http.cors.enabled.get():
        return app
    from starlette.middleware.cors import CORSMiddleware

    return CORSMiddleware(app, **BentoMLContainer.access_control_options.get())


class PredictionFront:
    """Service-level ASGI middleware: the prediction routes answered here, the router's own
    answers for every other path as JSON errors.

    ``add_asgi_middleware`` puts this inside BentoML's traffic metrics, timeout and
    concurrency-cap middlewares, which keep applying to every route, and in front of its
    router: a request for a prediction route goes straight to ``PredictionRoutes``, behind
    the body limits (``BodyLimitMiddleware``). BentoML's request context
    (``bentoml.context``, which these routes do not read) is not set for them.

    For any other path, BentoML's router answers a path none of its routes match with a
    plain-text 404, a plain-text 405 for its own routes, or, for a trailing slash
    (``POST /predict/``), a 307 to an absolute URL built from the client's ``Host`` header.
    Those three are replaced by a JSON 404 or 405.
    """

    def __init__(self, app: Any, config: ServeConfig) -> None:
        self.app = app
        limited = BodyLimitMiddleware(
            PredictionRoutes(), max_bytes=config.max_body_bytes, idle_timeout_s=config.body_idle_timeout_s
        )
        self.routes = _with_cors(limited)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] in ROUTE_TABLE:
            await self.routes(scope, receive, send)
            return
        replaced = False

        async def json_send(message: dict) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start":
                status = message["status"]
                content_type = dict(message.get("headers", [])).get(b"content-type", b"")
                if status in (307, 308) or (
                    status in (404, 405) and not content_type.startswith(b"application/json")
                ):
                    replaced = True
                    path = clip(scope["path"])
                    text = (
                        f"method {clip(scope['method'])} not allowed on {path}"
                        if status == 405
                        else f"no route {path}; see {ROUTES_TEXT}"
                    )
                    for own in json_messages(405 if status == 405 else 404, text):
                        await send(own)
                    return
            elif replaced:
                return  # the router's own body
            await send(message)

        await self.app(scope, receive, json_send)
