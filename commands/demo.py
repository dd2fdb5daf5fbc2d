"""The README's end-to-end job on the embedded default: Fashion-MNIST, default CNN, fast recipe.

train -> evaluate -> export every variant (registered in the BentoML store) -> benchmark
the variants in-process -> serve the bundle, with real sample images and curl lines
that work. Every stage is the same function its own subcommand calls.

The demo fits one time budget, from its start to the serving banner, on any CPU: a machine
without bf16 (AVX2 only) trains the CNN 2-2.5x slower than one with AVX-512 BF16, and a
slower VM of the same kind runs every phase slower. A few seconds of measured training and
inference size every phase (``commands.demo_budget``); the output says what was cut and
why, and ends with each phase's real time.
"""

import argparse
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.rule import Rule

from commands.demo_budget import (
    BENCH_BATCH_SIZES,
    BENCH_ROUNDS,
    BENCH_WARMUP,
    MIN_EPOCH_IMAGES,
    DemoPlan,
    Later,
    PhaseClock,
    Speeds,
    cuts,
    fit_later,
    plan_demo,
)
from slimserve.cli_types import positive_float, positive_int
from slimserve.console import cli_console
from slimserve.samples import write_pngs
from slimserve.settings import add_options, build, option

BUNDLE = "cnn-fashion-mnist-demo"
MODEL, RECIPE = "cnn", "fast"
SAMPLES = 8
PROBE_IMAGES = 2048  # one short epoch: a few seconds on any vector ISA
WARMUP_IMAGES = 256


@dataclass(frozen=True)
class DemoSettings:
    workdir: Path = option(Path("slimserve-demo"), help="where outputs go")
    limit: int | None = option(
        None, help="use at most N images (a smoke run)", parse=positive_int, unset="all"
    )
    serve: bool = option(True, help="end by serving the bundle")
    port: int = option(3000, help="service port", parse=positive_int)
    budget_s: float = option(
        240.0,
        help="seconds from the start to the serving banner (installing not included): training, the "
        "accuracy gates' image counts, INT8 calibration and search, the pruned fine-tuning and the "
        "benchmark's blocks are sized to fit from measured throughput, and the output says what was cut",
        parse=positive_float,
    )


def measure_speeds(limit: int | None) -> Speeds:
    """Training and fp32 inference images per second of the demo's own training (same model,
    recipe, threads and mixed precision), from one short epoch (its evaluation on as many
    test images is the inference rate) after an even shorter one that absorbs the process's
    first-call costs (kernel selection, lazy imports; several times the epoch on a busy
    2-core VM)."""
    from training.config import TrainConfig
    from training.train import train

    images = min(PROBE_IMAGES, limit or PROBE_IMAGES)
    with tempfile.TemporaryDirectory(prefix="slimserve-probe-") as tmp:
        for name, count in (("warm-up", min(WARMUP_IMAGES, images)), ("probe", images)):
            config = TrainConfig.from_recipe(MODEL, RECIPE, epochs=1, limit=count)
            result = train(config, Path(tmp) / name, console=Console(quiet=True))
    eval_s = max(result.seconds - images / result.images_per_second, 1e-3)
    return Speeds(train_images_per_s=result.images_per_second, eval_images_per_s=images / eval_s)


def _process_age_s() -> float:
    """Seconds since this process started (psutil, as benchmarks.worst_request uses it), so
    the budget also counts the command's imports before the demo's code runs."""
    import psutil

    return max(0.0, time.time() - psutil.Process().create_time())


