"""Ray Serve: a Ray cluster on this machine, an HTTP proxy actor, the model in replica actors.

``python -m benchmarks.peers.rayserve_server --port P [--batched]``; settings in ``SLIMSERVE_PEER``.
The deployment reads the raw body from Starlette's request, as Ray Serve's HTTP guide does;
batching is ``@serve.batch``.
"""

import time
from typing import Any

import ray
from ray import serve
from starlette.requests import Request

from benchmarks.peers.model import Classifier, PeerSettings, server_arguments


class Unbatched:
    def __init__(self, settings: PeerSettings) -> None:
        self.classifier = Classifier(settings, "ray serve replica")

    async def __call__(self, request: Request) -> dict[str, Any]:
        return self.classifier.predict([await request.body()])[0]


class Batched:
    def __init__(self, settings: PeerSettings) -> None:
        self.classifier = Classifier(settings, "ray serve replica")
        self.predict.set_max_batch_size(settings.max_batch_size)
        self.predict.set_batch_wait_timeout_s(settings.batch_wait_ms / 1000)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)  # replaced from the settings above
    async def predict(self, payloads: list[bytes]) -> list[dict[str, Any]]:
        return self.classifier.predict(payloads)

    async def __call__(self, request: Request) -> dict[str, Any]:
        return await self.predict(await request.body())


def main() -> None:
    args, settings = server_arguments(__doc__)
    ray.init(num_cpus=settings.workers, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    deployment = serve.deployment(
        Batched if args.batched else Unbatched,
        num_replicas=settings.workers,
        ray_actor_options={"num_cpus": 1},
        max_ongoing_requests=max(settings.max_batch_size * 2, 64),
    )
    serve.run(deployment.bind(settings), route_prefix="/predict")
    while True:  # serve.run returns once the application is up; the proxy serves from its actor
        time.sleep(3600)


if __name__ == "__main__":
    main()
