"""The generated results sections (README's headline and demo tables, docs/results.md,
benchmarks/README.md) are what ``scripts/update_results.py`` makes of the committed results
files (no hand-typed numbers), and the papers' numbers are put beside ours from
``results/published.yaml``."""

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

PAGES = sorted({page for page, _, _ in update_results.SECTIONS})


def test_generated_sections_are_up_to_date(tmp_path):
    for page in PAGES:
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / page, tmp_path / page)
    shutil.copytree(REPO / "results", tmp_path / "results",  # the records, not the weights
                    ignore=shutil.ignore_patterns("*.pt", "*.png"))
    shutil.copytree(REPO / "benchmarks" / "results", tmp_path / "benchmarks" / "results")
    update_results.main(["--root", str(tmp_path)])
    for page in PAGES:
        assert (tmp_path / page).read_text() == (REPO / page).read_text(), (
            f"{page}'s generated sections are out of date: run python scripts/update_results.py")


def test_every_page_has_its_sections():
    for page, name, _ in update_results.SECTIONS:
        text = (REPO / page).read_text()
        assert f"<!-- {name}:start -->" in text and f"<!-- {name}:end -->" in text, (page, name)


def test_headline_puts_our_best_beside_the_papers_best():
    text = update_results.headline_table(REPO / "results" / "published.yaml", REPO / "results",
                                         REPO)
    header, _, *lines = [[c.strip() for c in line.strip("|").split("|")]
                         for line in text.splitlines() if line.startswith("|")]
    rows = [dict(zip(header, line, strict=True)) for line in lines]
    qcfs = [r for r in rows if r["method"] == "QCFS, cifar10"]
    assert [r["who"] for r in qcfs] == ["Bu et al. 2022", "spikeforge"]
    assert qcfs[0]["best % (T)"] == "96.08 (32)"  # the papers' best of the three networks
    assert "GPU" in qcfs[0]["trained"]
    record = json.loads((REPO / "results" / "cifar10_qcfs" / "results.json").read_text())
    entry = next(e for e in record["results"] if e["label"] == "qcfs_L4 qcfs")
    best = max(a for t, a in enumerate(entry["accuracy"], 1) if t in (1, 2, 4, 8, 16, 32))
    assert qcfs[1]["best % (T)"].startswith(f"{best:.2f} (")
    assert qcfs[1]["results"] == "[JSON](results/cifar10_qcfs/results.json)"
    # how ours was trained, from the variant's training record
    trained = json.loads((REPO / "results" / "cifar10_qcfs" / "qcfs_L4" / "results.json")
                         .read_text())
    assert qcfs[1]["trained"].startswith(f"{trained['epochs']} epochs in ")
    assert qcfs[1]["trained"].endswith(
        "core" if trained["provenance"]["machine"]["torch_threads"] == 1 else "cores")
    assert "QCFS on cifar100" in text  # said not run, not left out silently


@pytest.mark.parametrize(("neuron", "method", "name"), [
    ({"levels": 1, "initial": "half", "thresholds_from": "calibrate"}, "augmapping",
     "AugMapping (Yu et al.)"),
    ({"levels": 1, "initial": "zero", "thresholds_from": "calibrate"}, "augmapping",
     "AugMapping (Yu et al.), v(0) = 0"),
    ({"levels": 16, "initial": "half", "thresholds_from": "calibrate"}, "augmapping",
     "AugMapping, 16 levels"),
    ({"levels": 4, "initial": "half", "thresholds_from": "learned"}, "augmapping",
     "AugMapping, 4 levels, learned λ"),
    ({"initial": "half", "channelwise": True, "thresholds_from": "calibrate"},
     "threshold_balancing", "threshold balancing, v(0) = θ/2, per channel"),
    ({"initial": "zero", "symmetric": True, "thresholds_from": "calibrate"}, "termapping",
     "TerMapping, symmetric"),
    ({"initial": "half", "channelwise": True, "thresholds_from": "learned"}, "csqcfs",
     "CS-QCFS"),
])
def test_method_names_follow_the_design_notes(neuron, method, name):
    assert update_results.method_name({"method": method, "neuron": neuron}) == name


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


def test_best_run_is_the_higher_accuracy_then_the_fewer_steps():
    runs = [{4: 99.0, 16: 99.62}, {1: 99.6, 8: 99.62}, {2: 99.5}]
    assert max(runs, key=update_results._better) == {1: 99.6, 8: 99.62}
    assert max([{2: 99.5}, {1: 99.7}], key=update_results._better) == {1: 99.7}


def test_a_hybrid_run_is_named_by_the_conversion_it_starts_from():
    record = json.loads((REPO / "results" / "mnist_hybrid" / "results.json").read_text())
    ours = update_results._ours(REPO / "results", {"folder": "mnist_hybrid"}, REPO)
    assert ours["name"] == "hybrid training"
    start = f"{record['initial_test_accuracy']:.2f}%"
    assert ours["model"] == f"cnn_small (hybrid: threshold balancing SNN ({start}), then BPTT, " \
                            "atan surrogate)"
    snn = update_results._ours(REPO / "results", {"folder": "mnist_lenet_snn"}, REPO)
    assert (snn["name"], snn["model"]) == ("direct training", "lenet (atan surrogate)")


def test_a_run_under_isa_caps_says_so_and_shows_them_in_its_command():
    tables = update_results.performance_tables(REPO / "benchmarks" / "results",
                                               REPO / "benchmarks")
    capped = next(line for line in tables.splitlines()
                  if "compare_quick_avx2_capped.json" in line and line.startswith("`"))
    assert capped.startswith("`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python ")
    assert "vector ISA AVX2 (capped below the CPU's: its flags" in capped
    assert "avx512f" in capped
    plain = next(line for line in tables.splitlines()
                 if "compare_quick_avx512.json)" in line and line.startswith("`"))
    assert "capped" not in plain and plain.startswith("`python ")
