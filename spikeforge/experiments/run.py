"""``spikeforge run CONFIG.yaml``: a whole experiment from one config file.

An experiment trains (or loads) one or more ANNs — *variants* of one base training config —
converts each with a list of methods, evaluates every SNN at t = 1..T on the test set, and
writes into its output folder::

    <out>/<variant>/ann/            the training run (checkpoint.pt, metrics.jsonl, results.json)
    <out>/<variant>/<method>.json   a results entry per method (docs/design.md §2, provenance)
    <out>/results.json              every entry, with the experiment config
    <out>/report.md                 the comparison table; accuracy_vs_time.png,
                                    energy_vs_accuracy.png, firing_rates.png beside it

Stages are cached by a hash of everything that determines their result: re-running skips a
finished training or conversion whose inputs did not change, resumes an interrupted training
from its last epoch, and redoes a stage whose config changed (``--force`` redoes all).

Example config (``configs/mnist_qcfs.yaml``)::

    name: mnist_qcfs
    ann: mnist_cnn.yaml                 # base training config, relative to this file
    overrides: [model.options.activation_options.threshold=2.0]
    variants:                           # one ANN each: name -> overrides and methods
      qcfs_L1: {overrides: [model.activation=qcfs, model.options.activation_options.levels=1],
                methods: [qcfs]}
    evaluate: {timesteps: 32}
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import spikeforge
from spikeforge.config import (
    ConfigError,
    apply_overrides,
    check_name,
    from_dict,
    read_yaml,
    to_dict,
)
from spikeforge.convert import convert
from spikeforge.convert.recipes import METHODS
from spikeforge.experiments.conversion import (
    command_line,
    convert_and_evaluate,
    load_checkpoint_and_data,
    parse_method,
)
from spikeforge.experiments.report import table, write_report
from spikeforge.runtime import git_commit, set_threads, write_json
from spikeforge.train import TrainConfig, fit

__all__ = ["EvaluateConfig", "Experiment", "ExperimentConfig", "VariantConfig",
           "load_experiment", "run_experiment"]

#: conversion options a method spec or ``conversion:`` may set (``timesteps`` per method too)
_NOT_OPTIONS = {"model", "calibration", "method", "progress", "seed"}
CONVERSION_OPTIONS = sorted({*inspect.signature(convert).parameters} - _NOT_OPTIONS)


@dataclass
class VariantConfig:
    """One ANN of the experiment."""

    overrides: list[str] = field(default_factory=list)  # key=value on the base ANN config
    methods: list[str] | None = None  # default: the experiment's methods
    checkpoint: str | None = None  # a trained ANN (checkpoint or model.pt) instead of training


@dataclass
class EvaluateConfig:
    timesteps: int = 32  # T: accuracy at every t <= T
    report: list[int] | None = None  # time steps in the table (default 1, 2, 4, ..., T)
    test_subset: int | None = None  # a seeded subset of the test set (default: the ANN's)
    batch_size: int = 250
    calibration_samples: int = 2048  # training images for threshold calibration
    # also the accuracy over each image and its mirror image (null: as the ANN was tested,
    # its data.test_flip)
    flip: bool | None = None


@dataclass
class ExperimentRunConfig:
    out_dir: str | None = None  # default runs/<name>
    device: str = "auto"
    threads: int | None = None
    progress: bool | None = None  # null: progress bars on a terminal only
    data_root: str | None = None  # overrides the ANN config's data.root


@dataclass
class ExperimentConfig:
    name: str
    ann: str | dict[str, Any]  # base training config: a YAML file (relative to this one)
    description: str = ""
    seed: int = 0
    overrides: list[str] = field(default_factory=list)  # on the ANN config, every variant
    variants: dict[str, VariantConfig] = field(default_factory=lambda: {"ann": VariantConfig()})
    # the papers' forms, and our multi-level AugMapping beside the paper's
    methods: list[str] = field(default_factory=lambda: ["threshold_balancing", "termapping",
                                                        "augmapping", "augmapping:levels=16"])
    conversion: dict[str, Any] = field(default_factory=dict)  # options shared by all methods
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    run: ExperimentRunConfig = field(default_factory=ExperimentRunConfig)

    def validate(self, prefix: str = "") -> None:
        """Method names and options are checked here, before any work starts."""
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ConfigError(f"config key {prefix + 'name'!r} is {self.name!r}: use letters, "
                              "digits, '_', '.' and '-' (it names the output folder)")
        if not self.variants:
            raise ConfigError(f"config key {prefix + 'variants'!r} is empty")
        _check_options(self.conversion, f"{prefix}conversion")
        for key, specs in [("methods", self.methods)] + [
                (f"variants.{v}.methods", c.methods) for v, c in self.variants.items()
                if c.methods is not None]:
            if not specs:
                raise ConfigError(f"config key {prefix + key!r} lists no methods; valid: "
                                  + ", ".join(METHODS))
            for i, spec in enumerate(specs):
                name, options = parse_method(spec)
                where = f"{prefix}{key}[{i}]"
                check_name(where, name, METHODS)
                _check_options(options, where, extra=("timesteps",))
        for key in ("timesteps", "batch_size", "calibration_samples"):
            if getattr(self.evaluate, key) <= 0:
                raise ConfigError(f"config key {prefix + 'evaluate.' + key!r} must be positive")


def _check_options(options: dict[str, Any], key: str, extra: tuple[str, ...] = ()) -> None:
    valid = sorted({*CONVERSION_OPTIONS, *extra})
    for name in options:
        if name not in valid:
            raise ConfigError(f"config key {key!r}: unknown conversion option {name!r}; "
                              f"valid: {', '.join(valid)}")


@dataclass
class Variant:
    """A variant resolved: its training config (or checkpoint) and method specs."""

    name: str
    train: TrainConfig
    methods: list[str]
    checkpoint: Path | None


@dataclass
class Experiment:
    """A checked experiment config with every variant's training config resolved."""

    config: ExperimentConfig
    path: Path | None
    out_dir: Path
    variants: list[Variant]


