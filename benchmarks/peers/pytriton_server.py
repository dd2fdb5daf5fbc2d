"""PyTriton: NVIDIA Triton Inference Server (C++ HTTP front end and dynamic batcher) calling Python.

``python -m benchmarks.peers.pytriton_server --port P [--batched]``; settings in ``SLIMSERVE_PEER``.
Runs in its own virtual environment (see ``benchmarks.peers.venvs``): nvidia-pytriton 0.7
pins numpy < 2, which slimserve's environment does not have. Triton speaks the KServe v2
protocol, so a request is ``POST /v2/models/classifier/infer`` with the PNG as a base64
BYTES tensor in JSON, and the answer is the same top-5 JSON as a BYTES output.
"""

import json
import os
import sysconfig

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from benchmarks.peers.model import Classifier, b64_payload, server_arguments

MODEL = "classifier"


def make_infer(classifier: Classifier):
    @batch
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        payloads = [b64_payload({"image": item}) for item in image.reshape(-1)]
        answers = [json.dumps(answer).encode() for answer in classifier.predict(payloads)]
        return {"answer": np.array(answers, dtype=object).reshape(image.shape)}

    return infer


def use_this_libpython() -> None:
    """Put this interpreter's libpython first on the library path Triton's Python stub inherits.

    The stub links ``libpython3.X.so`` by name; where the system has another build of the
    same minor version (Debian's 3.11.2 next to a pyenv 3.11.7), it would run the other
    build's C core under this interpreter's standard library, and fail on the mismatch
    (``'_thread.RLock' object has no attribute '_recursion_count'``).
    """
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        libdir = sysconfig.get_config_var("LIBDIR")
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(
            filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")])
        )


def main() -> None:
    args, settings = server_arguments(__doc__, "--grpc-port", "--metrics-port")
    use_this_libpython()
    config = (
        ModelConfig(
            max_batch_size=settings.max_batch_size,
            batcher=DynamicBatcher(max_queue_delay_microseconds=round(settings.batch_wait_ms * 1000)),
        )
        if args.batched
        else ModelConfig(batching=False)
    )
    triton_config = TritonConfig(
        http_address="127.0.0.1", http_port=args.port, grpc_address="127.0.0.1", grpc_port=args.grpc_port,
        metrics_port=args.metrics_port, log_verbose=0,
    )  # fmt: skip
    with Triton(config=triton_config) as triton:
        triton.bind(
            model_name=MODEL,
            # One callable per model instance: Triton runs that many in parallel.
            infer_func=[
                make_infer(Classifier(settings, f"pytriton instance {i}")) for i in range(settings.workers)
            ],
            inputs=[Tensor(name="image", dtype=bytes, shape=(1,))],
            outputs=[Tensor(name="answer", dtype=bytes, shape=(1,))],
            config=config,
            strict=True,
        )
        triton.serve()


if __name__ == "__main__":
    main()
