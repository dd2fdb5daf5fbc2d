"""What this machine is, and the most arithmetic it could possibly do per second.

The peak is the textbook roofline ceiling (Williams et al., 2009)::

    peak ops/s = physical cores x clock (Hz) x ops per cycle per core
    ops per cycle per core = SIMD pipes x lanes per vector x 2   (a multiply-accumulate is 2 ops)

with lanes = vector bits / 32 for FP32 FMA and vector bits / 8 for INT8 (VNNI's
``vpdpbusd`` does one u8 x s8 multiply-accumulate per byte lane). The per-cycle figures
are assumptions about the microarchitecture, written into every report next to the
result; nothing here is measured. Torch-free, so the HTTP benchmark can use it.
"""

import os
import platform
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from slimserve.versions import installed_versions

CPUINFO = Path("/proc/cpuinfo")
PROC_STAT = Path("/proc/stat")
MEMINFO = Path("/proc/meminfo")
MAX_FREQ = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
PACKAGES = ("torch", "torchvision", "onnx", "onnxruntime-gpu", "onnxruntime", "numpy", "bentoml")
PACKAGES += ("locust", "uvicorn", "starlette")
FLAGS_OF_INTEREST = (
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_int8",
    "amx_bf16",
    "amx_tile",
    # Arm (/proc/cpuinfo "Features"): NEON, its int8 dot product and matrix multiply, bf16, SVE.
    "asimd",
    "asimddp",
    "i8mm",
    "bf16",
    "sve",
)


