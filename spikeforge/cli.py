"""The ``spikeforge`` command line.

    spikeforge demo                       # offline demo on the bundled MNIST subset
    spikeforge train CONFIG [key=value]   # train from a YAML config with overrides
    spikeforge convert --checkpoint CKPT --method M [M ...] --timesteps T --out results.json
    spikeforge run CONFIG [key=value]     # a whole experiment: train, convert, report
    spikeforge report RESULTS... --out DIR  # one table and plots from several results files
    spikeforge export --checkpoint CKPT --out net.nir     # NIR file of the converted SNN
    spikeforge models                     # the model zoo
    spikeforge datasets [--data-root R]   # the data sets and where their files go
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from spikeforge.config import ConfigError


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", help="folder with the data sets (default: "
                        "$SPIKEFORGE_DATA, else ~/.cache/spikeforge)")
    parser.add_argument("--device", help="cpu, cuda, cuda:N (default: CUDA when available)")
    parser.add_argument("--threads", type=int, help="CPU threads for PyTorch")


def _run_overrides(args: argparse.Namespace) -> list[str]:
    """Turn the common flags into config overrides (flags win over the file)."""
    out = []
    for flag, key in (("data_root", "data.root"), ("device", "run.device"),
                      ("threads", "run.threads"), ("out_dir", "run.out_dir")):
        value = getattr(args, flag, None)
        if value is not None:
            out.append(f"{key}={value}")
    return out


def _cmd_train(args: argparse.Namespace) -> int:
    from spikeforge.config import load_config
    from spikeforge.train import TrainConfig, fit

    cfg = load_config(TrainConfig, args.config, [*args.overrides, *_run_overrides(args)])
    result = fit(cfg, resume=args.resume)
    print(f"test accuracy {result.test_accuracy:.2f}% (best {result.best_test_accuracy:.2f}%) "
          f"after {len(result.history)} epochs; results in {result.out_dir}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from spikeforge.experiments.conversion import accuracy_table, run_conversion
    from spikeforge.runtime import set_threads

    set_threads(args.threads)
    # only what the user set: everything else is the method's default (one source)
    options = {key: getattr(args, key) for key in _METHOD_OPTIONS
               if getattr(args, key) is not None}
    if args.memory_budget:
        options["memory_budget"] = int(args.memory_budget * 2**20)
    entries = run_conversion(args.checkpoint, args.method, args.timesteps, args.out,
                             data_root=args.data_root, device=args.device,
                             calibration_samples=args.calibration_samples,
                             test_subset=args.test_subset, batch_size=args.batch_size,
                             seed=args.seed, progress=not args.no_progress,
                             flip=args.flip, **options)
    print(f"\n{entries[0]['model']} on {entries[0]['dataset']}: test accuracy (%) after t "
          f"steps ({entries[0]['samples']} test images)\n")
    print(accuracy_table(entries))
    print()
    for e in entries:
        energy = e["energy_per_sample"]
        ratio = f"energy SNN/ANN {energy['snn'] / energy['ann']:.2f}"
        if energy["snn_events"] != energy["snn"]:  # augmented events carry |c| > 1
            ratio += (f" (|c| ACs per event; one AC per event "
                      f"{energy['snn_events'] / energy['ann']:.2f})")
        print(f"{e['label']:28s} {e['name']}\n{'':28s} SOPs/sample "
              f"{e['sops_per_sample'] / 1e6:9.2f} M (unit {e['unit_sops_per_sample'] / 1e6:.2f}"
              f" M) at T={len(e['accuracy'])}  (ANN {e['ann_macs_per_sample'] / 1e6:.2f} M "
              f"MACs)  {ratio}  {e['seconds']:.0f} s")
    if args.out:
        print(f"\nresults: {args.out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from spikeforge.experiments.demo import run_demo

    extra = [o for o in _run_overrides(args) if not o.startswith("run.out_dir=")]
    run_demo(args.out_dir, tuple([*args.overrides, *extra]), timesteps=args.timesteps,
             force=args.force)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from spikeforge.experiments.run import load_experiment, print_summary, run_experiment

    flags = [f"run.{key}={value}" for key, value in (
        ("device", args.device), ("threads", args.threads), ("data_root", args.data_root))
        if value is not None]
    if args.no_progress:
        flags.append("run.progress=false")
    exp = load_experiment(args.config, [*args.overrides, *flags], out_dir=args.out_dir,
                          only=args.only)
    # precision: 'auto' (the fastest the device computes in hardware) unless the config sets it
    exp.config.conversion.setdefault("precision", "auto")
    entries = run_experiment(exp, force=args.force)
    print_summary(exp, entries)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from spikeforge.experiments.report import load_entries, table, write_report

    try:
        entries = load_entries(args.results)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    paths = write_report(entries, args.out, title=args.title, points=args.points)
    steps = max(len(e["accuracy"]) for e in entries)
    from spikeforge.experiments.conversion import report_points

    print(table(entries, [t for t in (args.points or report_points(steps)) if t <= steps]))
    print("\n" + "\n".join(f"{kind:13s} {path}" for kind, path in paths.items()))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from spikeforge.experiments.conversion import export_checkpoint
    from spikeforge.export import ExportError
    from spikeforge.runtime import set_threads

    set_threads(args.threads)
    try:
        spec, snn, graph = export_checkpoint(
            args.checkpoint, args.out, args.method, args.timesteps,
            approximate=args.approximate, data_root=args.data_root,
            calibration_samples=args.calibration_samples)
    except ExportError as exc:
        raise ConfigError(str(exc)) from exc
    kinds: dict[str, int] = {}
    for node in graph.nodes.values():
        kinds[type(node).__name__] = kinds.get(type(node).__name__, 0) + 1
    print(f"wrote {args.out}: {spec} SNN (T={snn.timesteps}), "
          + ", ".join(f"{n} {k}" for k, n in kinds.items()))
    for line in graph.metadata.get("approximations", []):
        print(f"approximated: {line}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from spikeforge.models import available, create

    for name in available():
        model = create(name, num_classes=10, in_channels=3)
        params = sum(p.numel() for p in model.parameters())
        print(f"{name:12s} {params / 1e6:8.3f} M parameters (10 classes, 3 input channels)")
    return 0


def _cmd_datasets(args: argparse.Namespace) -> int:
    from spikeforge.data import DATASETS, DatasetError, load_dataset, resolve_root

    print(f"data root: {resolve_root(args.data_root)}")
    for name in DATASETS:
        try:
            sizes = [len(load_dataset(name, split, root=args.data_root, download=False))
                     for split in ("train", "test")]
            print(f"{name:14s} ok       train {sizes[0]:6d}  test {sizes[1]:6d}")
        except DatasetError as exc:
            first = str(exc).splitlines()[0]
            print(f"{name:14s} missing  {first}")
    return 0


#: the convert options that mirror :func:`spikeforge.convert` (argparse destinations); each
#: defaults to None, meaning the method's default — except precision, "auto" on the command line
_METHOD_OPTIONS = ("percentile", "channelwise", "encoder", "reset", "initial", "max_pool",
                   "precision")


def _default(option: str) -> str:
    """``"default: the method's (X)"`` with X read from :func:`spikeforge.convert`."""
    import inspect

    from spikeforge.convert import convert

    value = inspect.signature(convert).parameters[option].default
    return f"default: the method's, {value}" if value is not None else "default: the method's"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spikeforge",
        description="Accurate and efficient deep spiking neural networks: ANN-to-SNN "
                    "conversion and direct spike-based training.")
    from spikeforge import __version__
    from spikeforge.convert.recipes import MAX_POOL_POLICIES, METHODS
    from spikeforge.encoding import ENCODERS
    from spikeforge.neurons.functional import INITIALS, RESETS
    from spikeforge.simulate import PRECISIONS

    parser.add_argument("--version", action="version", version=f"spikeforge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a network from a YAML config",
                       description="Train an ANN from a YAML config. Any key can be overridden "
                       "as section.key=value, e.g. optim.lr=0.05 data.batch_size=256.")
    p.add_argument("config", help="YAML config file (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT_DIR/checkpoint.pt if it exists")
    p.add_argument("--out-dir", help="output folder (checkpoint, metrics.jsonl, results.json)")
    _add_common(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "convert", help="convert a trained ANN checkpoint to an SNN and evaluate it",
        description="Convert a checkpoint written by `spikeforge train` into a spiking network "
        "with one or more methods, evaluate the accuracy after every t = 1..T on the test set "
        "(with firing rates, SOPs and energy), write the results JSON and a plot, and print a "
        "table. A method may carry its own options: termapping:symmetric=true, "
        "augmapping:cap=4.")
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt of a trained ANN")
    p.add_argument("--method", nargs="+", default=["threshold_balancing"],
                   help=f"{', '.join(METHODS)} (optionally name:key=value,...; "
                   "augmapping is the paper's form, θ = λ; augmapping:levels=16 our "
                   "multi-level extension); default: threshold_balancing")
    p.add_argument("--timesteps", type=int, help="T (default: the method's, 32; a trained "
                   "SNN's own T)")
    p.add_argument("--percentile", type=float,
                   help="activation percentile for the thresholds, 100 = max ("
                   + _default("percentile") + ")")
    p.add_argument("--channelwise", action=argparse.BooleanOptionalAction,
                   help="one threshold per channel (" + _default("channelwise") + ")")
    p.add_argument("--encoder", choices=tuple(ENCODERS), help=_default("encoder"))
    p.add_argument("--reset", choices=RESETS, help=_default("reset"))
    p.add_argument("--initial", choices=INITIALS,
                   help="initial membrane potential: 0 or threshold/2 (default: the "
                   "method's: θ/2 for qcfs, csqcfs, augmapping with levels > 1 or learned "
                   "thresholds; else 0)")
    p.add_argument("--max-pool", choices=MAX_POOL_POLICIES,
                   help="max-pool policy (" + _default("max_pool") + ")")
    p.add_argument("--calibration-samples", type=int, default=2048,
                   help="training images used for calibration (default 2048)")
    p.add_argument("--test-subset", type=int, help="evaluate on this many test images")
    p.add_argument("--flip", action="store_true",
                   help="also report the accuracy over each image and its mirror image "
                        "(the views of an ANN trained with data.test_flip)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--memory-budget", type=float, help="MiB of activations per chunk")
    p.add_argument("--precision", choices=PRECISIONS.names(), default="auto",
                   help="auto (default): bf16 where the device computes it in hardware "
                        "(GPUs, AVX512-BF16/AMX CPUs), else float32; bf16: synaptic layers "
                        "in bfloat16, membranes in float32; int8: weights rounded to 8-bit "
                        "integers per output channel (8-bit neuromorphic hardware), on "
                        "integer kernels; float32: exact (the library's default)")
    p.add_argument("--seed", type=int, default=0, help="calibration subset / Poisson seed")
    p.add_argument("--out", help="results JSON (a PNG plot is written beside it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_common(p)
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser(
        "run", help="a whole experiment from a YAML config: train, convert, evaluate, report",
        description="Train (or load) the ANN of every variant in CONFIG, convert each with its "
        "methods, evaluate every SNN at t = 1..T, and write results.json, report.md and plots "
        "into the output folder (default runs/NAME). Finished stages are skipped, an "
        "interrupted training resumes; a stage whose config changed is redone.")
    p.add_argument("config", help="experiment YAML (see configs/*_qcfs.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="experiment config overrides, e.g. evaluate.timesteps=8")
    p.add_argument("--out-dir", help="output folder (default: run.out_dir or runs/NAME)")
    p.add_argument("--force", action="store_true", help="redo every stage")
    p.add_argument("--only", nargs="+", metavar="VARIANT", help="run only these variants")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_common(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "report", help="one comparison table and plots from several results files",
        description="Merge the entries of results JSON files (from run or convert) into one "
        "report.md with the comparison table and the plots.")
    p.add_argument("results", nargs="+", help="results JSON files")
    p.add_argument("--out", default="report", help="output folder (default: report)")
    p.add_argument("--title", default="", help="report and plot title")
    p.add_argument("--points", type=int, nargs="+", metavar="T",
                   help="time steps shown in the table (default 1, 2, 4, ..., T)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "export", help="write a converted (or directly trained) SNN as a NIR file",
        description="Convert a checkpoint (an ANN with --method, default threshold "
        "balancing; a directly trained SNN as it is) and write it in the Neuromorphic "
        "Intermediate Representation (needs the 'nir' extra). What NIR cannot represent "
        "(ternary / augmented spikes, v(0) = θ/2, spiking max-pool) is refused unless "
        "--approximate, which reports each approximated layer.")
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt or model.pt")
    p.add_argument("--out", required=True, help="the .nir file to write")
    p.add_argument("--format", choices=("nir",), default="nir")
    p.add_argument("--method", help="conversion method spec, e.g. "
                   "threshold_balancing:channelwise=true (default: threshold_balancing, or "
                   "snn for a directly trained network)")
    p.add_argument("--timesteps", type=int, help="T recorded in the file")
    p.add_argument("--calibration-samples", type=int, default=2048)
    p.add_argument("--approximate", action="store_true",
                   help="export what NIR cannot represent as plain IF neurons, reported")
    _add_common(p)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("demo", help="offline demo on the bundled MNIST subset",
                       description="Train the small CNN on the MNIST subset shipped inside the "
                       "package with ReLU and with CS-QCFS activations, convert them to SNNs "
                       "(threshold balancing, TerMapping, AugMapping; CS-QCFS), print the "
                       "tables and write the report and plots. Overrides apply to the ANN "
                       "training config.")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--out-dir", default="spikeforge-demo", help="output folder")
    p.add_argument("--timesteps", type=int, default=16,
                   help="SNN time steps T (default 16)")
    p.add_argument("--force", action="store_true",
                   help="retrain and reconvert even if OUT_DIR holds finished results")
    _add_common(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("models", help="list the model zoo",
                       description="List every registered model with its parameter count.")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("datasets", help="list the data sets and whether their files are found",
                       description="For each data set, say whether its files are under the "
                       "data root, and where to put them if not (nothing is downloaded).")
    p.add_argument("--data-root", help="folder with the data sets")
    p.set_defaults(func=_cmd_datasets)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from spikeforge.runtime import git_commit, keep_freed_memory

    keep_freed_memory()
    git_commit()  # the provenance of this process is the code it loaded now (cached)
    from spikeforge.convert import ConversionError
    from spikeforge.data import DatasetError
    from spikeforge.train import CheckpointError, TrainingDiverged

    try:
        return args.func(args)
    except (ConfigError, DatasetError, CheckpointError, TrainingDiverged, MemoryError,
            ConversionError) as exc:
        print(f"spikeforge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spikeforge {args.command}: interrupted; the last checkpoint is intact "
              "(resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
