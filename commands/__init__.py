"""The composition root: the ``slimserve`` command and the end-to-end demo.

The only package that imports every stage (``training``, ``export``, ``service``,
``benchmarks``); the shared contracts in ``slimserve`` import none of them.
"""
