"""The OpenAPI document (`/docs.json`) and BentoML's client schema (`/schema.json`) of a live
server: every route described, then fuzzed by schemathesis with zero 5xx.

The server serves a tiny CNN's fp32 and int8 variants (none of the deliberately broken
variants of test_service: a fuzzer that picks a documented variant must only ever meet
the service's own 4xx or a 200).
"""

from pathlib import Path

import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate as validate_openapi
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance
from test_service import LIMITS, Server, fashion, png_bytes, sample_png  # noqa: F401

from export.pipeline import export_bundle
from export.registry import register_bundle
from export.variants import BUILDERS
from service.http import IMAGE_TYPES

PREDICTION_ROUTES = ("/predict", "/predict/unbatched", "/predict/batch")
FUZZ_EXAMPLES = 100  # per operation (8 of them): the whole fuzz takes seconds, well under a minute


def serving_variants() -> list[str]:
    return [v for v in ("fp32", "int8") if v in BUILDERS]


def register_api_bundle(run: Path, out: Path, name: str):
    manifest = export_bundle(
        run, out=out, name=name, version="v1", variants=serving_variants(), limit=300, register=False
    )
    register_bundle(manifest)
    return manifest


def api_server(bundle_name: str, run: Path, tmp_path_factory: pytest.TempPathFactory, start_server):
    """A generator for a module fixture: the bundle registered, one `slimserve serve` on it."""
    manifest = register_api_bundle(run, tmp_path_factory.mktemp("bundles"), bundle_name)
    log = tmp_path_factory.mktemp("server") / "serve.log"
    with start_server(log, {**LIMITS, "SLIMSERVE_BUNDLE": bundle_name}) as (url, process):
        yield Server(url, process, log, 0.0), manifest


@pytest.fixture(scope="module")
def served(tiny_cnn_run, tmp_path_factory, start_server):
    yield from api_server("openapi-cnn", tiny_cnn_run, tmp_path_factory, start_server)


@pytest.fixture(scope="module")
def docs(served) -> dict:
    server, _ = served
    response = server.client.get("/docs.json")
    assert response.status_code == 200
    return response.json()


@pytest.mark.http
def test_every_route_is_documented_with_bodies_options_and_error_schemas(docs):
    paths = docs["paths"]
    ours = {route: paths[route] for route in (*PREDICTION_ROUTES, "/models")}
    names = ("ClassScore", "Timing", "Prediction", "BatchPrediction", "Models", "Error")
    # Our part must be valid OpenAPI 3.0 on its own. (BentoML's part is not: its
    # TaskStatusResponse uses JSON Schema's {"type": "null"}, which 3.0 lacks.)
    validate_openapi(
        {
            "openapi": docs["openapi"],
            "info": docs["info"],
            "paths": ours,
            "components": {"schemas": {n: docs["components"]["schemas"][n] for n in names}},
        }
    )
    for route in ("/healthz", "/livez", "/readyz", "/metrics", *PREDICTION_ROUTES, "/models"):
        assert route in paths, route
    schemas = docs["components"]["schemas"]
    assert schemas["Error"]["required"] == ["error"]
    for route in PREDICTION_ROUTES:
        operation = paths[route]["post"]
        content = operation["requestBody"]["content"]
        assert {"multipart/form-data", "application/json"} <= set(content)
        many = route == "/predict/batch"
        image_types = set(IMAGE_TYPES) & set(content)
        assert image_types == (set() if many else set(IMAGE_TYPES))
        multipart = content["multipart/form-data"]["schema"]["properties"]
        upload = multipart["images"]["items"] if many else multipart["image"]
        assert upload == {"type": "string", "format": "binary"}  # Swagger UI shows a file picker
        params = {p["name"]: p["schema"] for p in operation["parameters"]}
        assert params["variant"]["enum"] == serving_variants()
        assert params["top_k"] == {**params["top_k"], "type": "integer", "minimum": 1}
        responses = operation["responses"]
        success = responses["200"]["content"]["application/json"]["schema"]["$ref"]
        assert success.endswith("BatchPrediction" if many else "/Prediction")
        for status in ("400", "404", "408", "413", "415", "500", "503"):
            assert responses[status]["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
    models = paths["/models"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert models["$ref"].endswith("/Models")


@pytest.mark.http
def test_documented_success_schema_matches_a_real_answer(served, docs, sample_png):  # noqa: F811
    """The schemas are checked against real answers of each route (the fuzzer rarely builds a valid image)."""
    server, _ = served
    schemas = docs["components"]["schemas"]

    def validate(answer: dict, name: str) -> None:
        resolver_doc = {"components": {"schemas": schemas}, **schemas[name]}
        jsonschema.validate(answer, resolver_doc)

    files = {"file": ("a.png", sample_png, "image/png")}
    validate(server.client.post("/predict", files=files).json(), "Prediction")
    validate(server.client.post("/predict/unbatched", files=files).json(), "Prediction")
    validate(server.client.post("/predict/batch", files=[("f", files["file"])] * 2).json(), "BatchPrediction")
    validate(server.client.get("/models").json(), "Models")
    refused = server.client.post("/predict", content=b"not an image", headers={"Content-Type": "image/png"})
    assert refused.status_code == 400
    validate(refused.json(), "Error")
    with pytest.raises(jsonschema.ValidationError):  # the schema does constrain answers
        validate({"variant": "fp32"}, "Prediction")


@pytest.mark.http
def test_client_schema_lists_the_prediction_routes_with_file_inputs(served):
    server, _ = served
    routes = {r["name"]: r for r in server.client.get("/schema.json").json()["routes"]}
    assert set(routes) == {"predict", "predict_unbatched", "predict_batch"}
    assert routes["predict"]["route"] == "/predict"
    assert routes["predict"]["input"]["properties"]["image"] == {"type": "file", "format": "image"}
    assert routes["predict_batch"]["input"]["properties"]["images"]["items"]["type"] == "file"
    assert routes["predict"]["input"]["required"] == ["image"]


@pytest.mark.http
def test_docs_and_schema_answers_are_counted_under_their_own_metrics_label(served):
    server, _ = served
    server.client.get("/schema.json")
    metrics = server.client.get("/metrics").text
    assert 'endpoint="/schema.json"' in metrics


@pytest.fixture(scope="module")
def api_schema(served):
    server, _ = served
    return schemathesis.openapi.from_url(f"{server.url}/docs.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.mark.http
@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
def test_fuzzed_requests_never_get_a_5xx_and_answers_match_the_document(case):
    response = case.call_and_validate(
        checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
        timeout=30,
    )
    assert response.status_code < 500
