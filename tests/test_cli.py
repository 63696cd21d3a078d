"""The command line: help everywhere, clear errors, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from spikeforge.cli import build_parser, main

SUBCOMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spikeforge.cli", *args],
                          capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_every_subcommand():
    out = run_cli("--help")
    assert out.returncode == 0
    for name in SUBCOMMANDS:
        assert name in out.stdout


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: spikeforge " + command in capsys.readouterr().out


def test_bad_config_key_fails_before_work(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim:\n  learning_rate: 0.1\n")
    assert main(["train", str(cfg), "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "optim.learning_rate" in err and "weight_decay" in err
    assert not (tmp_path / "out").exists()


def test_models_lists_the_zoo(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("cnn_small", "lenet", "vgg9", "resnet18", "resnet20"):
        assert name in out


def test_datasets_reports_missing_files(tmp_path, capsys):
    assert main(["datasets", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mnist_demo" in out and "missing" in out and str(tmp_path) in out


def test_demo_trains_converts_and_reports(tmp_path, capsys):
    from spikeforge.cli import main

    assert main(["demo", "--out-dir", str(tmp_path), "--timesteps", "4", "optim.epochs=1",
                 "data.train_subset=1200", "data.test_subset=200"]) == 0
    out = capsys.readouterr().out
    for fragment in ("ANN relu", "ANN csqcfs_L4", "relu augmapping", "csqcfs_L4 csqcfs",
                     "t to ANN-0.5", "report.md"):
        assert fragment in out
    for variant in ("relu", "csqcfs_L4"):
        assert (tmp_path / variant / "ann" / "training_curves.png").is_file()
    entries = json.loads((tmp_path / "results.json").read_text())["results"]
    assert [len(e["accuracy"]) for e in entries] == [4, 4, 8, 4, 4, 4]
    assert [e["name"] for e in entries[2:4]] == ["AugMapping (Yu et al.)",
                                                 "AugMapping, 16 levels"]
    assert all(e["samples"] == 200 for e in entries)
    # AugMapping on the CS-QCFS thresholds is the 4-level ANN at t = 1
    assert entries[-1]["agreement"][0] >= 99.5
    for name in ("accuracy_vs_time", "energy_vs_accuracy", "firing_rates"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
