"""The README's results sections are generated from ``results/`` (no hand-typed numbers), and
the papers' numbers are put beside ours from ``results/published.yaml``."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import update_results  # noqa: E402


def test_readme_is_what_the_script_generates(tmp_path):
    readme = tmp_path / "README.md"
    shutil.copy2(REPO / "README.md", readme)
    shutil.copytree(REPO / "results", tmp_path / "results",  # the records, not the weights
                    ignore=shutil.ignore_patterns("*.pt", "*.png"))
    update_results.main(["--readme", str(readme), "--results", str(tmp_path / "results")])
    assert readme.read_text() == (REPO / "README.md").read_text(), (
        "README.md's generated sections are out of date: run python scripts/update_results.py")


def test_papers_table_puts_our_numbers_beside_the_papers():
    text = update_results.papers_table(REPO / "results" / "published.yaml", REPO / "results",
                                       REPO)
    groups = yaml.safe_load((REPO / "results" / "published.yaml").read_text())
    rows = [line for line in text.splitlines() if line.startswith("|")][2:]
    assert len(rows) == sum(len(g["published"]) + max(len(g["ours"]), 1) for g in groups)
    record = json.loads((REPO / "results" / "cifar10_qcfs" / "results.json").read_text())
    entry = next(e for e in record["results"] if e["label"] == "csqcfs_L4 csqcfs")
    ours = next(r for r in rows if "vgg9 csqcfs_L4 csqcfs" in r)
    cells = [c.strip() for c in ours.strip("|").split("|")]
    assert cells[5] == f"{entry['ann_accuracy']:.2f}"
    assert cells[6:12] == [f"{entry['accuracy'][t - 1]:.2f}" for t in (1, 2, 4, 8, 16, 32)]
    assert sum("not run here" in r and "configs/paper/cifar100_vgg16.yaml" in r
               for r in rows) == 2  # CIFAR-100 needs a GPU: said, with the configs


def test_papers_table_names_a_missing_label(tmp_path):
    published = tmp_path / "published.yaml"
    published.write_text(yaml.safe_dump([{
        "dataset": "cifar10", "method": "QCFS", "note": "n", "gpu_configs": [],
        "published": [], "ours": [{"folder": "cifar10_qcfs", "label": "qcfs_L9 qcfs"}]}]))
    with pytest.raises(SystemExit, match="qcfs_L9 qcfs.*qcfs_L4 qcfs"):
        update_results.papers_table(published, REPO / "results", REPO)
