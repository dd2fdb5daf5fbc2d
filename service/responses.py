"""The prediction routes' requests and answers as bare ASGI: no Starlette Request or Response.

Per request, Starlette builds a Request (and its Headers, QueryParams and State), routes
through its router, middleware and exception layers, and renders a Response object; on a
cheap model that layering cost more server CPU than ONNX Runtime (BENCHMARKS.md, issue
16). These routes read only what they use straight from the ASGI scope and messages
(what Starlette itself does underneath, ``starlette.requests``), keep Starlette's multipart
parser for forms (``Call.form``), and write their answer as the two ASGI messages a
Response would send. JSON is written by orjson, which writes NaN as null instead of
refusing it, so the routes check their numbers are finite before answering (``service.http``).
"""

from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import ClientDisconnect, Request

JSON_TYPE = (b"content-type", b"application/json")


class Call:
    """One request on a prediction route: its scope and receive channel, and what the
    envelope records of it (start time, the variant that answered, the image count)."""

    __slots__ = ("images", "receive", "scope", "start", "variant")

    def __init__(self, scope: dict, receive: Any, start: float) -> None:
        self.scope = scope
        self.receive = receive
        self.start = start
        self.variant = "unknown"
        self.images = 1

    def header(self, name: bytes) -> str:
        """The first value of a header (ASGI names are lower-case bytes), '' when absent."""
        for key, value in self.scope["headers"]:
            if key == name:
                return value.decode("latin-1")
        return ""

    def media_type(self) -> str:
        return self.header(b"content-type").split(";")[0].strip().lower()

    def query(self) -> dict[str, str]:
        """Query parameters, the last of repeated names winning (as Starlette's ``dict(query_params)``)."""
        text = self.scope["query_string"].decode("latin-1")
        return dict(parse_qsl(text, keep_blank_values=True)) if text else {}

    async def body(self) -> bytes:
        """The whole body, as ``Request.body()`` reads it: a disconnect mid-body raises ClientDisconnect."""
        chunks = []
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)

    def form(self, **limits: int) -> Any:
        """Starlette's multipart parser (and its limits) on this request: forms are rare on the
        hot path and the parser is the part of Starlette worth keeping."""
        return Request(self.scope, self.receive).form(**limits)


class Answer:
    """A JSON answer: status, content, extra headers (names lower-case)."""

    __slots__ = ("content", "headers", "status")

    def __init__(self, content: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.content = content
        self.headers = headers


def error_answer(status: int, message: str, headers: dict[str, str] | None = None) -> Answer:
    return Answer({"error": message}, status, headers)


async def send_answer(send: Any, answer: Answer) -> None:
    """The answer as the two ASGI messages Starlette's JSONResponse sends (same headers)."""
    body = orjson.dumps(answer.content)
    headers = [(b"content-length", str(len(body)).encode()), JSON_TYPE]
    if answer.headers:
        headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers.items()]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