@dataclass(frozen=True)
class VectorUnits:
    """Per-core SIMD resources assumed for the peak; ``note`` says where they come from."""

    name: str
    fp32_pipes: int
    fp32_vector_bits: int
    int8_pipes: int
    int8_vector_bits: int
    note: str

    @property
    def fp32_ops_per_cycle(self) -> int:
        return self.fp32_pipes * (self.fp32_vector_bits // 32) * 2

    @property
    def int8_ops_per_cycle(self) -> int:
        return self.int8_pipes * (self.int8_vector_bits // 8) * 2


ZEN4 = VectorUnits(
    "AMD Zen 4",
    2,
    256,
    2,
    256,
    "Zen 4 runs AVX-512 on 256-bit datapaths: 2 FMA pipes x 8 FP32 lanes, and VNNI at the "
    "equivalent of two 256-bit vpdpbusd (32 u8xs8 MACs each) per cycle",
)
AVX512_2FMA = VectorUnits(
    "AVX-512, 2 FMA units",
    2,
    512,
    2,
    512,
    "assumes two 512-bit FMA units (Xeon Gold/Platinum class); single-FMA parts reach half",
)
AVX2_FMA = VectorUnits(
    "AVX2 + FMA",
    2,
    256,
    2,
    256,
    "2 x 256-bit FMA pipes; INT8 without VNNI needs two instructions per MAC, so its peak "
    "here is an upper bound",
)


def _cpuinfo_blocks() -> list[dict[str, str]]:
    blocks = []
    for chunk in CPUINFO.read_text().strip().split("\n\n"):
        fields = {}
        for line in chunk.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        blocks.append(fields)
    return blocks


def vector_isa(flags: set[str]) -> str:
    """The vector instruction sets that decide which kernels run, in words: ``AVX-512 + VNNI +
    BF16``, ``AVX2 + AVX-VNNI``, ``NEON + DOTPROD``. bf16 training (``--amp auto``) needs BF16 or
    AMX; fast INT8 needs VNNI, AMX or DOTPROD/I8MM, so a figure says which it had."""
    if "asimd" in flags:
        base, extras = "NEON", [("asimddp", "DOTPROD"), ("i8mm", "I8MM"), ("bf16", "BF16"), ("sve", "SVE")]
        return " + ".join([base] + [name for flag, name in extras if flag in flags])
    if "avx512f" in flags:
        base = "AVX-512"
    elif "avx2" in flags:
        base = "AVX2"
    elif "avx" in flags:
        base = "AVX"
    else:
        return "no AVX"
    parts = [base]
    if "avx512_vnni" in flags:
        parts.append("VNNI")
    elif "avx_vnni" in flags:
        parts.append("AVX-VNNI")
    if "avx512_bf16" in flags:
        parts.append("BF16")
    if flags & {"amx_tile", "amx_int8", "amx_bf16"}:
        parts.append("AMX")
    return " + ".join(parts)


# Environment variables that hold PyTorch's (ATen) and oneDNN's kernels below the CPU's own
# ISA: with them the flags above overstate what ran, so a figure names them.
ISA_LIMIT_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def isa_limits(environ: Mapping[str, str]) -> dict[str, str]:
    """The ISA limits set in ``environ`` (a benchmark's workers inherit the parent's)."""
    return {name: environ[name] for name in ISA_LIMIT_VARS if environ.get(name)}


def physical_cores(blocks: list[dict[str, str]], allowed: set[int]) -> int:
    """Cores this process may run on, counting SMT siblings once (SMT shares the FMA units)."""
    cores = {
        (block.get("physical id", "0"), block.get("core id", block["processor"]))
        for block in blocks
        if int(block["processor"]) in allowed
    }
    return len(cores)


def vector_units(vendor: str, family: int, flags: set[str]) -> VectorUnits | None:
    """Pick the per-cycle assumptions from the CPU's vendor, family and feature flags."""
    if vendor == "AuthenticAMD" and family == 25 and "avx512f" in flags:
        return ZEN4  # family 19h with AVX-512 is Zen 4 (Zen 3 has no AVX-512)
    if "avx512f" in flags:
        return AVX512_2FMA
    if "avx2" in flags and "fma" in flags:
        return AVX2_FMA
    return None


def peak_ops_per_s(cores: int, clock_hz: float, ops_per_cycle: int) -> float:
    """The roofline ceiling: cores x clock x ops per cycle per core."""
    return cores * clock_hz * ops_per_cycle


def clock_hz(blocks: list[dict[str, str]]) -> tuple[float, str]:
    """The highest clock the kernel reports, and where it came from."""
    if MAX_FREQ.is_file():
        return int(MAX_FREQ.read_text()) * 1000.0, f"{MAX_FREQ} (max boost)"
    mhz = max(float(block.get("cpu MHz", "0")) for block in blocks)
    return mhz * 1e6, "/proc/cpuinfo 'cpu MHz' (no cpufreq: virtual machine; boost, if any, is not visible)"


def gpus() -> list[str]:
    """GPU names from nvidia-smi; none without the driver."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.startswith("GPU ")]


def _mem_total_gib() -> float:
    for line in MEMINFO.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return float("nan")


def machine_info(clock_ghz: float | None = None) -> dict[str, Any]:
    """Everything a reader needs to reproduce or discount a figure, plus the peak with its formula.

    ``clock_ghz`` states the clock the cores really run at where the kernel cannot see it
    (a VM reports its nominal clock; boost stays invisible), e.g. from the CPU's data sheet.
    """
    blocks = _cpuinfo_blocks()
    first = blocks[0]
    flags = set((first.get("flags") or first.get("Features", "")).split())  # x86 | Arm
    allowed = os.sched_getaffinity(0)
    cores = physical_cores(blocks, allowed)
    hz, clock_source = (
        (clock_ghz * 1e9, "--clock-ghz (stated by the user)") if clock_ghz else clock_hz(blocks)
    )
    units = vector_units(first.get("vendor_id", ""), int(first.get("cpu family", "0")), flags)
    peak: dict[str, Any] = {
        "formula": "peak ops/s = physical cores x clock Hz x (SIMD pipes x lanes x 2); "
        "lanes = vector bits/32 (FP32 FMA) or vector bits/8 (INT8 VNNI); 1 MAC = 2 ops",
        "cores": cores,
        "clock_ghz": round(hz / 1e9, 3),
        "clock_source": clock_source,
    }
    if units is None:
        peak["units"] = None
        peak["note"] = "no AVX2/FMA: no peak assumed, shares of peak are not reported"
    else:
        peak["units"] = asdict(units)
        peak["fp32_ops_per_cycle_per_core"] = units.fp32_ops_per_cycle
        peak["int8_ops_per_cycle_per_core"] = units.int8_ops_per_cycle
        peak["fp32_gops"] = peak_ops_per_s(cores, hz, units.fp32_ops_per_cycle) / 1e9
        peak["int8_gops"] = peak_ops_per_s(cores, hz, units.int8_ops_per_cycle) / 1e9
    return {
        "cpu_model": first.get("model name", platform.processor()),
        "vendor": first.get("vendor_id"),
        "cpu_family": int(first.get("cpu family", "0")),
        "cpu_model_number": int(first.get("model", "0")),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(allowed),
        "physical_cores": cores,
        "vector_isa": vector_isa(flags),
        "isa_limits": isa_limits(os.environ),
        "flags": sorted(flags & set(FLAGS_OF_INTEREST)),
        "memory_gib": _mem_total_gib(),
        "os": platform.platform(),
        "gpus": gpus(),
        "versions": installed_versions(PACKAGES),
        "peak": peak,
    }


def share_of_peak(gops: float, precision: str, peak: dict[str, Any]) -> float | None:
    """Achieved GOP/s as a share of the peak for the variant's arithmetic (INT8 or FP32)."""
    key = "int8_gops" if precision.startswith("int8") else "fp32_gops"
    ceiling = peak.get(key)
    return None if not ceiling else gops / ceiling


def busy_cpu_seconds() -> float | None:
    """CPU seconds every process on the machine has spent busy since boot (all cores), from
    the kernel's counters; None where there is no /proc/stat. A difference of two readings
    is what a load test cost the whole machine, server and load generator together."""
    try:
        fields = PROC_STAT.read_text().splitlines()[0].split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal ...: idle and iowait are not work.
    ticks = [int(value) for value in fields[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
