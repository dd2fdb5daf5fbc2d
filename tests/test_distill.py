"""Distillation: a student checkpoint export accepts, its no-teacher twin, reuse, metadata."""

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from rich.console import Console

from commands.main import main
from export.building import ExportSettings
from export.distill import REPORT_FILE, distill
from export.pipeline import export_bundle
from slimserve.errors import SlimserveError
from training.checkpoint import load_checkpoint, read_metadata
from training.config import TrainConfig

pytestmark = pytest.mark.slow
QUIET = Console(quiet=True)


def _student_config(**overrides) -> TrainConfig:
    return TrainConfig.from_recipe("cnn-small", "fast", epochs=1, limit=400, **overrides)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(run_dir / "model.safetensors"))


def test_distilled_student_is_a_checkpoint_export_accepts(tiny_cnn_run, tmp_path):
    result = distill(
        tiny_cnn_run,
        _student_config(),
        temperature=3.0,
        alpha=0.7,
        out=tmp_path / "student",
        console=QUIET,
    )
    student = load_checkpoint(result.student_dir)
    assert student.metadata["arch"] == "cnn-small"
    kd = student.metadata["distillation"]
    assert kd["teacher_sha256"] == read_metadata(tiny_cnn_run)["weights_sha256"]
    assert kd["temperature"] == 3.0 and kd["alpha"] == 0.7 and kd["teacher_arch"] == "cnn"
    twin = read_metadata(result.twin_dir)
    assert result.twin_dir == tmp_path / "student-no-teacher"
    assert "distillation" not in twin
    assert twin["train_config"] == student.metadata["train_config"]  # same epochs, seed, data
    report = json.loads((result.student_dir / REPORT_FILE).read_text())
    assert (
        report["student_accuracy"] == result.student_accuracy == student.metadata["metrics"]["test_accuracy"]
    )
    assert report["twin_accuracy"] == result.twin_accuracy == twin["metrics"]["test_accuracy"]
    assert report["gain_points"] == pytest.approx((result.student_accuracy - result.twin_accuracy) * 100)
    assert report["student_macs"] == 4_962_698  # cnn-small on 28x28x1, counted by torch-pruning
    assert report["mac_ratio"] == pytest.approx(report["teacher_macs"] / report["student_macs"], rel=1e-3)
    manifest = export_bundle(
        result.student_dir, out=tmp_path / "bundles", variants=["fp32"], limit=200, register=False
    )
    assert manifest.data["parent"]["arch"] == "cnn-small"

    # The student as variants of the teacher's own bundle, measured against its fp32.
    settings = ExportSettings(student=str(result.student_dir))
    bundle = export_bundle(
        tiny_cnn_run, out=tmp_path / "bundles", name="with-student", variants=["fp32", "distilled", "distilled-int8"],
        limit=200, settings=settings, register=False, console=QUIET,
    )  # fmt: skip
    fp32, distilled = bundle.variant("fp32").entry, bundle.variant("distilled").entry
    assert not bundle.data["failed"], bundle.data["failed"]
    assert distilled["macs"] == 4_962_698  # the student's own network, not the (tiny) teacher's
    assert distilled["export_settings"]["student"]["weights_sha256"] == student.metadata["weights_sha256"]
    assert distilled["accuracy_drop"] == pytest.approx(
        (fp32["test_accuracy"] - distilled["test_accuracy"]) * 100
    )
    assert all(check["passed"] for check in distilled["parity"].values())
    quantized = bundle.variant("distilled-int8").entry
    assert quantized["budget_reference"] == "distilled" and quantized["precision"] == "int8"
    assert "onnx" in bundle.variant("distilled-int8").files

    # Same settings again: the twin is reused, not retrained.
    before = _weights(result.twin_dir)
    again = distill(
        tiny_cnn_run,
        _student_config(),
        temperature=3.0,
        alpha=0.7,
        out=tmp_path / "student",
        force=True,
        console=QUIET,
    )
    assert again.twin_reused and again.twin_accuracy == result.twin_accuracy
    assert all(torch.equal(before[k], v) for k, v in _weights(result.twin_dir).items())


def test_alpha_zero_reproduces_the_twin_exactly(tiny_cnn_run, tmp_path):
    """With no weight on the soft targets the loss is the twin's, so the weights must match
    bit for bit: the two runs differ in nothing but the loss."""
    result = distill(tiny_cnn_run, _student_config(seed=3), alpha=0.0, out=tmp_path / "s", console=QUIET)
    student, twin = _weights(result.student_dir), _weights(result.twin_dir)
    assert all(torch.equal(student[k], twin[k]) for k in student)


def test_distill_cli_and_its_errors(tiny_cnn_run, tmp_path, capsys):
    args = ["distill", "--teacher", str(tiny_cnn_run), "--recipe", "fast", "--epochs", "1", "--limit", "300"]
    assert main([*args, "--out", str(tmp_path / "s")]) == 0
    printed = capsys.readouterr().out
    assert "Distillation gain" in printed and "no-teacher twin" in printed
    assert "trained with label smoothing 0.1" in printed  # the fixture's recipe smooths labels
    assert main([*args, "--out", str(tmp_path / "s")]) == 1  # exists, no --force
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert main([*args, "--dataset", "mnist", "--out", str(tmp_path / "m")]) == 1
    assert "drop --dataset" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--alpha", "1.5"])
    with pytest.raises(SlimserveError, match="temperature"):
        distill(tiny_cnn_run, _student_config(), temperature=-1.0, out=tmp_path / "t", console=QUIET)


def test_export_refuses_a_student_it_cannot_serve_beside_the_checkpoint(
    tiny_cnn_run, tiny_mlp_run, tmp_path, capsys
):
    out = tmp_path / "bundles"
    with pytest.raises(SlimserveError, match="variant distilled needs --student"):
        export_bundle(tiny_cnn_run, out=out, variants=["distilled"], register=False, console=QUIET)
    # A plain training run is not a distilled student.
    with pytest.raises(SlimserveError, match="was not trained by `slimserve distill`"):
        export_bundle(
            tiny_cnn_run,
            out=out,
            settings=ExportSettings(student=str(tiny_mlp_run)),
            register=False,
            console=QUIET,
        )
    argv = ["export", str(tiny_cnn_run), "--variants", "distilled-int8", "--out", str(out), "--no-register"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "needs --student" in err