def load_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                    out_dir: str | None = None, only: list[str] | None = None) -> Experiment:
    """Read and check ``path`` (with ``key=value`` overrides): the experiment's own keys,
    every method and option, and each variant's full training config — all before any work,
    with errors that name the key (``variants.qcfs_L1: config key 'model.activation' ...``).
    ``only`` keeps the named variants.
    """
    path = Path(path)
    data = apply_overrides(read_yaml(path), list(overrides))
    if only:
        variants = data.get("variants") or {"ann": {}}
        unknown = [v for v in only if v not in variants]
        if unknown:
            raise ConfigError(f"unknown variant {unknown[0]!r}; the config has: "
                              + ", ".join(variants))
        data["variants"] = {v: variants[v] for v in only}
    cfg = from_dict(ExperimentConfig, data)
    return resolve(cfg, path.parent, path, out_dir)


def resolve(cfg: ExperimentConfig, base_dir: Path, path: Path | None = None,
            out_dir: str | None = None) -> Experiment:
    """Resolve the variants of ``cfg``; relative file names are taken from ``base_dir``."""
    if isinstance(cfg.ann, str):
        ann_file = base_dir / cfg.ann
        if not ann_file.is_file():
            raise ConfigError(f"config key 'ann': training config {str(ann_file)!r} not found")
        base = read_yaml(ann_file)
    else:
        base = cfg.ann
    out = Path(out_dir or cfg.run.out_dir or f"runs/{cfg.name}")
    variants = []
    for name, variant in cfg.variants.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ConfigError(f"config key 'variants.{name}': use letters, digits, '_', '.', '-'")
        run = [f"seed={cfg.seed}", f"run.out_dir={out / name / 'ann'}",
               f"run.device={cfg.run.device}"]
        if cfg.run.threads is not None:
            run.append(f"run.threads={cfg.run.threads}")
        if cfg.run.progress is not None:
            run.append(f"run.progress={str(cfg.run.progress).lower()}")
        if cfg.run.data_root is not None:
            run.append(f"data.root={cfg.run.data_root}")
        try:
            train = from_dict(TrainConfig, apply_overrides(
                base, [*cfg.overrides, *variant.overrides, *run]))
        except ConfigError as exc:
            raise ConfigError(f"variants.{name}: {exc}") from exc
        methods = list(variant.methods if variant.methods is not None else cfg.methods)
        checkpoint = None
        if variant.checkpoint is not None:
            checkpoint = base_dir / variant.checkpoint
            if not checkpoint.is_file():
                raise ConfigError(f"config key 'variants.{name}.checkpoint': "
                                  f"{str(checkpoint)!r} not found")
        else:
            _check_applicable(name, train, methods, cfg.conversion)
        variants.append(Variant(name, train, methods, checkpoint))
    return Experiment(cfg, path, out, variants)


def _check_applicable(variant: str, train: TrainConfig, methods: list[str],
                      shared: dict[str, Any]) -> None:
    """Learned-threshold methods need the activation they read λ from (a directly trained
    SNN: its LIF neurons, method ``snn``)."""
    from spikeforge.models.activations import make_activation
    from spikeforge.neurons import LIF

    act = (LIF(**to_dict(train.snn.neuron)) if train.kind == "snn" else
           make_activation(train.model.activation, 1,
                           **(train.model.options.get("activation_options") or {})))
    for spec in methods:
        name, own = parse_method(spec)
        options = {**shared, **own}
        expected = METHODS[name].get("activation")
        learned = options.get("thresholds", METHODS[name]["thresholds"]) == "learned"
        if (expected is not None and not isinstance(act, expected)) or (
                learned and not hasattr(act, "lam")):
            need = expected.__name__ if expected is not None else "QCFS or CSQCFS"
            raise ConfigError(f"variants.{variant}: method {spec!r} needs {need} activations "
                              f"but model.activation is {train.model.activation!r}")


