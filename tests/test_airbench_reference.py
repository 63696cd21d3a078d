"""scripts/airbench_reference.py, the independent airbench94 re-implementation that measures
the fast recipe's ceiling on a copy of CIFAR-10: its pieces against spikeforge's own."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from spikeforge.train.recipe import patch_whitening

_PATH = Path(__file__).resolve().parents[1] / "scripts" / "airbench_reference.py"
_spec = importlib.util.spec_from_file_location("airbench_reference", _PATH)
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)


def test_whitening_filters_match_spikeforges_on_zero_mean_patches():
    # airbench's covariance is uncentred, spikeforge's centred: the same on images whose
    # patches average to zero (each image with its negative), up to each filter's sign
    gen = torch.Generator().manual_seed(0)
    base = torch.nn.functional.avg_pool2d(torch.randn(64, 3, 18, 18, generator=gen), 3, 1)
    images = torch.cat([base, -base])
    conv = torch.nn.Conv2d(3, 24, 2)
    reference.init_whitening(conv, images)
    ours = patch_whitening(images, 2)
    signs = torch.sign((conv.weight * ours).flatten(1).sum(1)).view(-1, 1, 1, 1)
    torch.testing.assert_close(conv.weight * signs, ours, rtol=1e-4, atol=1e-4)
    # and the whitened patches have unit covariance (ε aside)
    out = torch.nn.functional.conv2d(images, conv.weight[:12]).transpose(0, 1).flatten(1)
    covariance = out @ out.T / out.shape[1]
    torch.testing.assert_close(covariance, torch.eye(12), atol=5e-2, rtol=0)


@pytest.mark.parametrize(("step", "factor"), [(0, 0.2), (23, 1.0), (100, 0.07), (50, None)])
def test_triangle_schedule(step, factor):
    value = reference.triangle(step, 100)
    if factor is None:  # on the way down: linear between the peak and the end
        assert value == pytest.approx(1 + (0.07 - 1) * (50 - 23) / 77)
    else:
        assert value == pytest.approx(factor)


def test_the_convertible_order_is_the_same_function_as_airbenchs_after_training():
    # conv → max-pool → BN → ReLU equals conv → BN → ReLU → max-pool in eval mode when the
    # BN scale is positive (airbench freezes it at 1): the ablation compares like with like
    torch.manual_seed(0)
    nets = [reference.Net((8, 16, 16), "relu", "max", order) for order in ("pool-norm", "act-pool")]
    for module in nets[0].modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2)
            module.bias.data.normal_()
    nets[1].load_state_dict(nets[0].state_dict())
    for net in nets:
        net.eval()
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(nets[0](x), nets[1](x))
