"""An independent re-implementation of airbench94 (Jordan 2024, "94% on CIFAR-10 in 3.29
seconds on a single GPU", arXiv 2404.00498), from the paper's description, with no spikeforge
code: the reference that tells how far the fast recipe goes on a given copy of CIFAR-10, and
which of the convertible network's departures from it cost accuracy.

The network: a frozen 2×2 patch-whitening conv (eigenvectors of the training patches'
covariance scaled by (λ + 5·10⁻⁴)^(-1/2), and their negatives; its bias trains for the first
3 epochs) → act → three groups [conv3×3 → max-pool 2 → BN → act → conv3×3 → BN → act] of
widths 64/256/256 → global max-pool → Linear(no bias) × 1/9. Convs without bias, PyTorch's
default init, then identity (Dirac) on the first C_in filters. BN: scale frozen at 1, bias
trained at 64× the learning rate, ε = 10⁻¹², running-statistics momentum 0.4 (PyTorch's
convention). Loss: cross-entropy with label smoothing 0.2, summed over the batch. Nesterov
SGD at batch 1024, lr 11.5 / (1024·(1 + 1/(1 − 0.85))) per summed example, momentum 0.85,
decoupled weight decay 0.0153 per 1024 examples; the learning rate a triangle
0.2 → 1 (at 23% of the steps) → 0.07 over 9.9 epochs. Lookahead every 5 steps with decay
0.95⁵·(step/total)³ (the BN statistics included), and the slow weights at the end. Data:
per-channel normalisation, ±2 px translations of the reflect-padded image, flips
alternating per epoch (a random half in even epochs, the other half in odd ones). Test-time
views: level 0 the image, 1 + its mirror, 2 + the mirrored pair of ±1 px translations.

``--act relu`` and ``--order act-pool`` (conv → BN → act → pool, the order spikeforge's
converter maps) give the convertible form; ``--pool avg`` average pools.

    python scripts/airbench_reference.py --data ../shared/data --seeds 0 1 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import platform
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def load_cifar10(root: Path, device: torch.device) -> dict[str, torch.Tensor]:
    """The python-version archive ``root/CIFAR10/cifar-10-python.tar.gz`` as normalised
    float tensors ``(N, 3, 32, 32)`` and int64 labels, on ``device``."""
    parts: dict[str, list] = {"train": [], "test": []}
    with tarfile.open(root / "CIFAR10" / "cifar-10-python.tar.gz") as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            name = Path(member.name).name
            split = {"test_batch": "test"}.get(name, "train" if "data_batch" in name else None)
            if split:
                batch = pickle.load(tar.extractfile(member), encoding="latin1")
                parts[split].append((batch["data"], batch["labels"]))
    out = {}
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    for split, batches in parts.items():
        x = torch.from_numpy(np.concatenate([b[0] for b in batches])).view(-1, 3, 32, 32)
        y = torch.tensor([label for b in batches for label in b[1]])
        out[split + "_x"] = ((x.float() / 255 - mean) / std).to(device)
        out[split + "_y"] = y.to(device)
    return out


class BatchNorm(nn.BatchNorm2d):
    def __init__(self, channels: int):
        super().__init__(channels, eps=1e-12, momentum=0.4)
        self.weight.requires_grad = False


class Conv(nn.Conv2d):
    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, 3, padding="same", bias=False)
        with torch.no_grad():
            nn.init.dirac_(self.weight[:cin])


class Group(nn.Module):
    def __init__(self, cin: int, cout: int, act, pool, order: str):
        super().__init__()
        self.conv1, self.norm1, self.conv2, self.norm2 = (
            Conv(cin, cout),
            BatchNorm(cout),
            Conv(cout, cout),
            BatchNorm(cout),
        )
        self.act, self.pool, self.order = act, pool, order

    def forward(self, x):
        x = self.conv1(x)
        if self.order == "pool-norm":
            x = self.act(self.norm1(self.pool(x)))
        else:
            x = self.pool(self.act(self.norm1(x)))
        return self.act(self.norm2(self.conv2(x)))


class Net(nn.Module):
    def __init__(self, widths, act: str, pool: str, order: str):
        super().__init__()
        activation = {"gelu": nn.GELU(), "relu": nn.ReLU()}[act]
        pooling = {"max": nn.MaxPool2d(2), "avg": nn.AvgPool2d(2)}[pool]
        self.whiten = nn.Conv2d(3, 24, 2, padding=0, bias=True)
        self.whiten.weight.requires_grad = False
        self.act = activation
        cins = (24,) + tuple(widths[:-1])
        self.groups = nn.Sequential(
            *(Group(i, o, activation, pooling, order) for i, o in zip(cins, widths, strict=True))
        )
        self.head = nn.Linear(widths[-1], 10, bias=False)

    def forward(self, x):
        x = self.groups(self.act(self.whiten(x)))
        return self.head(F.adaptive_max_pool2d(x, 1).flatten(1)) / 9


@torch.no_grad()
def init_whitening(conv: nn.Conv2d, images: torch.Tensor, eps: float = 5e-4) -> None:
    """Filters = eigenvectors of the (uncentred) covariance of all 2×2 patches of
    ``images``, each divided by √(λ + ε), followed by their negatives."""
    patches = (
        images.unfold(2, 2, 1)
        .unfold(3, 2, 1)
        .transpose(1, 3)
        .reshape(-1, 3, 2, 2)
        .flatten(1)
        .double()
    )
    covariance = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    filters = (eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]).flip(0).view(-1, 3, 2, 2)
    conv.weight.copy_(torch.cat([filters, -filters]).float())


@torch.no_grad()
def lookahead(net: nn.Module, slow: dict[str, torch.Tensor], decay: float) -> None:
    """slow ← decay·slow + (1 − decay)·net, then net ← slow, for every float entry of the
    state dict (the BN statistics included)."""
    for k, v in net.state_dict().items():
        if v.dtype.is_floating_point:
            slow[k].lerp_(v, 1 - decay)
            v.copy_(slow[k])


def triangle(step: int, total: int, start=0.2, peak=0.23, end=0.07) -> float:
    p = step / total
    return start + (1 - start) * p / peak if p < peak else 1 + (end - 1) * (p - peak) / (1 - peak)


def evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor, level: int, amp) -> float:
    net.eval()
    correct = 0
    with torch.no_grad(), amp():
        for i in range(0, len(x), 2000):
            xb = x[i : i + 2000]
            mirror = lambda v: 0.5 * (net(v) + net(v.flip(-1))) if level >= 1 else net(v)  # noqa: E731
            logits = mirror(xb)
            if level >= 2:
                padded = F.pad(xb, (1,) * 4, mode="reflect")
                shifted = 0.5 * (mirror(padded[:, :, :32, :32]) + mirror(padded[:, :, 2:, 2:]))
                logits = 0.5 * logits + 0.5 * shifted
            correct += (logits.argmax(1) == y[i : i + 2000]).sum().item()
    return 100.0 * correct / len(x)


def train(
    data,
    *,
    seed: int,
    epochs: float,
    widths,
    act: str,
    pool: str,
    order: str,
    batch_size: int = 1024,
    device: torch.device,
    amp,
) -> dict:
    torch.manual_seed(seed)
    net = Net(widths, act, pool, order).to(device).to(memory_format=torch.channels_last)
    init_whitening(net.whiten, data["train_x"][:5000])
    n = len(data["train_x"])
    steps_per_epoch = n // batch_size
    total = math.ceil(epochs * steps_per_epoch)
    momentum = 0.85
    kilostep = 1024 * (1 + 1 / (1 - momentum))
    lr, wd = 11.5 / kilostep, 0.0153 * batch_size / kilostep
    norm_biases = [p for name, p in net.named_parameters() if "norm" in name and p.requires_grad]
    others = [p for name, p in net.named_parameters() if "norm" not in name and p.requires_grad]
    groups = [
        dict(params=norm_biases, lr=lr * 64, weight_decay=wd / (lr * 64)),
        dict(params=others, lr=lr, weight_decay=wd / lr),
    ]
    for g in groups:
        g["initial_lr"] = g["lr"]
    opt = torch.optim.SGD(groups, momentum=momentum, nesterov=True)
    slow = {k: v.detach().clone() for k, v in net.state_dict().items()}
    padded = F.pad(data["train_x"], (2,) * 4, mode="reflect")
    flip_mask = torch.rand(n, device=device) < 0.5
    step, started = 0, time.perf_counter()
    for epoch in range(math.ceil(epochs)):
        net.whiten.bias.requires_grad = epoch < 3
        net.train()
        order_idx = torch.randperm(n, device=device)
        dx = torch.randint(0, 5, (n,), device=device)
        dy = torch.randint(0, 5, (n,), device=device)
        flips = flip_mask if epoch % 2 == 0 else ~flip_mask
        for b in range(steps_per_epoch):
            if step >= total:
                break
            idx = order_idx[b * batch_size : (b + 1) * batch_size]
            rows = dy[idx].view(-1, 1, 1) + torch.arange(32, device=device).view(1, 32, 1)
            cols = dx[idx].view(-1, 1, 1) + torch.arange(32, device=device).view(1, 1, 32)
            xb = padded[idx][
                torch.arange(len(idx), device=device).view(-1, 1, 1), :, rows, cols
            ].permute(0, 3, 1, 2)
            xb = torch.where(flips[idx].view(-1, 1, 1, 1), xb.flip(-1), xb).contiguous(
                memory_format=torch.channels_last
            )
            for g in opt.param_groups:
                g["lr"] = g["initial_lr"] * triangle(step, total)
            with amp():
                loss = F.cross_entropy(
                    net(xb), data["train_y"][idx], label_smoothing=0.2, reduction="sum"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % 5 == 0:
                lookahead(net, slow, decay=0.95**5 * (step / total) ** 3)
    lookahead(net, slow, decay=1.0)  # the slow weights are the result
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    accs = {
        f"tta{level}": evaluate(net, data["test_x"], data["test_y"], level, amp)
        for level in (0, 1, 2)
    }
    return {"seed": seed, "train_seconds": round(seconds, 2), "steps": step, **accs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=float, default=9.9)
    parser.add_argument("--widths", type=int, nargs=3, default=[64, 256, 256])
    parser.add_argument("--act", choices=["gelu", "relu"], default="gelu")
    parser.add_argument("--pool", choices=["max", "avg"], default="max")
    parser.add_argument("--order", choices=["pool-norm", "act-pool"], default="pool-norm")
    parser.add_argument(
        "--train-subset", type=int, default=None, help="first N training images (smoke tests)"
    )
    parser.add_argument("--json", type=Path, default=None, help="append the runs to this JSON file")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    bf16 = device.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported()
    amp = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
    data = load_cifar10(args.data, device)
    if args.train_subset:
        data["train_x"], data["train_y"] = (
            data["train_x"][: args.train_subset],
            data["train_y"][: args.train_subset],
        )
    config = {k: v for k, v in vars(args).items() if k not in ("data", "seeds", "json")}
    runs = []
    for seed in args.seeds:
        run = train(
            data,
            seed=seed,
            epochs=args.epochs,
            widths=args.widths,
            act=args.act,
            pool=args.pool,
            order=args.order,
            device=device,
            amp=amp,
        )
        print(json.dumps({**config, **run}), flush=True)
        runs.append(run)
    if args.json:
        record = {
            "command": " ".join(["python", *sys.argv]),
            "config": config,
            "runs": runs,
            "mean": {
                k: round(sum(r[k] for r in runs) / len(runs), 3)
                for k in ("tta0", "tta1", "tta2", "train_seconds")
            },
            "device": torch.cuda.get_device_name()
            if device.type == "cuda"
            else platform.processor() or "cpu",
            "precision": "bfloat16 autocast" if bf16 else "float32",
            "torch": torch.__version__,
        }
        existing = json.loads(args.json.read_text()) if args.json.exists() else []
        args.json.write_text(json.dumps(existing + [record], indent=1) + "\n")


if __name__ == "__main__":
    main()
