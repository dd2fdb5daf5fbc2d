"""Benchmarks: which variant to deploy on this machine, and what the service holds under load.

``slimserve bench models`` times every variant x runtime x batch size in-process;
``slimserve bench http`` drives the running service with locust. Both write JSON,
Markdown and PNG plots.
"""
