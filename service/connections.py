"""Bounds on connections that BentoML leaves to uvicorn and does not expose: a deadline and
a size limit for the request head, and a cap on open connections per worker.

BentoML 1.4 builds ``uvicorn.Config`` itself in each worker (``_bentoml_impl/worker/service.py``)
and passes on only ``backlog``, ``timeout_keep_alive`` and ``timeout_graceful_shutdown``.
uvicorn has no header timeout at all: a client that sends its request line and headers one
byte a second keeps its connection (and a file descriptor) for ever, because the keep-alive
timer is cancelled by the first byte and nothing else is armed; httptools' parser does not
bound the size of the head either; and ``limit_concurrency`` is not reachable through
BentoML. None of this can be done in ASGI middleware: the app only sees a request once its
head is complete.

The least invasive seam: the worker imports this service (and so this module) before it
builds ``uvicorn.Config``, and ``Config.load`` resolves the protocol class by name from
``uvicorn.config.HTTP_PROTOCOLS`` only then. ``install`` points the ``auto`` and
``httptools`` names at ``GuardedHttpProtocol``, uvicorn's own httptools protocol (the one
``auto`` picks, httptools being a dependency) with three additions, and a response head
written together with its body (``HeadWithBody``), and, with ``--balance-connections``,
keep-alive connections spread over the workers (``service.balance``); everything else,
keep-alive, pipelining, graceful shutdown, is uvicorn's code unchanged.
"""

import asyncio
import json
import logging
from typing import ClassVar

import uvicorn.config
from bentoml._internal.context import server_context
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service import balance

logger = logging.getLogger("slimserve.service")
PROTOCOL_PATH = f"{__name__}:GuardedHttpProtocol"
REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}


def _raw_response(status: int, message: str) -> bytes:
    """A complete HTTP/1.1 answer written straight to the socket: there is no request
    (yet) for uvicorn's ASGI cycle to answer, so this is the only way to say why."""
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {REASONS[status]}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class HeadWithBody:
    """The transport as one response's cycle sees it: the response head is held back and
    written together with the body that follows it in the same step, one write instead of two.

    uvicorn writes a response's head the moment ``http.response.start`` arrives and its body
    on the next message: two ``send`` calls, two TCP segments, two wake-ups of the client.
    py-spy on a worker at c=1 (Fashion-MNIST CNN, busy 2-core host) put 21% of its samples in
    the head's write and 7% in the body's. A head with no body in the same step (HEAD, a
    stream that waits) goes out on the next loop turn; an informational head (``100
    Continue``) at once, since the client waits for it before it sends the body.
    """

    __slots__ = ("_first", "_head", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head = b""
        self._first = True

    def write(self, data: bytes) -> None:
        if self._first and not data.startswith(b"HTTP/1.1 1"):
            self._first = False
            self._head = data
            asyncio.get_running_loop().call_soon(self._flush)
            return
        if self._head:
            data, self._head = self._head + data, b""
        self._transport.write(data)

    def _flush(self) -> None:
        head, self._head = self._head, b""
        if head and not self._transport.is_closing():
            self._transport.write(head)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str):  # is_closing, get_extra_info, ...: the transport's own
        return getattr(self._transport, name)


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a request-head deadline, a head size limit, a
    connection cap and the workers' connection shares. Settings are class attributes, set
    once per worker by ``install``."""

    header_timeout_s: ClassVar[float] = 10.0
    max_header_bytes: ClassVar[int] = 64 * 1024
    max_connections: ClassVar[int] = 1024
    shares: ClassVar[balance.ConnectionShares | None] = None

    _head_timer: asyncio.TimerHandle | None = None
    _head_bytes = 0
    _told_to_close = False  # this connection's current answer says `connection: close`
    # uvicorn's set of this worker's open connections (one set per server, shared by its
    # protocols), kept once the first connection is made: ``open_connections`` reads it.
    worker_connections: ClassVar[set | None] = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        GuardedHttpProtocol.worker_connections = self.connections
        if len(self.connections) > self.max_connections:
            logger.warning("refused a connection: %d open, the limit is %d", len(self.connections) - 1,
                           self.max_connections)  # fmt: skip
            self._refuse(503, f"too many open connections: the limit is {self.max_connections} per worker")
            return
        if self.shares is not None:
            self.shares.publish(len(self.connections))
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)
        if self.shares is not None:
            if self._told_to_close:
                self.shares.closing -= 1
            self.shares.publish(len(self.connections))

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_timer is None or self.transport.is_closing():
            return  # the head is complete (or the connection is already being closed)
        self._head_bytes += len(data)
        if self._head_bytes > self.max_header_bytes:
            self._refuse(431, f"request head larger than {self.max_header_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # a new request on a kept-alive connection: its own deadline
            self._arm_head_deadline()

    def on_headers_complete(self) -> None:
        self._cancel_head_deadline()
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not before:  # a new request's cycle (its ASGI task has not run yet)
            self.cycle.transport = HeadWithBody(self.transport)  # type: ignore[assignment]
            self._balance()

    def _balance(self) -> None:
        """Answer this request with ``connection: close`` if this worker holds more than its
        allowance of the server's connections (``service.balance``). Only a request that starts at
        once and would keep the connection alive: a pipelined one behind it would be lost
        with the connection, and a lone connection is never more than its share."""
        if (
            self.shares is None
            or self._told_to_close
            or len(self.connections) < 2
            or self.pipeline
            or not self.cycle.keep_alive
            or not self.shares.over_share(len(self.connections))
        ):
            return
        self.cycle.keep_alive = False  # uvicorn adds `connection: close` and closes after the answer
        self._told_to_close = True
        self.shares.closing += 1
        self.shares.publish(len(self.connections))

    def _arm_head_deadline(self) -> None:
        self._head_bytes = 0
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _cancel_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head trickles in behind a response still being sent: let that
            # response finish, then uvicorn closes the connection instead of reading on.
            self.cycle.keep_alive = False
            return
        self._refuse(408, f"request head not received within {self.header_timeout_s:g} s")

    def _refuse(self, status: int, message: str) -> None:
        self._cancel_head_deadline()
        self.transport.write(_raw_response(status, message))
        self.transport.close()


def open_connections() -> int:
    """Connections open on this worker now (0 before the first one).

    With one connection open no other request can be in flight here (uvicorn serves a
    connection's pipelined requests one after another), which the adaptive route uses
    to skip its wait for company."""
    connections = GuardedHttpProtocol.worker_connections
    return 0 if connections is None else len(connections)


def leave_shares() -> None:
    """This worker leaves the connection shares (at shutdown: ``Slimserve``'s on_shutdown)."""
    shares, GuardedHttpProtocol.shares = GuardedHttpProtocol.shares, None
    if shares is not None:
        shares.close()


def install(
    header_timeout_s: float, max_header_bytes: int, max_connections: int, balance_workers: int
) -> None:
    """Make uvicorn, when BentoML's worker configures it next, use ``GuardedHttpProtocol``;
    ``balance_workers`` > 1 spreads keep-alive connections over that many workers."""
    GuardedHttpProtocol.header_timeout_s = header_timeout_s
    GuardedHttpProtocol.max_header_bytes = max_header_bytes
    GuardedHttpProtocol.max_connections = max_connections
    GuardedHttpProtocol.shares = balance.join(server_context.worker_index, balance_workers)
    for name in ("auto", "httptools"):
        uvicorn.config.HTTP_PROTOCOLS[name] = PROTOCOL_PATH
