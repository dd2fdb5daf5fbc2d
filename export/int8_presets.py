"""INT8 hardware presets as data, in the manner of Optimum's ``AutoQuantizationConfig.avx512_vnni()``,
``.avx2()``, ``.arm64()`` and ``.tensorrt()``: the target is a choice recorded beside the model.

Why the CPU decides the recipe: without VNNI, x86 INT8 kernels multiply u8 activations by s8
weights with ``vpmaddubsw``, which adds pairs of products into a saturating int16; full-range
weights overflow it and answers change (EfficientNet-Lite0 agreed with fp32 on 68% of the
hymenoptera photos on an AVX2 CPU). ``reduce_range`` (7-bit values) keeps every pair inside
int16, at a cost that bias correction wins back. VNNI (``vpdpbusd``), AMX and ARM's dot-product
instructions accumulate in int32 and take the full 8 bits.
"""

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class Int8Preset:
    """One ONNX Runtime static-quantization recipe; ``to_dict`` goes into the manifest."""

    name: str
    activations: str  # "uint8" or "int8"
    activation_symmetric: bool
    reduce_range: bool  # 7-bit weights and activations (ORT's ``reduce_range``)
    bias_correction: bool
    why: str
    weights: str = "int8 symmetric per-channel"

    @property
    def weight_levels(self) -> int:
        """Largest |q| of a symmetric weight: ORT's int8 range, [-64, 64] when reduced."""
        return 64 if self.reduce_range else 127

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS = {
    preset.name: preset
    for preset in (
        Int8Preset(
            "avx512_vnni",
            "uint8",
            False,
            False,
            True,
            "VNNI/AMX accumulate u8 x s8 in int32: full 8-bit range, no saturation",
        ),
        Int8Preset(
            "avx2",
            "uint8",
            False,
            True,
            True,
            "no VNNI: vpmaddubsw saturates int16, so 7-bit values (reduce_range) keep pairs in range",
        ),
        Int8Preset(
            "arm64",
            "uint8",
            False,
            False,
            True,
            "NEON dot-product kernels accumulate in int32: full 8-bit range",
        ),
        Int8Preset(
            "tensorrt",
            "int8",
            True,
            False,
            True,
            "TensorRT takes symmetric int8 activations and weights only",
        ),
    )
}


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The CPU's feature flags (x86 ``flags``, ARM ``Features``); empty where unreadable."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_preset(flags: set[str]) -> Int8Preset:
    """The preset for the CPU with these flags: full range only where int32 accumulation is sure."""
    if "asimd" in flags:
        return PRESETS["arm64"]
    if flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
        return PRESETS["avx512_vnni"]
    return PRESETS["avx2"]


def resolve_preset(target: str, flags: set[str] | None = None) -> Int8Preset:
    """``--int8-target``: ``cpu`` picks by this machine's flags, ``tensorrt`` is fixed."""
    if target == "tensorrt":
        return PRESETS["tensorrt"]
    return cpu_preset(cpu_flags() if flags is None else flags)
