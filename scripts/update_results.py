"""Publish runs into ``results/`` and regenerate every results table from the committed JSON.

    python scripts/update_results.py runs/mnist_cnn runs/fashion_mnist_cnn   # publish + tables
    python scripts/update_results.py runs/convert_mnist_cnn    # a `spikeforge convert` output
    python scripts/update_results.py runs/mnist_qcfs           # a `spikeforge run` output
    python scripts/update_results.py                                        # tables only

Publishing copies a run's ``results.json`` and ``metrics.jsonl`` into ``results/<run name>/``
and draws its training curves there. Then every section between ``<!-- NAME:start -->`` and
``<!-- NAME:end -->`` markers is rewritten (see ``SECTIONS``):

    README.md              headline (ours beside the papers', best of each method), demo
    docs/results.md        results (training runs), papers, conversion, experiments
    benchmarks/README.md   performance (compare.py, time to accuracy)

from ``results/*/results.json``, ``results/published.yaml`` and ``benchmarks/results/*.json``;
no number in them is typed by hand, and every table links the JSON it comes from.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from spikeforge.convert import recipes  # noqa: E402
from spikeforge.experiments.plots import plot_training_curves  # noqa: E402
from spikeforge.experiments.tables import markdown_table  # noqa: E402
from spikeforge.train.config import NeuronConfig, SNNConfig  # noqa: E402

MAX_PUBLISHED_PARAMETERS = 3_000_000  # about 12 MB of float32 weights
PAPER_STEPS = (1, 2, 4, 8, 16, 32)  # the T columns of the papers table; others go to "other T"
HEADLINE_STEPS = (1, 4)  # the T columns of the README's headline table (beside the best T)
DEMO_RESULTS = "benchmarks/results/demo_threads1.json"  # the README's `make demo` output


def summary_from_checkpoint(run_dir: Path, command: str | None) -> dict:
    """The results record of a run that has not written ``results.json`` (a run still
    training with a spikeforge older than per-epoch results), from its last checkpoint."""
    import time

    import torch

    from spikeforge.config import from_dict
    from spikeforge.train import TrainConfig, load_checkpoint, load_model
    from spikeforge.train.loop import summarize

    state = load_checkpoint(run_dir / "checkpoint.pt")
    cfg = from_dict(TrainConfig, state["config"])
    summary = summarize(cfg, state["history"], load_model(run_dir / "checkpoint.pt"),
                        torch.device("cpu"), time.perf_counter())
    summary["provenance"]["command"] = command or "(not recorded)"
    summary["provenance"]["git_commit"] = None  # unknown: the code that trained it
    summary["provenance"]["machine"]["torch_threads"] = cfg.run.threads
    return summary


def publish_model(checkpoint: Path, dest: Path) -> None:
    """The trained weights without optimizer state (a few MB): enough for
    ``spikeforge convert --checkpoint results/<run>/model.pt`` without retraining."""
    import torch

    from spikeforge.runtime import atomic_torch_save
    from spikeforge.train import load_checkpoint

    state = load_checkpoint(checkpoint)
    atomic_torch_save({k: state[k] for k in ("model", "model_spec", "config", "epoch")
                       if k in state}, dest)
    assert torch.load(dest, weights_only=True)["model"].keys() == state["model"].keys()


def publish_experiment(run_dir: Path, dest: Path, record: dict, weights: bool) -> Path:
    """A `spikeforge run` output: results, report and plots, and per variant the training
    record, its metrics and (with ``weights``) the trained weights."""
    for path in [run_dir / "results.json", run_dir / "report.md", *run_dir.glob("*.png")]:
        shutil.copy2(path, dest / path.name)
    for variant in sorted({e["variant"] for e in record["results"]}):
        ann, out = run_dir / variant / "ann", dest / variant
        out.mkdir(exist_ok=True)
        for name in ("results.json", "metrics.jsonl"):
            if (ann / name).is_file():
                shutil.copy2(ann / name, out / name)
        if weights and (ann / "checkpoint.pt").is_file():
            publish_model(ann / "checkpoint.pt", out / "model.pt")
    return dest


def publish(run_dir: Path, results_dir: Path, command: str | None = None,
            weights: bool = False) -> Path:
    dest = results_dir / run_dir.name
    dest.mkdir(parents=True, exist_ok=True)
    record_path = run_dir / "results.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if "experiment" in record:
        return publish_experiment(run_dir, dest, record, weights)
    if "results" in record:
        for name in ("results.json", "results.png"):  # a `spikeforge convert` output folder
            shutil.copy2(run_dir / name, dest / name)
        return dest
    if (run_dir / "results.json").is_file():
        summary = json.loads((run_dir / "results.json").read_text())
        shutil.copy2(run_dir / "results.json", dest / "results.json")
    else:
        summary = summary_from_checkpoint(run_dir, command)
        (dest / "results.json").write_text(json.dumps(summary, indent=2))
    shutil.copy2(run_dir / "metrics.jsonl", dest / "metrics.jsonl")
    checkpoint = run_dir / "checkpoint.pt"
    if summary.get("finished") and checkpoint.is_file():
        if summary.get("parameters", 0) <= MAX_PUBLISHED_PARAMETERS:
            publish_model(checkpoint, dest / "model.pt")
        else:
            print(f"not publishing the weights of {run_dir.name}: "
                  f"{summary['parameters'] / 1e6:.1f} M parameters is too large for git")
    plot_training_curves(summary["history"], dest / "training_curves.png",
                         title=f"{summary['model']} on {summary['dataset']}")
    return dest


def _command(text: str) -> str:
    """A recorded command as a reader would type it in a checkout: absolute paths into a
    checkout's ``runs/``, ``results/`` or ``.venv/`` (or a ``*-runs/`` folder outside it)
    made relative."""
    return re.sub(r"(^|[= ])/\S*?/(?:[^/\s]*-)?(runs/|results/|\.venv/)", r"\1\2", text)


def _link(path: Path, base: Path, text: str | None = None) -> str:
    """A Markdown link to ``path``, relative to the folder ``base`` of the page it is on."""
    return f"[{text or path.name}]({os.path.relpath(path, base)})"


def method_name(entry: dict) -> str:
    """The name a results entry's method goes by in the docs, from what its neuron record
    says was run (not from its label): :func:`spikeforge.convert.recipes.method_name`."""
    return recipes.method_name({**(entry.get("neuron") or {}), "method": entry["method"]})


def table(results_dir: Path, base: Path) -> str:
    """The training runs' table; links are relative to ``base`` (the page's folder)."""
    rows, commands = [], []
    for path in sorted(results_dir.glob("*/results.json")):
        s = json.loads(path.read_text())
        if s.get("kind") not in ("ann", "snn"):
            continue
        prov = s["provenance"]
        history = s["history"]
        snn = prov["config"].get("snn", {})
        kind = (f"SNN T={snn['timesteps']} {snn['encoder']}"
                + (" hybrid" if snn.get("init_from") else "") if s["kind"] == "snn" else "ANN")
        rows.append({
            "data set": s["dataset"], "model": s["model"], "kind": kind,
            "start %": s.get("initial_test_accuracy"),
            "epochs": f"{s['epochs']}" + ("" if s.get("finished", True)
                                         else f" of {s['epochs_planned']} (unfinished)"),
            "test acc %": s["test_accuracy"], "best %": s["best_test_accuracy"],
            "train min": prov["train_seconds"] / 60,
            "median s/epoch": statistics.median(h["epoch_seconds"] for h in history),
            "threads": prov["machine"]["torch_threads"],
            "results": _link(path, base, path.parent.name),
        })
        commands.append(f"- `{_command(prov['command'])}` (seed {prov['seed']})")
    return "\n".join([markdown_table(rows), "", "Commands (each folder also holds the "
                      "per-epoch `metrics.jsonl` and `training_curves.png`). A command names "
                      "a config file as it was when the run was made; its `results.json` "
                      "holds the whole config and the code's version:", "", *commands])


def conversion_table(results_dir: Path, base: Path) -> str:
    """Accuracy against T per data set and method, from ``spikeforge convert`` outputs."""
    rows, commands = [], []
    for path in sorted(results_dir.glob("*/results.json")):
        record = json.loads(path.read_text())
        entries = record.get("results")
        if not entries or "experiment" in record:
            continue
        for e in entries:
            points = [t for t in (1, 2, 4, 8, 16, 32, 64, 128, 256) if t <= len(e["accuracy"])]
            rows.append({"data set": e["dataset"], "method": method_name(e),
                         **{f"T={t}": e["accuracy"][t - 1] for t in points},
                         "ANN": e["ann_accuracy"], "T max": len(e["accuracy"]),
                         "test images": e["samples"],
                         "M SOPs at T max": e["sops_per_sample"] / 1e6,
                         "M MACs (ANN)": e["ann_macs_per_sample"] / 1e6,
                         "results": _link(path, base, path.parent.name)})
        commands.append(f"- `{_command(entries[0]['provenance']['command'])}`")
    keys = list(dict.fromkeys(key for row in rows for key in row))
    steps = sorted((k for k in keys if k.startswith("T=")), key=lambda k: int(k[2:]))
    columns = ["data set", "method", *steps, *(k for k in keys if k not in steps
                                               and k not in ("data set", "method"))]
    return "\n".join([markdown_table(rows, columns), "", "Commands:", "", *commands])


def experiment_tables(results_dir: Path, base: Path) -> str:
    """One comparison table per published `spikeforge run` experiment."""
    from spikeforge.experiments.report import table as comparison

    parts = []
    for path in sorted(results_dir.glob("*/results.json")):
        record = json.loads(path.read_text())
        if "experiment" not in record:
            continue
        cfg = record["config"]
        points = cfg["evaluate"].get("report") or [1, 2, 4, 8, 16, 32]
        minutes = sum(json.loads(p.read_text())["provenance"]["train_seconds"]
                      for p in path.parent.glob("*/results.json")) / 60
        commands = sorted({_command(e["provenance"]["command"]) for e in record["results"]})
        parts += [f"**{record['experiment']}** — " + ", ".join(f"`{c}`" for c in commands)
                  + f" (seed {cfg['seed']}; ANN training {minutes:.0f} min in all; "
                  f"{_link(path, base)}, {_link(path.parent / 'report.md', base)})", "",
                  comparison(record["results"], points), ""]
    return "\n".join(parts).rstrip()


def demo_table(repo: Path) -> str:
    """What ``spikeforge demo`` prints at the end, from the committed run of the demo."""
    from spikeforge.experiments.conversion import report_points
    from spikeforge.experiments.report import table as comparison

    record = json.loads((repo / DEMO_RESULTS).read_text())
    entries = record["results"]
    machine = entries[0]["provenance"]["machine"]
    threads = machine["torch_threads"]
    points = record["config"]["evaluate"].get("report") or report_points(
        record["config"]["evaluate"]["timesteps"])
    return "\n".join([
        "```", f"demo: test accuracy (%) after t steps, {entries[0]['samples']} test images", "",
        comparison(entries, points), "",
        "report:  spikeforge-demo/report.md", "results: spikeforge-demo/results.json",
        "plots:   spikeforge-demo/{accuracy_vs_time,energy_vs_accuracy,firing_rates}.png",
        "models:  spikeforge-demo/<variant>/ann/checkpoint.pt (training curves beside them)",
        "```", "", f"(A committed run on {threads} thread{'s' * (threads > 1)} of a CPU with "
        f"{machine['cpu_capability']}: {record['wall_seconds_this_process']:.0f} s in all; "
        f"{_link(repo / DEMO_RESULTS, repo, 'its JSON')}. The accuracies move by a few of the "
        "test images with the thread count.)"])


def performance_tables(bench_dir: Path, base: Path) -> str:
    """The benchmarks page's tables from ``benchmarks/results``: compare.py's ratios (every
    ``compare_quick*.json`` run, one per kind of machine, each with its vector ISA) and the
    time-to-accuracy runs."""
    parts = []
    for compare in sorted(bench_dir.glob("compare_quick*.json")):
        data = json.loads(compare.read_text())
        heap = any("heap_work_mib" in r for r in data["records"])  # runs that sampled it
        rows = []
        for r in data["records"]:
            if "error" in r:
                continue
            what = "train step" if r["kind"] == "training" else "inference"
            t = r["timesteps"]
            floor = r["implementation"] == "ann"
            spread = (f"{r['ratio_min']:.2f}–{r['ratio_max']:.2f}" if "ratio_min" in r
                      else None)
            rows.append({"benchmark": f"{r['benchmark']} {what}", "T": t,
                         "batch": r["batch"],
                         "implementation": "dense ANN ÷ T" if floor else r["implementation"],
                         "images/s": r["images_per_s"] / (t if floor else 1),
                         "vs best peer": r.get("ratio_vs_best_peer"),
                         **({"range over rounds": spread} if "rounds" in data else {}),
                         "peak RSS MiB": r["peak_rss_mib"],
                         **({"heap MiB": r.get("heap_work_mib")} if heap else {}),
                         "max abs diff": (
                             None if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}")})
        isa = data.get("isa") or {}
        caps = isa.get("caps") or {}
        machine = (f"{isa.get('cpu_model', '?')}, vector ISA {isa['cpu_capability']}"
                   + (" (capped below the CPU's: its flags "
                      f"{', '.join(isa.get('flags', []))})" if caps else "")
                   + f", native bf16 {'yes' if isa.get('native_bf16') else 'no'}"
                   if isa else f"CPU capability {data.get('cpu_capability', '?')}")
        how = (f"median of {data['rounds']} interleaved rounds, ratios per round"
               if "rounds" in data else "one process after another")
        command = " ".join([*(f"{k}={v}" for k, v in caps.items()), data["command"]])
        parts += [*([""] if parts else []),
                  f"`{_command(command)}` ({data['records'][0]['threads']} threads, torch "
                  f"{data['torch']}, {machine}; {how}; {_link(compare, base)})", "",
                  markdown_table(rows)]
    for path in sorted(bench_dir.glob("time_to_accuracy_*.json")):
        data = json.loads(path.read_text())
        rows = [{"method": r["method"] + (" (SpikingJelly)" if r.get("implementation")
                                          == "spikingjelly" else ""),
                 "t*": r["t_star"] if r["method"] != "ann" else "", "accuracy % at t*":
                 r["accuracy_at_t_star"], "images/s at t*": r["images_per_s"]}
                for r in data["rows"]]
        parts += ["", f"**{data['dataset']}, {data['model']}** (`{data['checkpoint']}`) — ANN "
                  f"{data['ann_accuracy']:.2f}%"
                  f" on {data['test_images']} test images; t* = first t within "
                  f"{data['tolerance']} points of it (`{_command(data['command'])}`; "
                  + (f"{data['note']}; " if data.get("note") else "")
                  + f"{_link(path, base)})", "", markdown_table(rows)]
    return "\n".join(parts)


def _training(results_dir: Path, folder: str) -> str | None:
    """How the network of ``results/<folder>`` (a training run's folder) was trained:
    epochs, wall time and hardware, from its ``results.json``; None when there is none."""
    path = results_dir / folder / "results.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    provenance = record.get("provenance", {})
    machine, seconds = provenance.get("machine", {}), provenance.get("train_seconds")
    if machine.get("device", "cpu") != "cpu":
        where = machine["device"].split(":")[0].upper()
    else:
        threads = machine.get("torch_threads")
        where = " ".join(filter(None, (str(threads or ""), machine.get("cpu_capability"),
                                        "CPU", threads and ("core" if threads == 1
                                                            else "cores"))))
    took = ("" if not seconds else f" in {seconds / 60:.0f} min" if seconds < 3600
            else f" in {seconds / 3600:.1f} h")
    return f"{record['epochs']} epochs{took} on {where}"


def _ours(results_dir: Path, ref: dict, base: Path) -> dict:
    """One of our rows for the papers tables: a results entry (``label``) of an experiment or
    a `spikeforge convert` output, or a training run (``folder`` only) of ``results/``, with
    its accuracy at the papers' T and at the last T it was evaluated at. ``trained`` names the
    training run of a converted ANN (an experiment's are its variants' folders)."""
    folder = results_dir / ref["folder"]
    path = folder / "results.json"
    record = json.loads(path.read_text())
    link = _link(path, base, ref["folder"])
    if "label" not in ref:  # a training run: its accuracy at its own T
        snn = record["provenance"]["config"].get("snn", {})
        t = snn.get("timesteps", 1) if record["kind"] == "snn" else 1
        trained = _training(results_dir, ref["folder"])
        model, name = record["model"], "direct training"
        if record["kind"] == "snn":  # which gradient trained it, from which start
            surrogate = snn.get("neuron", {}).get("surrogate", NeuronConfig.surrogate)
            how = ["Lee et al.'s rule" if surrogate == "lee" else f"{surrogate} surrogate"]
            if snn.get("init_from"):
                name = "hybrid training"
                start = recipes.method_name(
                    {"method": snn.get("init_method", SNNConfig.init_method)})
                how.insert(0, f"hybrid: {start} SNN "
                              f"({record['initial_test_accuracy']:.2f}%), then BPTT")
            model += f" ({', '.join(how)})"
        return {"model": model, "name": name, "trained": trained,
                "setting": f"{trained}, {link}", "ann": None,
                "accuracy": {t: record["test_accuracy"]}, "link": _link(path, base, "JSON")}
    entries = [e for e in record["results"] if e["label"] == ref["label"]]
    if not entries:
        raise SystemExit(f"results/published.yaml: {ref['folder']} has no entry labelled "
                         f"{ref['label']!r}; its labels: "
                         + ", ".join(e["label"] for e in record["results"]))
    e = entries[0]
    train_config = e["provenance"].get("train_config")
    run = ref.get("trained") or (f"{ref['folder']}/{e['variant']}" if "variant" in e else None)
    trained = run and _training(results_dir, run)
    if not trained and "experiment" in record and train_config:
        trained = f"{train_config['optim']['epochs']} epochs, CPU"
    elif not trained:  # a `spikeforge convert` output of an ANN trained elsewhere
        trained = f"ANN `{e['provenance']['checkpoint']}`, CPU"
    last = len(e["accuracy"])
    return {"model": f"{e['model']} {ref['label']}", "name": method_name(e), "label": True,
            "trained": trained,
            "setting": f"{trained}, {e['samples']} test images, {link}",
            "ann": e["ann_accuracy"], "link": _link(path, base, "JSON"),
            "accuracy": {t: a for t, a in enumerate(e["accuracy"], 1)
                         if t in PAPER_STEPS or t == last}}


def papers_table(published: Path, results_dir: Path, base: Path) -> str:
    """The papers' published numbers beside ours (``results/published.yaml``), and which
    settings were not run here because they need a GPU."""
    import yaml

    rows, notes = [], []
    for group in yaml.safe_load(published.read_text()):
        what = {"data set": group["dataset"], "method": group["method"]}
        ours = [("spikeforge", _ours(results_dir, ref, base)) for ref in group["ours"]]
        for who, r in [*((p["source"], p) for p in group["published"]), *ours]:
            acc = {int(t): a for t, a in r["accuracy"].items()}
            rows.append({**what, "who": who, "model": r["model"], "setting": r["setting"],
                         "ANN %": r.get("ann"),
                         **{f"T={t}": acc.get(t) for t in PAPER_STEPS},
                         "other T": ", ".join(f"{a:.2f} (T={t})" for t, a in acc.items()
                                              if t not in PAPER_STEPS) or None})
        if not ours:
            rows.append({**what, "who": "spikeforge", "model": "not run here", "setting":
                         "needs a GPU: " + ", ".join(f"`{c}`" for c in group["gpu_configs"])})
        notes.append(f"- {group['dataset']}, {group['method']}: {group['note']}")
    return "\n".join([markdown_table(rows), "", *notes])


def _best(accuracy: dict) -> tuple[int, float]:
    """The highest accuracy and the first T that reaches it."""
    t, a = max(accuracy.items(), key=lambda item: (item[1], -item[0]))
    return t, a


def _better(accuracy: dict) -> tuple[float, int]:
    """Sort key of runs: the higher best accuracy, then the smaller T that reaches it."""
    t, a = _best(accuracy)
    return a, -t


def headline_table(published: Path, results_dir: Path, base: Path) -> str:
    """The README's one table: for each method of ``results/published.yaml`` that we ran,
    the papers' best row beside our best (highest accuracy at any reported T; ties: the
    smaller T), how each was trained (the paper's setting; our epochs, wall time and CPU),
    the accuracy at T = 1 and 4 and a link to our results JSON."""
    import yaml

    rows, not_run = [], []
    for group in yaml.safe_load(published.read_text()):
        if not group["ours"]:
            not_run.append(f"{group['method']} on {group['dataset']}")
            continue
        candidates = [(p["source"], p["model"], p.get("ann"),
                       {int(t): a for t, a in p["accuracy"].items()}, "", p.get("setting"))
                      for p in group["published"]]
        paper = max(candidates, key=lambda c: _better(c[3]), default=None)
        ours = [_ours(results_dir, ref, base) for ref in group["ours"]]
        best = max(ours, key=lambda r: _better(r["accuracy"]))
        detail = best["name"]
        if detail.lower().startswith(group["method"].lower()):
            detail = detail[len(group["method"]):].lstrip(", ")
        if detail.startswith("(") and detail.endswith(")"):
            detail = detail[1:-1]
        model = (best["model"] if "label" not in best  # a training run: model (gradient)
                 else best["model"].split()[0] + (f" ({detail})" if detail else ""))
        mine = ("spikeforge", model, best["ann"], best["accuracy"], best["link"],
                best["trained"])
        for who, model, ann, acc, link, trained in ([paper] if paper else []) + [mine]:
            t, a = _best(acc)
            rows.append({"method": f"{group['method']}, {group['dataset']}", "who": who,
                         "model": model, "trained": trained, "ANN %": ann,
                         **{f"T={s}": acc.get(s) for s in HEADLINE_STEPS},
                         "best % (T)": f"{a:.2f} ({t})", "results": link})
    text = [markdown_table(rows)]
    if not_run:
        text += ["", "Not run (they need a GPU; configs in `configs/paper/`): "
                 + ", ".join(not_run) + "."]
    return "\n".join(text)


#: generated sections: (page, marker name, generator of its text from (repo, page folder))
SECTIONS = [
    ("README.md", "headline", lambda repo, base: headline_table(
        repo / "results" / "published.yaml", repo / "results", base)),
    ("README.md", "demo", lambda repo, base: demo_table(repo)),
    ("docs/results.md", "results", lambda repo, base: table(repo / "results", base)),
    ("docs/results.md", "papers", lambda repo, base: papers_table(
        repo / "results" / "published.yaml", repo / "results", base)),
    ("docs/results.md", "conversion", lambda repo, base: conversion_table(
        repo / "results", base)),
    ("docs/results.md", "experiments", lambda repo, base: experiment_tables(
        repo / "results", base)),
    ("benchmarks/README.md", "performance", lambda repo, base: performance_tables(
        repo / "benchmarks" / "results", base)),
]


def update_section(page: Path, name: str, text: str) -> None:
    """Replace what lies between ``<!-- name:start -->`` and ``<!-- name:end -->``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    content = page.read_text()
    if start not in content or end not in content:
        raise SystemExit(f"{page} has no {start} ... {end} section")
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    page.write_text(f"{head}{start}\n{text}\n{end}{tail}")


def update_pages(repo: Path) -> list[Path]:
    """Regenerate every section of ``SECTIONS`` under ``repo``; returns the pages."""
    pages = []
    for relative, name, generate in SECTIONS:
        page = repo / relative
        update_section(page, name, generate(repo, page.parent))
        pages.append(page)
    return list(dict.fromkeys(pages))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, help="run folders to publish")
    parser.add_argument("--root", type=Path, default=REPO,
                        help="the repository whose results/ and pages to use (default: this one)")
    parser.add_argument("--command", help="the command that started a run published from its "
                        "checkpoint (runs without results.json)")
    parser.add_argument("--weights", action="store_true",
                        help="also publish the trained weights of an experiment's variants")
    args = parser.parse_args(argv)
    for run in args.runs:
        print(f"published {publish(run, args.root / 'results', args.command, args.weights)}")
    for page in update_pages(args.root.resolve()):
        print(f"updated {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
