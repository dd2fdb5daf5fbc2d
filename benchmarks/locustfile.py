"""The locust user the HTTP benchmark runs (``locust -f`` loads this file in its own process).

Every user POSTs real image files as raw bodies, back to back (closed loop, no think
time), so concurrency equals the number of users. Latencies are taken from locust's
``request`` event, which carries the unrounded time (its own statistics round to whole
milliseconds below 100 ms, too coarse for a 1.5 ms budget), and written as JSON when the
run ends. Each user's first request opens its connection and is not counted.

CPU is read at the start and end of the run, for this process and for the whole machine,
so the report can say what each request cost the load generator and everything else: on a
machine that runs both, that is what bounds the server's throughput.

The user drives geventhttpclient's ``HTTPClient`` (the client under locust's
``FastHttpUser``) itself and reports each request through locust's ``request`` event, the
way locust documents custom clients. ``FastHttpUser``'s session adds URL joining, cookie
handling, redirects and a response wrapper on every request: on this 2-core machine, where
the load generator shares the cores with the server, that cost 0.44-0.53 ms of client CPU
per request at c=1 against 0.28-0.44 here (busy machine, the bare reference server). The
figure is still what a client sees: from before the request is written to after the whole
answer is read, on one kept-alive connection per user.
"""

import itertools
import json
import mimetypes
import time
from pathlib import Path
from typing import Any

import gevent
from geventhttpclient import URL, HTTPClient
from locust import User, constant, events, task

from benchmarks.machine import busy_cpu_seconds

STATE: dict[str, Any] = {
    "latencies_ms": [],
    "errors": {},
    "starts": [],
    "ends": [],
    "sent": 0,
    "warmups": 0,
    "cpu": {},
}


def _cpu_reading() -> dict[str, float | None]:
    return {"load_generator_s": time.process_time(), "machine_s": busy_cpu_seconds()}


@events.test_start.add_listener
def _cpu_at_start(**_: Any) -> None:
    STATE["cpu"]["start"] = _cpu_reading()


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--slim-path", default="/predict", help="endpoint path and query")
    parser.add_argument("--slim-images", help="file listing one image path per line")
    parser.add_argument("--slim-max-requests", type=int, default=0, help="stop after this many requests")
    parser.add_argument("--slim-out", help="where to write the JSON results")


def _payloads(list_file: str) -> list[tuple[bytes, str]]:
    paths = [Path(line) for line in Path(list_file).read_text().splitlines() if line.strip()]
    return [
        (path.read_bytes(), mimetypes.guess_type(path.name)[0] or "application/octet-stream")
        for path in paths
    ]


@events.request.add_listener
def _record(
    response_time: float, exception: Exception | None, context: dict, response=None, **_: Any
) -> None:
    if context.get("warmup"):
        STATE["warmups"] += 1
        return
    now = time.perf_counter()
    STATE["starts"].append(now - response_time / 1000.0)
    STATE["ends"].append(now)
    if exception is None:
        STATE["latencies_ms"].append(response_time)
    else:
        status = getattr(response, "status_code", 0) or 0
        key = str(status) if status else type(exception).__name__
        STATE["errors"][key] = STATE["errors"].get(key, 0) + 1


@events.quitting.add_listener
def _write(environment, **_: Any) -> None:
    STATE["cpu"]["end"] = _cpu_reading()
    out = environment.parsed_options.slim_out
    if out:
        Path(out).write_text(json.dumps(STATE))


class _Status:
    """What the ``request`` listener reads from an answer: its status code."""

    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


class ImagePoster(User):
    wait_time = constant(0)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.path = options.slim_path
        self.limit = options.slim_max_requests
        self.images = itertools.cycle(_payloads(options.slim_images))
        url = URL(self.host)
        # One connection per user, kept alive; FastHttpUser's own timeouts.
        self.http = HTTPClient(url.host, url.port, concurrency=1, connection_timeout=60, network_timeout=60)
        self._post(warmup=True)

    def on_stop(self) -> None:
        self.http.close()

    def _post(self, warmup: bool = False) -> None:
        body, content_type = next(self.images)
        status, exception, length = None, None, 0
        start = time.perf_counter()
        try:
            response = self.http.request("POST", self.path, body=body, headers={"Content-Type": content_type})
            length = len(response.read())
            status = _Status(response.status_code)
            if response.status_code >= 400:
                exception = RuntimeError(f"HTTP {response.status_code}")
        except Exception as exc:  # connection refused/reset, timeouts: counted by type
            exception = exc
        self.environment.events.request.fire(
            request_type="POST", name=self.path, response_time=(time.perf_counter() - start) * 1000,
            response_length=length, exception=exception, context={"warmup": warmup}, response=status,
        )  # fmt: skip

    @task
    def predict(self) -> None:
        if self.limit and STATE["sent"] >= self.limit:
            gevent.spawn(self.environment.runner.quit)  # not from this greenlet: quit kills the users
            gevent.sleep(1)
            return
        STATE["sent"] += 1
        self._post()
