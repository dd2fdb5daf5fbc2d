"""The prediction routes in BentoML's own two documents: ``/docs.json`` and ``/schema.json``.

The routes are plain Starlette (``service.http``) so that the fast paths parse requests
themselves, and BentoML describes only ``@bentoml.api`` methods: its OpenAPI document
(what Swagger UI at ``/`` reads) and its ``/schema.json`` (what ``bentoml.SyncHTTPClient``
and ``AsyncHTTPClient`` read to find endpoints) list none of our routes. Typed
``@bentoml.api`` twins of the routes would be documented, but they add a second request
path with its own parsing and error shapes (500 for undecodable bytes, 4xx wrapped in a
list). Instead, both documents gain hand-written entries for the existing routes:

* ``/docs.json``: BentoML's document (its health and metrics routes) plus a path item per
  route with every request body (multipart, raw image, base64 JSON), the options, the
  success schema and the error schema of each status.
* ``/schema.json``: BentoML's client format (``_bentoml_impl/client/http.py``,
  ``HTTPClient._setup``), one entry per prediction route whose input has a ``file`` typed
  property. The client then sends a multipart form to the very route curl uses, with
  every other field JSON-encoded (``HTTPClient._build_multipart``), which
  ``service.http.form_value`` decodes.

The documents are built once per worker, on first request. They are served by BentoML's
own two views (``ServiceAppFactory.openapi_spec_view`` and ``schema_view`` in
``_bentoml_impl/server/app.py``), replaced here before the worker builds its app: no
middleware, so no request to any other route does any extra work.
"""

from typing import Any

from _bentoml_impl.server.app import ServiceAppFactory
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.config import ServeConfig
from service.http import IMAGE_TYPES

REF = "#/components/schemas/{}"
TAG = "Prediction"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(name)}


def components(config: ServeConfig) -> dict[str, Any]:
    """The response schemas; ``additionalProperties`` stays open so fields can be added compatibly."""
    head = {
        "variant": {"type": "string", "description": "the variant that answered"},
        "bundle": {"type": "string"},
        "version": {"type": "string"},
        "backend": {"type": "string", "enum": ["onnx", "torchscript"]},
        "provider": {"type": "string", "description": "the execution provider really used"},
    }
    timing = {
        "type": "object",
        "required": ["preprocess_ms", "model_ms", "total_ms"],
        "properties": {
            k: {"type": "number", "minimum": 0} for k in ("preprocess_ms", "model_ms", "total_ms")
        },
    }
    scores = {
        "type": "array",
        "description": "the top_k classes, most probable first",
        "minItems": 1,
        "items": _ref("ClassScore"),
    }
    return {
        "ClassScore": {
            "type": "object",
            "required": ["index", "label", "probability"],
            "properties": {
                "index": {"type": "integer", "minimum": 0},
                "label": {"type": "string"},
                "probability": {"type": "number", "minimum": 0, "maximum": 1},
            },
        },
        "Timing": timing,
        "Prediction": {
            "type": "object",
            "required": [*head, "predictions", "batch_size", "timing"],
            "properties": {
                **head,
                "predictions": scores,
                "batch_size": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "images in the model call this one joined (adaptive batching)",
                },
                "timing": _ref("Timing"),
            },
        },
        "BatchPrediction": {
            "type": "object",
            "required": [*head, "results", "timing"],
            "properties": {
                **head,
                "results": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": config.max_batch_images,
                    "description": "one entry per image, in request order",
                    "items": {
                        "type": "object",
                        "required": ["predictions"],
                        "properties": {"predictions": scores},
                    },
                },
                "timing": _ref("Timing"),
            },
        },
        "Models": {
            "type": "object",
            "required": ["default_variant", "variants", "manifest", "workers", "threads_per_worker"],
            "properties": {
                "default_variant": {"type": "string"},
                "variants": {"type": "array", "items": {"type": "object"}},
                "manifest": {"type": "object", "nullable": True, "description": "the bundle manifest"},
                "workers": {"type": "integer", "minimum": 1},
                "threads_per_worker": {"type": "integer", "minimum": 1},
                "adaptive_batching": {
                    "type": "object",
                    "properties": {
                        "max_batch_size": {"type": "integer"},
                        "max_latency_ms": {"type": "integer"},
                    },
                },
                "torch_imported": {"type": "boolean"},
            },
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {"type": "string", "description": "one line saying what to change"},
                "request_id": {"type": "string", "description": "500 only: the id the server log carries"},
            },
        },
    }


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _option_schemas(variants: list[str], config: ServeConfig) -> dict[str, dict[str, Any]]:
    return {
        "variant": {
            "type": "string",
            "enum": variants,
            "description": "which loaded variant answers; empty or absent: the default (see GET /models)",
        },
        "top_k": {
            "type": "integer",
            "minimum": 1,
            "default": config.top_k,
            "description": "how many classes to return (capped at the class count)",
        },
    }


