"""benchmarks/profile_step.py charges every operator, forward and backward, to its layer."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import profile_step  # noqa: E402


def test_backward_work_is_charged_to_the_layer_whose_forward_made_it():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                        nn.Flatten(), nn.Linear(512, 10))
    profile_step.label_layers(net)
    x = torch.randn(256, 512)
    net(x).square().sum().backward()  # warm-up: the first backward's start-up is not the loss's
    net.zero_grad()
    with torch.profiler.profile() as prof:
        net(x).square().sum().backward()
    seconds = profile_step.attribute(prof.events())
    layers = {f"layer {i} {type(m).__name__}" for i, m in enumerate(net)}
    assert layers - {"layer 4 Flatten"} <= set(seconds)
    for name in ("layer 0 Linear", "layer 2 Linear", "layer 1 ReLU", "layer 3 ReLU"):
        assert seconds[name]["forward"] > 0 and seconds[name]["backward"] > 0, name
    # outside the layers only the loss ran: its backward is tiny next to a 512 x 512 matmul's
    outside = seconds["outside layers"]
    assert outside.get("backward", 0.0) < seconds["layer 2 Linear"]["backward"]


def test_work_outside_any_operator_is_charged_to_its_layer():
    """A layer's time outside ATen operators (Python, a C++ extension's call) is its own."""
    import time

    class Waits(nn.Module):
        def forward(self, x):
            time.sleep(0.05)  # no operator runs: only the layer's range sees this time
            return x

    net = nn.Sequential(nn.Linear(64, 64), Waits())
    profile_step.label_layers(net)
    with torch.profiler.profile() as prof:
        net(torch.randn(8, 64))
    seconds = profile_step.attribute(prof.events())
    assert seconds["layer 1 Waits"]["forward"] >= 0.05
    assert seconds["layer 0 Linear"]["forward"] < 0.05
