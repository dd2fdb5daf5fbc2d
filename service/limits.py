"""Per-request bounds BentoML has no setting for: body size, body stalls, JSON shape.

A declared Content-Length over the limit is refused before any byte is read; a chunked
or lying body is counted as it streams and cut off at the limit. A body that stops
arriving (a Content-Length larger than what is sent, a client trickling bytes) is
answered after ``idle_timeout_s`` instead of holding a worker slot until BentoML's
60 s request timeout answers 504.
"""

import asyncio
import json
import math
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import RequestError

CLIP_CHARS = 80


def clip(value: Any) -> str:
    """repr() of a client-sent value, cut to CLIP_CHARS so an error never echoes a megabyte back."""
    text = repr(value)
    return text if len(text) <= CLIP_CHARS else f"{text[:CLIP_CHARS]}... ({len(text)} characters)"


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, iteratively (the value may be as deep as the parser allowed)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            todo.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse_json(body: bytes, max_depth: int, max_number_chars: int) -> Any:
    """The stdlib parser with every failure a 400: numbers bounded in length and finite, depth bounded.

    json.loads recurses per nesting level (10 000 levels raise RecursionError) and turns
    1e400 into inf and a 5000-digit integer into a ValueError; none of those may reach
    a route as a 500.
    """

    def number(text: str, kind: type) -> int | float:
        if len(text) > max_number_chars:
            raise RequestError(400, f"a JSON number is longer than {max_number_chars} characters")
        value = kind(text)
        if isinstance(value, float) and not math.isfinite(value):
            raise RequestError(400, f"the JSON number {clip(text)} is out of range")
        return value

    def constant(name: str) -> float:
        raise RequestError(400, f"{name} is not valid JSON")

    try:
        value = json.loads(
            body,
            parse_int=lambda text: number(text, int),
            parse_float=lambda text: number(text, float),
            parse_constant=constant,
        )
    except RecursionError:
        raise RequestError(400, f"the JSON body is nested deeper than {max_depth} levels") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RequestError(400, "the body is not valid JSON") from None
    if _depth(value) > max_depth:
        raise RequestError(400, f"the JSON body is nested deeper than {max_depth} levels")
    return value


class BodyAborted(Exception):
    """Raised from receive() to unwind the app; the middleware answers. Routes must let it pass."""


class BodyTooLarge(BodyAborted):
    pass


def json_messages(status: int, message: str) -> tuple[Message, Message]:
    body = json.dumps({"error": message}).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }
    return start, {"type": "http.response.body", "body": body}


class BodyStalled(BodyAborted):
    pass


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, idle_timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.idle_timeout_s = idle_timeout_s

    def _message(self) -> str:
        return f"request body too large: the limit is {self.max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared: int | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    for message in json_messages(413, self._message()):
                        await send(message)
                    return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            try:
                # asyncio's own deadline: anyio.fail_after (a cancel scope) cost ~25 us per
                # receive here, more than the rest of this middleware together.
                async with asyncio.timeout(self.idle_timeout_s):
                    message = await receive()
            except TimeoutError:
                raise BodyStalled from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                for message in json_messages(413, self._message()):
                    await send(message)
        except BodyStalled:
            if not started:
                for message in self._stalled(declared, received):
                    await send(message)

    def _stalled(self, declared: int | None, received: int) -> tuple[Message, Message]:
        waited = f"no body bytes for {self.idle_timeout_s:g} s"
        if declared is not None and received < declared:
            message = (
                f"request body shorter than its Content-Length: {received} of {declared} bytes, then {waited}"
            )
            return json_messages(400, message)
        return json_messages(408, f"request body timed out: {waited}")
