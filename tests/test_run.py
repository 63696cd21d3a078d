"""``spikeforge run`` and ``spikeforge report``: config checks before any work, the stages and
their cache, resuming an interrupted run, and the report's table and plots."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from matplotlib import image

from spikeforge.cli import main
from spikeforge.config import ConfigError
from spikeforge.experiments.report import first_reaching, load_entries, summary_rows
from spikeforge.experiments.run import load_experiment, run_experiment

ANN = {
    "data": {"dataset": "mnist_demo", "batch_size": 64, "train_subset": 1500,
             "test_subset": 300},
    "model": {"name": "cnn_small"},
    "optim": {"lr": 0.05, "epochs": 2, "warmup_epochs": 0.5},
}


def write_config(tmp_path, text: str) -> str:
    (tmp_path / "ann.yaml").write_text(json.dumps(ANN))
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return str(path)


BASE = """
name: tiny
ann: ann.yaml
methods: [threshold_balancing, "augmapping:timesteps=4"]
evaluate: {timesteps: 8, test_subset: 200, calibration_samples: 256, batch_size: 100}
run: {progress: false}
"""


@pytest.mark.parametrize("text, expected", [
    ("name: x\nann: ann.yaml\nmethod: [qcfs]\n", ["unknown config key 'method'", "methods"]),
    ("name: x\nann: ann.yaml\nevaluate: {timesteps: many}\n",
     ["'evaluate.timesteps'", "integer"]),
    ("name: x\nann: ann.yaml\nmethods: [tb]\n",
     ["'methods[0]'", "'tb'", "threshold_balancing", "csqcfs"]),
    ("name: x\nann: ann.yaml\nmethods: ['termapping:sym=true']\n",
     ["'methods[0]'", "'sym'", "symmetric"]),
    ("name: x\nann: ann.yaml\nconversion: {percentil: 99}\n", ["'conversion'", "percentile"]),
    ("name: x\nann: ann.yaml\noverrides: [data.dataset=cifar1000]\n",
     ["variants.ann", "'data.dataset'", "cifar10"]),
    ("name: x\nann: ann.yaml\nvariants: {v: {overrides: [optim.lr=fast]}}\n",
     ["variants.v", "'optim.lr'", "number"]),
    ("name: x\nann: ann.yaml\nmethods: [qcfs]\n", ["variants.ann", "QCFS", "'relu'"]),
    ("name: x\nann: ann.yaml\nmethods: ['augmapping:thresholds=learned']\n",
     ["QCFS or CSQCFS"]),
    ("name: x\nann: missing.yaml\n", ["'ann'", "missing.yaml", "not found"]),
])
def test_malformed_config_fails_before_any_work(tmp_path, monkeypatch, text, expected):
    monkeypatch.setattr("spikeforge.experiments.run.fit",
                        lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(ConfigError) as info:
        load_experiment(write_config(tmp_path, text))
    for fragment in expected:
        assert fragment in str(info.value)


def test_cli_run_reports_a_bad_config_with_exit_code_2(tmp_path, capsys):
    path = write_config(tmp_path, "name: x\nann: ann.yaml\nmethods: [tb]\n")
    assert main(["run", path]) == 2
    assert "valid choices: threshold_balancing" in capsys.readouterr().err


def _png_ok(path, min_size=(300, 200)) -> None:
    pixels = image.imread(path)
    assert pixels.shape[1] >= min_size[0] and pixels.shape[0] >= min_size[1]
    assert float(np.std(pixels[..., :3])) > 0.02  # not blank


def test_run_trains_converts_reports_and_caches(tmp_path, monkeypatch):
    exp = load_experiment(write_config(tmp_path, BASE), out_dir=str(tmp_path / "out"))
    entries = run_experiment(exp)
    out = tmp_path / "out"
    assert [e["method"] for e in entries] == ["threshold_balancing", "augmapping"]
    tb, aug = entries
    assert len(tb["accuracy"]) == 8 and len(aug["accuracy"]) == 4
    trained = json.loads((out / "ann" / "ann" / "results.json").read_text())
    assert trained["finished"] and trained["epochs"] == 2
    assert tb["ann_accuracy"] > 60.0  # a real network was trained
    assert tb["accuracy"][-1] > tb["ann_accuracy"] - 15.0
    assert len(tb["energy_per_step"]) == 8
    assert tb["energy_per_step"][-1] == pytest.approx(tb["energy_per_sample"]["snn"])
    assert all(a < b for a, b in zip(tb["energy_per_step"], tb["energy_per_step"][1:],
                                     strict=False))
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["name"] == "tiny" and len(saved["results"]) == 2
    assert saved["results"][0]["provenance"]["seed"] == 0
    report = (out / "report.md").read_text()
    assert "| threshold_balancing |" in report and "t to ANN-0.5" in report
    assert re.search(r"\|\s+AugMapping \(Yu et al\.\) \|", report)
    for name in ("accuracy_vs_time", "energy_vs_accuracy", "firing_rates"):
        _png_ok(out / f"{name}.png")

    # a second run redoes nothing ...
    monkeypatch.setattr("spikeforge.experiments.run.fit",
                        lambda *a, **k: pytest.fail("retrained a finished ANN"))
    monkeypatch.setattr("spikeforge.experiments.run.convert_and_evaluate",
                        lambda *a, **k: pytest.fail("re-converted a finished method"))
    again = run_experiment(exp)
    assert [e["accuracy"] for e in again] == [e["accuracy"] for e in entries]
    # ... unless a method's settings changed: only that stage is redone
    monkeypatch.undo()
    changed = load_experiment(write_config(tmp_path, BASE.replace("timesteps=4", "timesteps=2")),
                              out_dir=str(tmp_path / "out"))
    monkeypatch.setattr("spikeforge.experiments.run.fit",
                        lambda *a, **k: pytest.fail("retrained a finished ANN"))
    redone = run_experiment(changed)
    assert redone[0]["accuracy"] == tb["accuracy"] and len(redone[1]["accuracy"]) == 2


def test_interrupted_run_resumes_from_the_last_finished_epoch(tmp_path, epochs):
    exp = load_experiment(write_config(tmp_path, BASE.replace(
        "methods: [threshold_balancing, \"augmapping:timesteps=4\"]",
        "methods: [threshold_balancing]")), out_dir=str(tmp_path / "out"))
    epochs.kill_at = 2
    with pytest.raises(KeyboardInterrupt):
        run_experiment(exp)
    partial = json.loads((tmp_path / "out" / "ann" / "ann" / "results.json").read_text())
    assert partial["epochs"] == 1 and not partial["finished"]
    epochs.calls, epochs.kill_at = 0, None
    entries = run_experiment(exp)
    assert epochs.calls == 1  # only the second epoch ran
    done = json.loads((tmp_path / "out" / "ann" / "ann" / "results.json").read_text())
    assert done["finished"] and done["history"][0] == partial["history"][0]

    # the same experiment from scratch gives the same numbers (seeded end to end)
    fresh = run_experiment(load_experiment(exp.path, out_dir=str(tmp_path / "fresh")))
    assert fresh[0]["accuracy"] == pytest.approx(entries[0]["accuracy"], abs=0.5)


def _entry(label, accuracy, ann, dataset="mnist"):
    steps = len(accuracy)
    return {"method": label, "label": label, "dataset": dataset, "accuracy": accuracy,
            "timesteps": list(range(1, steps + 1)), "ann_accuracy": ann,
            "sops_per_step": [1e6 * t for t in range(1, steps + 1)],
            "energy_per_step": [1e-6 * t for t in range(1, steps + 1)],
            "energy_per_sample": {"snn": 1e-6 * steps, "ann": 4e-6},
            "firing_rates": {"conv1": 0.1, "conv2": 0.05}}


def test_summary_row_numbers():
    entry = _entry("m", [80.0, 90.0, 95.6, 96.0], ann=96.0)
    assert first_reaching(entry) == 3
    row = summary_rows([entry], [1, 4])[0]
    assert row["t=1 %"] == 80.0 and row["t=4 %"] == 96.0
    assert row["T"] == 4 and row["vs ANN"] == 0.0
    assert row["MSOPs"] == pytest.approx(4.0)
    assert row["E SNN/ANN"] == pytest.approx(1.0)
    short = summary_rows([_entry("m", [80.0, 95.0], ann=96.0)], [1, 4])[0]
    assert short["T"] == 2 and short["vs ANN"] == -1.0 and short["t=4 %"] is None
    assert summary_rows([_entry("m", [50.0, 60.0], ann=96.0)], [1, 2])[0]["t to ANN-0.5"] == "—"


def test_table_names_the_method_and_shows_both_energies_where_they_differ():
    from spikeforge.experiments.report import table

    binary = _entry("threshold_balancing", [80.0, 90.0], ann=96.0)
    binary["neuron"] = {"method": "threshold_balancing", "thresholds_from": "calibrate",
                        "initial": "half", "channelwise": True}
    assert "E events/ANN" not in table([binary], [1, 2])  # one figure when they agree
    aug = _entry("augmapping levels=16", [95.0, 96.0], ann=96.0)
    aug.update(name="AugMapping, 16 levels",
               energy_events_per_step=[0.5e-6, 1e-6],
               energy_per_sample={"snn": 2e-6, "snn_events": 1e-6, "ann": 4e-6})
    rows = summary_rows([binary, aug], [1, 2])
    assert rows[0]["method"] == "threshold balancing, v(0) = θ/2, per channel"
    assert rows[1]["method"] == "AugMapping, 16 levels"
    assert rows[1]["E SNN/ANN"] == pytest.approx(0.5)  # energy_per_step: |c| per event
    assert rows[1]["E events/ANN"] == pytest.approx(0.25)
    text = table([binary, aug], [1, 2])
    assert "E events/ANN" in text and re.search(r"\|\s+AugMapping, 16 levels \|", text)


def test_report_merges_results_files(tmp_path, capsys):
    a, b = tmp_path / "a" / "results.json", tmp_path / "b" / "results.json"
    for path, acc in ((a, [90.0, 95.0]), (b, [85.0, 93.0, 94.0, 95.5])):
        path.parent.mkdir()
        path.write_text(json.dumps({"results": [_entry("qcfs", acc, ann=96.0)]}))
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "(a)" in out and "(b)" in out  # same label from two files: told apart
    entries = load_entries([a, b])
    assert len(entries) == 2
    for name in ("accuracy_vs_time", "energy_vs_accuracy", "firing_rates"):
        _png_ok(tmp_path / "rep" / f"{name}.png")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["report", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "holds no results entries" in capsys.readouterr().err


def test_an_experiment_can_train_and_evaluate_a_spiking_network(tmp_path):
    text = """
name: snn
ann: ann.yaml
variants:
  lif: {overrides: [kind=snn, snn.timesteps=3, optim.epochs=1], methods: [snn]}
evaluate: {timesteps: 6, calibration_samples: 64}
run: {progress: false}
"""
    exp = load_experiment(write_config(tmp_path, text), out_dir=str(tmp_path / "out"))
    (entry,) = run_experiment(exp)
    assert entry["method"] == "snn" and len(entry["accuracy"]) == 6
    assert entry["ann_accuracy"] is None  # nothing to compare with
    trained = json.loads((tmp_path / "out" / "lif" / "ann" / "results.json").read_text())
    assert trained["kind"] == "snn"
    # at its own T the simulation reproduces the trained network's test accuracy
    assert entry["accuracy"][2] == pytest.approx(trained["test_accuracy"], abs=1e-6)
    with pytest.raises(ConfigError, match="method 'qcfs' needs QCFS"):
        load_experiment(write_config(tmp_path, text.replace("[snn]", "[qcfs]")))
