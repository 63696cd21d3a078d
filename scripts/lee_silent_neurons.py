"""Train Lee et al.'s MNIST LeNet (``configs/mnist_lenet_lee.yaml``) for a few hundred steps and
watch its spiking layers fall silent.

Lee et al.'s rule passes a gradient only through the steps at which a neuron fired, so a
neuron that stops firing for every image gets no gradient again. Every 50 steps this prints,
per spiking layer (by module name: the two convolutions' neurons, their pooling neurons,
the fully connected layer's neurons ``net.head.3``), ``rate/silent/dead``: spikes per
neuron per step, the fraction of (image, neuron) pairs without a spike, and the fraction of
neurons without a spike for the whole batch; then the accuracy on 2000 seeded test images.

    python scripts/lee_silent_neurons.py NAME STEPS adamw|sgd LR MOMENTUM INPUT_GAIN [--json F]

e.g. ``adam1e-3 300 adamw 1e-3 0 1`` (the config's optimiser). The batches are the training
set shuffled with seed 0, without augmentation; INPUT_GAIN scales the Poisson rate (their
script's ``|x|/2`` is 0.5).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import spikeforge.models.spiking as spiking  # noqa: E402
from spikeforge.config import load_config  # noqa: E402
from spikeforge.data.loader import BatchLoader  # noqa: E402
from spikeforge.neurons.modules import SpikingNeuron  # noqa: E402
from spikeforge.train.build import build_model, load_data  # noqa: E402
from spikeforge.train.config import TrainConfig  # noqa: E402
from spikeforge.train.loop import training_loss  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name")
    p.add_argument("steps", type=int)
    p.add_argument("optimizer", choices=["adamw", "sgd"])
    p.add_argument("lr", type=float)
    p.add_argument("momentum", type=float)
    p.add_argument("gain", type=float)
    p.add_argument("--json", type=Path, help="also write the records here")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = load_config(TrainConfig, "configs/mnist_lenet_lee.yaml", [])
    train, test = load_data(cfg)
    model = build_model(cfg, train)
    if args.gain != 1.0:
        encode = spiking.encode
        spiking.encode = lambda e, x, t: encode(e, x * args.gain, t)

    stats: dict[str, tuple[float, float, float]] = {}

    def watch(name: str):
        def hook(module, inputs, out):
            spikes = out.detach().unflatten(0, (module.timesteps, -1)).float()
            count = spikes.sum(0)
            stats[name] = (spikes.mean().item(), (count == 0).float().mean().item(),
                           (count.sum(0) == 0).float().mean().item())
        return hook

    for name, module in model.named_modules():
        if isinstance(module, SpikingNeuron):
            module.register_forward_hook(watch(name))
    params = list(model.parameters())
    optimizer = (torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
                 if args.optimizer == "adamw" else
                 torch.optim.SGD(params, lr=args.lr, momentum=args.momentum,
                                 weight_decay=5e-4 / 64))
    records, start, correct, seen = [], time.time(), 0, 0
    model.train()
    for step, (x, y) in enumerate(BatchLoader(train, 64, shuffle=True, seed=0)):
        if step == args.steps:
            break
        scores = model(x)
        loss = training_loss(scores, y, cfg.optim)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        correct, seen = correct + (scores.argmax(1) == y).sum().item(), seen + len(y)
        if step % 50 == 0 or step == args.steps - 1:
            accuracy = 100 * correct / seen
            records.append({"step": step, "loss": loss.item(), "train_accuracy": accuracy,
                            "layers": {k: dict(zip(("rate", "silent", "dead"), v, strict=True))
                                       for k, v in stats.items()}})
            print(f"{args.name} step {step} loss {loss.item():.3f} acc {accuracy:.1f} "
                  + " ".join(f"{k}:{r:.3f}/{s:.2f}/{d:.2f}" for k, (r, s, d) in stats.items())
                  + f" {time.time() - start:.0f}s", flush=True)
            correct = seen = 0
    model.eval()
    with torch.no_grad():
        right = sum((model(x).argmax(1) == y).sum().item()
                    for x, y in BatchLoader(test.subset(2000, seed=0), 500))
    print(f"{args.name} test(2000) {right / 20:.2f}%", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"name": args.name, "argv": sys.argv[1:],
                                         "records": records, "test_accuracy": right / 20},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
