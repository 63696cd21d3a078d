"""The training loop: epochs of SGD/AdamW with a warm-up + cosine or linear schedule, a
checkpoint after every epoch and every ``run.checkpoint_minutes`` within one, exact resume,
JSONL metrics, mixed precision where the hardware has it, DDP under ``torchrun``, and the
fast-training recipe's options (:mod:`spikeforge.train.recipe`): patch whitening, identity
init, a moving average of the weights and test-time flip averaging.

Reproducibility: batches and augmentation depend only on ``(seed, epoch)`` (see
:class:`spikeforge.data.BatchLoader`), and every global RNG is saved in the checkpoint, so a
run that is killed and resumed with ``resume=True`` ends with the same weights as one that was
never interrupted (on CPU, same thread count). A checkpoint taken within an epoch records the
batches done and the running sums; the resumed run replays the epoch's loader up to there
(order and augmentation only, no training) and goes on.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import spikeforge
from spikeforge.config import to_dict
from spikeforge.data import Augment, BatchLoader
from spikeforge.runtime import (
    append_jsonl,
    exact_float32,
    git_commit,
    machine_info,
    native_bf16,
    rng_state,
    seed_everything,
    select_device,
    set_rng_state,
    set_threads,
    write_json,
    write_jsonl,
)
from spikeforge.train import distributed
from spikeforge.train.build import (
    build_model,
    freeze_whitening,
    frozen_parameters,
    initialise,
    load_data,
    set_norm_momentum,
)
from spikeforge.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from spikeforge.train.config import OptimConfig, TrainConfig
from spikeforge.train.recipe import Lookahead, WeightAverage, flip_averaged

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
RESULTS = "results.json"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class EpochProgress:
    """How far an epoch got: batches done, the running loss sum (float64) and correct count
    over ``count`` samples, and the seconds spent training it (over all resumptions)."""

    step: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0
    seconds: float = 0.0

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.count, 1)

    @property
    def accuracy(self) -> float:
        return 100.0 * self.correct / max(self.count, 1)

    def where(self, epoch: int) -> str:
        """Where a checkpoint with this progress stands, for messages."""
        return f"epoch {epoch + 1}, step {self.step}" if self.step else f"after epoch {epoch}"


@dataclass
class TrainResult:
    """What :func:`fit` returns: final and best test accuracy (%), the per-epoch history, the
    output folder and the summary written to ``results.json``."""

    test_accuracy: float
    best_test_accuracy: float
    history: list[dict[str, Any]]
    out_dir: Path
    summary: dict[str, Any]


def parameter_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """The optimizer's groups, each with its ``lr_scale`` (× the schedule's lr) and weight
    decay (:func:`group_hyperparameters`): ``weights``; ``thresholds``, the learnable
    activation thresholds (QCFS λ, CS-QCFS ρ: the parameters of modules with a ``lam()``
    method); and, when ``optim.norm_bias_lr_scale`` / ``optim.norm_weight_lr_scale`` is not
    1, ``norm_biases`` / ``norm_weights``, the batch-norm biases / scales."""
    kinds = {id(p): "thresholds" for m in model.modules() if hasattr(m, "lam")
             for p in m.parameters(recurse=False)}
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for kind, attribute, scale in (("norm_biases", "bias", cfg.norm_bias_lr_scale),
                                   ("norm_weights", "weight", cfg.norm_weight_lr_scale)):
        if scale != 1.0:
            kinds.update({id(getattr(m, attribute)): kind for m in norms
                          if getattr(m, attribute) is not None})
    groups = []
    for name in ("weights", "thresholds", "norm_biases", "norm_weights"):
        params = [p for p in model.parameters() if kinds.get(id(p), "weights") == name]
        if params or name == "weights":
            lr_scale, decay = group_hyperparameters(name, cfg)
            groups.append({"name": name, "params": params, "lr_scale": lr_scale,
                           "weight_decay": decay})
    return groups


def group_hyperparameters(name: str, cfg: OptimConfig) -> tuple[float, float]:
    """``(lr_scale, weight_decay)`` of the parameter group ``name``. Thresholds decay with
    ``optim.threshold_weight_decay`` (default: the weights'). Batch-norm biases (scales) learn
    ``s = optim.norm_bias_lr_scale`` (``optim.norm_weight_lr_scale``) times faster with
    weight decay ÷ s, so that their decay per step, lr·wd, is the weights' (airbench, Jordan
    2024: biases s = 64, scales frozen, s = 0: no update at all)."""
    if name == "thresholds" and cfg.threshold_weight_decay is not None:
        return 1.0, cfg.threshold_weight_decay
    scale = {"norm_biases": cfg.norm_bias_lr_scale,
             "norm_weights": cfg.norm_weight_lr_scale}.get(name)
    if scale is not None:
        return scale, cfg.weight_decay / scale if scale else 0.0
    return 1.0, cfg.weight_decay


def base_lr(cfg: OptimConfig, batch_size: int) -> float:
    """The peak learning rate: ``optim.lr``, scaled by batch_size / ``reference_batch_size``
    when that is set (the linear scaling rule, Goyal et al. 2017). ``batch_size`` is the
    global batch (per-rank batch × ranks)."""
    if cfg.reference_batch_size is None:
        return cfg.lr
    return cfg.lr * batch_size / cfg.reference_batch_size


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float | None = None
                    ) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW over :func:`parameter_groups` at ``lr`` (default
    ``cfg.lr``)."""
    lr = cfg.lr if lr is None else lr
    groups = [{**g, "lr": lr * g["lr_scale"]} for g in parameter_groups(model, cfg)]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str,
              start: float | None = None, end: float = 0.0) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    Linear warm-up over ``warmup_steps`` from ``start`` (default 1/warmup_steps) to 1, then
    constant, cosine decay to ``end``, f = e + (1 − e)·½(1 + cos(π p)) (Loshchilov & Hutter
    2017), or linear decay to ``end``, f = 1 − (1 − e)·p (with the warm-up: the triangular
    schedule of fast CIFAR training; airbench: start 0.2, end 0.07, warm-up 23% of the steps),
    where p = (s − w)/(S − w).
    """
    if step < warmup_steps:
        if start is None:
            return (step + 1) / warmup_steps
        return start + (1.0 - start) * step / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return 1.0 - (1.0 - end) * progress
    return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, cfg.schedule, cfg.lr_start,
                                          cfg.lr_end))


def _apply_optim_config(optimizer: torch.optim.Optimizer,
                        scheduler: torch.optim.lr_scheduler.LambdaLR, cfg: OptimConfig,
                        lr: float) -> None:
    """After loading a checkpoint, make the config's hyper-parameters win over the saved ones
    (they are equal when resuming the same run; different when a user resumes with, say, a
    new ``optim.lr`` or more ``optim.epochs``). Moments and the step count are kept."""
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group in optimizer.param_groups:
        lr_scale, decay = group_hyperparameters(group.get("name", "weights"), cfg)
        group.update(lr_scale=lr_scale, initial_lr=lr * lr_scale, lr=lr * lr_scale * factor,
                     weight_decay=decay)
        if cfg.name == "sgd":
            group.update(momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    scheduler.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def _amp(device: torch.device, amp: bool | str) -> tuple[Any, torch.amp.GradScaler, str]:
    """Autocast context, grad scaler and the precision's name for ``run.amp``: with ``True``,
    bf16 where the device does it in hardware (CUDA, or a CPU with AVX512-BF16 / AMX), fp16
    with loss scaling on a GPU without bf16, else float32 (a CPU that would emulate bf16 runs
    it slower than float32); with ``"bfloat16"``, bf16 on any CUDA or CPU device (a warning
    where it is emulated); with ``False``, float32."""
    off = torch.amp.GradScaler("cuda", enabled=False)
    if not amp or device.type not in ("cuda", "cpu"):
        return nullcontext(), off, "float32"
    native = native_bf16(device)
    if amp == "bfloat16" or native:
        if not native:
            warnings.warn(f"run.amp='bfloat16' on a {device.type} without native bfloat16: "
                          "it is emulated, several times slower than float32", UserWarning,
                          stacklevel=2)
        return torch.autocast(device.type, dtype=torch.bfloat16), off, "bfloat16"
    if device.type == "cuda":
        return (torch.autocast("cuda", dtype=torch.float16),
                torch.amp.GradScaler("cuda", enabled=True), "float16")
    return nullcontext(), off, "float32"


def training_loss(logits: torch.Tensor, y: torch.Tensor, cfg: OptimConfig) -> torch.Tensor:
    """``optim.loss``: cross-entropy (with ``label_smoothing``), or ``mse``, the squared error
    against one-hot targets summed over the classes and averaged over the batch (Lee et al.
    2020; their code also sums over the batch, i.e. its SGD step is ``batch_size`` times
    larger)."""
    if cfg.loss == "mse":
        target = F.one_hot(y, logits.shape[-1]).to(logits.dtype)
        return (logits - target).square().sum(1).mean()
    return F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)


@torch.no_grad()
def loss_and_accuracy(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
                      flip: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (%) of ``model`` over ``loader``; with ``flip``, of
    its outputs averaged over each image and its mirror image
    (:func:`~spikeforge.train.recipe.flip_averaged`). In the model's own precision, also
    after a run trained under autocast: the accuracy a run reports is that of the weights
    it saves, as ``spikeforge convert`` and ``evaluate`` compute with them."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    with exact_float32():
        for x, y in loader:
            logits = flip_averaged(model, x) if flip else model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            count += y.numel()
    return loss_sum / max(count, 1), 100.0 * correct / max(count, 1)


def _check_resumable(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """A checkpoint may only be resumed by the same experiment (epochs and run options may
    change, and where the data files are: ``data.root``); otherwise the weights would
    silently belong to another model or data set."""
    now, default = to_dict(cfg), to_dict(TrainConfig())
    before = saved.get("config", {})
    sections = ("data", "model", "snn") if cfg.kind == "snn" else ("data", "model")
    # a key added since the checkpoint was written counts as its default
    differ = [f"{section}.{k}" for section in sections for k in now[section]
              if (section, k) != ("data", "root")
              and before.get(section, {}).get(k, default[section][k]) != now[section][k]]
    if before.get("kind", "ann") != now["kind"]:
        differ.append("kind")
    if before.get("seed") != now["seed"]:
        differ.append("seed")
    if differ:
        raise CheckpointError(f"cannot resume from {str(path)!r}: its config differs in "
                         f"{', '.join(differ)}; use another run.out_dir or the same config")


def fit(cfg: TrainConfig, resume: bool = False) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data`` and write into ``cfg.run.out_dir``:
    ``checkpoint.pt`` (after every epoch, and within an epoch every ``run.checkpoint_minutes``),
    ``metrics.jsonl`` (one line per epoch) and, at the end, ``results.json`` (accuracy, history
    and provenance).

    Args:
        cfg: the full training configuration.
        resume: continue from ``out_dir/checkpoint.pt`` if it exists (after a kill or Ctrl-C,
            or to extend ``optim.epochs``), from the epoch and batch where it was taken; start
            fresh if there is none.
    """
    started = time.perf_counter()
    set_threads(cfg.run.threads)
    device = select_device(cfg.run.device)
    ctx = distributed.init(device)
    device = distributed.device_for(ctx, device)
    out_dir = Path(cfg.run.out_dir)
    ckpt_path = out_dir / CHECKPOINT
    try:
        seed_everything(cfg.seed)
        train_set, test_set = load_data(cfg)
        model = build_model(cfg, train_set).to(device)
        if not (resume and ckpt_path.is_file()) and not (cfg.kind == "snn"
                                                          and cfg.snn.init_from):
            initialise(model, cfg, train_set)  # a hybrid SNN has its ANN's weights
        freeze_whitening(model, cfg)
        set_norm_momentum(model, cfg.optim.norm_momentum)
        memory_format = torch.channels_last if cfg.run.channels_last else torch.contiguous_format
        model = model.to(memory_format=memory_format)
        aug = cfg.data.augment
        train_loader = BatchLoader(
            train_set, cfg.data.batch_size, shuffle=True, seed=cfg.seed, drop_last=True,
            augment=Augment(aug.crop_padding, aug.hflip, aug.cutout, aug.pad_mode),
            rank=ctx.rank, world_size=ctx.world_size, device=device,
            channels_last=cfg.run.channels_last)
        test_loader = BatchLoader(test_set, cfg.data.eval_batch_size, device=device,
                                  channels_last=cfg.run.channels_last)
        lr = base_lr(cfg.optim, cfg.data.batch_size * ctx.world_size)
        optimizer = build_optimizer(model, cfg.optim, lr)
        scheduler = build_scheduler(optimizer, cfg.optim, len(train_loader))
        # synaptic layers in bf16 where native; LIF scans keep their membranes and surrogate
        # gradients in float32 (SpikingNeuron upcasts), and spikes are exact in bf16
        autocast, scaler, precision = _amp(device, cfg.run.amp)
        average = WeightAverage(model, cfg.optim.ema) if cfg.optim.ema else None
        steps = len(train_loader)
        lookahead = (Lookahead(cfg.optim.epochs * steps, cfg.optim.lookahead_every,
                               cfg.optim.lookahead_decay,
                               start=round(cfg.optim.lookahead_start_epochs * steps))
                     if cfg.optim.lookahead_every else None)
        averages = [a for a in (average, lookahead) if a is not None]  # updated every step
        evaluated = average.model if average else model  # the model reported and saved
        history: list[dict[str, Any]] = []
        start_epoch = 0
        extra: dict[str, Any] = {}  # the hybrid SNN's accuracy before fine-tuning
        progress = EpochProgress()  # of the epoch the checkpoint was taken in
        if resume and ckpt_path.is_file():
            saved = load_checkpoint(ckpt_path, map_location=device)
            _check_resumable(saved, cfg, ckpt_path)
            model.load_state_dict(saved.get("trained_model") or saved["model"])
            if average is not None:
                average.load_state_dict({"model": saved["model"],
                                         "updates": saved.get("average_updates", 0)})
            if lookahead is not None and saved.get("lookahead"):
                lookahead.load_state_dict(saved["lookahead"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            _apply_optim_config(optimizer, scheduler, cfg.optim, lr)
            scaler.load_state_dict(saved["scaler"])
            set_rng_state(saved["rng"])
            history, start_epoch = list(saved["history"]), int(saved["epoch"])
            extra = dict(saved.get("extra") or {})
            progress = EpochProgress(**(saved.get("partial") or {}))
            if ctx.is_main:
                print(f"resuming {ckpt_path} at {progress.where(start_epoch)}", file=sys.stderr)
                write_jsonl(out_dir / METRICS, history)
        elif ctx.is_main and (out_dir / METRICS).exists():
            (out_dir / METRICS).unlink()
        if cfg.kind == "snn" and cfg.snn.init_from and not extra:
            loss, acc = loss_and_accuracy(model, test_loader)
            extra = {"initial_test_accuracy": acc, "initial_test_loss": loss}
            if ctx.is_main:
                print(f"converted SNN before fine-tuning: test {acc:.2f}%", file=sys.stderr)
        net = (nn.parallel.DistributedDataParallel(model) if ctx.enabled else model)

        def checkpoint(epochs_done: int, partial: EpochProgress | None = None) -> None:
            # "model" is what the run reports and users load (the weight average, if on);
            # "trained_model" the optimizer's own weights, to resume from
            averaged = {} if average is None else {"trained_model": model.state_dict(),
                                                   "average_updates": average.updates}
            save_checkpoint({
                "model": evaluated.state_dict(), **averaged,
                **({"lookahead": lookahead.state_dict()} if lookahead else {}),
                "model_spec": model.spikeforge_spec,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "epoch": epochs_done, "history": history,
                "partial": asdict(partial) if partial else None,
                "rng": rng_state(), "config": to_dict(cfg), "extra": extra,
                "version": spikeforge.__version__,
            }, ckpt_path)

        for epoch in range(start_epoch, cfg.optim.epochs):
            train_loader.set_epoch(epoch)
            done = _train_epoch(net, train_loader, optimizer, scheduler, scaler, autocast, cfg,
                                epoch, ctx, progress,
                                (lambda p, e=epoch: checkpoint(e, p)) if ctx.is_main else None,
                                averages, frozen_parameters(model, cfg, epoch))
            if lookahead is not None:
                lookahead.sync(model)
            progress = EpochProgress()
            test_loss, test_acc = loss_and_accuracy(evaluated, test_loader)
            views = {}
            if cfg.data.test_flip:
                views["test_loss_flip"], views["test_accuracy_flip"] = loss_and_accuracy(
                    evaluated, test_loader, flip=True)
            record = {
                "epoch": epoch + 1, "train_loss": done.loss, "train_accuracy": done.accuracy,
                "test_loss": test_loss, "test_accuracy": test_acc, **views,
                "lr": optimizer.param_groups[0]["lr"], "epoch_seconds": done.seconds,
                "images_per_s": len(train_loader) * cfg.data.batch_size * ctx.world_size
                / done.seconds,
            }
            history.append(record)
            if ctx.is_main:
                checkpoint(epoch + 1)
                append_jsonl(out_dir / METRICS, record)
                write_json(out_dir / RESULTS, summarize(cfg, history, model, device, started,
                                                        precision=precision, **extra))
                flipped = (f" ({views['test_accuracy_flip']:.2f}% with flips)"
                           if views else "")
                print(f"epoch {epoch + 1}/{cfg.optim.epochs}  loss {done.loss:.4f}  "
                      f"train {done.accuracy:.2f}%  test {test_acc:.2f}%{flipped}  "
                      f"({done.seconds:.1f} s)",
                      file=sys.stderr, flush=True)
            distributed.barrier(ctx)

        checksums = distributed.parameter_checksums(model, ctx)
        summary = summarize(cfg, history, model, device, started, world_size=ctx.world_size,
                            rank_parameter_checksums=checksums, precision=precision, **extra)
        if ctx.is_main:
            write_json(out_dir / RESULTS, summary)
        final_acc = summary["test_accuracy"]
        return TrainResult(final_acc, summary["best_test_accuracy"], history, out_dir, summary)
    finally:
        distributed.shutdown(ctx)


def summarize(cfg: TrainConfig, history: list[dict[str, Any]], model: nn.Module,
              device: torch.device, started: float, **extra: Any) -> dict[str, Any]:
    """The ``results.json`` record of a run: accuracy, history and provenance. Written after
    every epoch with ``"finished": false`` (so a long run's partial results can be read at any
    time) and at the end with ``"finished": true``."""
    last = history[-1]
    flip = ({"test_accuracy_flip": last["test_accuracy_flip"]}
            if "test_accuracy_flip" in last else {})
    return {
        "kind": cfg.kind, "dataset": cfg.data.dataset, "model": cfg.model.name,
        "finished": last["epoch"] >= cfg.optim.epochs,
        "test_accuracy": last["test_accuracy"], "test_loss": last["test_loss"], **flip,
        "best_test_accuracy": max(h["test_accuracy"] for h in history),
        "epochs": len(history), "epochs_planned": cfg.optim.epochs, "history": history,
        "parameters": sum(p.numel() for p in model.parameters()), **extra,
        "provenance": {
            "config": to_dict(cfg), "seed": cfg.seed, "command": " ".join(sys.argv),
            "spikeforge": spikeforge.__version__, "git_commit": git_commit(),
            "train_seconds": sum(h["epoch_seconds"] for h in history),
            "wall_seconds_this_process": time.perf_counter() - started,
            "machine": machine_info(device),
        },
    }


def _train_epoch(net: nn.Module, loader: BatchLoader, optimizer: torch.optim.Optimizer,
                 scheduler: Any, scaler: torch.amp.GradScaler, autocast: Any,
                 cfg: TrainConfig, epoch: int, ctx: distributed.DistContext,
                 start: EpochProgress, save: Callable[[EpochProgress], None] | None,
                 averages: Iterable[WeightAverage | Lookahead] = (),
                 frozen: Iterable[nn.Parameter] = ()) -> EpochProgress:
    """Train one epoch from ``start`` (a checkpoint's progress within it, or zeros); every
    ``cfg.run.checkpoint_minutes`` hand the progress to ``save``; keep the ``frozen``
    parameters' gradients out of the step, and after every step update each of ``averages``
    (the weight average, Lookahead). Returns the whole epoch's."""
    net.train()
    loss_sum = torch.tensor(start.loss_sum, dtype=torch.float64)
    correct = torch.tensor(start.correct, dtype=torch.int64)
    count = start.count
    show = ctx.is_main and (cfg.run.progress if cfg.run.progress is not None
                            else sys.stderr.isatty())
    # the skipped batches are still drawn: their order and augmentation come from the epoch's
    # generators, and the batches after them depend on those draws
    bar = tqdm(itertools.islice(loader, start.step, None), total=len(loader),
               initial=start.step, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
               disable=not show, leave=False, unit="batch")
    heartbeat = max(1, len(loader) // 10)  # progress lines when there is no progress bar
    every = 60.0 * cfg.run.checkpoint_minutes
    tick = last_save = time.perf_counter()
    saved_at = start.where(epoch)

    def so_far(steps: int) -> EpochProgress:
        return EpochProgress(steps, loss_sum.item(), int(correct.item()), count,
                             start.seconds + time.perf_counter() - tick)

    for step, (x, y) in enumerate(bar, start=start.step):
        with autocast:
            logits = net(x)
            loss = training_loss(logits.float(), y, cfg.optim)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; stopped. "
                f"The last good checkpoint ({saved_at}) is kept in "
                f"{cfg.run.out_dir}. Lower optim.lr or set optim.grad_clip.")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        for parameter in frozen:  # no gradient: SGD neither moves nor decays it
            parameter.grad = None
        if cfg.optim.grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(net.parameters(), cfg.optim.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        for average in averages:
            average.update(model_of(net))
        loss_sum += loss.detach().double().cpu() * y.numel()
        correct += (logits.detach().argmax(1) == y).sum().cpu()
        count += y.numel()
        if show and step % 20 == 0:
            rate = (count - start.count) * ctx.world_size / (time.perf_counter() - tick)
            bar.set_postfix(loss=f"{loss_sum.item() / count:.4f}",
                            acc=f"{100.0 * correct.item() / count:.2f}%",
                            img_s=f"{rate:.0f}")
        elif ctx.is_main and not show and (step + 1) % heartbeat == 0:  # logs without a bar
            print(f"  epoch {epoch + 1} step {step + 1}/{len(loader)}  "
                  f"loss {loss_sum.item() / count:.4f}  "
                  f"{(count - start.count) * ctx.world_size / (time.perf_counter() - tick):.0f}"
                  " images/s", file=sys.stderr, flush=True)
        if (save is not None and every > 0 and step + 1 < len(loader)
                and time.perf_counter() - last_save >= every):
            save(so_far(step + 1))
            saved_at, last_save = f"epoch {epoch + 1}, step {step + 1}", time.perf_counter()
    return so_far(len(loader))


def model_of(net: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (or ``net`` itself)."""
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net
