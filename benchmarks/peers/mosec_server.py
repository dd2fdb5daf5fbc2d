"""mosec: a Rust HTTP front end and dynamic batcher, the model in Python worker processes.

``python -m benchmarks.peers.mosec_server --port P [--batched]``; settings in ``SLIMSERVE_PEER``.
The raw image body reaches ``deserialize`` as bytes (mosec's documented override point);
``serialize`` is mosec's default JSON encoder.
"""

import sys
from typing import Any

from mosec import Server, Worker
from mosec.errors import ValidationError

from benchmarks.peers.model import Classifier, PeerSettings, server_arguments


class Inference(Worker):
    def __init__(self) -> None:
        super().__init__()
        self.classifier = Classifier(PeerSettings.from_env(), "mosec worker")

    def deserialize(self, data: bytes) -> bytes:
        if not data:
            raise ValidationError("empty body: send the image bytes")
        return data

    def forward(self, data: Any) -> Any:
        # With max_batch_size > 1 mosec hands over a list and expects a list back.
        if isinstance(data, list):
            return self.classifier.predict(data)
        return self.classifier.predict([data])[0]


def main() -> None:
    args, settings = server_arguments(__doc__)
    # mosec's Server parses sys.argv itself: hand it only its own options.
    sys.argv = [sys.argv[0], "--address", "127.0.0.1", "--port", str(args.port), "--log-level", "warning"]
    server = Server()
    batch = {
        "max_batch_size": settings.max_batch_size,
        "max_wait_time": max(1, round(settings.batch_wait_ms)),
    }
    server.append_worker(Inference, num=settings.workers, route="/predict", **(batch if args.batched else {}))
    server.run()


if __name__ == "__main__":
    main()
