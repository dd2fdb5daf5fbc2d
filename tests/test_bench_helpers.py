"""Unit tests for the benchmark's statistics, peak arithmetic and variant selection."""

import pytest

from benchmarks.machine import (
    ISA_LIMIT_VARS,
    ZEN4,
    isa_limits,
    machine_info,
    peak_ops_per_s,
    physical_cores,
    share_of_peak,
    vector_isa,
    vector_units,
)
from benchmarks.report import cpu_words
from benchmarks.selection import pareto_front, recommend
from benchmarks.stats import latency_summary, percentiles
from slimserve.cli_types import int_list


def test_percentiles_match_linear_interpolation():
    samples = list(range(1, 101))  # 1..100
    result = percentiles(samples)
    assert result == {"p50": pytest.approx(50.5), "p90": pytest.approx(90.1), "p99": pytest.approx(99.01)}
    assert percentiles([3.0, 1.0]) == {"p50": 2.0, "p90": pytest.approx(2.8), "p99": pytest.approx(2.98)}


def test_percentiles_refuse_a_single_sample():
    with pytest.raises(ValueError, match="at least 2"):
        percentiles([1.0])


def test_latency_summary_in_ms_and_images_per_second_from_p50():
    summary = latency_summary([0.001, 0.002, 0.003], batch_size=8)
    assert summary["p50_ms"] == pytest.approx(2.0)
    assert summary["min_ms"] == pytest.approx(1.0)
    assert summary["images_per_s"] == pytest.approx(4000.0)
    assert summary["p50_ms"] <= summary["p90_ms"] <= summary["p99_ms"]


def test_zen4_peak_per_cycle_and_formula():
    assert ZEN4.fp32_ops_per_cycle == 32  # 2 pipes x 8 lanes x 2
    assert ZEN4.int8_ops_per_cycle == 128  # 2 pipes x 32 byte lanes x 2
    assert peak_ops_per_s(2, 2.5e9, 32) == pytest.approx(160e9)
    assert vector_units("AuthenticAMD", 25, {"avx512f", "avx2", "fma"}) is ZEN4
    assert vector_units("GenuineIntel", 6, {"avx512f"}).fp32_ops_per_cycle == 64
    assert vector_units("GenuineIntel", 6, {"sse2"}) is None


def test_physical_cores_count_smt_siblings_once():
    blocks = [
        {"processor": "0", "physical id": "0", "core id": "0"},
        {"processor": "1", "physical id": "0", "core id": "0"},
        {"processor": "2", "physical id": "0", "core id": "1"},
    ]
    assert physical_cores(blocks, {0, 1, 2}) == 2
    assert physical_cores(blocks, {0}) == 1


def test_machine_info_on_this_machine():
    info = machine_info()
    peak = info["peak"]
    assert info["physical_cores"] >= 1
    assert peak["clock_ghz"] > 0
    if peak["units"] is not None:
        assert peak["int8_gops"] > peak["fp32_gops"] > 0
        assert share_of_peak(peak["fp32_gops"] / 2, "fp32", peak) == pytest.approx(0.5)
        assert share_of_peak(peak["int8_gops"], "int8", peak) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "flags,isa",
    [
        ({"avx", "avx2", "fma"}, "AVX2"),
        ({"avx2", "fma", "avx_vnni"}, "AVX2 + AVX-VNNI"),
        ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, "AVX-512 + VNNI + BF16"),
        (
            {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8"},
            "AVX-512 + VNNI + BF16 + AMX",
        ),
        ({"fp", "asimd", "asimddp", "i8mm"}, "NEON + DOTPROD + I8MM"),
        ({"sse4_2"}, "no AVX"),
    ],
)
def test_vector_isa_names_what_decides_the_kernels(flags, isa):
    assert vector_isa(flags) == isa


def test_report_headers_name_this_machine_s_vector_isa(monkeypatch):
    for name in ISA_LIMIT_VARS:
        monkeypatch.delenv(name, raising=False)
    info = machine_info()
    assert info["vector_isa"] == vector_isa(set(info["flags"]))  # the flags it reads are all recorded
    assert cpu_words(info) == f"{info['cpu_model']} ({info['vector_isa']})"


def test_report_headers_name_what_held_the_kernels_below_the_cpu(monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    info = machine_info()
    assert info["isa_limits"] == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert cpu_words(info).endswith(
        f"({info['vector_isa']}; ATEN_CPU_CAPABILITY=avx2; ONEDNN_MAX_CPU_ISA=AVX2)"
    )
    assert isa_limits({"DNNL_MAX_CPU_ISA": "", "PATH": "/bin"}) == {}


def test_pareto_front_and_recommendation():
    points = [(100.0, 0.90), (400.0, 0.89), (300.0, 0.88), (50.0, 0.91)]
    assert pareto_front(points) == [3, 0, 1]  # (300, 0.88) is beaten by (400, 0.89)
    rows = [{"images_per_s": x, "accuracy": y} for x, y in points] + [{"images_per_s": 9e9, "accuracy": None}]
    assert recommend(rows, reference_accuracy=0.90, max_drop_points=0.5) == rows[0]
    assert recommend(rows, reference_accuracy=0.90, max_drop_points=1.0) == rows[1]
    assert recommend(rows, reference_accuracy=0.99, max_drop_points=0.1) is None


def test_batch_size_list_parsing():
    assert int_list("32,1,8,8") == (1, 8, 32)
    with pytest.raises(Exception, match="whole numbers"):
        int_list("1,x")


def test_a_stated_clock_scales_the_peak():
    nominal, stated = machine_info()["peak"], machine_info(clock_ghz=3.7)["peak"]
    assert stated["clock_ghz"] == 3.7 and stated["clock_source"].startswith("--clock-ghz")
    if nominal["units"] is not None:
        ratio = 3.7 / nominal["clock_ghz"]
        assert stated["int8_gops"] == pytest.approx(nominal["int8_gops"] * ratio, rel=1e-3)


def _round_row(p50: float, p99: float, speedup: float | None, rss: float) -> dict:
    return {
        "variant": "int8", "runtime": "onnxruntime", "device": "CPUExecutionProvider", "batch_size": 64,
        "p50_ms": p50, "p90_ms": p50, "p99_ms": p99, "mean_ms": p50, "min_ms": p50 / 2,
        "images_per_s": 64 / (p50 / 1000), "macs": 1_000_000, "gops": 1.0, "share_of_peak": 0.5,
        "peak_rss_mb": rss, "samples": 10, "speedup": speedup,
    }  # fmt: skip


def test_merge_rounds_takes_medians_and_the_ratio_range():
    from benchmarks.models_bench import merge_rounds

    rounds = [
        [_round_row(4.0, 9.0, 5.0, 80)],
        [_round_row(2.0, 3.0, 7.0, 90)],
        [_round_row(3.0, 5.0, 4.0, 85)],
    ]
    [row] = merge_rounds(rounds)
    assert row["p50_ms"] == 3.0 and row["p99_ms"] == 5.0
    assert row["images_per_s"] == pytest.approx(64 / 0.003)
    assert row["gops"] == pytest.approx(2 * 1_000_000 * 64 / 0.003 / 1e9)
    assert row["speedup"] == 5.0 and row["speedup_range"] == [4.0, 7.0]
    assert row["peak_rss_mb"] == 90 and row["samples"] == 30 and row["rounds"] == 3


def test_merge_rounds_keeps_a_missing_reference_missing():
    from benchmarks.models_bench import merge_rounds

    [row] = merge_rounds([[_round_row(4.0, 9.0, None, 80)]])
    assert row["speedup"] is None and row["speedup_range"] is None
