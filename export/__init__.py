"""The export stage: a checkpoint becomes a versioned bundle of deployable variants.

``pipeline.export_bundle`` is the entry point; ``formats`` writes TorchScript and ONNX,
``checks`` measures parity and accuracy, ``registry`` puts variants into BentoML's model
store. The bundle layout and manifest schema live in ``slimserve.manifest`` (torch-free,
because the service reads them).
"""
