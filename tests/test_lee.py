"""Lee et al. (Front. Neurosci. 2020) as their code computes it: the ``lee`` backward of one LIF
layer and of their whole MNIST network against independent reimplementations of the authors'
``mnist_LeNet.py`` (``LIF_sNeuron``, ``LF_Unit``, ``grad_cal``, ``Pooling_sNeuron``,
``CNNModel.forward``), written here as plain autograd over a loop of steps; their Poisson
input, initialisation and leaky readout."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikeforge.data import load_dataset
from spikeforge.encoding import poisson_lee
from spikeforge.models import create
from spikeforge.models.spiking import create_snn, readout_scores
from spikeforge.neurons.bptt import lif_scan


class _Fired(torch.autograd.Function):
    """1 where the excess potential is positive; the gradient passes there only."""

    @staticmethod
    def forward(ctx, excess):
        ctx.save_for_backward(excess)
        return (excess > 0).to(excess.dtype)

    @staticmethod
    def backward(ctx, grad):
        (excess,) = ctx.saved_tensors
        return grad * (excess > 0).to(grad.dtype)


def _straight_through(value, forward_value):
    """``forward_value`` forward, the gradient of ``value`` backward."""
    return forward_value.detach() + value - value.detach()


def _lif_step(mem, theta, leak, straight=True):
    """One step of their LIF neuron after the input was added: fire where mem > θ, reset to
    zero through the excess, leak (straight through in backward), spike gradient 1/θ."""
    excess = mem * (mem > theta).to(mem.dtype)
    mem = mem - excess
    out = _Fired.apply(excess)
    mem = _straight_through(mem, leak * mem) if straight else leak * mem
    return mem, _straight_through(out / theta, out)


def _pool_step(mem, theta):
    """Their pooling neuron: fire where mem > θ, reset to zero, gradient 1 where it fired."""
    excess = mem * (mem > theta).to(mem.dtype)
    return mem - excess, _Fired.apply(excess)


class _LeakCorrection:
    """Their LF_Unit and grad_cal: the leaky count f and the count N of a layer's spikes; after
    the forward, the gradient of each output spike is multiplied by
    NG = 1[f > 0] + ln(l)·f/N (N = 0 counted as 1)."""

    def __init__(self, leak):
        self.leak, self.outputs, self.f, self.n = leak, [], 0.0, 0.0

    def __call__(self, out):
        self.f = self.leak * self.f + out.detach()
        self.n = self.n + out.detach()
        self.outputs.append(out)
        return out

    def register(self):
        ng = (self.f > 0).to(self.f.dtype) + math.log(self.leak) * self.f / self.n.clamp(min=1)
        for out in self.outputs:
            out.register_hook(lambda grad: grad * ng)


def _official_layer(z, theta, leak, straight=True):
    """Spikes of one layer of their LIF neurons driven by z (T, ...), with their backward
    (``straight=False``: the leak multiplies the gradient instead, a deliberately wrong
    variant that shows the tolerances can fail)."""
    mem, correction = torch.zeros_like(z[0]), _LeakCorrection(leak)
    for t in range(z.shape[0]):
        mem, out = _lif_step(mem + z[t], theta, leak, straight)
        correction(out)
    correction.register()
    return torch.stack(correction.outputs)


def _grad(fn, z, weights):
    z = z.clone().requires_grad_(True)
    spikes = fn(z)
    (spikes * weights).sum().backward()
    return spikes.detach(), z.grad


def _cosine_and_ratio(a, b):
    cosine = F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
    return cosine, (a.norm() / b.norm()).item()


@pytest.mark.parametrize("steps", [10, 30, 100])
@pytest.mark.parametrize("detach_reset", [False, True])
def test_lee_backward_is_the_authors(steps, detach_reset):
    gen = torch.Generator().manual_seed(steps)
    z = torch.randn(steps, 16, 40, generator=gen, dtype=torch.float64) * 0.6 + 0.25
    weights = torch.randn(steps, 16, 40, generator=gen, dtype=torch.float64)
    spikes, grad = _grad(lambda x: lif_scan(x, 1.0, 0.99, "zero", "lee", None, detach_reset),
                         z, weights)
    ref_spikes, ref_grad = _grad(lambda x: _official_layer(x, 1.0, 0.99), z, weights)
    assert torch.equal(spikes, ref_spikes)
    assert 0.1 < spikes.mean().item() < 0.5  # firing, and silent steps in between
    cosine, ratio = _cosine_and_ratio(grad, ref_grad)
    assert cosine >= 0.999 and abs(ratio - 1) <= 0.01, (cosine, ratio)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    if steps >= 30:  # the leak in the backward would fail these tolerances
        _, leaky = _grad(lambda x: _official_layer(x, 1.0, 0.99, straight=False), z, weights)
        assert abs(_cosine_and_ratio(leaky, ref_grad)[1] - 1) > 0.01


def test_lee_backward_threshold_and_unit_scale():
    gen = torch.Generator().manual_seed(7)
    z = torch.randn(12, 8, 30, generator=gen, dtype=torch.float64) * 0.4 + 0.2
    weights = torch.randn(12, 8, 30, generator=gen, dtype=torch.float64)
    _, ref = _grad(lambda x: _official_layer(x, 0.5, 0.9), z, weights)
    _, grad = _grad(lambda x: lif_scan(x, 0.5, 0.9, "zero", "lee"), z, weights)
    torch.testing.assert_close(grad, ref, rtol=1e-10, atol=1e-12)
    _, unit = _grad(lambda x: lif_scan(x, 0.5, 0.9, "zero", "lee", grad_scale="unit"),
                    z, weights)
    torch.testing.assert_close(unit, ref * 0.5, rtol=1e-10, atol=1e-12)  # no 1/θ


def _official_network(model, spikes, leak):
    """Their ``CNNModel.forward`` (MNIST LeNet) with ``model``'s weights, on input spikes
    (T, B, 1, 28, 28); returns the output and the weights (leaves) in model order."""
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    w1, w2, w3, w4 = (m.weight.detach().clone().requires_grad_(True) for m in layers)
    batch = spikes.shape[1]
    mem1, mem1s = spikes.new_zeros(batch, 20, 28, 28), spikes.new_zeros(batch, 20, 14, 14)
    mem2, mem2s = spikes.new_zeros(batch, 50, 14, 14), spikes.new_zeros(batch, 50, 7, 7)
    memf0, memf1 = spikes.new_zeros(batch, 200), spikes.new_zeros(batch, 10)
    corrections = [_LeakCorrection(leak) for _ in range(3)]
    for x in spikes:
        mem1, out = _lif_step(mem1 + F.conv2d(x, w1, padding=2), 1.0, leak)
        out = corrections[0](out)
        mem1s, out = _pool_step(mem1s + F.avg_pool2d(out, 2), 0.75)
        mem2, out = _lif_step(mem2 + F.conv2d(out, w2, padding=2), 1.0, leak)
        out = corrections[1](out)
        mem2s, out = _pool_step(mem2s + F.avg_pool2d(out, 2), 0.75)
        memf0, out = _lif_step(memf0 + F.linear(out.flatten(1), w3), 1.0, leak)
        out = corrections[2](out)
        memf1 = memf1 + F.linear(out, w4)
        memf1 = _straight_through(memf1, leak * memf1)
    for correction in corrections:
        correction.register()
    return memf1 / 1.0 / spikes.shape[0], (w1, w2, w3, w4)


def test_lee_network_is_the_authors():
    """Their LeNet, rule and settings: our network's output and every weight gradient equal
    the reimplementation of their code. Their pooling neurons fire at V > 0.75; pooled unit
    spikes are multiples of 1/4, so that is our V ≥ 1 (``pool_threshold=1.0``)."""
    steps, leak = 12, 0.99
    torch.manual_seed(0)
    model = create_snn("lenet", steps, "poisson_lee", in_channels=1, pool_threshold=1.0,
                       pool_grad="unit", readout="leaky", padding=2, hidden=200, bias=False,
                       init="lee", neuron={"threshold": 1.0, "leak": leak, "reset": "zero",
                                           "surrogate": "lee"}).double()
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    labels = torch.tensor([3, 1, 7])
    torch.manual_seed(1)
    scores = model(x)
    F.cross_entropy(scores, labels).backward()
    torch.manual_seed(1)
    spikes = poisson_lee(x, steps)
    ref_scores, ref_weights = _official_network(model, spikes, leak)
    F.cross_entropy(ref_scores, labels).backward()
    torch.testing.assert_close(scores, ref_scores, rtol=1e-12, atol=1e-12)
    ours = [m.weight.grad for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    for grad, ref in zip(ours, ref_weights, strict=True):
        assert ref.grad.abs().sum() > 0  # every layer fires and learns
        cosine, ratio = _cosine_and_ratio(grad, ref.grad)
        assert cosine >= 0.999 and abs(ratio - 1) <= 0.01, (cosine, ratio)
        torch.testing.assert_close(grad, ref.grad, rtol=1e-9, atol=1e-12)


def test_leaky_readout_forward_and_gradient():
    y = torch.tensor([[1.0], [2.0], [4.0]], dtype=torch.float64, requires_grad=True)
    out = readout_scores(y, "leaky", leak=0.5, threshold=2.0)
    # V = l(l(l·1 + 2) + 4) = 0.125 + 0.5 + 2 = 2.625, divided by V_th·T = 6
    assert out.item() == pytest.approx(2.625 / 6, rel=1e-12)
    out.backward()
    assert y.grad.flatten().tolist() == pytest.approx([1 / 6] * 3, rel=1e-12)
    assert readout_scores(y, "mean").item() == pytest.approx(7 / 3)
    with pytest.raises(ValueError, match="unknown readout 'max'"):
        readout_scores(y, "max")


def test_poisson_lee_spikes_with_probability_abs_x_and_unit_sign():
    x = torch.tensor([[-1.5, -0.3, 0.0, 0.2, 0.7, 2.0]])
    gen = torch.Generator().manual_seed(0)
    spikes = poisson_lee(x, 100_000, gen)
    assert set(spikes.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert bool((spikes * x.sign() >= 0).all())  # each spike has the sign of its input
    rate = spikes.mean(0)
    torch.testing.assert_close(rate, torch.tensor([[-1.0, -0.3, 0.0, 0.2, 0.7, 1.0]]),
                               atol=0.008, rtol=0)
    half = poisson_lee(x, 100_000, torch.Generator().manual_seed(1), gain=0.5).mean(0)
    torch.testing.assert_close(half, torch.tensor([[-0.75, -0.15, 0.0, 0.1, 0.35, 1.0]]),
                               atol=0.008, rtol=0)
    again = poisson_lee(x, 100_000, torch.Generator().manual_seed(0))
    assert torch.equal(again, spikes)


def test_lee_initialisation_and_layout():
    torch.manual_seed(0)
    model = create("lenet", num_classes=10, in_channels=1, activation="relu", padding=2,
                   hidden=200, bias=False, init="lee")
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert [tuple(m.weight.shape) for m in layers] == [(20, 1, 5, 5), (50, 20, 5, 5),
                                                        (200, 2450), (10, 200)]
    assert all(m.bias is None for m in layers)
    for m in layers[:3]:  # enough weights for the sample std to be within 5%
        expected = math.sqrt(2 / m.weight[0].numel())
        assert m.weight.std().item() == pytest.approx(expected, rel=0.05)
        assert abs(m.weight.mean().item()) < 4 * expected / math.sqrt(m.weight.numel())
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="unknown init 'xavier'"):
        create("lenet", num_classes=10, in_channels=1, activation="relu", init="xavier")


def test_lee_rule_trains_from_lees_initialisation():
    """With their initialisation the fully connected layer fires from the start on digits and
    a few steps of the rule lower the loss (the rule passes gradient only through spikes)."""
    torch.manual_seed(0)
    model = create_snn("lenet", 8, "poisson_lee", in_channels=1, pool_threshold=1.0,
                       pool_grad="unit", readout="leaky", padding=2, hidden=200, bias=False,
                       init="lee", neuron={"leak": 0.99, "surrogate": "lee"})
    digits = load_dataset("mnist_demo", "train")
    x, labels = digits.images[:32].float() / 255, digits.labels[:32]  # pixels in [0, 1]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    fc_rates, losses = [], []
    fc = model.net.head[3]
    fc.register_forward_hook(lambda m, i, o: fc_rates.append(o.float().mean().item()))
    for _ in range(15):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert fc_rates[0] > 0.01 and fc_rates[-1] > fc_rates[0]
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0]


def test_mse_loss_is_the_squared_error_to_one_hot_targets():
    from spikeforge.train.config import OptimConfig
    from spikeforge.train.loop import training_loss

    logits = torch.tensor([[0.5, 0.25, 0.0], [0.0, 1.0, 2.0]])
    labels = torch.tensor([0, 2])
    # (0.25 + 0.0625 + 0) and (0 + 1 + 1), averaged over the two samples
    mse = training_loss(logits, labels, OptimConfig(loss="mse"))
    assert mse.item() == pytest.approx((0.3125 + 2.0) / 2)
    ce = training_loss(logits, labels, OptimConfig())
    assert ce.item() == pytest.approx(F.cross_entropy(logits, labels).item())
