"""benchmarks/compare.py: ratios are taken within a round and summarised by their median and
range; the auto row repeats the row it resolves to; the ISA is recorded."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import compare  # noqa: E402


def row(impl: str, seconds: list[float], output=None) -> dict:
    return {"kind": "inference", "benchmark": "b", "implementation": impl, "timesteps": 4,
            "batch": 8, "threads": 1, "rounds_seconds": seconds,
            "seconds": sorted(seconds)[len(seconds) // 2], "output": output,
            "peak_rss_mib": 1.0, "work_mib": 0.0}


def test_ratios_are_per_round_against_that_rounds_best_peer():
    # round 2 is slow for everyone: the ratio of that round stays 2 while the rates halve
    rows = [row("spikeforge", [1.0, 2.0, 1.0], [[1.0, 2.0]]),
            row("spikingjelly-m", [2.0, 4.0, 2.5], [[1.0, 2.5]]),
            row("snntorch", [4.0, 5.0, 2.0], [[0.0, 2.0]]),
            row("ann", [0.5, 0.5, 0.5]), {"implementation": "spikingjelly-s", "error": "x"}]
    compare.compare_rows(rows)
    sf, sj, ann = rows[0], rows[1], rows[3]
    assert sf["rounds_ratio"] == pytest.approx([2.0, 2.0, 2.0])
    assert sj["rounds_ratio"] == pytest.approx([1.0, 1.0, 0.8])  # snnTorch best in round 3
    assert (sj["ratio_vs_best_peer"], sj["ratio_min"], sj["ratio_max"]) == pytest.approx(
        (1.0, 0.8, 1.0))
    assert sf["images_per_s"] == pytest.approx(8.0) and sf["max_abs_diff"] == 0.0
    assert sj["max_abs_diff"] == pytest.approx(0.5) and ann["max_abs_diff"] is None
    assert "ratio_vs_best_peer" not in ann and "output" not in sf


def test_the_auto_row_repeats_the_row_it_resolves_to(monkeypatch):
    from spikeforge import simulate

    monkeypatch.setattr(simulate, "native_bf16", lambda device: False)
    impls = ["spikeforge", "spikeforge-int8", "spikeforge-auto", "snntorch"]
    assert compare.auto_alias(impls) == "spikeforge"
    assert compare.auto_alias(["spikeforge-auto", "snntorch"]) is None  # measured itself
    rows = [{"implementation": "spikeforge", "images_per_s": 3.0},
            {"implementation": "snntorch", "images_per_s": 1.0}]
    out = compare.with_alias(rows, "spikeforge")
    assert [r["implementation"] for r in out] == ["spikeforge", "spikeforge-auto", "snntorch"]
    assert out[1]["same_as"] == "spikeforge" and out[1]["images_per_s"] == 3.0
    assert out[1]["precision_requested"] == "auto" and "float32" in out[1]["precision_reason"]
    monkeypatch.setattr(simulate, "native_bf16", lambda device: True)
    assert compare.auto_alias(["spikeforge-bf16", "spikeforge-auto"]) == "spikeforge-bf16"


def test_isa_names_the_capability_flags_and_caps(monkeypatch):
    for name in compare.ISA_CAPS:
        monkeypatch.delenv(name, raising=False)
    info = compare.isa()
    assert info["cpu_capability"] and isinstance(info["native_bf16"], bool)
    assert set(info["flags"]) <= set(compare.ISA_FLAGS)
    assert info["caps"] == {}
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert compare.isa()["caps"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}


def test_heap_peak_counts_the_tensors_a_call_holds():
    import time

    import torch

    if compare._heap_mib() is None:
        pytest.skip("no glibc mallinfo2 here")

    def holds_64_mib():
        block = torch.ones(16 << 20)  # 64 MiB, freed before the call returns
        time.sleep(0.05)
        return float(block[0])

    assert 60 <= compare._heap_peak_mib(holds_64_mib) < 80
    assert compare._heap_peak_mib(lambda: time.sleep(0.02)) < 4