@contextmanager
def _phase(clock: PhaseClock, name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        clock.record(name, time.perf_counter() - started)


def _kernels() -> str:
    """What torch's kernels use here, which the CPU flags alone do not say (ATEN_CPU_CAPABILITY
    and ONEDNN_MAX_CPU_ISA can hold them below the CPU)."""
    import torch

    from training.train import resolve_amp_dtype

    amp = resolve_amp_dtype("auto", torch.device("cpu"))
    return f"torch kernels {torch.backends.cpu.get_cpu_capability()}, {'bf16' if amp else 'fp32'} training"


def _print_plan(
    console: Console, clock: PhaseClock, plan: DemoPlan, speeds: Speeds, sizes: tuple[int, int, int]
) -> None:
    recipe_epochs, available, test_images = sizes
    estimates = ", ".join(f"{phase} ~{seconds:.0f} s" for phase, seconds in plan.estimates.items())
    console.print(
        f"Measured here ({_kernels()}): training {speeds.train_images_per_s:,.0f} images/s, inference "
        f"{speeds.eval_images_per_s:,.0f} images/s ({speeds.slowness:.1f}x the reference VM's time). "
        f"{plan.left_s:.0f} s of --budget-s are left: {estimates}.",
        soft_wrap=True,
    )
    cut = cuts(plan, recipe_epochs, available, test_images)
    if cut:
        console.print(f"Cut to fit the budget: {'; '.join(cut)}.", soft_wrap=True)
    else:
        console.print("Nothing cut: every phase's defaults fit the budget.")
    total = sum(plan.estimates.values())
    if total > plan.left_s:
        console.print(
            f"[bold]Over budget even so[/]: ~{total:.0f} s estimated for the {plan.left_s:.0f} s left, with every "
            f"phase at its floor (the gates' images, one training epoch of {MIN_EPOCH_IMAGES:,}, {BENCH_ROUNDS} benchmark "
            f"rounds); this machine runs inference {speeds.slowness:.1f}x slower than the reference VM. "
            f"The demo runs to the end, in about {clock.total() + total:.0f} s.",
            soft_wrap=True,
        )


def _replan(
    console: Console, clock: PhaseClock, planned: Later, speeds: Speeds, sizes: tuple[int, int]
) -> Later:
    """The later phases again from the time really left: a training run slower than its
    estimate (a busy neighbour) cuts them further rather than overrunning."""
    left = clock.budget_s - clock.total()
    again = fit_later(left, speeds, *sizes)
    if again.scale >= planned.scale:
        return planned
    console.print(
        f"{left:.0f} s of the budget left after training (less than planned): the later phases are cut "
        f"to {again.scale:.0%} of their work (accuracy gates on {again.eval_images:,} test images, "
        f"benchmark {again.bench_max_seconds:g} s per batch size).",
        soft_wrap=True,
    )
    return again


def _write_samples(run_dir: Path, out: Path) -> list[Path]:
    """A few real test images as PNG files, so the printed curl lines work as they are."""
    from training.checkpoint import read_metadata
    from training.datasets import load_data

    data = load_data(read_metadata(run_dir)["dataset"])
    samples = (data.test[index] for index in range(SAMPLES))
    return write_pngs(((image, data.classes[label]) for image, label in samples), out)


def _capped(planned: int | None, limit: int | None) -> int | None:
    """The smaller of the planned image count and the user's --limit; None when neither is set."""
    given = [value for value in (planned, limit) if value is not None]
    return min(given) if given else None


def run_demo(settings: DemoSettings) -> None:
    """Each stage prints where its output went; the last one keeps serving until Ctrl-C."""
    from benchmarks.models_bench import ModelBenchSettings, bench_models
    from export.building import ExportSettings
    from export.pipeline import export_bundle
    from training.config import RECIPES, TrainConfig
    from training.datasets import load_data
    from training.evaluate import evaluate_checkpoint
    from training.train import train

    console = cli_console()
    clock = PhaseClock(settings.budget_s)
    clock.record("start", _process_age_s())
    workdir, limit = settings.workdir, settings.limit
    run_dir = workdir / "runs" / "cnn-fashion-mnist"
    console.print(Rule(f"1/5 train: {MODEL} on fashion-mnist, {RECIPE} recipe sized to the budget"))
    with _phase(clock, "probe"):
        data = load_data(TrainConfig().dataset)
        available = min(len(data.train), limit) if limit else len(data.train)
        test_images = min(len(data.test), limit) if limit else len(data.test)
        speeds = measure_speeds(limit)
    recipe_epochs = RECIPES[MODEL][RECIPE]["epochs"]
    plan = plan_demo(settings.budget_s, clock.total(), speeds, recipe_epochs, available, test_images)
    _print_plan(console, clock, plan, speeds, (recipe_epochs, available, test_images))
    with _phase(clock, "train"):
        config = TrainConfig.from_recipe(
            MODEL, RECIPE, epochs=plan.training.epochs, limit=_capped(plan.training.images, limit)
        )
        train(config, run_dir, overwrite=True, console=console)

    console.print(Rule("2/5 evaluate"))
    later = _replan(console, clock, plan.later, speeds, (available, test_images))
    with _phase(clock, "evaluate"):
        evaluate_checkpoint(run_dir, limit=_capped(later.eval_images, limit), console=console)

    console.print(Rule("3/5 export: fp32, int8, pruned, pruned-int8, sparse; TorchScript + ONNX"))
    with _phase(clock, "export"):
        manifest = export_bundle(
            run_dir,
            out=workdir / "bundles",
            name=BUNDLE,
            limit=_capped(later.eval_images, limit),
            settings=ExportSettings(
                calibration_images=later.calibration_images,
                int8_fallback_attempts=later.fallback_attempts,
                finetune_epochs=later.finetune.epochs,
                finetune_images=_capped(later.finetune.images, limit),
            ),
            console=console,
        )

    console.print(Rule("4/5 benchmark every variant in-process"))
    bench_dir = workdir / "bench"
    with _phase(clock, "benchmark"):
        # Two batch sizes and short blocks keep three rounds (`bench models`' default) quick.
        bench = ModelBenchSettings(
            batch_sizes=BENCH_BATCH_SIZES,
            warmup=BENCH_WARMUP,
            repeats=later.bench_repeats,
            max_seconds=later.bench_max_seconds,
            select_batch=max(BENCH_BATCH_SIZES),
        )
        bench_models(manifest.bundle_dir, bench_dir, bench, console=console)
    console.print(f"Benchmark report: {bench_dir / 'bench-models.md'} (JSON and PNG plots beside it)")

    serve_started = time.perf_counter()
    samples = _write_samples(run_dir, workdir / "samples")
    if not settings.serve:
        console.print(clock.summary())
        return
    from service.config import ServeConfig
    from service.launch import serve as start_service

    def ready() -> None:
        clock.record("serve", time.perf_counter() - serve_started)
        console.print(clock.summary(), soft_wrap=True)

    console.print(Rule("5/5 serve (Ctrl-C stops it)"))
    console.print(
        f"Sample images: {samples[0].parent}/. In another terminal:\n"
        f"  curl -F file=@{samples[0]} http://localhost:{settings.port}/predict",
        soft_wrap=True,
    )
    start_service(ServeConfig(bundle=BUNDLE, version=manifest.version, port=settings.port), on_ready=ready)


def _demo(args: argparse.Namespace) -> None:
    run_demo(build(DemoSettings, args))


def add_command(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo",
        help="the end-to-end job on Fashion-MNIST: train, evaluate, export, benchmark, serve",
        description="Train the default CNN on Fashion-MNIST with the fast recipe, evaluate it, export "
        "every compressed variant, benchmark them in-process, then serve the bundle over HTTP; every "
        "phase is sized from a few seconds of measured throughput to fit one time budget.",
    )
    add_options(demo, DemoSettings)
    demo.set_defaults(handler=_demo)
