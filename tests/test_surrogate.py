"""Surrogate spike functions and BPTT through LIF neurons: finite differences where the
stand-in is smooth, autograd through a step-by-step reference, and Lee et al.'s rule by hand."""

from __future__ import annotations

import math

import pytest
import torch

from spikeforge.neurons import NeuronParams, neuron_scan
from spikeforge.neurons.bptt import lif_scan
from spikeforge.neurons.surrogate import (
    SURROGATES,
    lee_factor,
    primitive,
    spike_fn,
    surrogate_grad,
)

SMOOTH = [name for name, width in SURROGATES.items() if width is not None]


@pytest.mark.parametrize("name", SMOOTH)
@pytest.mark.parametrize("width", [None, 0.3, 2.0])
def test_surrogate_is_the_derivative_of_its_stand_in(name, width):
    w = SURROGATES[name] if width is None else width
    kinks = {"triangle": [-w, 0.0, w], "rectangle": [-w / 2, w / 2]}.get(name, [])
    x = torch.linspace(-3, 3, 601, dtype=torch.float64)
    x = x[torch.stack([(x - k).abs() > 1e-3 for k in kinks]).all(0)] if kinks else x
    h = 1e-6
    numeric = (primitive(name, x + h, width) - primitive(name, x - h, width)) / (2 * h)
    torch.testing.assert_close(surrogate_grad(name, x, width), numeric, atol=1e-6, rtol=1e-5)
    # every stand-in goes from 0 to 1, so every g integrates to 1 (atan: heavy tails)
    grid = torch.linspace(-200, 200, 2_000_001, dtype=torch.float64)
    area = torch.trapezoid(surrogate_grad(name, grid, width), grid).item()
    ends = primitive(name, grid[[0, -1]], width)
    assert area == pytest.approx((ends[1] - ends[0]).item(), abs=1e-3)  # grid step 2e-4
    assert ends[0].item() < 5e-3 and ends[1].item() > 1 - 5e-3


@pytest.mark.parametrize("name", SMOOTH)
def test_spike_fn_forward_is_heaviside_backward_is_the_surrogate(name):
    m = torch.tensor([-1.0, 0.5, 0.99, 1.0, 1.7, 3.0], dtype=torch.float64, requires_grad=True)
    s = spike_fn(m, 1.0, name)
    assert s.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    s.sum().backward()
    torch.testing.assert_close(m.grad, surrogate_grad(name, m.detach() - 1.0))
    # θ = 2: x = (m − θ)/θ and the derivative is divided by θ
    m2 = torch.tensor([1.5], dtype=torch.float64, requires_grad=True)
    spike_fn(m2, 2.0, name).backward()
    expected = surrogate_grad(name, torch.tensor([-0.25], dtype=torch.float64)) / 2
    torch.testing.assert_close(m2.grad, expected)


def test_bad_surrogate_names_and_widths():
    with pytest.raises(ValueError, match="unknown surrogate 'tanh'; valid: sigmoid"):
        spike_fn(torch.zeros(2), 1.0, "tanh")
    with pytest.raises(ValueError, match="width must be finite and > 0"):
        lif_scan(torch.zeros(2, 2), surrogate="atan", width=0.0)
    with pytest.raises(ValueError, match="whole spike train"):
        spike_fn(torch.zeros(2), 1.0, "lee")
    with pytest.raises(ValueError, match="leak must be in"):
        lif_scan(torch.zeros(2, 2), leak=1.5)


def _reference(z, theta, leak, reset, surrogate, detach_reset, v0):
    """BPTT by autograd through a loop of differentiable steps."""
    v = torch.zeros_like(z[0]) + v0
    out = []
    for t in range(z.shape[0]):
        m = v * leak + z[t]
        s = spike_fn(m, theta, surrogate)
        r = s.detach() if detach_reset else s
        v = m - r * theta if reset == "subtract" else m * (1 - r)
        out.append(s)
    return torch.stack(out)