def stage_key(record: Any) -> str:
    """A short hash of a JSON-able record (what determines a stage's result)."""
    text = json.dumps(record, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def ann_key(train: dict[str, Any]) -> str:
    """The training stage's key: its config without where and how it runs (and without the
    ``snn`` section when an ANN is trained)."""
    skip = {"run"} | ({"snn"} if train.get("kind", "ann") == "ann" else set())
    data = {k: v for k, v in train.items() if k not in skip}
    data["data"] = {k: v for k, v in data.get("data", {}).items() if k != "root"}
    return stage_key(data)


def _file_key(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def train_stage(variant: Variant, force: bool = False) -> tuple[Path, str]:
    """Train (or resume, or skip) the variant's ANN; return its checkpoint and key."""
    if variant.checkpoint is not None:
        return variant.checkpoint, _file_key(variant.checkpoint)
    cfg = variant.train
    out = Path(cfg.run.out_dir)
    key = ann_key(to_dict(cfg))
    done = _read_json(out / "results.json")
    same = done is not None and ann_key(done.get("provenance", {}).get("config", {})) == key
    if same and done.get("finished") and not force:
        print(f"[{variant.name}] ANN trained already ({done['test_accuracy']:.2f}%): {out}",
              file=sys.stderr)
    else:
        resume = same and not force
        print(f"[{variant.name}] {'resuming' if resume else 'training'} the ANN in {out}",
              file=sys.stderr, flush=True)
        fit(cfg, resume=resume)
    return out / "checkpoint.pt", key


def _slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.replace("=", "-")).strip("_")


def run_experiment(exp: Experiment, force: bool = False) -> list[dict[str, Any]]:
    """Run every stage of ``exp`` that is not finished (all with ``force``), then write
    ``results.json``, ``report.md`` and the plots; return the results entries."""
    cfg, ev = exp.config, exp.config.evaluate
    started = time.perf_counter()
    set_threads(cfg.run.threads)
    progress = cfg.run.progress if cfg.run.progress is not None else sys.stderr.isatty()
    from_cli = bool(sys.argv) and Path(sys.argv[0]).name in ("spikeforge", "cli.py")
    command = (command_line() if from_cli
               else f"spikeforge run {exp.path or '(a config built in Python)'}")
    entries = []
    for variant in exp.variants:
        checkpoint, key = train_stage(variant, force)
        test_subset = ev.test_subset or variant.train.data.test_subset
        flip = variant.train.data.test_flip if ev.flip is None else ev.flip
        setup = None
        for spec in variant.methods:
            path = exp.out_dir / variant.name / f"{_slug(spec)}.json"
            skey = stage_key({"ann": key, "spec": spec, "conversion": cfg.conversion,
                              "timesteps": ev.timesteps, "test_subset": test_subset,
                              "calibration_samples": ev.calibration_samples,
                              "seed": cfg.seed, **({"flip": True} if flip else {})})
            entry = _read_json(path)
            if entry is None or entry.get("stage_key") != skey or force:
                if setup is None:
                    setup = load_checkpoint_and_data(
                        checkpoint, data_root=variant.train.data.root,
                        calibration_samples=ev.calibration_samples, test_subset=test_subset,
                        batch_size=ev.batch_size, device=cfg.run.device, seed=cfg.seed)
                print(f"[{variant.name}] {spec}: converting and simulating T={ev.timesteps}",
                      file=sys.stderr, flush=True)
                entry = convert_and_evaluate(setup, spec, ev.timesteps, progress, flip=flip,
                                             **cfg.conversion)
                entry.update(stage_key=skey, experiment=cfg.name, variant=variant.name)
                entry["provenance"].update(command=command, config=to_dict(cfg),
                                           config_file=str(exp.path) if exp.path else None)
                write_json(path, entry)
            else:
                print(f"[{variant.name}] {spec}: done already ({path})", file=sys.stderr)
            entry["label"] = (f"{variant.name} {entry['label']}" if len(exp.variants) > 1
                              else entry["label"])
            entries.append(entry)
    write_json(exp.out_dir / "results.json", {
        "experiment": cfg.name, "config": to_dict(cfg), "command": command,
        "spikeforge": spikeforge.__version__, "git_commit": git_commit(),
        "torch": torch.__version__, "results": entries,
        "wall_seconds_this_process": time.perf_counter() - started})
    write_report(entries, exp.out_dir, title=cfg.name, points=ev.report,
                 preamble=_preamble(exp, command))
    return entries


def _preamble(exp: Experiment, command: str) -> str:
    cfg = exp.config
    lines = [cfg.description.strip()] if cfg.description else []
    lines.append(f"Reproduce: `{command}` (seed {cfg.seed}; every stage's config, seed, "
                 "commit, machine and wall time are in `results.json`).")
    return "\n\n".join(lines)


def print_summary(exp: Experiment, entries: list[dict[str, Any]]) -> None:
    """The comparison table and where the files are, on standard output."""
    from spikeforge.experiments.conversion import report_points

    ev = exp.config.evaluate
    points = ev.report or report_points(ev.timesteps)
    print(f"\n{exp.config.name}: test accuracy (%) after t steps, "
          f"{entries[0]['samples']} test images\n")
    print(table(entries, points))
    print(f"\nreport:  {exp.out_dir / 'report.md'}\nresults: {exp.out_dir / 'results.json'}"
          f"\nplots:   {exp.out_dir}/{{accuracy_vs_time,energy_vs_accuracy,firing_rates}}.png")
