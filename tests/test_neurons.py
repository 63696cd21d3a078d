"""Neuron core: properties of the step functions (hypothesis) and hand-checked sequences."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spikeforge.neurons import NeuronParams, SpikingNeuron, neuron_scan

# dyadic rationals are exact in float64, so floor() sees the true value
dyadic = st.integers(-64, 64).map(lambda k: k / 16)
thresholds = st.integers(1, 32).map(lambda k: k / 8)
currents = st.lists(dyadic, min_size=1, max_size=40)
rules = st.sampled_from(["binary", "ternary", "augmented"])
initials = st.sampled_from(["zero", "half"])


def scan(z, theta, **kw):
    initial = kw.pop("initial", "zero")
    params = NeuronParams(theta, **kw)
    seq = torch.tensor(z, dtype=torch.float64).view(-1, 1)
    return neuron_scan(seq, params, initial)


@settings(max_examples=150, deadline=None)
@given(currents, thresholds, rules, initials, st.booleans())
def test_soft_reset_conserves_charge(z, theta, rule, initial, symmetric):
    """θ Σ s(t) + v(T) = v(0) + Σ z(t) for every rule under reset by subtraction."""
    s, state = scan(z, theta, rule=rule, symmetric=symmetric, initial=initial)
    v0 = theta / 2 if initial == "half" else 0.0
    assert theta * s.sum().item() + state.v.item() == pytest.approx(v0 + sum(z), abs=1e-9)


@settings(max_examples=150, deadline=None)
@given(currents, thresholds, st.sampled_from(["ternary", "augmented"]), initials)
def test_gated_negative_spikes_never_make_the_net_output_negative(z, theta, rule, initial):
    s, _ = scan(z, theta, rule=rule, initial=initial)
    assert (torch.cumsum(s.flatten(), 0) >= 0).all()


def test_symmetric_ternary_may_go_negative():
    s, _ = scan([-1.0, -1.0], 1.0, rule="ternary", symmetric=True)
    assert s.flatten().tolist() == [-1.0, -1.0]
    gated, _ = scan([-1.0, -1.0], 1.0, rule="ternary")
    assert gated.flatten().tolist() == [0.0, 0.0]


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 64).map(lambda k: k / 16), thresholds, st.integers(1, 40), initials)
def test_augmented_constant_current_emits_floor_units(z, theta, steps, initial):
    """Fed a constant z ≥ 0 for T steps, an augmented neuron emits ⌊(T z + v0)/θ⌋ units."""
    s, _ = scan([z] * steps, theta, rule="augmented", initial=initial)
    v0 = theta / 2 if initial == "half" else 0.0
    assert s.sum().item() == math.floor((steps * z + v0) / theta)
    assert (s >= 0).all()


def test_augmented_cap_and_coefficients():
    s, state = scan([3.5, 0.0, 0.0], 1.0, rule="augmented", cap=2)
    assert s.flatten().tolist() == [2.0, 1.0, 0.0]
    assert state.v.item() == pytest.approx(0.5)
    s, _ = scan([3.5, -2.5], 1.0, rule="augmented")   # gated: retracts at most what was sent
    assert s.flatten().tolist() == [3.0, -2.0]
    s, _ = scan([1.0, -5.0], 1.0, rule="augmented")
    assert s.flatten().tolist() == [1.0, -1.0]


@settings(max_examples=100, deadline=None)
@given(st.integers(-32, 80).map(lambda k: k / 32), thresholds, initials)
def test_binary_if_rate_converges_to_clipped_input(z, theta, initial):
    """|rate − clip(z, 0, θ)/θ| ≤ 1/T (T = 256) for the soft-reset IF neuron."""
    steps = 256
    s, _ = scan([z] * steps, theta, rule="binary", initial=initial)
    expected = min(max(z, 0.0), theta) / theta
    assert abs(s.mean().item() - expected) <= 1.0 / steps + 1e-12


def test_reset_to_zero_and_leak_by_hand():
    s, state = scan([0.6, 0.6, 0.6], 1.0, reset="zero", leak=0.5)
    # m: 0.6, 0.9, 1.05 -> spike at t=3, v reset to 0
    assert s.flatten().tolist() == [0.0, 0.0, 1.0]
    assert state.v.item() == 0.0


def test_module_per_channel_threshold_and_determinism():
    theta = torch.tensor([1.0, 2.0, 4.0])
    neuron = SpikingNeuron(theta, initial="half")
    x = torch.ones(8, 2, 3, 4, 4)
    out = neuron(x)
    counts = (out / theta.view(1, 1, 3, 1, 1)).sum(0)
    # constant current 1 for 8 steps from v0 = θ/2: floor((8 + θ/2)/θ) spikes
    assert counts[0, :, 0, 0].tolist() == [8.0, 4.0, 2.0]
    assert torch.equal(out, neuron(x))
    assert "per-channel[3]" in repr(neuron)
    with pytest.raises(ValueError, match="3 values but the input has 5 channels"):
        neuron(torch.ones(2, 1, 5, 2, 2))


@pytest.mark.parametrize("kwargs, message", [
    ({"threshold": 0.0}, "threshold must be finite and > 0"),
    ({"threshold": torch.tensor([1.0, -1.0])}, "threshold must be finite and > 0"),
    ({"rule": "quaternary"}, "unknown spike rule 'quaternary'"),
    ({"reset": "halve"}, "unknown reset 'halve'"),
    ({"rule": "augmented", "cap": 0}, "cap must be >= 1"),
    ({"emit": "voltage"}, "unknown emit 'voltage'"),
    ({"leak": 1.5}, "leak must be in"),
    ({"initial": "full"}, "unknown initial potential 'full'"),
    ({"rule": "ternary", "surrogate": "atan"}, "surrogate gradients train binary spikes"),
    ({"surrogate": "tanh"}, "unknown surrogate 'tanh'"),
    ({"surrogate": "atan", "width": -1.0}, "width must be finite and > 0"),
    ({"grad_scale": "half"}, "unknown grad_scale 'half'"),
])
def test_bad_neuron_parameters_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpikingNeuron(**kwargs)


@pytest.mark.parametrize("rule, symmetric", [("binary", False), ("ternary", False),
                                              ("ternary", True)])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("leak", [1.0, 0.9])
@pytest.mark.parametrize("initial", ["zero", "half"])
def test_in_place_scan_equals_the_step_function_loop(rule, symmetric, reset, leak, initial):
    """The inference fast paths (in-place updates) are bit-identical to neuron_step."""
    from spikeforge.neurons.functional import init_state, neuron_step

    gen = torch.Generator().manual_seed(0)
    z = torch.randn(12, 3, 4, 5, 5, generator=gen) * 0.7 + 0.3
    theta = torch.tensor([0.5, 1.0, 1.5, 2.0]).view(4, 1, 1)
    params = NeuronParams(theta, rule, reset, leak, symmetric)
    fast, fast_state = neuron_scan(z, params, initial)
    state = init_state(z[0], params, initial)
    steps = []
    for t in range(z.shape[0]):
        s, state = neuron_step(z[t], state, params)
        steps.append(s)
    assert torch.equal(fast, torch.stack(steps)) and torch.equal(fast_state.v, state.v)
    assert torch.equal(fast_state.count, state.count)
    assert fast.clamp(min=0).sum() > 20
    if rule == "ternary":
        assert (fast < 0).sum() > 5  # the negative side is exercised


@pytest.mark.parametrize("reset", ["zero", "subtract"])
@pytest.mark.parametrize("initial", ["zero", "half"])
@pytest.mark.parametrize("emit", ["count", "value"])
def test_one_module_gives_the_same_spikes_in_both_scans(reset, initial, emit):
    """A trainable neuron runs the BPTT scan when a gradient is needed and the inference scan
    otherwise: the same numbers, and the same as the neuron without a surrogate."""
    from spikeforge.neurons import LIF

    gen = torch.Generator().manual_seed(0)
    z = torch.randn(6 * 2, 3, 4, 4, generator=gen) * 0.8 + 0.5  # time-folded, T = 6
    theta = torch.tensor([0.5, 1.0, 1.5])
    trained = LIF(theta, leak=0.9, reset=reset, initial=initial, emit=emit)
    plain = SpikingNeuron(theta, reset=reset, leak=0.9, initial=initial, emit=emit)
    x = z.clone().requires_grad_(True)
    bptt = trained(x, timesteps=6)
    bptt.sum().backward()
    assert x.grad.abs().sum() > 0  # the surrogate gradient reaches the input
    with torch.no_grad():
        inference = trained(z, timesteps=6)
    assert torch.equal(bptt.detach(), inference) and torch.equal(inference, plain(z, 6))
    if emit == "count":
        assert getattr(bptt, "_spikeforge_spikes", False)  # kept as bytes for backward
        assert set(inference.unique().tolist()) == {0.0, 1.0}


def test_lif_is_the_one_module_set_for_training():
    from spikeforge.neurons import LIF

    lif = LIF(leak=0.99, surrogate="sigmoid")
    assert isinstance(lif, SpikingNeuron) and lif.levels == 1
    assert (lif.rule, lif.reset, lif.emit, lif.width) == ("binary", "zero", "count", 0.25)
    assert SpikingNeuron().surrogate is None  # a converter's neuron: inference only
    assert "surrogate=sigmoid(0.25)" in repr(lif)


def test_neuron_settings_survive_a_checkpoint_and_old_formats_load():
    from spikeforge.neurons import LIF

    converted = SpikingNeuron(torch.tensor([0.5, 2.0]), reset="subtract", initial="half")
    lif = LIF(surrogate="triangle")
    lif.load_state_dict(converted.state_dict())  # what a hybrid SNN's neurons are
    assert torch.equal(lif.threshold, converted.threshold)
    assert (lif.reset, lif.initial, lif.emit, lif.leak) == ("subtract", "half", "value", 1.0)
    assert lif.surrogate == "triangle"  # training settings are the module's own
    old = {"threshold": torch.tensor(0.75),  # saved before the rule was kept
           "_extra_state": {"leak": 0.9, "reset": "zero", "initial": "zero", "emit": "count"}}
    lif.load_state_dict(old)
    assert (lif.threshold.ndim, lif.leak, lif.reset, lif.emit) == (0, 0.9, "zero", "count")
    plain = SpikingNeuron(2.0, initial="half")
    plain.load_state_dict({"threshold": torch.tensor(3.0)})  # a converted net saved without
    assert plain.threshold.item() == 3.0 and plain.initial == "half"
    with pytest.raises(ValueError, match="unknown reset 'halve'"):
        lif.load_state_dict({"threshold": torch.tensor(1.0),
                             "_extra_state": {**old["_extra_state"], "reset": "halve"}})


def test_spike_codes_are_the_spikes_of_binary_neurons_without_gradient():
    from spikeforge.neurons import LIF

    z = torch.tensor([[0.6], [0.6], [0.1], [1.5]])
    neuron = SpikingNeuron(threshold=1.0, emit="value")
    neuron.codes = True  # not saved: a setting of the int8 simulation
    assert neuron(z).dtype == torch.uint8 and neuron(z).flatten().tolist() == [0, 1, 0, 1]
    assert "codes" not in str(neuron.state_dict()) and "codes=uint8" in repr(neuron)
    params = NeuronParams(torch.tensor(1.0), "ternary")
    with pytest.raises(ValueError, match="binary neurons without gradient"):
        neuron_scan(z, params, codes=True)
    with pytest.raises(ValueError, match="binary neurons without gradient"):
        neuron_scan(z, NeuronParams(torch.tensor(1.0)), values=True, codes=True)
    trained = LIF(surrogate="atan", emit="value")
    trained.codes = True  # with a gradient: θ·s as always
    current = z.clone().requires_grad_(True)
    s = trained(current)
    assert s.dtype == torch.float32 and s.requires_grad
    assert s.detach().flatten().tolist() == [0.0, 1.0, 0.0, 1.0]
