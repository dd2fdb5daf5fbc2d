"""The README's end-to-end job on the embedded default: Fashion-MNIST, default CNN, fast recipe.

train -> evaluate -> export every variant (registered in the BentoML store) -> benchmark
the variants in-process -> serve the bundle, with real sample images and curl lines
that work. Every stage is the same function its own subcommand calls.

The demo fits a time budget on any CPU: a machine without bf16 (AVX2 only) trains the CNN
2-2.5x slower than one with AVX-512 BF16, so the fast recipe's epochs and images, and the
pruned variant's fine-tuning, are sized from a few seconds of measured training throughput.
"""

import argparse
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.rule import Rule

from slimserve.cli_types import positive_float, positive_int
from slimserve.console import cli_console
from slimserve.samples import write_pngs
from slimserve.settings import add_options, build, option

BUNDLE = "cnn-fashion-mnist-demo"
MODEL, RECIPE = "cnn", "fast"
SAMPLES = 8
PROBE_IMAGES = 2048  # one short epoch: a few seconds on any vector ISA
WARMUP_IMAGES = 256
# An epoch never shrinks below Fashion-MNIST's test split, so every evaluation keeps it whole.
MIN_EPOCH_IMAGES = 10_000


@dataclass(frozen=True)
class DemoSettings:
    workdir: Path = option(Path("slimserve-demo"), help="where outputs go")
    limit: int | None = option(
        None, help="use at most N images (a smoke run)", parse=positive_int, unset="all"
    )
    serve: bool = option(True, help="end by serving the bundle")
    port: int = option(3000, help="service port", parse=positive_int)
    # With the defaults the demo reaches a serving endpoint in about 5 minutes on a 2-core VM:
    # evaluation, export checks, the 3-round benchmark and start-up take the rest.
    train_budget_s: float = option(
        120.0,
        help="seconds training may take: the fast recipe's epochs and images are cut to fit the "
        "measured throughput",
        parse=positive_float,
    )
    finetune_budget_s: float = option(
        30.0,
        help="seconds the pruned variant's fine-tuning may take, sized the same way",
        parse=positive_float,
    )


@dataclass(frozen=True)
class Plan:
    """How many epochs of how many images fit a budget at a measured throughput."""

    epochs: int
    images: int | None  # per epoch; None: all of them
    seconds: float  # what it should take at the measured throughput

    def describe(self, available: int) -> str:
        images = available if self.images is None else self.images
        return f"{self.epochs} epoch{'s' if self.epochs != 1 else ''} x {images:,} images (~{self.seconds:.0f} s)"


