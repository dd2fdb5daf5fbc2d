"""Which servers the peer benchmark runs, how each is started, fed and read.

A ``Peer`` is data: the framework's distribution (for its version), the server module
that serves the variant with that framework's documented API, batching on or off, the
request path and body format it takes, and whether it needs its own virtual environment.
"""

import base64
import json
from dataclasses import dataclass
from typing import Any

RAW = "raw"  # the image file as the body, its content type in the header
JSON_B64 = "json-b64"  # {"image": "<base64>"}: frameworks that read JSON or forms only
KSERVE_B64 = "kserve-b64"  # KServe v2 JSON, the image as a base64 BYTES tensor of shape [1]
KSERVE_B64_BATCHED = "kserve-b64-batched"  # the same with the batch dimension: shape [1, 1]

BODY_NOTES = {
    RAW: "raw image body",
    JSON_B64: 'JSON {"image": base64} (LitServe reads JSON or forms, not raw bodies)',
    KSERVE_B64: "KServe v2 JSON, base64 BYTES tensor (Triton's HTTP protocol)",
    KSERVE_B64_BATCHED: "KServe v2 JSON, base64 BYTES tensor (Triton's HTTP protocol)",
}


@dataclass(frozen=True)
class Peer:
    name: str
    distribution: str  # the pip distribution whose version the table names
    module: str  # python -m MODULE --port P [--batched]
    batched: bool
    path: str
    body: str
    front_end: str  # what answers HTTP, and where the model runs
    imports: str  # the module that must import for the peer to start
    venv: str | None = None  # its own virtual environment (benchmarks.peers.venvs), or this one

    @property
    def suffix(self) -> str:
        return ".png" if self.body == RAW else ".json"


PEERS = (
    Peer(
        name="starlette",
        distribution="starlette",
        module="benchmarks.reference_server",
        batched=False,
        path="/predict",
        body=RAW,
        front_end="uvicorn (uvloop, httptools) + Starlette; model in each uvicorn worker process",
        imports="starlette",
    ),
    Peer(
        name="mosec",
        distribution="mosec",
        module="benchmarks.peers.mosec_server",
        batched=False,
        path="/predict",
        body=RAW,
        front_end="Rust HTTP front end; model in Python worker processes over IPC",
        imports="mosec",
    ),
    Peer(
        name="mosec-batched",
        distribution="mosec",
        module="benchmarks.peers.mosec_server",
        batched=True,
        path="/predict",
        body=RAW,
        front_end="Rust HTTP front end and batcher; model in Python worker processes over IPC",
        imports="mosec",
    ),
    Peer(
        name="litserve",
        distribution="litserve",
        module="benchmarks.peers.litserve_server",
        batched=False,
        path="/predict",
        body=JSON_B64,
        front_end="FastAPI/uvicorn API servers (LitServe's default: one per inference worker); model in worker processes over queues",
        imports="litserve",
    ),
    Peer(
        name="litserve-batched",
        distribution="litserve",
        module="benchmarks.peers.litserve_server",
        batched=True,
        path="/predict",
        body=JSON_B64,
        front_end="FastAPI/uvicorn API servers (LitServe's default: one per inference worker); batching and model in worker processes over queues",
        imports="litserve",
    ),
    Peer(
        name="pytriton",
        distribution="nvidia-pytriton",
        module="benchmarks.peers.pytriton_server",
        batched=False,
        path="/v2/models/classifier/infer",
        body=KSERVE_B64,
        front_end="Triton Inference Server (C++); model instances in a Python process over PyTriton's proxy",
        imports="pytriton",
        venv="pytriton",
    ),
    Peer(
        name="pytriton-batched",
        distribution="nvidia-pytriton",
        module="benchmarks.peers.pytriton_server",
        batched=True,
        path="/v2/models/classifier/infer",
        body=KSERVE_B64_BATCHED,
        front_end="Triton Inference Server (C++) dynamic batcher; model instances in a Python process",
        imports="pytriton",
        venv="pytriton",
    ),
    Peer(
        name="rayserve",
        distribution="ray",
        module="benchmarks.peers.rayserve_server",
        batched=False,
        path="/predict",
        body=RAW,
        front_end="Ray Serve HTTP proxy actor (uvicorn); model in replica actors",
        imports="ray.serve",
    ),
    Peer(
        name="rayserve-batched",
        distribution="ray",
        module="benchmarks.peers.rayserve_server",
        batched=True,
        path="/predict",
        body=RAW,
        front_end="Ray Serve HTTP proxy actor (uvicorn); @serve.batch and model in replica actors",
        imports="ray.serve",
    ),
    Peer(
        name="slimserve",
        distribution="slimserve",
        module="commands.main",
        batched=True,
        path="/predict",
        body=RAW,
        front_end="BentoML (uvicorn + Starlette), adaptive batching route; model in each worker process",
        imports="bentoml",
    ),
    Peer(
        name="slimserve-unbatched",
        distribution="slimserve",
        module="commands.main",
        batched=False,
        path="/predict/unbatched",
        body=RAW,
        front_end="BentoML (uvicorn + Starlette), unbatched route; model in each worker process",
        imports="bentoml",
    ),
)
PEER_NAMES = tuple(peer.name for peer in PEERS)


def encode_body(image: bytes, body: str) -> bytes:
    """The request body a peer takes for one image file."""
    if body == RAW:
        return image
    text = base64.b64encode(image).decode("ascii")
    if body == JSON_B64:
        return json.dumps({"image": text}).encode()
    shape = [1, 1] if body == KSERVE_B64_BATCHED else [1]
    tensor = {"name": "image", "shape": shape, "datatype": "BYTES", "data": [text]}
    return json.dumps({"inputs": [tensor]}).encode()


def predictions(body: str, answer: Any) -> list[dict[str, Any]]:
    """The top-5 list out of a peer's JSON answer."""
    if body in (KSERVE_B64, KSERVE_B64_BATCHED):
        answer = json.loads(answer["outputs"][0]["data"][0])
    return answer["predictions"]
