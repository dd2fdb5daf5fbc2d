"""Keep-alive connections spread over the service's workers (``--balance-connections``).

Every worker accepts from one shared listening socket, and the kernel hands a new connection
to whichever worker's accept runs first; uvloop's libuv then accepts every connection
already pending in one turn of that worker's loop. A client that opens its connections at
once (an asyncio client gathering its first requests, wrk, k6, a proxy's upstream pool)
leaves most of them on one worker for as long as they are kept alive: 32 connections opened
in one burst against 2 workers split 24/8 to 29/3 (``slimserve bench burst``), and 32/0 in
2 of 4 runs on a slower CPU, the other worker idle. Under steady load a worker's queue is
its number of connections, so the fuller worker sets the latency. mosec has no such split
(one Rust front end queues for every worker); uvicorn and BentoML offer no knob.

The remedy HTTP/1.1 allows: a worker holding clearly more than its share of the server's
open connections answers the next request on one of them completely, with ``connection:
close``, and the client's reconnect lands on whichever worker accepts it; that repeats until
no worker is over. Long-lived connections are rebalanced this way elsewhere too (gRPC's
MAX_CONNECTION_AGE, Envoy's max_requests_per_connection), but those close connections by
age, not by how many a worker holds. "Clearly more" is a quarter of a share above it
(``allowance``): connections opened over a second (locust's users) land 13/19 to 22/10 of
32 on their own, and undoing those splits is churn, not balance. It is off by default
(``ServeConfig.balance_connections`` says why). The shares are counted in a table of one
slot per worker, a small file every worker maps; each worker writes only its own slot, so
no lock is needed.
"""

import contextlib
import math
import mmap
import os
import struct
import tempfile
from pathlib import Path

import psutil

SLOT = struct.Struct("<q")  # one worker's open connections, less those already told to close
SLACK = 0.25  # of a share: how far above its share a worker may stay (the module docstring says why)


def allowance(total: int, workers: int) -> int:
    """The most connections of ``total`` one of ``workers`` may hold before it sheds one:
    the ceiling of its share plus a quarter of a share (20 of 32 on 2 workers, 1 of 2)."""
    share = total / workers
    return math.ceil(share) + int(share * SLACK)


class ConnectionShares:
    """One worker's view of the table: it publishes its own count and reads everyone's."""

    def __init__(self, path: Path, index: int, workers: int) -> None:
        if not 0 <= index < workers:
            raise ValueError(f"worker index {index} outside 0..{workers - 1}")
        size = SLOT.size * workers
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(descriptor).st_size < size:  # the first worker here sizes it; zeros
                os.ftruncate(descriptor, size)
            self._table = mmap.mmap(descriptor, size)
        finally:
            os.close(descriptor)
        self.path = path
        self.workers = workers
        self._offset = SLOT.size * index
        self.closing = 0  # this worker's connections told to close that have not closed yet
        self.publish(0)

    def publish(self, open_connections: int) -> None:
        """Record this worker's open connections (those already told to close excluded)."""
        SLOT.pack_into(self._table, self._offset, open_connections - self.closing)

    def over_share(self, open_connections: int) -> bool:
        """Whether this worker holds more than its ``allowance`` of all open connections."""
        self.publish(open_connections)
        total = sum(count for (count,) in SLOT.iter_unpack(self._table))
        return open_connections - self.closing > allowance(total, self.workers)

    def close(self) -> None:
        """Leave the table (this worker's slot reads 0); the last worker out removes the file."""
        SLOT.pack_into(self._table, self._offset, 0)
        if not any(count for (count,) in SLOT.iter_unpack(self._table)):
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._table.close()


def table_path(server_pid: int) -> Path:
    """The table of the server process ``server_pid`` (BentoML's arbiter, every worker's
    parent): named by its pid and start time, so a later server reusing the pid starts afresh."""
    started = int(psutil.Process(server_pid).create_time() * 1000)
    folder = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path(tempfile.gettempdir())
    return folder / f"slimserve-connections-{server_pid}-{started}"


def join(worker_index: int | None, workers: int) -> ConnectionShares | None:
    """This worker's place in its server's table: None outside a BentoML worker
    (``worker_index`` is BentoML's 1-based index, None in the arbiter, ``bentoml build``
    and tests in process) and for a single worker, which has nobody to share with."""
    if worker_index is None or workers < 2 or worker_index > workers:
        return None
    return ConnectionShares(table_path(os.getppid()), worker_index - 1, workers)
