"""The demo's one time budget: how much of every phase fits, sized from measured speeds.

Pure Python (no torch), so the arithmetic is tested in the fast tier. The demo's probe
measures two rates on this machine: training images per second (bf16 where the CPU has it)
and fp32 inference images per second (the probe's own test-set evaluation). Training is
sized from the first; evaluation, export (parity and accuracy passes, INT8 calibration,
the pruned variant's fine-tuning), the 3-round benchmark and the server's start from the
second, whose ratio to a reference machine also scales the fixed costs (imports, ONNX
export, worker processes, BentoML). On a fast machine nothing is cut; on a slower one the
later phases shrink to ``scale`` of their defaults, never below their floors, before
training gets less than ``TRAIN_SHARE`` of the time left.

The constants are estimates from timed demo runs on the 2-core AMD EPYC Zen 4 VM; the demo
prints every phase's real time at the end, so a wrong estimate shows.
"""

import math
from dataclasses import dataclass, field

from benchmarks.settings import ModelBenchSettings
from export.settings import ExportSettings

# An epoch never shrinks below Fashion-MNIST's test split, so training's per-epoch evaluation keeps it whole.
MIN_EPOCH_IMAGES = 10_000
PHASES = ("start", "probe", "train", "evaluate", "export", "benchmark", "serve")  # start: the CLI's imports

# The probe's fp32 inference rate (batch 512, channels-last, 2 threads) on the quiet
# reference VM: the unit of ``Speeds.slowness``.
REFERENCE_EVAL_IMAGES_PER_S = 4000.0
# Seconds of each phase that no image count changes, at reference speed: imports, file
# writes; for export the TorchScript, ONNX and .pt2 exports of three float models, INT8
# quantization and BentoML registration; one benchmark worker process's start and model
# loads; the BentoML server's start. Fitted, with EXPORT_EVAL_PASSES and
# PRUNED_TRAIN_SPEEDUP, to two timed demos on the busy 2-core VM (9x slowness; export 296 s
# with 10,000 test images, 146 s with 2,000; 7-8 s per benchmark block; serving 9 s).
FIXED_S = {"train": 1.0, "evaluate": 1.0, "export": 6.0, "bench_worker": 0.8, "serve": 2.0}
# Export's test-set passes, in eager fp32 passes: the fp32 reference, then parity and
# accuracy per variant and format (3 float variants x 3 formats, 2 INT8 x 2); ONNX Runtime
# and INT8 run faster than eager, hence fewer than the 14 passes.
EXPORT_EVAL_PASSES = 9.0
# The pruned CNN keeps a third of the MACs, but its fine-tuning (export's loop: the train
# images materialized, then SGD epochs) ran only 1.35x training's rate, measured quiet on the
# reference VM: 12,000 -> 28,000 fine-tuning images added 6.7 s to the export (2,390 img/s)
# against 1,774 img/s for the demo's training (why not nearer 3x was not profiled).
PRUNED_TRAIN_SPEEDUP = 1.35
# INT8 builds that calibrate (int8 and pruned-int8, ONNX and TorchScript each), first try.
INT8_BUILDS = 4
BENCH_BLOCKS = 11  # CPU only: eager fp32, then TorchScript and ONNX Runtime for each of the 5 variants
BENCH_BATCH_SIZES = (1, 64)
BENCH_WARMUP = 5
BENCH_ROUNDS = ModelBenchSettings().rounds  # what the demo runs, as `bench models`: never cut
CALL_OVERHEAD_S = 0.001  # a model call beside its images, at reference speed

# What the later phases get at scale 1 (export's own defaults where it has them), and their
# floors. The demo fine-tunes the pruned variant for 30 s of its training rate, not export's
# whole epochs; export's epoch count is the most that time is split into.
_EXPORT = ExportSettings()
FULL = {
    "calibration": _EXPORT.calibration_images,
    "fallback_attempts": _EXPORT.int8_fallback_attempts,
    "finetune_s": 30.0,
    "bench_s": 2.0,
    "repeats": 30,
}
FLOOR = {"eval_images": 2_000, "calibration": 128, "fallback_attempts": 1, "bench_s": 0.25, "repeats": 10}
FINETUNE_EPOCHS = _EXPORT.finetune_epochs
MIN_SCALE = 0.1
TRAIN_SHARE = 0.45  # the later phases shrink before training gets less of the time left


