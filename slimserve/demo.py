"""The README's end-to-end job on the embedded default: Fashion-MNIST, default CNN, fast recipe."""

from pathlib import Path

from rich.console import Console
from rich.rule import Rule


def run_demo(workdir: Path, *, limit: int | None = None) -> None:
    """Train with the fast recipe, then evaluate; each stage prints where its output went."""
    from training.config import TrainConfig
    from training.evaluate import evaluate_checkpoint
    from training.train import train

    console = Console()
    run_dir = workdir / "runs" / "cnn-fashion-mnist"
    console.print(Rule("1/2 train: cnn on fashion-mnist, fast recipe"))
    config = TrainConfig.from_recipe("cnn", "fast", limit=limit)
    train(config, run_dir, overwrite=True, console=console)
    console.print(Rule("2/2 evaluate"))
    evaluate_checkpoint(run_dir, console=console)
