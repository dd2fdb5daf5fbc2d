"""The adaptive route: batching only where a batch pays, never waiting for company that is not
there, and BentoML's batcher's wait for company bounded by one model call."""

import asyncio

import pytest
from bentoml._internal.marshal.dispatcher import Optimizer

from service.batching import (
    MAX_BATCH_COST_RATIO,
    AdaptiveRoute,
    BatchDecision,
    BoundedWaitOptimizer,
    adaptive_dispatcher,
    decide,
    poll_every_loop_turn,
)


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


# ---------------------------------------------------------------- when to batch at all


def test_a_batch_that_costs_as_much_as_single_calls_turns_batching_off():
    cheap = decide(single_seconds=0.0004, batch_seconds=32 * 0.0004 * 0.98, batch_size=32)
    assert not cheap.enabled
    assert cheap.to_dict() == {"enabled": False, "reason": "batch 32 costs 0.98x of 32 single calls"}
    slower = decide(single_seconds=0.0004, batch_seconds=32 * 0.0005, batch_size=32)
    assert not slower.enabled and "1.25x" in slower.reason


def test_a_batch_that_saves_turns_batching_on():
    paying = decide(single_seconds=0.004, batch_seconds=32 * 0.001, batch_size=32)
    assert paying.enabled and paying.reason == "batch 32 costs 0.25x of 32 single calls"
    at_margin = decide(single_seconds=0.001, batch_seconds=8 * 0.001 * MAX_BATCH_COST_RATIO, batch_size=8)
    assert at_margin.enabled


def test_no_batching_when_the_model_cannot_take_a_batch_or_the_cap_is_one():
    assert not decide(0.001, None, 32).enabled
    assert "failed on a batch of 32" in decide(0.001, None, 32).reason
    assert decide(0.001, 0.0001, 1) == BatchDecision(False, "max_batch_size is 1")


def _route(enabled: bool, seconds: float, calls: list[tuple[str, int]]) -> AdaptiveRoute:
    """An adaptive route over BentoML's real dispatcher; ``calls`` records (path, images) per model call."""

    async def batched(items: tuple[list[int], ...]) -> list[list[int]]:
        calls.append(("batched", len(items)))
        await asyncio.sleep(seconds)
        return [[value * 10 for value in item] for item in items]

    async def direct(item: list[int]) -> list[int]:
        calls.append(("direct", 1))
        await asyncio.sleep(seconds)
        return [value * 10 for value in item]

    dispatcher = adaptive_dispatcher(2000, 8, fallback=lambda: None)
    decision = BatchDecision(enabled, "test")
    return AdaptiveRoute(decision, dispatcher, dispatcher(batched), direct, connections=lambda: 8)


def test_batching_off_sends_every_concurrent_request_straight_to_the_model():
    calls: list[tuple[str, int]] = []

    async def main() -> list[tuple[list[int], bool]]:
        route = _route(False, 0.005, calls)
        results = []
        for round_ in range(4):
            results += await asyncio.gather(*(route([round_ * 100 + i]) for i in range(8)))
        route.dispatcher.shutdown()
        return results

    results = asyncio.run(main())
    assert [r for r, _ in results] == [[(r * 100 + i) * 10] for r in range(4) for i in range(8)]
    assert not any(via_batcher for _, via_batcher in results)
    assert calls == [("direct", 1)] * 32


def test_batching_on_still_sends_a_lone_request_straight_to_the_model():
    """Sequential requests find the model idle and the queue empty: no wait for company."""
    calls: list[tuple[str, int]] = []

    async def main() -> list[tuple[list[int], bool]]:
        route = _route(True, 0.002, calls)
        results = [await route([i]) for i in range(10)]
        route.dispatcher.shutdown()
        return results

    results = asyncio.run(main())
    assert results == [([i * 10], False) for i in range(10)]
    assert calls == [("direct", 1)] * 10


def test_batching_on_queues_requests_that_arrive_together():
    """A burst: every request finds others on the route, so all queue in BentoML's dispatcher
    and are served in batches, each with its own rows."""
    calls: list[tuple[str, int]] = []

    async def main() -> list[tuple[list[int], bool]]:
        route = _route(True, 0.005, calls)
        results = []
        for round_ in range(6):
            results += await asyncio.gather(*(route([round_ * 100 + i]) for i in range(8)))
        route.dispatcher.shutdown()
        return results

    results = asyncio.run(main())
    assert [r for r, _ in results] == [[(r * 100 + i) * 10] for r in range(6) for i in range(8)]
    assert all(via_batcher for _, via_batcher in results)
    assert max(n for path, n in calls if path == "batched") > 1
    assert sum(n for _, n in calls) == 48


