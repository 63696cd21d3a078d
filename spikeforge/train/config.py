"""The training configuration (``spikeforge train CONFIG.yaml key=value ...``).

Every key, its type and its default is declared here; ``configs/*.yaml`` only say what differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from spikeforge.config import ConfigError, check_name


@dataclass
class AugmentConfig:
    """Batch augmentation of training images (see :class:`spikeforge.data.Augment`)."""

    crop_padding: int = 0
    hflip: bool | Literal["alternate"] = False  # "alternate": derandomised flips (airbench)
    cutout: int = 0
    pad_mode: Literal["zeros", "reflect"] = "zeros"  # what crop_padding pads with


@dataclass
class DataConfig:
    dataset: str = "mnist"
    root: str | None = None
    batch_size: int = 128
    eval_batch_size: int = 1000
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train_subset: int | None = None
    test_subset: int | None = None
    # false: pixels in [0, 1] instead of (pixel - mean) / std (Lee et al.'s MNIST input)
    normalize: bool = True
    # also report test accuracy averaged over each image and its mirror image
    test_flip: bool = False


@dataclass
class ModelConfig:
    name: str = "cnn_small"
    activation: str = "relu"
    pool: Literal["avg", "max"] = "avg"
    options: dict[str, Any] = field(default_factory=dict)
    # before training: set the first conv to the whitening filters of the training images'
    # patches and freeze it (see spikeforge.train.recipe.whiten_first_conv)
    whiten: bool = False
    # before training: identity (Dirac) initialisation of the later convolutions
    dirac: bool = False


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    # weight decay of learnable activation thresholds (QCFS / CS-QCFS); null: weight_decay
    threshold_weight_decay: float | None = None
    # batch-norm biases learn this many times faster, with weight decay ÷ it (airbench: 64)
    norm_bias_lr_scale: float = 1.0
    # batch-norm scales (weights) learn this many times faster, with weight decay ÷ it; 0
    # freezes them at their initial value (airbench: frozen at 1)
    norm_weight_lr_scale: float = 1.0
    epochs: int = 10
    warmup_epochs: float = 0.0
    # after the linear warm-up: cosine or linear decay to lr_end, or constant
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    # the schedule's first and last factor of the peak lr (airbench: 0.2 and 0.07); null
    # lr_start: 1 / warm-up steps
    lr_start: float | None = None
    lr_end: float = 0.0
    label_smoothing: float = 0.0
    # training loss: cross-entropy, or mse = Σ_c (out_c − 1[c = label])² averaged over the batch
    # (Lee et al. 2020, whose readout is trained towards one-hot targets)
    loss: Literal["cross_entropy", "mse"] = "cross_entropy"
    grad_clip: float | None = None
    # lr is given for this batch size and scaled linearly to data.batch_size (Goyal et al.
    # 2017); null: lr as given
    reference_batch_size: int | None = None
    # exponential moving average of the weights, evaluated and saved (null: off)
    ema: float | None = None
    # Lookahead (airbench's form, spikeforge.train.recipe.Lookahead): slow weights updated
    # every lookahead_every steps (null: off) from lookahead_start_epochs on, with decay
    # lookahead_decay^every · (step / total)^3; evaluated and saved
    lookahead_every: int | None = None
    lookahead_decay: float = 0.95
    lookahead_start_epochs: float = 0.0
    # with model.whiten: the whitening conv's bias trains for this many epochs, then stays
    # (airbench: 3); null: it trains throughout
    whiten_bias_epochs: int | None = None
    # momentum of the batch-norm running statistics, PyTorch's convention (new-value weight;
    # airbench: 0.4); null: the layers' own (0.1)
    norm_momentum: float | None = None


@dataclass
class NeuronConfig:
    """LIF neurons of a directly trained SNN (see :class:`spikeforge.neurons.LIF`)."""

    threshold: float = 1.0
    leak: float = 1.0  # Lee et al. 2020: 0.99
    reset: Literal["zero", "subtract"] = "zero"
    surrogate: Literal["sigmoid", "atan", "triangle", "rectangle", "lee"] = "atan"
    width: float | None = None  # the surrogate's width (default: its own)
    detach_reset: bool = False


@dataclass
class SNNConfig:
    """Direct training (``kind: snn``): the network runs T steps per image, BPTT."""

    timesteps: int = 8
    encoder: Literal["direct", "poisson", "poisson_lee"] = "direct"
    neuron: NeuronConfig = field(default_factory=NeuronConfig)
    pool_threshold: float | None = None  # spiking average pooling (Lee et al. 2020: 0.75)
    pool_grad: Literal["threshold", "unit"] = "threshold"  # Lee et al.'s pooling: unit
    readout: Literal["mean", "leaky"] = "mean"  # Lee et al.: leaky, divided by V_th·T
    # hybrid: start from this trained ANN checkpoint, converted with init_method (options in
    # init_options, e.g. {initial: half, channelwise: true}), instead of from scratch
    init_from: str | None = None
    init_method: Literal["threshold_balancing", "qcfs", "csqcfs"] = "threshold_balancing"
    init_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    out_dir: str = "runs/train"
    device: str = "auto"
    threads: int | None = None
    # mixed precision: true: bf16 autocast on a CUDA GPU (fp16 where it lacks bf16) and on a
    # CPU with native bf16 (AVX512-BF16 / AMX), float32 elsewhere; "bfloat16": bf16 autocast on
    # any device (emulated, several times slower, on other CPUs: the arithmetic of bf16
    # hardware, to check its accuracy); false: float32
    amp: bool | Literal["bfloat16"] = True
    channels_last: bool = True
    # true: a tqdm bar; false: a log line every 10% of an epoch; null: bar on a terminal only
    progress: bool | None = None
    # also checkpoint within an epoch once this many minutes passed since the last save, so a
    # kill loses at most that much of a long epoch (0: only after each epoch)
    checkpoint_minutes: float = 10.0


@dataclass
class TrainConfig:
    kind: Literal["ann", "snn"] = "ann"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    snn: SNNConfig = field(default_factory=SNNConfig)  # used when kind is "snn"
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self, prefix: str = "") -> None:
        """Check names against the live registries, so a typo fails before any work."""
        from spikeforge.data import DATASETS
        from spikeforge.models import ACTIVATIONS, MODELS

        check_name(prefix + "data.dataset", self.data.dataset, DATASETS)
        check_name(prefix + "model.name", self.model.name, MODELS)
        check_name(prefix + "model.activation", self.model.activation, ACTIVATIONS)
        positive = [("data.batch_size", self.data.batch_size),
                    ("data.eval_batch_size", self.data.eval_batch_size),
                    ("optim.epochs", self.optim.epochs), ("optim.lr", self.optim.lr),
                    ("optim.norm_bias_lr_scale", self.optim.norm_bias_lr_scale)]
        for key, value in positive:
            if value <= 0:
                raise ConfigError(f"config key {prefix + key!r} must be > 0, got {value!r}")
        if self.optim.norm_weight_lr_scale < 0:
            raise ConfigError(f"config key {prefix + 'optim.norm_weight_lr_scale'!r} must be >= 0"
                              f" (0 freezes the scales), got {self.optim.norm_weight_lr_scale!r}")
        if self.optim.ema is not None and not 0.0 < self.optim.ema < 1.0:
            raise ConfigError(f"config key {prefix + 'optim.ema'!r} must be in (0, 1) or null, "
                              f"got {self.optim.ema!r}")
        if self.optim.lookahead_every is not None:
            if self.optim.ema is not None:
                raise ConfigError(f"config keys {prefix + 'optim.ema'!r} and "
                                  f"{prefix + 'optim.lookahead_every'!r} exclude each other: "
                                  "both choose the weights that are evaluated; set one")
            if self.optim.lookahead_every < 1:
                raise ConfigError(f"config key {prefix + 'optim.lookahead_every'!r} must be "
                                  f">= 1 or null, got {self.optim.lookahead_every!r}")
        unit = [("optim.lr_start", self.optim.lr_start), ("optim.lr_end", self.optim.lr_end),
                ("optim.norm_momentum", self.optim.norm_momentum),
                ("optim.lookahead_decay", self.optim.lookahead_decay)]
        for key, value in unit:
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"config key {prefix + key!r} must be in [0, 1], got {value!r}")
        if self.run.checkpoint_minutes < 0:
            raise ConfigError(f"config key {prefix + 'run.checkpoint_minutes'!r} must be >= 0 "
                              f"(0: only after each epoch), got {self.run.checkpoint_minutes!r}")
