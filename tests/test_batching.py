"""The adaptive batcher's wait for company stays bounded by one model call."""

import asyncio

import pytest
from bentoml._internal.marshal.dispatcher import Optimizer

from service.batching import BoundedWaitOptimizer, adaptive_dispatcher


def _after_a_burst(optimizer: Optimizer) -> Optimizer:
    """50 dispatches whose first request had queued 20 ms, for a 2 ms batch-1 model call:
    what the optimizer records once a burst has made requests wait."""
    for _ in range(optimizer.N_KEPT_SAMPLE + optimizer.N_SKIPPED_SAMPLE):
        optimizer.log_outbound(n=1, wait=0.020, duration=0.002)
    optimizer.trigger_refresh()
    return optimizer


def test_stock_optimizer_keeps_the_burst_wait_and_ours_does_not():
    stock = _after_a_burst(Optimizer(max_latency=2.0))
    assert stock.wait > 0.019  # the wait every later request would be held for
    bounded = _after_a_burst(BoundedWaitOptimizer(max_latency=2.0))
    assert bounded.wait <= bounded.o_a + bounded.o_b + 1e-9
    assert bounded.wait < 0.0025


def test_bounded_wait_is_one_batch1_call_and_a_shorter_observed_wait_is_kept():
    """The cap is the fitted batch-1 call (2 ms here), not zero; below it the stock wait stands."""
    bounded = _after_a_burst(BoundedWaitOptimizer(max_latency=2.0))
    assert bounded.o_a + bounded.o_b == pytest.approx(0.002)
    assert bounded.wait == pytest.approx(0.002)
    calm_stock, calm_bounded = Optimizer(max_latency=2.0), BoundedWaitOptimizer(max_latency=2.0)
    for optimizer in (calm_stock, calm_bounded):
        for _ in range(optimizer.N_KEPT_SAMPLE):
            optimizer.log_outbound(n=1, wait=0.0005, duration=0.002)
        optimizer.trigger_refresh()
    assert calm_bounded.wait == pytest.approx(calm_stock.wait) == pytest.approx(0.0005)


def test_dispatcher_batches_concurrent_requests_with_the_bounded_optimizer():
    """BentoML's own dispatcher, driven as the routes drive it: requests that arrive while a
    batch runs are served together, each gets its own rows back."""
    sizes: list[int] = []

    async def model(items: tuple[list[int], ...]) -> list[list[int]]:
        sizes.append(len(items))
        await asyncio.sleep(0.005)
        return [[value * 10 for value in item] for item in items]

    async def main() -> list[list[int]]:
        dispatcher = adaptive_dispatcher(2000, 8, fallback=lambda: None)
        assert isinstance(dispatcher.optimizer, BoundedWaitOptimizer)
        batched = dispatcher(model)
        results = []
        for round_ in range(6):
            results += await asyncio.gather(*(batched([round_ * 100 + i]) for i in range(8)))
        dispatcher.shutdown()
        return results

    results = asyncio.run(main())
    assert results == [[(r * 100 + i) * 10] for r in range(6) for i in range(8)]
    assert max(sizes) > 1 and sum(sizes) == 48


def test_dispatcher_never_batches_more_than_the_cap():
    """12 requests at once with a cap of 8: once the dispatcher has warmed up, a full batch of
    exactly 8 goes out and the other 4 wait for the next call."""
    sizes: list[int] = []

    async def model(items: tuple[list[int], ...]) -> list[list[int]]:
        sizes.append(len(items))
        await asyncio.sleep(0.005)
        return [[value + 1 for value in item] for item in items]

    async def main() -> list[list[int]]:
        dispatcher = adaptive_dispatcher(2000, 8, fallback=lambda: None)
        batched = dispatcher(model)
        results = []
        for round_ in range(6):
            results += await asyncio.gather(*(batched([round_ * 100 + i]) for i in range(12)))
        dispatcher.shutdown()
        return results

    results = asyncio.run(main())
    assert results == [[r * 100 + i + 1] for r in range(6) for i in range(12)]
    assert max(sizes) == 8 and sum(sizes) == 72
