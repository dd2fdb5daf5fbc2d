"""`slimserve evaluate`: accuracy, per-class accuracy and a confusion-matrix picture."""

from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from slimserve.console import cli_console
from training.checkpoint import load_checkpoint
from training.datasets import limit_dataset, load_data_for_spec
from training.tensors import materialize
from training.train import evaluate_model, resolve_device


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    per_class: dict[str, float]
    confusion: torch.Tensor  # rows: true class, columns: predicted class
    plot: Path


def confusion_matrix(predicted: torch.Tensor, truth: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.bincount(truth * num_classes + predicted, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def plot_confusion(confusion: torch.Tensor, classes: list[str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 6.5), dpi=120)
    shares = confusion.float() / confusion.sum(dim=1, keepdim=True).clamp(min=1)
    image = ax.imshow(shares.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for row in range(len(classes)):
        for col in range(len(classes)):
            count = int(confusion[row, col])
            if count:
                color = "white" if shares[row, col] > 0.5 else "black"
                ax.text(col, row, str(count), ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of true class")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def evaluate_checkpoint(
    run_dir: Path,
    *,
    limit: int | None = None,
    device: str = "auto",
    plot_path: Path | None = None,
    console: Console | None = None,
) -> Evaluation:
    """Evaluate the verified checkpoint on its dataset's test split."""
    console = console or cli_console()
    checkpoint = load_checkpoint(run_dir)
    meta = checkpoint.metadata
    config = meta.get("train_config", {})
    data = load_data_for_spec(
        meta["dataset"],
        checkpoint.spec,
        val_fraction=config.get("val_fraction", 0.2),
        seed=config.get("seed", 0),
    )
    test = materialize(limit_dataset(data.test, limit, meta.get("seed", 0)), checkpoint.spec)
    torch_device = resolve_device(device)
    accuracy, predicted = evaluate_model(
        checkpoint.model.to(torch_device), test, checkpoint.spec, torch_device
    )
    truth = test.labels
    classes = checkpoint.classes
    confusion = confusion_matrix(predicted, truth, len(classes))
    per_class = {
        name: (confusion[i, i] / confusion[i].sum()).item() if confusion[i].sum() else float("nan")
        for i, name in enumerate(classes)
    }
    plot = plot_path or Path(run_dir) / "confusion_matrix.png"
    plot_confusion(confusion, classes, f"{meta['arch']} on {meta['dataset']}: {accuracy:.2%}", plot)

    table = Table(
        "class", "accuracy", "images", title=f"{run_dir}: {accuracy:.2%} on {len(test)} test images"
    )
    for i, name in enumerate(classes):
        table.add_row(name, f"{per_class[name]:.2%}", str(int(confusion[i].sum())))
    console.print(table)
    console.print(f"Confusion matrix: {plot}")
    return Evaluation(accuracy=accuracy, per_class=per_class, confusion=confusion, plot=plot)
