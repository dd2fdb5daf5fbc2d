"""Failures name the variant, the format, the step and the layer; other variants still build."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn
from torch.nn import functional as F

from export.building import ExportSettings, try_pt2
from export.failures import StepFailed, describe_failure, export_step
from export.formats import write_onnx
from export.pipeline import export_bundle
from export.report import print_report
from slimserve.errors import SlimserveError
from slimserve.manifest import read_manifest
from training import models
from training.checkpoint import save_checkpoint
from training.datasets import limit_dataset, load_data
from training.tensors import materialize
from training.transforms import normalize_transform

ARCH = "flexnet-test"


class FlexibleFlatten(nn.Module):
    """Flattens feature maps and passes already-flat features through.

    The rank check is Python control flow on the input: eager PyTorch, TorchScript tracing,
    torch.export and the ONNX exporter see a concrete rank; FX symbolic tracing (PyTorch
    INT8) sees a Proxy and refuses.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() > 2:
            x = x.flatten(1)
        return x


class FlexNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, input_size: tuple[int, int]) -> None:
        super().__init__()
        height, width = input_size
        self.blocks = nn.Sequential(
            nn.Sequential(
                nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(4)
            ),
            FlexibleFlatten(),
            nn.Linear(8 * (height // 4) * (width // 4), num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class KthValueGate(nn.Module):
    """Adds each row's 2nd-smallest value: aten.kthvalue has no ONNX conversion in torch 2.14."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.kthvalue(x, 2, dim=-1, keepdim=True).values


class OverflowGuard(nn.Module):
    """Clamps only when a value overflows: a branch on tensor data, which torch.export
    cannot trace without knowing the values."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.abs().max() > 1e4:
            x = x.clamp(-1e4, 1e4)
        return x


class ExportShortcutLogSoftmax(nn.Module):
    """Log-probabilities in eager; under the ONNX exporter, the shortcut ``x - max(x)``.

    An export-only branch (``torch.onnx.is_in_onnx_export()``, which the exporter turns on
    while it traces) that does not compute what eager computes: each row shifts by its
    log-sum-exp, so every top-1 still agrees and only the logit limit can tell. TorchScript
    tracing and torch.export take the eager branch.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            return x - x.amax(dim=1, keepdim=True)
        return F.log_softmax(x, dim=1)


class ExportShortcutTieBreak(nn.Module):
    """Copies logit 0 into a twin class; under the ONNX exporter the twin gets +5e-5.

    Eager holds an exact tie, which the first class wins; the ONNX file hands it to the
    twin. Every logit is within the 1e-4 limit, so only the top-1 clause can tell.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        twin = x[:, :1]
        if torch.onnx.is_in_onnx_export():
            twin = twin + 5e-5
        return torch.cat([x[:, :1], twin, x[:, 1:]], dim=1)


class ShortcutNet(nn.Module):
    """A linear classifier whose last step is an export-only shortcut (``head``)."""

    def __init__(
        self, in_channels: int, num_classes: int, input_size: tuple[int, int], head: str = "log_softmax"
    ) -> None:
        super().__init__()
        height, width = input_size
        tie = head == "tie"
        linear = nn.Linear(in_channels * height * width, num_classes - tie)
        if tie:  # class 0 (and so its twin) leads every row, so every row holds the tie
            with torch.no_grad():
                linear.bias[0] += 10.0
        self.classifier = nn.Sequential(nn.Flatten(), linear)
        self.head = ExportShortcutTieBreak() if tie else ExportShortcutLogSoftmax()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.classifier(x))


def _save_run(run_dir: Path, arch: str, model: nn.Module, data, **arch_kwargs) -> Path:
    metadata = {
        "arch": arch,
        "arch_kwargs": arch_kwargs,
        "dataset": data.name,
        "classes": list(data.classes),
        "preprocess": data.spec.to_dict(),
    }
    save_checkpoint(run_dir, model.eval(), metadata)
    return run_dir


@pytest.fixture(scope="module")
def flexnet_bundle(tmp_path_factory: pytest.TempPathFactory):
    """FlexNet registered as a real architecture, trained briefly on real Fashion-MNIST,
    saved as a checkpoint and exported; the registration lasts for the module's tests."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(models.MODELS, ARCH, FlexNet)
        data = load_data("fashion-mnist", image_size=28, channels=1)
        train = materialize(limit_dataset(data.train, 1024, 0), data.spec, "train images")
        images = normalize_transform(data.spec)(train.images)
        torch.manual_seed(0)
        model = models.build_model(ARCH, in_channels=1, num_classes=len(data.classes), input_size=(28, 28))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for start in range(0, len(images), 64):
            loss = F.cross_entropy(model(images[start : start + 64]), train.labels[start : start + 64])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        run_dir = _save_run(tmp_path_factory.mktemp("runs") / ARCH, ARCH, model, data)
        console = Console(record=True, width=240)
        # The INT8 and sparse budgets are out of the way so that the failure under test is the layer.
        settings = ExportSettings(max_accuracy_drop=100.0, max_pruning_drop=100.0, calibration_images=64)
        manifest = export_bundle(
            run_dir,
            out=tmp_path_factory.mktemp("bundles"),
            variants=["fp32", "int8", "sparse"],
            limit=300,
            settings=settings,
            register=False,
            console=console,
        )
        yield manifest, console.export_text()


@pytest.mark.slow  # flexnet_bundle trains and exports three variants
def test_int8_torchscript_the_quantizer_cannot_take_is_skipped_with_the_layer(flexnet_bundle):
    """FX cannot trace the layer: the INT8 variant keeps its ONNX file (the one the service
    defaults to), and the missing TorchScript file is named with its layer, never silently."""
    manifest, printed = flexnet_bundle
    assert set(manifest.variants) == {"fp32", "int8", "sparse"} and manifest.failed == {}
    int8 = manifest.variant("int8")
    assert set(int8.files) == {"onnx"}
    assert not (manifest.bundle_dir / "int8" / "model.ts").exists()
    reason = int8.entry["skipped_formats"]["torchscript"]
    assert reason.startswith(
        "variant 'int8' (torchscript): layer 'blocks.1' (FlexibleFlatten) is not supported by PyTorch INT8"
    )
    assert "FX graph mode" in reason and "TraceError: " in reason and "control flow" in reason
    assert "\n" not in reason
    for name in ("fp32", "sparse"):
        variant = manifest.variant(name)
        assert {"onnx", "torchscript"} <= set(variant.files)
        for artifact in variant.files.values():
            assert artifact.verified_path(manifest.bundle_dir).stat().st_size == artifact.bytes
        assert all(check["passed"] for check in variant.entry["parity"].values())
    assert manifest.data["default_variant"] == "int8"
    # The export prints what was left out and why.
    assert "int8: no torchscript file - variant 'int8' (torchscript): layer 'blocks.1'" in printed


@pytest.mark.slow  # flexnet_bundle trains and exports three variants
def test_manifests_with_plain_string_failures_still_read(flexnet_bundle, tmp_path):
    manifest, _ = flexnet_bundle
    copy = tmp_path / "bundle"
    shutil.copytree(manifest.bundle_dir, copy)
    data = json.loads((copy / "manifest.json").read_text())
    data["variants"].pop("int8")
    data["failed"] = {"int8": "TraceError: symbolically traced variables cannot be used"}
    (copy / "manifest.json").write_text(json.dumps(data))
    old = read_manifest(copy)
    assert old.failed == {"int8": {"reason": "TraceError: symbolically traced variables cannot be used"}}
    console = Console(record=True, width=240)
    print_report(old, console)
    assert "symbolically traced variables" in console.export_text()


def test_onnx_exporter_failure_names_the_layer_and_operator(tmp_path: Path):
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), KthValueGate())).eval()
    with pytest.raises(StepFailed) as info, export_step("the ONNX exporter", "onnx", model):
        write_onnx(model, torch.zeros(2, 4), tmp_path / "model.onnx")
    failure = describe_failure("fp32", info.value)
    assert (failure["layer"], failure["layer_class"], failure["op"]) == (
        "1.1",
        "KthValueGate",
        "aten.kthvalue",
    )
    assert failure["reason"].startswith(
        "variant 'fp32' (onnx): layer '1.1' (KthValueGate, operator aten.kthvalue) is not supported by "
        "the ONNX exporter: "
    )
    # The library's own words, from the root cause rather than the exporter's banner.
    assert "No ONNX function found" in failure["error"]


def test_pt2_that_torch_export_rejects_is_skipped_with_the_layer(tmp_path: Path):
    model = nn.Sequential(nn.Linear(4, 4), OverflowGuard(), nn.Linear(4, 2)).eval()
    path = tmp_path / "model.pt2"
    reason = try_pt2("fp32", model, torch.zeros(2, 4), path)
    assert reason is not None and "\n" not in reason
    assert reason.startswith(
        "variant 'fp32' (pt2): layer '1' (OverflowGuard) is not supported by torch.export: "
    )
    assert not path.exists()


@pytest.mark.slow  # exports every format of a real (untrained) model
@pytest.mark.parametrize(
    ("head", "top1", "diff_range"),
    [("log_softmax", "100.00%", (1e-4, np.log(10) + 1e-4)), ("tie", "0.00%", (4e-5, 1e-4))],
    ids=["logits-off-top1-kept", "logits-kept-top1-off"],
)
def test_onnx_that_disagrees_with_eager_is_refused_and_named(tmp_path: Path, head, top1, diff_range):
    """The parity gate, not the exporter, stops these: each ONNX file is valid, and misses
    exactly one of the two clauses (max |logit diff| <= 1e-4, top-1 agreement 100%)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(models.MODELS, "shortcut-test", ShortcutNet)
        data = load_data("fashion-mnist", image_size=28, channels=1)
        torch.manual_seed(0)
        model = models.build_model(
            "shortcut-test", in_channels=1, num_classes=10, input_size=(28, 28), head=head
        )
        run_dir = _save_run(tmp_path / "run", "shortcut-test", model, data, head=head)
        with pytest.raises(SlimserveError) as refused:
            export_bundle(
                run_dir,
                out=tmp_path / "bundles",
                name="shortcut",
                version="v1",
                variants=["fp32"],
                limit=256,
                register=False,
                console=Console(quiet=True),
            )
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("no variant could be exported: variant 'fp32': fp32 onnx parity failed: ")
    assert "(limit 1e-04)" in message and f"top-1 agreement {top1} (need 100%)" in message
    diff = float(message.split("max |logit diff| ")[1].split()[0])
    low, high = diff_range
    assert low < diff <= high
    assert not (tmp_path / "bundles" / "shortcut" / "v1" / "fp32").exists()