@pytest.mark.parametrize("surrogate", SMOOTH)
@pytest.mark.parametrize("reset", ["zero", "subtract"])
@pytest.mark.parametrize("detach_reset", [False, True])
def test_lif_scan_matches_autograd_through_the_steps(surrogate, reset, detach_reset):
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(6, 3, 4, 2, 2, generator=gen, dtype=torch.float64) * 0.8 + 0.4
    theta = torch.tensor([0.7, 1.0, 1.3, 2.0], dtype=torch.float64).view(4, 1, 1)
    weights = torch.randn(6, 3, 4, 2, 2, generator=gen, dtype=torch.float64)
    grads = []
    for fn in (lif_scan, _reference):
        zz = z.clone().requires_grad_(True)
        kwargs = dict(theta=theta) if fn is _reference else dict(threshold=theta)
        s = fn(zz, leak=0.9, reset=reset, surrogate=surrogate, detach_reset=detach_reset,
               **({"v0": 0.1} if fn is _reference else {"initial": 0.1}), **kwargs)
        (s * weights).sum().backward()
        grads.append((s.detach(), zz.grad))
    assert torch.equal(grads[0][0], grads[1][0])
    assert grads[0][0].sum() > 10  # neurons fired: the reset path is exercised
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize(("reset", "surrogate", "detach_reset"),
                         [("zero", "atan", False), ("subtract", "sigmoid", True),
                          ("zero", "lee", False)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_compiled_lif_backward_matches_the_in_place_one(reset, surrogate, detach_reset,
                                                         channels_last, monkeypatch,
                                                         no_compile_fallback):
    """Also for channels-last currents (the compiled loop runs in memory order) with a
    per-channel θ and an incoming gradient in the other layout."""
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(5, 3, 4, 3, 3, generator=gen, dtype=torch.float64) * 0.8 + 0.4
    if channels_last:  # (T, B, C, H, W) with (T, B, H, W, C) in memory
        z = z.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    theta = torch.tensor([0.7, 1.0, 1.3, 2.0], dtype=torch.float64).view(4, 1, 1)
    weights = torch.randn(5, 3, 4, 3, 3, generator=gen, dtype=torch.float64)
    grads = []
    for compiled in ("0", "1"):
        monkeypatch.setenv("SPIKEFORGE_COMPILE", compiled)
        zz = z.clone().requires_grad_(True)
        s = lif_scan(zz, theta, leak=0.9, reset=reset, surrogate=surrogate,
                     detach_reset=detach_reset)
        (s * weights).sum().backward()
        grads.append(zz.grad)
    assert grads[0].abs().sum() > 1  # gradient flows
    torch.testing.assert_close(grads[1], grads[0], atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("reset", ["zero", "subtract"])
def test_lif_scan_forward_is_the_neuron_core(reset):
    z = torch.rand(16, 5, 7) * 1.5
    s = lif_scan(z, threshold=1.0, leak=0.95, reset=reset)
    expected, _ = neuron_scan(z, NeuronParams(1.0, "binary", reset, leak=0.95))
    assert torch.equal(s, expected)


@pytest.mark.parametrize("detach_reset", [False, True])
def test_lee_rule_by_hand(detach_reset):
    # one neuron, θ = 1, l = 0.5, reset to zero, z = 1.2, 0.3, 1.5:
    # m = 1.2 (fires), 0.3, 0.15 + 1.5 = 1.65 (fires): spikes 1, 0, 1
    # N = 2, f = 0.5^2 + 0.5^0 = 1.25, factor = 1 + ln(0.5)·1.25/2
    factor = 1 + math.log(0.5) * 1.25 / 2
    z = torch.tensor([[1.2], [0.3], [1.5]], dtype=torch.float64, requires_grad=True)
    s = lif_scan(z, 1.0, leak=0.5, reset="zero", surrogate="lee", detach_reset=detach_reset)
    assert s.flatten().tolist() == [1.0, 0.0, 1.0]
    s.sum().backward()
    # the reset is always detached and the leak passes the gradient unchanged (Lee et al.'s
    # code): δ3 = factor; δ2 = 0 + δ3·(1 − s2) = factor; δ1 = factor + δ2·(1 − s1) = factor
    expected = [factor, factor, factor]
    assert z.grad.flatten().tolist() == pytest.approx(expected, rel=1e-12)
    assert lee_factor(s.detach(), 0.5).item() == pytest.approx(factor)
    assert lee_factor(s.detach(), 1.0).item() == 1.0  # no leak, no correction


def test_lee_factor_of_a_random_window_matches_its_definition():
    torch.manual_seed(3)
    spikes = torch.rand(9, 4, 6) < 0.3
    leak, steps = 0.9, spikes.shape[0]
    s = spikes.double()
    count = s.sum(0)
    trace = sum(s[t] * leak ** (steps - 1 - t) for t in range(steps))  # t = 0..T−1
    expected = torch.where(count > 0, 1 + math.log(leak) * trace / count.clamp(min=1), 1.0)
    factor = lee_factor(spikes, leak, torch.float64)  # booleans, as the scan keeps them
    torch.testing.assert_close(factor, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(lee_factor(s, leak), factor, rtol=0, atol=0)
    assert lee_factor(spikes, leak).dtype == torch.get_default_dtype()
