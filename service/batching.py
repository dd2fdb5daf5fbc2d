"""Adaptive batching that never loses to the unbatched route.

BentoML's adaptive batcher (its ``CorkDispatcher``, what ``@bentoml.api(batchable=True)``
uses) is driven here directly: that decorator only batches its own pydantic-typed route,
which cannot take raw or base64 images with JSON errors. Two decisions sit in front of it:

* at start-up, per variant: a batch is used only where it buys something, i.e. the
  model's measured per-image cost at batch N is clearly below its cost at batch 1. For a
  cheap model a batch of 32 costs about 32 single calls, and the queue, the cork wait and
  the split of the answers then cost CPU and latency for nothing;
* per request: where batching is on, a request that finds no other request on the route
  (none queued, none in a running batch or a direct call) goes straight to the model,
  since there is no company to wait for; a request on a worker with a single open
  connection does so without even the one event-loop turn that lets company arrive, so
  a lone client's request does exactly the unbatched route's work.
"""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from bentoml._internal.marshal.dispatcher import CorkDispatcher, Optimizer

T = TypeVar("T")
R = TypeVar("R")
# A batch must cost at most this share of as many single calls to be worth queueing for:
# start-up timings move by a few percent between runs, and the queue itself costs CPU.
MAX_BATCH_COST_RATIO = 0.9


class BoundedWaitOptimizer(Optimizer):
    """BentoML's batching optimizer, its wait for more requests capped at one batch-1 call.

    The stock optimizer sets that wait to the mean queue wait it has observed. Under load
    that is mostly time spent behind the running batch; afterwards a lone client waits as
    long for company that does not come, and its own waits keep the mean up. Measured on
    ResNet-20 fp32 (TorchScript): a lone client's p50 on the adaptive route was 3.8 ms
    before a concurrency-64 run and 19-24 ms over the minutes after it. Waiting longer than
    one single-image model call for company costs a lone client more than batching can save
    it, and under load requests gather behind the batch that is running anyway.
    """

    def trigger_refresh(self) -> None:
        super().trigger_refresh()
        self.wait = min(self.wait, self.o_a + self.o_b)


def adaptive_dispatcher(
    max_latency_ms: int, max_batch_size: int, fallback: Callable[[], Any]
) -> CorkDispatcher:
    dispatcher = CorkDispatcher(
        max_latency_in_ms=max_latency_ms,
        max_batch_size=max_batch_size,
        fallback=fallback,
        get_batch_size=len,
    )
    dispatcher.optimizer = BoundedWaitOptimizer(dispatcher.max_latency)
    return dispatcher


def poll_every_loop_turn(dispatcher: CorkDispatcher) -> None:
    """Make BentoML's batcher re-check its queue every event-loop turn instead of every 1 ms.

    Meant for a model that runs in place on the event loop (under ``INLINE_MODEL_SECONDS``
    a call). BentoML's controller sleeps ``TICKET_INTERVAL`` (1 ms) each time it finds the
    model busy or decides to wait for company; for a 0.3 ms model that tick is three model
    calls. With an interval of 0 the controller looks again after one
    loop turn, in which the loop reads the sockets, so requests that arrive still join; its
    wait for company stays bounded by ``BoundedWaitOptimizer`` (one batch-1 call), so the
    turns it spins are bounded too. A model that runs on a thread keeps the 1 ms tick: a
    controller spinning on the loop would take the CPU that thread needs.
    """
    dispatcher.TICKET_INTERVAL = 0.0


@dataclass(frozen=True)
class BatchDecision:
    """Whether a variant's adaptive route queues for batches, and the measurement behind it."""

    enabled: bool
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {"enabled": self.enabled, "reason": self.reason}


def decide(single_seconds: float, batch_seconds: float | None, batch_size: int) -> BatchDecision:
    """Batch only when one call of ``batch_size`` images costs clearly less than that many single calls.

    ``batch_seconds`` is None when the model could not run a batch at all (a graph fixed
    to batch 1, say): requests then go one at a time, as the model allows.
    """
    if batch_size < 2:
        return BatchDecision(False, f"max_batch_size is {batch_size}")
    if batch_seconds is None:
        return BatchDecision(False, f"the model failed on a batch of {batch_size} at start-up")
    ratio = batch_seconds / (batch_size * single_seconds) if single_seconds > 0 else 1.0
    reason = f"batch {batch_size} costs {ratio:.2f}x of {batch_size} single calls"
    return BatchDecision(ratio <= MAX_BATCH_COST_RATIO, reason)


class AdaptiveRoute(Generic[T, R]):
    """One variant's adaptive route: straight to the model, or through BentoML's batcher.

    ``direct`` runs one request's input as a call of its own; ``batched`` is the
    dispatcher-wrapped callback. A request is queued only when batching pays for this
    model and another request is on the route (queued, in a running batch or in a direct
    call); a request alone on it goes straight to the model, as on the unbatched route.
    ``connections`` counts the worker's open connections: with at most one, nothing can
    join, and the request skips even the loop turn it would otherwise give company.
    """

    def __init__(
        self,
        decision: BatchDecision,
        dispatcher: CorkDispatcher,
        batched: Callable[[T], Awaitable[R]],
        direct: Callable[[T], Awaitable[R]],
        connections: Callable[[], int],
    ) -> None:
        self.decision = decision
        self.dispatcher = dispatcher
        self.batched = batched
        self.direct = direct
        self.connections = connections  # open connections on this worker (service.connections)
        self.inside = 0  # requests on this route now

    async def __call__(self, item: T) -> tuple[R, bool]:
        """The result and whether it went through the batcher."""
        if not self.decision.enabled:
            return await self.direct(item), False
        self.inside += 1
        try:
            if self.inside == 1 and self.connections() <= 1:
                # No other request can be on this worker: uvicorn serves one connection's
                # requests one after another. Straight to the model, without a loop turn.
                return await self.direct(item), False
            # One turn of the event loop first: a model that runs in place on the loop never
            # yields, so requests that arrived together would otherwise each find the route
            # empty and none would ever be batched. After it, they are all counted here.
            await asyncio.sleep(0)
            if self.inside == 1:
                return await self.direct(item), False
            return await self.batched(item), True
        finally:
            self.inside -= 1
