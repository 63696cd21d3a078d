"""Publish training runs into ``results/`` and regenerate the README's results table from it.

    python scripts/update_results.py runs/mnist_cnn runs/fashion_mnist_cnn   # publish + table
    python scripts/update_results.py                                        # table only

Publishing copies a run's ``results.json`` and ``metrics.jsonl`` into ``results/<run name>/``
and draws its training curves there. The README section between the ``results:start`` and
``results:end`` markers is rewritten from every ``results/*/results.json``; no number in it is
typed by hand.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from spikeforge.experiments.plots import plot_training_curves  # noqa: E402
from spikeforge.experiments.tables import markdown_table  # noqa: E402

START, END = "<!-- results:start -->", "<!-- results:end -->"


def publish(run_dir: Path, results_dir: Path) -> Path:
    summary = json.loads((run_dir / "results.json").read_text())
    dest = results_dir / run_dir.name
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "metrics.jsonl"):
        shutil.copy2(run_dir / name, dest / name)
    plot_training_curves(summary["history"], dest / "training_curves.png",
                         title=f"{summary['model']} on {summary['dataset']}")
    return dest


def table(results_dir: Path) -> str:
    rows, commands = [], []
    for path in sorted(results_dir.glob("*/results.json")):
        s = json.loads(path.read_text())
        if s.get("kind") != "ann":
            continue
        prov = s["provenance"]
        history = s["history"]
        rows.append({
            "data set": s["dataset"], "model": s["model"], "epochs": s["epochs"],
            "test acc %": s["test_accuracy"], "best %": s["best_test_accuracy"],
            "train min": prov["train_seconds"] / 60,
            "median s/epoch": statistics.median(h["epoch_seconds"] for h in history),
            "threads": prov["machine"]["torch_threads"],
            "folder": f"[{path.parent.name}]({path.parent.relative_to(REPO)})",
        })
        commands.append(f"- `{prov['command']}` (seed {prov['seed']})")
    return "\n".join([markdown_table(rows), "", "Commands (each folder also holds the "
                      "per-epoch `metrics.jsonl` and `training_curves.png`):", "", *commands])


def update_readme(readme: Path, text: str) -> None:
    content = readme.read_text()
    if START not in content or END not in content:
        raise SystemExit(f"{readme} has no {START} ... {END} section")
    head, rest = content.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{text}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, help="run folders to publish")
    parser.add_argument("--results", type=Path, default=REPO / "results")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    args = parser.parse_args(argv)
    for run in args.runs:
        print(f"published {publish(run, args.results)}")
    update_readme(args.readme, table(args.results))
    print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
