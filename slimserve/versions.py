"""The library versions recorded beside every artifact and benchmark figure.

Read from the installed distributions' metadata, so recording them imports nothing: the
benchmark parent stays torch-free, and locust (which patches the standard library with
gevent on import) is never imported by accident. A distribution that is not installed is
left out, so one list can name alternatives (``onnxruntime-gpu``, ``onnxruntime``).
"""

import platform
from collections.abc import Iterable
from importlib import metadata

import slimserve


def installed_versions(distributions: Iterable[str]) -> dict[str, str]:
    """``python``, this source's ``slimserve`` and each named distribution that is installed."""
    found = {"python": platform.python_version(), "slimserve": slimserve.__version__}
    for name in distributions:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found