def _request_body(many: bool, options: dict[str, Any], config: ServeConfig) -> dict[str, Any]:
    """The three ways to send images: multipart files, base64 in JSON, one raw image body."""
    binary = {"type": "string", "format": "binary"}
    base64 = {
        "type": "string",
        "format": "byte",
        "description": "base64, or a data: URL; line breaks allowed",
    }
    if many:
        bounds = {"minItems": 1, "maxItems": config.max_batch_images}
        files = {"images": {"type": "array", "items": binary, **bounds}}
        encoded = {"images": {"type": "array", "items": base64, **bounds}}
    else:
        files, encoded = {"image": binary}, {"image": base64}
    required = list(files)
    content: dict[str, Any] = {
        "multipart/form-data": {
            "schema": {"type": "object", "required": required, "properties": {**files, **options}}
        },
        "application/json": {
            "schema": {"type": "object", "required": required, "properties": {**encoded, **options}}
        },
    }
    if not many:
        content.update({media_type: {"schema": binary} for media_type in IMAGE_TYPES})
    return {"required": True, "content": content}


def _responses(success: str) -> dict[str, Any]:
    return {
        "200": {
            "description": "the most probable classes",
            "content": {"application/json": {"schema": _ref(success)}},
        },
        "400": _error("unreadable image, bad base64, bad JSON, bad option or an empty batch"),
        "404": _error("unknown variant"),
        "408": _error("the request body stopped arriving"),
        "413": _error("body, image, request pixels or image count over its limit"),
        "415": _error("unsupported content type"),
        "500": _error("a fault of the service; the message carries a request id"),
        "503": _error("overloaded (the batching deadline would pass) or the model failed"),
    }


def _prediction_operation(
    name: str, summary: str, many: bool, variants: list[str], config: ServeConfig
) -> dict[str, Any]:
    options = _option_schemas(variants, config)
    limits = (
        f"Limits: {config.max_body_bytes} bytes per body, {config.max_pixels} pixels per image, "
        f"{config.max_request_pixels} pixels per request"
        + (f", {config.max_batch_images} images per batch." if many else ".")
    )
    return {
        "post": {
            "tags": [TAG],
            "summary": summary,
            "description": (
                "The image as a multipart file (any field name), a raw image body, or base64 in JSON. "
                "Options go in the query string, the form or the JSON object. " + limits
            ),
            "operationId": name,
            "x-bentoml-name": name,
            "parameters": [
                {"name": key, "in": "query", "required": False, "schema": schema}
                for key, schema in options.items()
            ],
            "requestBody": _request_body(many, options, config),
            "responses": _responses("BatchPrediction" if many else "Prediction"),
        }
    }


PREDICTION_ROUTES = (
    ("/predict", "predict", "One image, through the adaptive batcher", False),
    ("/predict/unbatched", "predict_unbatched", "One image, its own model call", False),
    ("/predict/batch", "predict_batch", "Several images in one request", True),
)


def openapi_paths(variants: list[str], config: ServeConfig) -> dict[str, Any]:
    paths = {
        route: _prediction_operation(name, summary, many, variants, config)
        for route, name, summary, many in PREDICTION_ROUTES
    }
    paths["/models"] = {
        "get": {
            "tags": [TAG],
            "summary": "The loaded variants, the bundle manifest and the serving settings",
            "operationId": "models",
            "responses": {
                "200": {
                    "description": "the model list",
                    "content": {"application/json": {"schema": _ref("Models")}},
                },
                "503": _error("this worker is still loading its models"),
            },
        }
    }
    return paths


def client_routes(variants: list[str], config: ServeConfig) -> list[dict[str, Any]]:
    """The prediction routes in BentoML's ``/schema.json`` route format.

    ``type: file`` is the client's marker for a multipart file field; ``format: image``
    lets it send PIL images. ``/models`` is a GET, which the client's endpoints cannot be.
    """
    options = _option_schemas(variants, config)
    image = {"type": "file", "format": "image"}
    output = {"type": "object", "title": "prediction"}
    routes = []
    for route, name, summary, many in PREDICTION_ROUTES:
        files = {"images": {"type": "array", "items": image}} if many else {"image": image}
        routes.append(
            {
                "name": name,
                "route": route,
                "description": summary,
                "batchable": False,
                "input": {
                    "type": "object",
                    "title": f"{name}_input",
                    "required": list(files),
                    "properties": {**files, **options},
                },
                "output": output,
            }
        )
    return routes


def publish(variants: list[str], config: ServeConfig) -> None:
    """Serve the extended documents from BentoML's own ``/docs.json`` and ``/schema.json`` views."""
    cache: dict[str, JSONResponse] = {}

    async def openapi_spec_view(factory: ServiceAppFactory, request: Request) -> Response:
        if "docs" not in cache:
            spec = factory.service.openapi_spec.asdict()
            spec["paths"].update(openapi_paths(variants, config))
            spec.setdefault("components", {}).setdefault("schemas", {}).update(components(config))
            spec["tags"] = [
                *spec.get("tags", []),
                {"name": TAG, "description": "slimserve's prediction routes"},
            ]
            cache["docs"] = JSONResponse(spec)
        return cache["docs"]

    async def schema_view(factory: ServiceAppFactory, request: Request) -> Response:
        if "schema" not in cache:
            schema = factory.service.schema()
            schema["routes"] = [*schema.get("routes", []), *client_routes(variants, config)]
            cache["schema"] = JSONResponse(schema)
        return cache["schema"]

    ServiceAppFactory.openapi_spec_view = openapi_spec_view  # type: ignore[method-assign]
    ServiceAppFactory.schema_view = schema_view  # type: ignore[method-assign]
