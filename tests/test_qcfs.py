"""QCFS and CS-QCFS: the activations, their gradients, and their exact conversion."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import spikeforge as sf
from spikeforge.convert import ConversionError, conversion_graph
from spikeforge.models import create
from spikeforge.neurons import SpikingNeuron
from spikeforge.nn import CSQCFS, QCFS


def test_qcfs_values_and_straight_through_gradient():
    act = QCFS(levels=4, threshold=2.0)
    x = torch.tensor([-1.0, 0.2, 0.3, 1.0, 1.2, 5.0], requires_grad=True)
    y = act(x)
    assert y.tolist() == [0.0, 0.0, 0.5, 1.0, 1.0, 2.0]  # steps of λ/L = 0.5, round half up
    y.sum().backward()
    # floor passes gradient straight through; the clamp stops it outside [0, λ]
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    # ∂a/∂λ = clip(q, 0, L)/L - m·x/λ with q = floor(x·L/λ + 1/2), m = [0 ≤ q ≤ L]:
    # (0) + (0 - .1) + (.25 - .15) + (.5 - .5) + (.5 - .6) + (1) = 0.9
    assert float(act.threshold.grad) == pytest.approx(0.9)


def _qcfs_by_autograd(x: torch.Tensor, lam: torch.Tensor, levels: int) -> torch.Tensor:
    """The straightforward composition of autograd ops, floor made straight-through."""
    scaled = x / lam * levels + 0.5
    floor = scaled + (torch.floor(scaled) - scaled).detach()
    return torch.clamp(floor / levels, 0.0, 1.0) * lam


def _value_and_grads(fn, x, rho, per_channel, grad_out):
    lam = rho.view(-1, 1, 1) if per_channel else rho[0]
    y = fn(x, lam, 3)
    y.backward(grad_out)
    result = y.detach(), x.grad.clone(), rho.grad.clone()
    x.grad, rho.grad = None, None
    return result


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_qcfs_function_matches_the_autograd_composition(per_channel, compiled, monkeypatch,
                                                        no_compile_fallback):
    monkeypatch.setenv("SPIKEFORGE_COMPILE", "1" if compiled else "0")
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 3, 5, 5, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    rho = torch.rand(3 if per_channel else 1, generator=gen, dtype=torch.float64) + 0.5
    rho.requires_grad_()
    grad_out = torch.randn(4, 3, 5, 5, generator=gen, dtype=torch.float64)
    y1, gx1, gl1 = _value_and_grads(sf.nn.quantized.qcfs, x, rho, per_channel, grad_out)
    y2, gx2, gl2 = _value_and_grads(_qcfs_by_autograd, x, rho, per_channel, grad_out)
    assert torch.equal(y1, y2)  # same arithmetic, bit for bit
    assert 0 < int((gx1 == 0).sum()) < gx1.numel()  # some inputs outside the clip
    torch.testing.assert_close(gx1, gx2)
    torch.testing.assert_close(gl1, gl2)


def test_qcfs_runs_in_the_inputs_dtype_with_float32_threshold_gradients():
    # under bf16 autocast the activation gets bf16 inputs: it computes in bf16 (as ReLU
    # does), returns bf16, and gives the float32 thresholds float32 gradients
    gen = torch.Generator().manual_seed(1)
    x64 = torch.randn(8, 3, 6, 6, generator=gen, dtype=torch.float64) * 2
    x = x64.to(torch.bfloat16).requires_grad_()
    act = CSQCFS(3, levels=4, threshold=1.5)
    grad_out = torch.randn(8, 3, 6, 6, generator=gen)
    y = act(x)
    y.backward(grad_out.to(torch.bfloat16))
    assert y.dtype == x.grad.dtype == torch.bfloat16 and act.rho.grad.dtype == torch.float32
    lam16 = act.lam().detach().to(torch.bfloat16).view(-1, 1, 1)
    assert torch.equal(y.detach(), _qcfs_by_autograd(x.detach(), lam16, 4))
    # the gradients in float64 from the same (bf16-valued) x and λ, to bf16 rounding
    x_ref = x.detach().double().requires_grad_()
    lam_ref = lam16.double().requires_grad_()
    _qcfs_by_autograd(x_ref, lam_ref, 4).backward(grad_out.to(torch.bfloat16).double())
    assert torch.equal(x.grad.double(), x_ref.grad)  # the clip's mask: 0 or the gradient
    dsoftplus = torch.sigmoid(act.rho.detach().double())
    grad_rho = lam_ref.grad.flatten() * dsoftplus
    # each summand is rounded to bf16 (relative 2^-9); the sum may cancel, so the bound is
    # on the sum of the summands' magnitudes
    u = x_ref.detach() / lam16.double()
    q = torch.floor(u * 4 + 0.5)
    summands = (q.clamp(0, 4) / 4 - u * ((q >= 0) & (q <= 4))) * grad_out.double()
    bound = summands.abs().sum((0, 2, 3)) * dsoftplus * 2.0 ** -6
    assert ((act.rho.grad.double() - grad_rho).abs() <= bound).all()
    assert (grad_rho.abs() > 4 * bound).any()  # a bound that says something


def test_a_failing_compile_warns_and_runs_uncompiled(monkeypatch):
    def broken(fn):
        def call(*args):
            raise RuntimeError("no C++ compiler")
        return call

    monkeypatch.setenv("SPIKEFORGE_COMPILE", "1")
    monkeypatch.setattr(torch, "compile", broken)
    square = sf.runtime.compilable(lambda t: t * t)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler.*uncompiled"):
        assert square(torch.tensor([3.0])).item() == 9.0
    assert square(torch.tensor([4.0])).item() == 16.0  # no second warning: stays uncompiled


def test_csqcfs_thresholds_stay_positive_under_training():
    act = CSQCFS(3, levels=2, threshold=1.0)
    torch.testing.assert_close(act.lam(), torch.ones(3))
    opt = torch.optim.SGD(act.parameters(), lr=100.0)
    for _ in range(50):  # push λ down as hard as possible
        opt.zero_grad()
        act.lam().sum().backward()
        opt.step()
    assert bool((act.lam() > 0).all())


def test_qcfs_warns_and_conversion_refuses_a_non_positive_threshold():
    model = nn.Sequential(nn.Linear(4, 8), QCFS(levels=2), nn.Linear(8, 2))
    with torch.no_grad():
        model[1].threshold.fill_(-0.5)
    model.train()
    with pytest.warns(UserWarning, match="threshold became -0.5"):
        model(torch.randn(2, 4))
    with pytest.raises(ConversionError, match=r"module '1' \(QCFS\).*<= 0"):
        sf.convert(model.eval(), None, "qcfs")


def test_learned_thresholds_need_qcfs_activations():
    relu_net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ConversionError, match=r"'1' \(ReLU\).*has no learned threshold"):
        sf.convert(relu_net, None, "qcfs")
    with pytest.raises(ConversionError, match="pass calibration data"):
        sf.convert(relu_net, None, "threshold_balancing")
    qcfs_net = nn.Sequential(nn.Linear(4, 8), QCFS(levels=2), nn.Linear(8, 2))
    with pytest.raises(ConversionError, match="is not CSQCFS"):
        sf.convert(qcfs_net, None, "csqcfs")


def _randomised(name: str, activation: str, levels: int) -> nn.Module:
    """A small zoo model with random BN statistics and thresholds in [0.5, 2], in float64."""
    torch.manual_seed(0)
    model = create(name, num_classes=10, in_channels=3, activation=activation,
                   activation_options={"levels": levels}, width=0.25)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
            if isinstance(m, QCFS):
                m.threshold.uniform_(0.5, 2.0)
            if isinstance(m, CSQCFS):
                m.rho.uniform_(0.0, 2.0)
    return model.double().eval()


def _activation_outputs(module: nn.Module, kinds: tuple[type, ...], x: torch.Tensor, *args
                        ) -> list[torch.Tensor]:
    outputs: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _a, out: outputs.append(out.clone()))
               for m in module.modules() if isinstance(m, kinds)]
    with torch.no_grad():
        result = module(x, *args)
    for h in handles:
        h.remove()
    return [*outputs, result]


@pytest.mark.parametrize("name", ["vgg7", "resnet11"])
@pytest.mark.parametrize("activation", ["qcfs", "csqcfs"])
def test_t1_l1_snn_is_the_ann_layer_by_layer(name, activation):
    """T = L = 1 with v(0) = θ/2: every neuron emits exactly the QCFS output (float64: bit for
    bit against the BN-folded ANN), and so does the readout."""
    model = _randomised(name, activation, levels=1)
    x = torch.randn(8, 3, 32, 32, dtype=torch.float64)
    snn = sf.convert(model, None, activation, timesteps=1)
    folded = conversion_graph(model)
    ann_layers = _activation_outputs(folded, (QCFS, CSQCFS), x)
    snn_layers = _activation_outputs(snn.graph, (SpikingNeuron,), x, 1)
    assert len(ann_layers) == len(snn_layers) > 5
    fired = 0.0
    for a, s in zip(ann_layers, snn_layers, strict=True):
        assert torch.equal(a, s)
        fired += float((s != 0).double().mean())
    assert fired > 0.5  # the comparison is not between all-zero tensors
    torch.testing.assert_close(snn(x)[0], model(x))  # the unfolded ANN, to rounding
    m32 = _randomised(name, activation, levels=1).float()
    torch.testing.assert_close(sf.convert(m32, None, activation, timesteps=1)(x.float())[0],
                               m32(x.float()), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("activation", ["qcfs", "csqcfs"])
@pytest.mark.parametrize("levels", [2, 4])
def test_t_equals_l_with_constant_currents_layer_by_layer(levels, activation):
    """Each neuron, fed its ANN input current unchanged for T = L steps, emits on average
    exactly the L-level QCFS activation: λ/T · Σ s(t) = QCFS_L(z) (per channel for CS-QCFS)."""
    model = _randomised("vgg7", activation, levels)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    folded = conversion_graph(model)
    currents: list[torch.Tensor] = []
    handles = [m.register_forward_pre_hook(lambda _m, args: currents.append(args[0].clone()))
               for m in folded.modules() if isinstance(m, (QCFS, CSQCFS))]
    with torch.no_grad():
        folded(x)
    for h in handles:
        h.remove()
    snn = sf.convert(model, None, activation)
    qcfs_layers = [m for m in folded.modules() if isinstance(m, (QCFS, CSQCFS))]
    neurons = list(snn.neurons().values())
    assert len(currents) == len(neurons) == len(qcfs_layers)
    for z, neuron, act in zip(currents, neurons, qcfs_layers, strict=True):
        steps = levels
        constant = z.unsqueeze(0).expand(steps, *z.shape)
        rate = neuron(constant).sum(0) / steps
        with torch.no_grad():
            torch.testing.assert_close(rate, act(z), atol=1e-12, rtol=0)


def test_augmapping_on_qcfs_equals_the_l_level_ann_at_t1():
    """AugMapping with learned thresholds: θ = λ/L, v(0) = θ/2, cap L — at T = 1 the SNN is
    the L-level QCFS ANN (docs/design.md §1), for L = 4."""
    model = _randomised("vgg7", "qcfs", levels=4)
    x = torch.randn(8, 3, 32, 32, dtype=torch.float64)
    snn = sf.convert(model, None, "augmapping", thresholds="learned", timesteps=1)
    assert {n.cap for n in snn.neurons().values()} == {4}
    with torch.no_grad():
        expected = conversion_graph(model)(x)
    torch.testing.assert_close(snn(x)[0], expected, atol=1e-10, rtol=1e-10)


def test_zoo_accepts_qcfs_options():
    model = create("cnn_small", num_classes=10, in_channels=1, activation="csqcfs",
                   activation_options={"levels": 2, "threshold": 4.0})
    acts = [m for m in model.modules() if isinstance(m, CSQCFS)]
    assert acts and all(a.levels == 2 for a in acts)
    torch.testing.assert_close(acts[0].lam(), torch.full((acts[0].channels,), 4.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.randn(2, 1, 28, 28)).sum().backward()


def test_threshold_weight_decay_is_its_own_parameter_group():
    from spikeforge.train.config import OptimConfig
    from spikeforge.train.loop import build_optimizer

    model = create("cnn_small", num_classes=10, in_channels=1, activation="qcfs")
    opt = build_optimizer(model, OptimConfig(weight_decay=5e-4, threshold_weight_decay=0.0))
    weights, thresholds = opt.param_groups
    assert (weights["weight_decay"], thresholds["weight_decay"]) == (5e-4, 0.0)
    assert len(thresholds["params"]) == sum(isinstance(m, QCFS) for m in model.modules()) == 4
    assert len(weights["params"]) + 4 == len(list(model.parameters()))
