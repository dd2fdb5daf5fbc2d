"""A server this process starts on loopback: a free port, and waiting until ``/readyz`` is 200.

Shared by ``slimserve serve`` (the BentoML server) and the HTTP benchmark (its bare
reference server); the standard library only, so neither side pulls in the other.
"""

import contextlib
import socket
import subprocess
import time
import urllib.error
import urllib.request

from slimserve.errors import SlimserveError


def free_port() -> int:
    """A loopback port nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout: float, *, server: str = "the server") -> float:
    """Seconds until ``url/readyz`` answers 200; raises if ``process`` exits first or the
    timeout passes (``server`` names it in the message)."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if process.poll() is not None:
            raise SlimserveError(f"{server} exited with code {process.returncode} before it was ready")
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
            urllib.request.urlopen(f"{url}/readyz", timeout=1) as response,
        ):
            if response.status == 200:
                return time.perf_counter() - start
        time.sleep(0.1)
    raise SlimserveError(f"{server} was not ready after {timeout:.0f} s")
