"""LitServe: FastAPI front end, the model in worker processes fed through queues.

``python -m benchmarks.peers.litserve_server --port P [--batched]``; settings in ``SLIMSERVE_PEER``.
LitServe reads a request as JSON or a form (never a raw body), so the image comes as
``{"image": base64}``: the benchmark sends the same PNG files base64-encoded.
"""

from typing import Any

import litserve as ls

from benchmarks.peers.model import Classifier, PeerSettings, b64_payload, server_arguments


class ImageAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.classifier = Classifier(PeerSettings.from_env(), f"litserve worker on {device}")

    def decode_request(self, request: dict[str, Any]) -> bytes:
        return b64_payload(request)

    def batch(self, inputs: list[bytes]) -> list[bytes]:
        return inputs  # the classifier takes the list of payloads and stacks the decoded images

    def predict(self, x: Any) -> Any:
        if isinstance(x, list):
            return self.classifier.predict(x)
        return self.classifier.predict([x])[0]

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


def main() -> None:
    args, settings = server_arguments(__doc__)
    batching = (
        {"max_batch_size": settings.max_batch_size, "batch_timeout": settings.batch_wait_ms / 1000}
        if args.batched
        else {}
    )
    api = ImageAPI(api_path="/predict", **batching)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=settings.workers, timeout=30)
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