@dataclass(frozen=True)
class Plan:
    """How many epochs of how many images fit a budget at a measured throughput."""

    epochs: int
    images: int | None  # per epoch; None: all of them
    seconds: float  # what it should take at the measured throughput

    def describe(self, available: int) -> str:
        images = available if self.images is None else self.images
        return f"{self.epochs} epoch{'s' if self.epochs != 1 else ''} x {images:,} images (~{self.seconds:.0f} s)"


def fit_budget(
    images_per_s: float, budget_s: float, epochs: int, available: int, epoch_overhead_s: float = 0.0
) -> Plan:
    """The most training that fits ``budget_s``: all ``epochs`` over all ``available`` images
    when that fits, else fewer epochs over the whole set, then a smaller set per epoch (more
    different images beat more passes over the same ones). ``epoch_overhead_s`` is what each
    epoch costs beside its images (its test-set evaluation). An epoch never shrinks below
    MIN_EPOCH_IMAGES: fewer epochs first, and one such epoch even where it overruns."""
    full_epoch_s = available / images_per_s + epoch_overhead_s
    if epochs * full_epoch_s <= budget_s:
        return Plan(epochs, None, epochs * full_epoch_s)

    def per_epoch(count: int) -> int:
        return int(images_per_s * max(0.0, budget_s - count * epoch_overhead_s) // count)

    floor = min(MIN_EPOCH_IMAGES, available)
    fewer = min(epochs, max(1, math.ceil(budget_s / full_epoch_s)))
    while fewer > 1 and per_epoch(fewer) < floor:
        fewer -= 1
    images = max(floor, per_epoch(fewer))
    if images >= available:
        return Plan(fewer, None, fewer * full_epoch_s)
    return Plan(fewer, images, fewer * (images / images_per_s + epoch_overhead_s))


@dataclass(frozen=True)
class Speeds:
    """What the probe measured on this machine."""

    train_images_per_s: float
    eval_images_per_s: float

    @property
    def slowness(self) -> float:
        """How much slower than the reference VM this machine runs fp32 inference (>= 1)."""
        return max(1.0, REFERENCE_EVAL_IMAGES_PER_S / self.eval_images_per_s)

    def fixed(self, name: str) -> float:
        return FIXED_S[name] * self.slowness


@dataclass(frozen=True)
class Later:
    """The phases after training, at ``scale`` (1 = the demo's defaults) of their work."""

    scale: float
    eval_images: int  # export's accuracy gates and the evaluate phase
    calibration_images: int
    fallback_attempts: int
    finetune: Plan
    bench_max_seconds: float
    bench_repeats: int


def _scaled(full: float, scale: float, floor: float) -> float:
    return max(floor, min(full, full * scale))


def later_at(scale: float, speeds: Speeds, train_images: int, test_images: int) -> Later:
    """Every later phase's work at ``scale``; the pruned fine-tuning gets that share of its
    30 s, cut as training is (fit_budget: at least one epoch of MIN_EPOCH_IMAGES)."""
    return Later(
        scale=scale,
        eval_images=int(_scaled(test_images, scale, min(FLOOR["eval_images"], test_images))),
        calibration_images=int(_scaled(FULL["calibration"], scale, FLOOR["calibration"])),
        fallback_attempts=round(_scaled(FULL["fallback_attempts"], scale, FLOOR["fallback_attempts"])),
        finetune=fit_budget(
            speeds.train_images_per_s * PRUNED_TRAIN_SPEEDUP,
            FULL["finetune_s"] * scale,
            FINETUNE_EPOCHS,
            train_images,
        ),
        bench_max_seconds=round(_scaled(FULL["bench_s"], scale, FLOOR["bench_s"]), 2),
        bench_repeats=int(_scaled(FULL["repeats"], scale, FLOOR["repeats"])),
    )


def later_costs(later: Later, speeds: Speeds) -> dict[str, float]:
    """Estimated seconds of each later phase."""
    infer = speeds.eval_images_per_s
    export = (
        speeds.fixed("export")
        + EXPORT_EVAL_PASSES * later.eval_images / infer
        + INT8_BUILDS * later.calibration_images / infer
        + later.finetune.seconds
    )
    return {
        "evaluate": speeds.fixed("evaluate") + later.eval_images / infer,
        "export": export,
        "benchmark": BENCH_ROUNDS * BENCH_BLOCKS * _block_s(later, speeds),
        "serve": speeds.fixed("serve"),
    }


def _block_s(later: Later, speeds: Speeds) -> float:
    """One benchmark worker: its start, then per batch size the warm-up calls and the timed
    ones, which stop at ``bench_max_seconds``; a call costs at most eager fp32's time."""
    seconds = speeds.fixed("bench_worker")
    for batch in BENCH_BATCH_SIZES:
        call = batch / speeds.eval_images_per_s + CALL_OVERHEAD_S * speeds.slowness
        seconds += BENCH_WARMUP * call + min(later.bench_max_seconds, later.bench_repeats * call)
    return seconds


def fit_later(seconds: float, speeds: Speeds, train_images: int, test_images: int) -> Later:
    """The largest scale (in tenths, down to MIN_SCALE) whose later phases fit ``seconds``;
    MIN_SCALE when none does (the floors are what an honest accuracy gate and benchmark need)."""
    for tenths in range(10, 0, -1):
        later = later_at(tenths / 10, speeds, train_images, test_images)
        if sum(later_costs(later, speeds).values()) <= seconds:
            return later
    return later_at(MIN_SCALE, speeds, train_images, test_images)


@dataclass(frozen=True)
class DemoPlan:
    training: Plan
    later: Later
    estimates: dict[str, float]  # seconds per phase, training and the later phases
    left_s: float  # the budget left when planned


def plan_demo(
    budget_s: float, elapsed_s: float, speeds: Speeds, recipe_epochs: int, train_images: int, test_images: int
) -> DemoPlan:
    """Training and the later phases within what is left of ``budget_s`` after ``elapsed_s``.

    The later phases keep their defaults when training still gets TRAIN_SHARE of the time
    left (and at least its floor, one epoch of MIN_EPOCH_IMAGES); otherwise they shrink to
    fit the rest, and training gets what they leave."""
    left = budget_s - elapsed_s
    epoch_eval_s = min(test_images, MIN_EPOCH_IMAGES) / speeds.eval_images_per_s
    floor_s = fit_budget(speeds.train_images_per_s, 0.0, 1, train_images, epoch_eval_s).seconds
    train_floor_s = floor_s + speeds.fixed("train")
    later_s = min(left * (1 - TRAIN_SHARE), left - train_floor_s)
    later = fit_later(later_s, speeds, train_images, test_images)
    costs = later_costs(later, speeds)
    train_s = max(0.0, left - sum(costs.values()) - speeds.fixed("train"))
    training = fit_budget(speeds.train_images_per_s, train_s, recipe_epochs, train_images, epoch_eval_s)
    estimates = {"train": training.seconds + speeds.fixed("train"), **costs}
    return DemoPlan(training=training, later=later, estimates=estimates, left_s=left)


def cuts(plan: DemoPlan, recipe_epochs: int, train_images: int, test_images: int) -> list[str]:
    """What the plan cut from the defaults, in words; empty when nothing was."""
    out = []
    if (plan.training.epochs, plan.training.images) != (recipe_epochs, None):
        out.append(f"training {plan.training.describe(train_images)} of {recipe_epochs} x {train_images:,}")
    later = plan.later
    if later.scale < 1:
        out += [
            f"accuracy gates on {later.eval_images:,} of {test_images:,} test images",
            f"INT8 calibration on {later.calibration_images} of {FULL['calibration']} images, "
            f"{later.fallback_attempts} of {FULL['fallback_attempts']} fp32-fallback attempts",
            f"pruned fine-tuning {later.finetune.describe(train_images)} (the demo's default: up to "
            f"{FULL['finetune_s']:g} s)",
            f"benchmark {later.bench_max_seconds:g} of {FULL['bench_s']:g} s and {later.bench_repeats} of "
            f"{FULL['repeats']} calls per batch size ({BENCH_ROUNDS} rounds kept)",
        ]
    return out


@dataclass
class PhaseClock:
    """Wall seconds per phase, summarized in one line against the budget."""

    budget_s: float
    seconds: dict[str, float] = field(default_factory=dict)

    def record(self, phase: str, seconds: float) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown demo phase {phase!r}")
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def total(self) -> float:
        return sum(self.seconds.values())

    def summary(self) -> str:
        """Every phase in order (``-`` for one that did not run) and the total against the budget."""
        parts = [
            f"{phase} {self.seconds[phase]:.0f} s" if phase in self.seconds else f"{phase} -"
            for phase in PHASES
        ]
        total = self.total()
        verdict = "within" if total <= self.budget_s else f"{total - self.budget_s:.0f} s over"
        return f"phases: {' | '.join(parts)} | total {total:.0f} s, {verdict} the {self.budget_s:g} s budget"
