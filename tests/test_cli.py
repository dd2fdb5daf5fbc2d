"""The `slimserve` command: help texts, and bad input as one readable line with a non-zero exit."""

import subprocess
import sys

import pytest


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "slimserve.cli", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def test_help_lists_the_stages():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("train", "evaluate", "demo"):
        assert command in result.stdout


@pytest.mark.parametrize("command", ["train", "evaluate", "demo"])
def test_each_subcommand_explains_itself(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0
    assert "usage: slimserve " + command in result.stdout
    assert len(result.stdout.splitlines()) > 3


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
