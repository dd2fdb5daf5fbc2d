"""The `slimserve` command: help texts, and bad input as one readable line with a non-zero exit."""

import argparse
import re
import subprocess
import sys

import pytest

from benchmarks.cli import BenchHttpArgs, BenchModelsArgs
from benchmarks.settings import HttpBenchSettings, ModelBenchSettings
from commands.demo import DemoSettings
from commands.demo_budget import MIN_EPOCH_IMAGES, Plan, fit_budget
from commands.main import build_parser
from export.cli import DistillArgs, ExportArgs
from export.settings import ExportSettings
from service.cli import ServeArgs
from service.config import ServeConfig
from slimserve.settings import MISSING, build, cli_fields, default_of, default_text
from training.cli import EvaluateArgs, TrainArgs, train_config_from_args
from training.config import TrainConfig


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "commands.main", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


COMMANDS = ("train", "evaluate", "export", "distill", "serve", "bench", "demo")


def test_help_lists_the_stages():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        # A command's own row, "    NAME   help": not the word inside another command's help line.
        assert re.search(rf"^ +{command} {{2,}}\S", result.stdout, re.MULTILINE), command


@pytest.mark.parametrize("command", ["train", "evaluate", "export", "distill", "serve", "bench", "demo"])
def test_each_subcommand_explains_itself(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0
    assert "usage: slimserve " + command in result.stdout
    assert len(result.stdout.splitlines()) > 3


# Each generated command, the arguments it cannot do without, and the dataclasses its
# options come from (with the fields it does not offer, and the ones it leaves unset on purpose).
GENERATED = [
    (("train",), [], [(TrainConfig, ()), (TrainArgs, ())]),
    (("evaluate",), ["RUN"], [(EvaluateArgs, ())]),
    (("export",), ["RUN"], [(ExportArgs, ()), (ExportSettings, ())]),
    (
        ("distill",),
        ["--teacher", "T"],
        [(DistillArgs, ()), (TrainConfig, ("model",), {"dataset": "the teacher's"})],
    ),
    (("serve",), [], [(ServeConfig, ()), (ServeArgs, ())]),
    (("bench", "models"), ["B"], [(BenchModelsArgs, ()), (ModelBenchSettings, ())]),
    (("bench", "http"), ["http://127.0.0.1:1"], [(BenchHttpArgs, ()), (HttpBenchSettings, ())]),
    (("demo",), [], [(DemoSettings, ())]),
]


def subparser(path: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


@pytest.mark.parametrize(
    "path,required,sources", GENERATED, ids=lambda v: " ".join(v) if isinstance(v, tuple) else ""
)
def test_every_default_in_help_comes_from_the_dataclass(path, required, sources, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping, so each default reads as one phrase
    text = " ".join(subparser(path).format_help().split())
    checked = 0
    for cls, skipped, *unset in sources:
        for field in cli_fields(cls, skipped):
            stated = default_text(field, (unset or [{}])[0].get(field.name))
            if stated is None:
                continue
            assert f"(default: {stated})" in text, (cls.__name__, field.name)
            checked += 1
    # Every option with a default states it once, and nothing else states one.
    assert text.count("(default:") == checked


@pytest.mark.parametrize(
    "path,required,sources", GENERATED, ids=lambda v: " ".join(v) if isinstance(v, tuple) else ""
)
def test_no_arguments_parse_to_the_dataclass_defaults(path, required, sources, monkeypatch):
    args = subparser(path).parse_args(required)
    for cls, skipped, *_ in sources:
        needed = {f.name: getattr(args, f.name) for f in cli_fields(cls) if default_of(f) is MISSING}
        built = build(cls, args, exclude=skipped, **needed)
        assert built == cls(**needed), cls.__name__


def test_train_options_left_unset_keep_the_model_s_recipe():
    args = subparser(("train",)).parse_args(["--model", "mlp", "--recipe", "fast", "--lr", "0.01"])
    config = train_config_from_args(args, args.model)
    assert config == TrainConfig.from_recipe("mlp", "fast", lr=0.01)
    assert (config.epochs, config.optimizer, config.lr) == (5, "adamw", 0.01)
    assert train_config_from_args(subparser(("train",)).parse_args([]), "cnn") == TrainConfig()


def test_bench_models_and_the_demo_run_the_same_rounds():
    assert build(ModelBenchSettings, subparser(("bench", "models")).parse_args(["B"])).rounds == 3
    assert ModelBenchSettings().rounds == 3  # what the demo's benchmark gets


@pytest.mark.parametrize(
    "speed,epochs,images,seconds",
    [
        (2500.0, 4, None, 96.0),  # AVX-512 BF16: the whole fast recipe fits
        (600.0, 2, 36_000, 120.0),  # AVX2 only: fewer epochs, then fewer images, filling the budget
        (1000.0, 2, None, 120.0),  # two whole epochs fill it exactly
        (50.0, 1, 10_000, 200.0),  # never under one test split's worth, even over budget
    ],
)
def test_demo_sizes_the_fast_recipe_to_its_budget(speed, epochs, images, seconds):
    plan = fit_budget(speed, budget_s=120.0, epochs=4, available=60_000)
    assert (plan.epochs, plan.images) == (epochs, images)
    assert plan.seconds == pytest.approx(seconds)


def test_demo_budget_never_overruns_above_the_floor():
    for speed in range(100, 5000, 37):
        plan = fit_budget(float(speed), budget_s=90.0, epochs=4, available=60_000)
        assert plan.seconds <= 90.0 + 1e-6 or plan.images == MIN_EPOCH_IMAGES
        assert 1 <= plan.epochs <= 4


def test_demo_budget_with_fewer_images_than_the_floor():
    assert fit_budget(10.0, budget_s=1.0, epochs=4, available=600) == Plan(1, None, 60.0)
    # 1.14 epochs' worth: one whole epoch, not two floor-sized ones that overrun.
    assert fit_budget(76.0, budget_s=30.0, epochs=3, available=2000) == Plan(1, None, 2000 / 76.0)
    assert fit_budget(100.0, budget_s=150.0, epochs=4, available=12_000) == Plan(1, None, 120.0)


@pytest.mark.parametrize(
    "args,expected",
    [
        (("train", "--model", "vgg"), "unknown model 'vgg'"),
        (("train", "--epochs", "-3"), "must be at least 1, got -3"),
        (("train", "--epochs", "ten"), "expected a whole number"),
        (("train", "--dataset", "imagenet", "--limit", "20"), "unknown dataset 'imagenet'"),
        (("train", "--dataset", "folder:/does/not/exist", "--limit", "20"), "is not a directory"),
        (("train", "--arch-kwargs", "[1]"), "expected a JSON object"),
        (("evaluate", "/does/not/exist"), "metadata.json is missing"),
        (("frobnicate",), "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_input_is_one_line_without_traceback(args, expected, tmp_path):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # trains in a subprocess (~10 s)
def test_train_command_end_to_end_writes_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    result = run_cli(
        "train",
        "--model",
        "mlp",
        "--epochs",
        "1",
        "--limit",
        "300",
        "--arch-kwargs",
        '{"hidden": [16]}',
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert (out / "metadata.json").is_file() and (out / "model.safetensors").is_file()
    assert "Test accuracy after 1 epoch:" in result.stdout
    again = run_cli("train", "--model", "mlp", "--epochs", "1", "--limit", "300", "--out", str(out))
    assert again.returncode == 1 and "--resume" in again.stderr


def test_piped_output_keeps_whole_table_cells(monkeypatch):
    """A log or CI transcript must keep the figures: rich would cut cells at 80 columns."""
    import io

    from rich.table import Table

    from slimserve.console import PIPED_WIDTH, cli_console

    monkeypatch.setattr(sys, "stdout", io.StringIO())
    monkeypatch.delenv("COLUMNS", raising=False)
    console = cli_console()
    assert console.width == PIPED_WIDTH
    table = Table(*(f"column {i}" for i in range(12)))
    table.add_row(*(f"{1105.8 + i:,.1f}" for i in range(12)))
    with console.capture() as captured:
        console.print(table)
    assert "…" not in captured.get() and "1,116.8" in captured.get()
    monkeypatch.setenv("COLUMNS", "90")  # a width the user states still wins
    assert cli_console().width == 90