def test_batching_on_forms_batches_for_a_model_that_runs_in_place():
    """A fast model runs on the event loop and never yields; requests that arrive together
    must still meet in the batcher rather than each finding the route empty."""
    calls: list[tuple[str, int]] = []

    async def batched(items: tuple[list[int], ...]) -> list[list[int]]:
        calls.append(("batched", len(items)))
        return [[value + 1 for value in item] for item in items]

    async def direct(item: list[int]) -> list[int]:
        calls.append(("direct", 1))
        return [value + 1 for value in item]

    async def main() -> list[tuple[list[int], bool]]:
        dispatcher = adaptive_dispatcher(2000, 8, fallback=lambda: None)
        route = AdaptiveRoute(
            BatchDecision(True, "test"), dispatcher, dispatcher(batched), direct, connections=lambda: 8
        )
        results = []
        for round_ in range(6):
            results += await asyncio.gather(*(route([round_ * 100 + i]) for i in range(8)))
        results.append(await route([7]))  # alone again: straight to the model
        dispatcher.shutdown()
        return results

    results = asyncio.run(main())
    assert [r for r, _ in results[:-1]] == [[r * 100 + i + 1] for r in range(6) for i in range(8)]
    assert results[-1] == ([8], False)
    assert max(n for path, n in calls if path == "batched") > 1
    assert calls[-1] == ("direct", 1)


@pytest.mark.parametrize("every_loop_turn", [False, True])
def test_for_a_model_run_in_place_the_batcher_polls_every_loop_turn_not_every_ms(
    monkeypatch, every_loop_turn
):
    """BentoML's controller sleeps 1 ms whenever the model is busy or it waits for company;
    for a model that runs in place on the loop that tick is longer than a call. Bursts of 12
    with a cap of 8 leave 4 queued behind each full batch: polled every loop turn, they are
    still served in batches and no request waits on a 1 ms timer."""
    timed_sleeps: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(delay: float, *args, **kwargs):
        if delay > 0:
            timed_sleeps.append(delay)
        return await real_sleep(delay, *args, **kwargs)

    monkeypatch.setattr(asyncio, "sleep", recording_sleep)
    calls: list[tuple[str, int]] = []

    async def main() -> list[tuple[list[int], bool]]:
        route = _route(True, 0.0, calls)
        if every_loop_turn:
            poll_every_loop_turn(route.dispatcher)
        results = []
        for round_ in range(6):
            results += await asyncio.gather(*(route([round_ * 100 + i]) for i in range(12)))
        route.dispatcher.shutdown()
        return results

    results = asyncio.run(main())
    assert [r for r, _ in results] == [[(r * 100 + i) * 10] for r in range(6) for i in range(12)]
    sizes = [n for path, n in calls if path == "batched"]
    assert max(sizes) == 8 and sum(sizes) == 72
    if every_loop_turn:
        assert timed_sleeps == []
    else:  # BentoML's own tick, the wait this change removes
        assert timed_sleeps and set(timed_sleeps) == {0.001}


@pytest.mark.parametrize("open_connections", [0, 1, 2])
def test_on_a_worker_with_one_connection_a_request_goes_straight_without_a_loop_turn(open_connections):
    """With batching on, a request on a worker that has one connection open cannot have company
    (uvicorn serves a connection's requests in turn): it calls the model before anything else
    the loop has scheduled runs, as on the unbatched route. With two connections it gives the
    loop one turn first, so requests that arrived together can meet in the batcher."""
    order: list[str] = []

    async def direct(item: list[int]) -> list[int]:
        order.append("direct")
        return item

    async def batched(items: tuple[list[int], ...]) -> list[list[int]]:
        order.append("batched")
        return list(items)

    async def main() -> tuple[list[int], bool]:
        dispatcher = adaptive_dispatcher(2000, 8, fallback=lambda: None)
        route = AdaptiveRoute(
            BatchDecision(True, "test"), dispatcher, dispatcher(batched), direct, lambda: open_connections
        )
        asyncio.get_running_loop().call_soon(order.append, "other")
        result = await route([3])
        dispatcher.shutdown()
        return result

    assert asyncio.run(main()) == ([3], False)
    assert order == (["direct", "other"] if open_connections <= 1 else ["other", "direct"])
