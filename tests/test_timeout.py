"""BentoML's request timeout as ``service.timeout`` installs it: the same 504, no timer left per request."""

import asyncio
import gc
import json

from bentoml._internal.server.base_app import BaseAppFactory

from service.timeout import CancellingTimeoutMiddleware, install


def _app(delay_s: float):
    async def app(scope: dict, receive, send) -> None:
        await asyncio.sleep(delay_s)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def _serve(middleware: CancellingTimeoutMiddleware) -> tuple[list[dict], int]:
    """The messages sent for one request, and the timers still armed once it is answered."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    async def main() -> int:
        await middleware({"type": "http", "path": "/", "method": "GET", "headers": []}, receive, send)
        await asyncio.sleep(0)  # a timed-out app's task unwinds its cancellation (and its own sleep)
        return sum(isinstance(o, asyncio.TimerHandle) and not o.cancelled() for o in gc.get_objects())

    return sent, asyncio.run(main())


def test_an_answered_request_leaves_no_timer_armed():
    """BentoML's own middleware leaves its 60 s timer armed after the answer (this count is 1)."""
    sent, armed = _serve(CancellingTimeoutMiddleware(_app(0), timeout=60))
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [200]
    assert armed == 0


def test_a_request_past_the_timeout_is_still_answered_504_as_bentoml_does():
    sent, armed = _serve(CancellingTimeoutMiddleware(_app(5), timeout=0.05))
    assert sent[0]["status"] == 504
    assert json.loads(sent[1]["body"]) == {"error": "Not able to process the request in 0.05 seconds"}
    assert armed == 0


def test_bentoml_builds_its_middleware_list_with_the_cancelling_timeout_once_installed():
    class Factory(BaseAppFactory):
        name = "probe"

    install()
    factory = Factory(timeout=60)
    assert [m.cls for m in factory.middlewares] == [CancellingTimeoutMiddleware]
