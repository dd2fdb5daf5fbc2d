"""The HTTP service: BentoML 1.4 serving slimserve bundles from the BentoML model store.

Serving ONNX imports numpy, Pillow, onnxruntime, bentoml and the torch-free ``slimserve``
modules only; torch is imported lazily by the TorchScript backend alone.
"""
