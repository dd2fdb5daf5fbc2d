"""`slimserve bench peers`: the same model served by other Python serving frameworks, side by side.

Every peer does the same work per request as slimserve's ``/predict`` route: image bytes
in, the service's own torch-free decode and preprocessing (``service.preprocess``), the
variant's ONNX file on ONNX Runtime CPU with the service's session options, softmax
top-5 JSON out. Each peer is a small server module here, written with its framework's
documented API; they are driven one at a time by the same locust load generator as
``slimserve bench http``. The frameworks are an optional extra: ``pip install -e '.[peers]'``.
"""
