"""The bare reference: Starlette + uvicorn doing the service's inference and nothing else.

No batching, metrics, validation layers or framework: raw image body in, the service's
own decode and preprocessing (``service.preprocess``), one model call, top-k JSON out. Its requests/s is the best a plain Python HTTP stack does with this model on this
machine, so the service's figure can be read as a share of it. The model runs on the
service's own runtime layer (ONNX Runtime or TorchScript, CPU, same threads), so the two
differ only in what surrounds the model. Started by the HTTP benchmark on a free loopback
port: ``python -m benchmarks.reference_server ...``.
"""

import argparse
import os
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from service.config import BACKENDS
from service.errors import RequestError
from service.preprocess import Preprocessor
from slimserve.manifest import Manifest, read_manifest
from slimserve.runtime import Runner, RuntimeOptions, open_runner
from slimserve.topk import top_k

# Bundle dir, variant, backend and threads reach uvicorn's workers through the environment.
ENV = "SLIMSERVE_REFERENCE"
MAX_PIXELS = 4096 * 4096  # the service's default bounds
MAX_BODY_BYTES = 16 * 1024 * 1024
TOP_K = 5  # the service's default


def cpu_backend(manifest: Manifest, variant: str, kind: str, threads: int, label: str) -> Runner:
    """The variant's hash-checked file opened as the service opens it (``slimserve.runtime``),
    on CPU; shared with the benchmark's in-process figure so both run the model exactly as
    the service does."""
    path = manifest.variant(variant).files[kind].verified_path(manifest.bundle_dir)
    return open_runner(kind, path, RuntimeOptions(threads=threads, providers="cpu", strict=True, label=label))


def create_app() -> Starlette:
    bundle_dir, variant, backend_kind, threads = os.environ[ENV].split(os.pathsep)
    manifest = read_manifest(bundle_dir)
    backend = cpu_backend(manifest, variant, backend_kind, int(threads), f"reference {variant}")
    preprocess = Preprocessor(manifest.spec)
    classes = manifest.classes
    backend.run(np.zeros((1, *manifest.spec.input_shape), np.float32))  # warm-up

    async def predict(request: Request) -> JSONResponse:
        if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
            return JSONResponse({"error": f"body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        try:
            batch = preprocess.payload(await request.body(), MAX_PIXELS)
        except RequestError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        logits = backend.run(batch)
        return JSONResponse({"variant": variant, "predictions": top_k(logits[0], TOP_K, classes)})

    async def ready(_: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/readyz", ready)])


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle-dir", type=Path, required=True)
    parser.add_argument("--variant", required=True)
    parser.add_argument("--backend", choices=BACKENDS, default="onnx")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.environ[ENV] = os.pathsep.join(
        [str(args.bundle_dir.resolve()), args.variant, args.backend, str(args.threads)]
    )
    uvicorn.run(
        "benchmarks.reference_server:create_app", factory=True, host="127.0.0.1", port=args.port,
        workers=args.workers, loop="uvloop", http="httptools", access_log=False, log_level="warning",
    )  # fmt: skip


if __name__ == "__main__":
    main()
