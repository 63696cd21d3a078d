"""The ``spikeforge`` command line.

    spikeforge demo                       # offline demo on the bundled MNIST subset
    spikeforge train CONFIG [key=value]   # train from a YAML config with overrides
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


def _cmd_demo(args: argparse.Namespace) -> int:
    from spikeforge.experiments.demo import run_demo

    extra = [o for o in _run_overrides(args) if not o.startswith("run.out_dir=")]
    run_demo(args.out_dir, tuple([*args.overrides, *extra]))
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spikeforge",
        description="Accurate and efficient deep spiking neural networks: ANN-to-SNN "
                    "conversion and direct spike-based training.")
    from spikeforge import __version__

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

    p = sub.add_parser("demo", help="offline demo on the bundled MNIST subset",
                       description="Train the small CNN on the MNIST subset shipped inside the "
                       "package, print the results table and write the plots.")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--out-dir", default="spikeforge-demo", help="output folder")
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
    from spikeforge.data import DatasetError
    from spikeforge.train import CheckpointError, TrainingDiverged

    try:
        return args.func(args)
    except (ConfigError, DatasetError, CheckpointError, TrainingDiverged) as exc:
        print(f"spikeforge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spikeforge {args.command}: interrupted; the last checkpoint is intact "
              "(resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
