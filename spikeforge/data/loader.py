"""Batching, sharding and augmentation of an in-memory :class:`ImageDataset`.

Everything works on whole batches with tensor operations (no per-sample Python), and all
randomness comes from generators seeded by ``(seed, epoch)``, so an epoch can be replayed
exactly (a resumed run sees the same batches).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from spikeforge.data.dataset import ImageDataset


@dataclass
class Augment:
    """Random batch augmentation: crop after padding, horizontal flip, cutout.

    Attributes:
        crop_padding: pad each side by this many pixels, then crop back to the original
            size at a random offset (0 = off): a translation by up to ± this many pixels.
        pad_mode: what the padding holds: ``"zeros"`` (black pixels) or ``"reflect"``
            (the image mirrored at its border, without repeating the edge; airbench).
        hflip: mirror each image left-right with probability 1/2 (``True``), or
            ``"alternate"``: derandomised flips (airbench, Jordan 2024) — each image is
            mirrored in every other epoch, starting in epoch 0 or 1 at random, so that over
            any two epochs the network sees it once each way. Alternating needs the images'
            data-set indices and the epoch (:class:`BatchLoader` passes them).
        cutout: zero a square of this side centred at a random pixel, clipped at the border
            (0 = off).
    """

    crop_padding: int = 0
    hflip: bool | Literal["alternate"] = False
    cutout: int = 0
    pad_mode: Literal["zeros", "reflect"] = "zeros"

    def __post_init__(self) -> None:
        if self.crop_padding < 0 or self.cutout < 0:
            raise ValueError(f"crop_padding and cutout must be >= 0, got {self}")
        if self.pad_mode not in ("zeros", "reflect"):
            raise ValueError(f"pad_mode must be 'zeros' or 'reflect', got {self.pad_mode!r}")
        if self.hflip not in (True, False, "alternate"):
            raise ValueError(f"hflip must be true, false or 'alternate', got {self.hflip!r}")

    @property
    def enabled(self) -> bool:
        return bool(self.crop_padding or self.hflip or self.cutout)

    def __call__(self, x: torch.Tensor, generator: torch.Generator,
                 flip: torch.Tensor | None = None) -> torch.Tensor:
        """Augment a batch ``x`` (B, C, H, W) of any dtype; returns a new batch of the same
        shape and dtype on the same device. Random numbers are drawn from ``generator`` (on
        its own device), so results do not depend on where ``x`` lives. ``flip`` (bool, (B,))
        says which images to mirror; it is required with ``hflip="alternate"``."""
        if x.ndim != 4:
            raise ValueError(f"expected a batch (B, C, H, W), got shape {tuple(x.shape)}")
        if self.hflip == "alternate" and flip is None:
            raise ValueError("hflip='alternate' needs the flip mask of the batch "
                             "(see BatchLoader)")
        b, c, h, w = x.shape
        on = {"generator": generator, "device": generator.device}
        if self.crop_padding or self.hflip:
            p = self.crop_padding
            rows = torch.arange(h, device=generator.device).expand(b, h)
            cols = torch.arange(w, device=generator.device).expand(b, w)
            if p:
                rows = rows + torch.randint(0, 2 * p + 1, (b, 1), **on)
                cols = cols + torch.randint(0, 2 * p + 1, (b, 1), **on)
            if self.hflip:
                flip = (torch.rand(b, 1, **on) < 0.5 if self.hflip is True
                        else flip.view(b, 1).to(generator.device))
                cols = torch.where(flip, cols.flip(1), cols)
            rows, cols = rows.to(x.device), cols.to(x.device)
            source = x
            if p and self.pad_mode == "reflect":  # padded index i is pixel |i − p| mirrored
                rows, cols = _reflect(rows - p, h), _reflect(cols - p, w)
            elif p:
                source = F.pad(x, (p, p, p, p))
            batch = torch.arange(b, device=x.device).view(b, 1, 1, 1)
            channel = torch.arange(c, device=x.device).view(1, c, 1, 1)
            x = source[batch, channel, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]
        if self.cutout:
            s = self.cutout
            top = torch.randint(0, h, (b, 1), **on) - s // 2
            left = torch.randint(0, w, (b, 1), **on) - s // 2
            ys = torch.arange(h, device=generator.device)
            xs = torch.arange(w, device=generator.device)
            inside_y = (ys >= top) & (ys < top + s)
            inside_x = (xs >= left) & (xs < left + s)
            mask = inside_y[:, None, :, None] & inside_x[:, None, None, :]
            x = x.masked_fill(mask.to(x.device), 0)
        return x


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Indices in [−size + 1, 2·size − 2] mirrored into [0, size) without repeating the
    border pixel (``F.pad(..., mode="reflect")``)."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def alternating_flips(coins: torch.Tensor, epoch: int) -> torch.Tensor:
    """Which images to mirror in ``epoch`` with derandomised flips: f(i, e) = b(i) XOR
    (e mod 2), for ``coins`` b (one fair bool per image, drawn once, see :class:`BatchLoader`)."""
    return coins ^ bool(epoch % 2)


def _generator(*entropy: int) -> torch.Generator:
    """A CPU generator seeded from well-mixed ``entropy`` (non-negative ints)."""
    state = np.random.SeedSequence(list(entropy)).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class BatchLoader:
    """Iterate over ``(x, y)`` batches of an :class:`ImageDataset`.

    ``x`` is float32 (B, C, H, W), normalised as ``(pixel / 255 - mean) / std`` with the data
    set's constants (after augmentation on the raw pixels, so padding and cutout are black);
    ``y`` is int64 (B,). Both are on ``device``, where the whole data set is copied once.

    Args:
        dataset: the images and labels.
        batch_size: samples per batch (per rank).
        shuffle: a fresh permutation each epoch (seeded by ``(seed, epoch)``).
        augment: batch augmentation, seeded by ``(seed, epoch, rank)``.
        seed: base seed (non-negative).
        drop_last: drop the incomplete last batch, and the tail that does not divide evenly
            among ranks; otherwise the permutation is padded by wrapping around so every rank
            gets the same number of batches.
        rank, world_size: this process's shard: it takes ``perm[rank::world_size]`` of the
            permutation that every rank computes identically.
        device: where batches are produced.
        channels_last: return ``x`` in channels-last memory format.
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, shuffle: bool = False,
                 augment: Augment | None = None, seed: int = 0, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu",
                 channels_last: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment if augment is not None and augment.enabled else None
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.epoch = 0
        self._flip_coins = None  # b(i) of derandomised flips, fixed for the whole run
        if self.augment is not None and self.augment.hflip == "alternate":
            self._flip_coins = (torch.rand(len(dataset), generator=_generator(seed, 2**32 - 1))
                                < 0.5).to(self.device)
        self._images = dataset.images.to(self.device)
        self._labels = dataset.labels.to(self.device)
        mean = torch.tensor(dataset.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(dataset.std, dtype=torch.float32).view(1, -1, 1, 1)
        self._scale = (1.0 / (255.0 * std)).to(self.device)
        self._shift = (-mean / std).to(self.device)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration replays."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch (before dropping an incomplete batch)."""
        n, ranks = len(self.dataset), self.world_size
        return n // ranks if self.drop_last else math.ceil(n / ranks)

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank)."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def indices(self) -> torch.Tensor:
        """This rank's dataset indices for the current epoch, in batch order."""
        n = len(self.dataset)
        order = (torch.randperm(n, generator=_generator(self.seed, self.epoch))
                 if self.shuffle else torch.arange(n))
        total = self.num_samples * self.world_size
        if total > n:
            order = order.repeat(math.ceil(total / n))
        return order[:total][self.rank::self.world_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.indices().to(self.device)
        generator = _generator(self.seed, self.epoch, self.rank)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start:start + self.batch_size]
            x, y = self._images[index], self._labels[index]
            if self.augment is not None:
                flip = (None if self._flip_coins is None
                        else alternating_flips(self._flip_coins[index], self.epoch))
                x = self.augment(x, generator, flip)
            x = x.float().mul_(self._scale).add_(self._shift)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y