def fit_budget(images_per_s: float, budget_s: float, epochs: int, available: int) -> Plan:
    """The most training that fits ``budget_s``: all ``epochs`` over all ``available`` images
    when that fits, else fewer epochs over the whole set, then a smaller set per epoch (more
    different images beat more passes over the same ones). An epoch never shrinks below
    MIN_EPOCH_IMAGES: fewer epochs first, and one such epoch even where it overruns."""
    affordable = images_per_s * budget_s
    if affordable >= epochs * available:
        return Plan(epochs, None, epochs * available / images_per_s)
    floor = min(MIN_EPOCH_IMAGES, available)
    fewer = min(epochs, max(1, math.ceil(affordable / available)))
    if affordable // fewer < floor:
        fewer = max(1, int(affordable // floor))
    images = max(floor, int(affordable // fewer))
    if images >= available:
        return Plan(fewer, None, fewer * available / images_per_s)
    return Plan(fewer, images, fewer * images / images_per_s)


def measure_throughput(limit: int | None) -> float:
    """Images per second of the demo's own training (same model, recipe, threads and mixed
    precision), from one short epoch after an even shorter one that absorbs the process's
    first-call costs (kernel selection, lazy imports; several times the epoch on a busy
    2-core VM). The timed epoch includes its evaluation, which errs on the safe side."""
    from training.config import TrainConfig
    from training.train import train

    images = min(PROBE_IMAGES, limit or PROBE_IMAGES)
    with tempfile.TemporaryDirectory(prefix="slimserve-probe-") as tmp:
        for name, count in (("warm-up", min(WARMUP_IMAGES, images)), ("probe", images)):
            config = TrainConfig.from_recipe(MODEL, RECIPE, epochs=1, limit=count)
            result = train(config, Path(tmp) / name, console=Console(quiet=True))
    return images / result.seconds


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
    workdir, limit = settings.workdir, settings.limit
    run_dir = workdir / "runs" / "cnn-fashion-mnist"
    console.print(Rule(f"1/5 train: {MODEL} on fashion-mnist, {RECIPE} recipe sized to the machine"))
    available = len(load_data(TrainConfig().dataset).train)
    available = min(available, limit) if limit else available
    images_per_s = measure_throughput(limit)
    recipe_epochs = RECIPES[MODEL][RECIPE]["epochs"]
    training = fit_budget(images_per_s, settings.train_budget_s, recipe_epochs, available)
    defaults = ExportSettings()
    finetune = fit_budget(images_per_s, settings.finetune_budget_s, defaults.finetune_epochs, available)
    console.print(
        f"Measured {images_per_s:,.0f} images/s here (a short epoch of this training with its evaluation, "
        f"so an upper bound on the time); the {RECIPE} recipe's {recipe_epochs} x "
        f"{available:,} images would take ~{recipe_epochs * available / images_per_s:.0f} s. Within "
        f"--train-budget-s {settings.train_budget_s:g}: {training.describe(available)}; within "
        f"--finetune-budget-s {settings.finetune_budget_s:g}, pruned fine-tuning: {finetune.describe(available)}."
    )
    config = TrainConfig.from_recipe(
        MODEL, RECIPE, epochs=training.epochs, limit=_capped(training.images, limit)
    )
    train(config, run_dir, overwrite=True, console=console)

    console.print(Rule("2/5 evaluate"))
    evaluate_checkpoint(run_dir, limit=limit, console=console)

    console.print(Rule("3/5 export: fp32, int8, pruned, pruned-int8, sparse; TorchScript + ONNX"))
    manifest = export_bundle(
        run_dir,
        out=workdir / "bundles",
        name=BUNDLE,
        limit=_capped(finetune.images, limit),
        settings=ExportSettings(finetune_epochs=finetune.epochs),
        console=console,
    )

    console.print(Rule("4/5 benchmark every variant in-process"))
    bench_dir = workdir / "bench"
    # Two batch sizes and short blocks keep three rounds (`bench models`' default) quick.
    bench = ModelBenchSettings(batch_sizes=(1, 64), warmup=5, repeats=30, max_seconds=2.0, select_batch=64)
    bench_models(manifest.bundle_dir, bench_dir, bench, console=console)
    console.print(f"Benchmark report: {bench_dir / 'bench-models.md'} (JSON and PNG plots beside it)")

    samples = _write_samples(run_dir, workdir / "samples")
    if not settings.serve:
        return
    from service.config import ServeConfig
    from service.launch import serve as start_service

    console.print(Rule("5/5 serve (Ctrl-C stops it)"))
    console.print(
        f"Sample images: {samples[0].parent}/. In another terminal:\n"
        f"  curl -F file=@{samples[0]} http://localhost:{settings.port}/predict",
        soft_wrap=True,
    )
    start_service(ServeConfig(bundle=BUNDLE, version=manifest.version, port=settings.port))


def _demo(args: argparse.Namespace) -> None:
    run_demo(build(DemoSettings, args))


def add_command(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo",
        help="the end-to-end job on Fashion-MNIST: train, evaluate, export, benchmark, serve",
        description="Train the default CNN on Fashion-MNIST with the fast recipe (sized to a time budget "
        "from a few seconds of measured throughput), evaluate it, export every compressed variant, "
        "benchmark them in-process, then serve the bundle over HTTP.",
    )
    add_options(demo, DemoSettings)
    demo.set_defaults(handler=_demo)
