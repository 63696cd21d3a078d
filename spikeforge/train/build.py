"""What a training run trains: its data sets and its network, built and initialised from a
:class:`~spikeforge.train.config.TrainConfig`.

The loop (:mod:`spikeforge.train.loop`) calls these once, after seeding: the order of their
random draws (subsets, weight initialisation) is part of what makes a run reproducible.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from spikeforge.config import to_dict
from spikeforge.data import BatchLoader, ImageDataset, load_dataset
from spikeforge.models import create
from spikeforge.train.checkpoint import load_model
from spikeforge.train.config import TrainConfig
from spikeforge.train.recipe import dirac_init, first_conv, whiten_first_conv

__all__ = ["build_model", "freeze_whitening", "frozen_parameters", "initialise", "load_data",
           "set_norm_momentum"]


def load_data(cfg: TrainConfig) -> tuple[ImageDataset, ImageDataset]:
    """The training and test sets of ``cfg.data``: seeded subsets when ``train_subset`` /
    ``test_subset`` are set, and with ``normalize: false`` mean 0 and std 1 (pixels in
    [0, 1])."""
    d = cfg.data
    train = load_dataset(d.dataset, "train", root=d.root)
    test = load_dataset(d.dataset, "test", root=d.root)
    if d.train_subset:
        train = train.subset(d.train_subset, seed=cfg.seed)
    if d.test_subset:
        test = test.subset(d.test_subset, seed=cfg.seed)
    if not d.normalize:  # pixels in [0, 1]
        train, test = (replace(s, mean=(0.0,) * s.in_channels, std=(1.0,) * s.in_channels)
                       for s in (train, test))
    return train, test


def build_model(cfg: TrainConfig, train_set: ImageDataset) -> nn.Module:
    """The network of ``cfg``: a zoo ANN, or (``kind: snn``) the zoo model with LIF neurons
    in a :class:`~spikeforge.models.spiking.SpikingModel` — from scratch, or (``snn.init_from``)
    initialised from a converted ANN, calibrated on a seeded subset of ``train_set``."""
    classes, channels = train_set.num_classes, train_set.in_channels
    if cfg.kind == "ann":
        return create(cfg.model.name, num_classes=classes, in_channels=channels,
                      activation=cfg.model.activation, pool=cfg.model.pool, **cfg.model.options)
    snn = cfg.snn
    if snn.init_from is None:
        from spikeforge.models.spiking import create_snn

        return create_snn(cfg.model.name, snn.timesteps, snn.encoder, num_classes=classes,
                          in_channels=channels, pool=cfg.model.pool,
                          neuron=to_dict(snn.neuron), pool_threshold=snn.pool_threshold,
                          readout=snn.readout, pool_grad=snn.pool_grad, **cfg.model.options)
    from spikeforge.train.hybrid import snn_from_ann

    ann = load_model(snn.init_from)
    calibration = None
    if snn.init_method == "threshold_balancing":
        subset = train_set.subset(min(2048, len(train_set)), seed=cfg.seed)
        calibration = [x for x, _ in BatchLoader(subset, 256)]
    return snn_from_ann(ann, calibration, snn.init_method, snn.timesteps, snn.encoder,
                        neuron=to_dict(snn.neuron), **snn.init_options)


def initialise(model: nn.Module, cfg: TrainConfig, train_set: ImageDataset) -> None:
    """The recipe's data-dependent initialisation, before the first step: ``model.whiten``
    sets the first conv to the whitening filters of 5000 seeded training images (normalised
    as the loader does, not augmented) and freezes it; ``model.dirac`` makes the other convs
    start as identities (:mod:`spikeforge.train.recipe`)."""
    if cfg.model.whiten:
        subset = train_set.subset(min(5000, len(train_set)), seed=cfg.seed)
        images = torch.cat([x for x, _ in BatchLoader(subset, 1000)])
        whiten_first_conv(model, images)
    if cfg.model.dirac:
        dirac_init(model, skip=first_conv(model) if cfg.model.whiten else None)


def freeze_whitening(model: nn.Module, cfg: TrainConfig) -> None:
    """With ``model.whiten``, freeze the first conv (again, for a resumed or loaded model:
    ``requires_grad`` is not saved in a checkpoint)."""
    if cfg.model.whiten:
        first_conv(model).weight.requires_grad_(False)


def frozen_parameters(model: nn.Module, cfg: TrainConfig, epoch: int) -> list[nn.Parameter]:
    """Parameters that do not train in ``epoch`` (0-based): with ``model.whiten`` and
    ``optim.whiten_bias_epochs`` n, the whitening conv's bias from epoch n on (airbench: 3)."""
    n = cfg.optim.whiten_bias_epochs
    if not cfg.model.whiten or n is None or epoch < n:
        return []
    bias = first_conv(model).bias
    return [bias] if bias is not None else []


def set_norm_momentum(model: nn.Module, momentum: float | None) -> None:
    """Every batch norm's running statistics follow r ← (1 − m)·r + m·x̄ with m = ``momentum``
    (``optim.norm_momentum``; None keeps the layers' own). Not part of a checkpoint, so
    set on every (re)start."""
    if momentum is None:
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum
