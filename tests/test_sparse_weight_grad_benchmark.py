"""benchmarks/sparse_weight_grad.py: a trained SNN, sparse against dense weight gradients."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from conftest import needs_compiler

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import sparse_weight_grad  # noqa: E402


@needs_compiler
def test_a_trained_snn_gets_the_same_weight_gradients_both_ways(tmp_path, monkeypatch):
    out = tmp_path / "sparse.json"
    monkeypatch.setattr(sys, "argv", [
        "sparse_weight_grad.py", str(REPO / "results/fashion_mnist_snn/model.pt"),
        "--dataset", "mnist_demo", "--batch", "16", "--steps", "2", "--json", str(out)])
    assert sparse_weight_grad.main() == 0
    record = json.loads(out.read_text())
    rates = record["nonzero_inputs"]
    assert rates and all(0 < rate < 1 for rate in rates.values())  # measured firing rates
    assert len(record["relative_grad_difference"]) == len(rates) + 1  # + the analog input
    assert max(record["relative_grad_difference"].values()) < 1e-4  # float rounding
    assert all(len(record["seconds"][mode]) == 2 for mode in ("sparse", "dense"))
    assert record["speedup"] > 0 and record["isa"]["cpu_capability"]
