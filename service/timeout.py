"""BentoML's request timeout (``traffic.timeout``, 504) without a timer left behind per request.

BentoML 1.4's ``TimeoutMiddleware`` arms ``loop.call_later(timeout, ...)`` for every request
and never cancels it: each request leaves a timer handle, its future, a bound method and a
context alive for the whole timeout (60 s by default) after it was answered. At 400 requests
a second per worker that is ~9,000 live timers after 18 s of load (``gc.callbacks`` plus a
type count at each full collection, Fashion-MNIST CNN, c=32), tens of thousands at the
quiet machine's rate: a timer heap that grows with the request rate, and young objects that
survive into the oldest generation, so CPython's full collections come more often and take
longer, which is the tail of the c=32 latency. BentoML's config cannot turn the middleware
off (``traffic.timeout`` must be > 0), and the middleware sits outside the service's own.

The seam, as for uvicorn's protocol in ``service.connections``: BentoML's app imports
``TimeoutMiddleware`` from ``bentoml._internal.server.http.traffic`` each time it builds its
middleware list, in the worker, after this service module is imported. ``install`` points
that name at ``CancellingTimeoutMiddleware``: BentoML's own class and code, same task, same
504 answer and message, with the timer cancelled once the response starts or the request ends.
"""

import asyncio
from typing import Any

from bentoml._internal.server.http import traffic
from starlette.responses import JSONResponse

_STOCK = traffic.TimeoutMiddleware


class CancellingTimeoutMiddleware(_STOCK):
    """BentoML's ``TimeoutMiddleware.__call__`` with its timer cancelled when no longer needed."""

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

        async def _send(message: dict) -> None:
            if not waiter.done():
                waiter.set_result(None)
                timer.cancel()  # the response has started: BentoML no longer times it out
            await send(message)

        fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
        try:
            await waiter
        except TimeoutError:  # BentoML sets asyncio.TimeoutError, the same class since 3.11
            if fut.cancel():
                message = f"Not able to process the request in {self.timeout} seconds"
                await JSONResponse({"error": message}, status_code=504)(scope, receive, send)
        else:
            await fut
        finally:
            timer.cancel()


def install() -> None:
    """Make BentoML, when it builds a worker's middleware list next, use ``CancellingTimeoutMiddleware``."""
    traffic.TimeoutMiddleware = CancellingTimeoutMiddleware
