"""The README's end-to-end job on the embedded default: Fashion-MNIST, default CNN, fast recipe.

train -> evaluate -> export every variant (registered in the BentoML store) -> benchmark
the variants in-process -> serve the bundle, with real sample images and curl lines
that work. Every stage is the same function its own subcommand calls.
"""

from pathlib import Path

from rich.rule import Rule

from slimserve.console import cli_console
from slimserve.samples import write_pngs

BUNDLE = "cnn-fashion-mnist-demo"
SAMPLES = 8


def _write_samples(run_dir: Path, out: Path) -> list[Path]:
    """A few real test images as PNG files, so the printed curl lines work as they are."""
    from training.checkpoint import read_metadata
    from training.datasets import load_data

    data = load_data(read_metadata(run_dir)["dataset"])
    samples = (data.test[index] for index in range(SAMPLES))
    return write_pngs(((image, data.classes[label]) for image, label in samples), out)


def run_demo(workdir: Path, *, limit: int | None = None, serve: bool = True, port: int = 3000) -> None:
    """Each stage prints where its output went; the last one keeps serving until Ctrl-C."""
    from benchmarks.models_bench import ModelBenchSettings, bench_models
    from export.pipeline import export_bundle
    from training.config import TrainConfig
    from training.evaluate import evaluate_checkpoint
    from training.train import train

    console = cli_console()
    run_dir = workdir / "runs" / "cnn-fashion-mnist"
    console.print(Rule("1/5 train: cnn on fashion-mnist, fast recipe"))
    train(TrainConfig.from_recipe("cnn", "fast", limit=limit), run_dir, overwrite=True, console=console)

    console.print(Rule("2/5 evaluate"))
    evaluate_checkpoint(run_dir, limit=limit, console=console)

    console.print(Rule("3/5 export: fp32, int8, pruned, pruned-int8, sparse; TorchScript + ONNX"))
    manifest = export_bundle(run_dir, out=workdir / "bundles", name=BUNDLE, limit=limit, console=console)

    console.print(Rule("4/5 benchmark every variant in-process"))
    bench_dir = workdir / "bench"
    bench_models(
        manifest.bundle_dir,
        bench_dir,
        ModelBenchSettings(batch_sizes=(1, 64), warmup=5, repeats=50, max_seconds=4.0, select_batch=64),
        console=console,
    )
    console.print(f"Benchmark report: {bench_dir / 'bench-models.md'} (JSON and PNG plots beside it)")

    samples = _write_samples(run_dir, workdir / "samples")
    if not serve:
        return
    from service.config import ServeConfig
    from service.launch import serve as start_service

    console.print(Rule("5/5 serve (Ctrl-C stops it)"))
    console.print(
        f"Sample images: {samples[0].parent}/. In another terminal:\n"
        f"  curl -F file=@{samples[0]} http://localhost:{port}/predict",
        soft_wrap=True,
    )
    start_service(ServeConfig(bundle=BUNDLE, version=manifest.version, port=port))
