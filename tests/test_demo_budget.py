"""The demo's one time budget (commands.demo_budget): pure arithmetic, fast tier."""

import pytest

from benchmarks.settings import ModelBenchSettings
from commands.demo_budget import (
    BENCH_ROUNDS,
    FLOOR,
    FULL,
    MIN_EPOCH_IMAGES,
    MIN_SCALE,
    PHASES,
    TRAIN_SHARE,
    PhaseClock,
    Plan,
    Speeds,
    cuts,
    fit_budget,
    fit_later,
    later_at,
    later_costs,
    plan_demo,
)

TRAIN, TEST, EPOCHS = 60_000, 10_000, 4


def test_each_epoch_s_evaluation_counts_against_the_budget():
    # 70 s per whole epoch (60 s of images + 10 s of evaluation): two epochs of 40,000 fill 100 s.
    assert fit_budget(1000.0, 100.0, 4, 60_000, epoch_overhead_s=10.0) == Plan(2, 40_000, 100.0)
    # Without the overhead the same budget buys 50,000 images per epoch.
    assert fit_budget(1000.0, 100.0, 4, 60_000) == Plan(2, 50_000, 100.0)


def test_a_fast_machine_keeps_every_default_and_fits():
    speeds = Speeds(train_images_per_s=3000.0, eval_images_per_s=8000.0)
    plan = plan_demo(240.0, 20.0, speeds, EPOCHS, TRAIN, TEST)
    assert plan.later == later_at(1.0, speeds, TRAIN, TEST)
    assert (plan.later.eval_images, plan.later.calibration_images) == (TEST, FULL["calibration"])
    assert plan.training.epochs >= 2
    assert sum(plan.estimates.values()) <= 220.0 + 1e-6
    assert not [c for c in cuts(plan, EPOCHS, TRAIN, TEST) if not c.startswith("training")]


def test_a_slower_machine_cuts_the_later_phases_before_training_drops_below_its_share():
    speeds = Speeds(train_images_per_s=900.0, eval_images_per_s=2500.0)
    plan = plan_demo(240.0, 25.0, speeds, EPOCHS, TRAIN, TEST)
    assert MIN_SCALE < plan.later.scale < 1
    assert sum(later_costs(plan.later, speeds).values()) <= (1 - TRAIN_SHARE) * 215.0 + 1e-6
    assert sum(plan.estimates.values()) <= 215.0 + 1e-6
    said = "; ".join(cuts(plan, EPOCHS, TRAIN, TEST))
    for phase in ("training", "accuracy gates", "INT8 calibration", "pruned fine-tuning", "benchmark"):
        assert phase in said
    assert f"{BENCH_ROUNDS} rounds kept" in said


@pytest.mark.parametrize("train_rate", [100.0, 300.0, 900.0, 1500.0, 3000.0, 6000.0])
@pytest.mark.parametrize("eval_rate", [300.0, 1000.0, 3000.0, 10_000.0])
def test_the_plan_fits_the_budget_or_sits_at_its_floors(train_rate, eval_rate):
    speeds = Speeds(train_images_per_s=train_rate, eval_images_per_s=eval_rate)
    plan = plan_demo(240.0, 30.0, speeds, EPOCHS, TRAIN, TEST)
    later = plan.later
    at_floors = (
        later.scale == MIN_SCALE
        and (plan.training.epochs, plan.training.images) == (1, MIN_EPOCH_IMAGES)
        and later.eval_images == FLOOR["eval_images"]
        and later.bench_max_seconds == FLOOR["bench_s"]
    )
    assert sum(plan.estimates.values()) <= 210.0 + 1e-6 or at_floors
    assert plan.later.scale == MIN_SCALE or sum(plan.estimates.values()) <= 210.0 + 1e-6
    # Floors hold however slow the machine: gates on enough images, every round benchmarked.
    assert later.eval_images >= FLOOR["eval_images"] and later.fallback_attempts >= 1
    assert later.bench_repeats >= FLOOR["repeats"] and later.finetune.epochs >= 1


def test_less_time_never_buys_more_later_work():
    speeds = Speeds(train_images_per_s=900.0, eval_images_per_s=2500.0)
    scales = [fit_later(seconds, speeds, TRAIN, TEST).scale for seconds in range(20, 400, 10)]
    assert scales == sorted(scales) and scales[0] == MIN_SCALE and scales[-1] == 1.0


def test_the_demo_benchmarks_as_many_rounds_as_bench_models():
    assert ModelBenchSettings().rounds == BENCH_ROUNDS == 3


def test_the_phase_summary_lists_every_phase_in_order():
    clock = PhaseClock(budget_s=240.0)
    for phase in PHASES[:-1]:
        clock.record(phase, 10.0)
    line = clock.summary()
    positions = [line.index(f"{phase} ") for phase in PHASES]
    assert positions == sorted(positions)
    assert "serve -" in line and "total 60 s, within the 240 s budget" in line
    clock.record("serve", 200.0)
    assert "serve 200 s" in clock.summary() and "total 260 s, 20 s over the 240 s budget" in clock.summary()
    with pytest.raises(ValueError, match="unknown demo phase"):
        clock.record("deploy", 1.0)
