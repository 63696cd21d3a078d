"""Integer kernels of the int8 mode (spikeforge.int8) against the float32 simulation of the
same int8 model: which layers run on integers and why, the spike codes, the exact range of
8-bit arithmetic, and whole networks spike for spike."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spikeforge as sf
from spikeforge import int8
from spikeforge.int8 import MAX_CODE, Grid, Int8Conv2d, Int8Linear, int8_weight, spike_codes
from spikeforge.simulate import quantize_weights_

needs_kernels = pytest.mark.skipif(int8.int8_kernels_available() is not None,
                                   reason=str(int8.int8_kernels_available()))


def small_net() -> nn.Sequential:
    """Conv, average pool, max pool, flatten and linear layers behind spiking neurons."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AvgPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


def images(n: int = 6) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(n, 3, 16, 16)


def float_model(ann: nn.Module, x: torch.Tensor, method: str, **options) -> sf.SpikingNetwork:
    """Today's int8 simulation: the float32 network with its weights rounded to 8 bits."""
    snn = sf.convert(ann, [x], method, progress=False, **options)
    quantize_weights_(snn.graph)
    return snn


def record(snn: sf.SpikingNetwork) -> dict[str, torch.Tensor]:
    """Every neuron's output by name, as θ·s (uint8 spike codes s times θ)."""
    outputs: dict[str, torch.Tensor] = {}

    def keep(neuron: nn.Module, args: tuple, out: torch.Tensor, name: str) -> None:
        value = out.float() * neuron.threshold if out.dtype == torch.uint8 else out.clone()
        outputs[name] = value
    for name, neuron in snn.neurons().items():
        neuron.register_forward_hook(lambda m, a, out, name=name: keep(m, a, out, name))
    return outputs


METHODS = [("threshold_balancing", {}), ("termapping", {}), ("termapping", {"symmetric": True}),
           ("augmapping", {"cap": 4}), ("augmapping", {}), ("augmapping", {"cap": 100})]


@needs_kernels
@pytest.mark.parametrize(("method", "options"), METHODS,
                         ids=[m + "".join(f"-{k}{v}" for k, v in o.items()) for m, o in METHODS])
def test_int8_network_spikes_like_the_float32_int8_model(method, options):
    ann, x = small_net(), images()
    kw = {"timesteps": 6, "percentile": 100.0, **options}
    reference = float_model(ann, x, method, **kw)
    fast = sf.convert(ann, [x], method, progress=False, precision="int8", **kw)
    assert fast.info["int8_kernels"] == {"0": "analog input", "2": "int8", "5": "int8",
                                         "9": "int8", "11": "int8"}
    layers = fast.layers((Int8Conv2d, Int8Linear))
    assert list(layers) == ["2", "5", "9", "11"]
    expected, got = record(reference), record(fast)
    a, b = reference(x), fast(x)
    assert expected and expected.keys() == got.keys()
    for name in expected:  # every spike of every layer at every step
        assert torch.equal(expected[name], got[name]), name
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6 * float(a.abs().max()))
    assert all(layer.float_calls == 0 for layer in layers.values())
    for name, layer in layers.items():  # the int8 layers keep the model's (rounded) weights
        assert torch.equal(layer.weight, reference.graph.get_submodule(name).weight)


@needs_kernels
@pytest.mark.parametrize("codes", [(0, 1), (-1, 1), (0, MAX_CODE), (-64, 64), (-128, 100)])
def test_int8_conv_equals_the_float_conv_of_the_rounded_weights(codes):
    """Each layer alone, on its whole code range (the extremes of 8-bit arithmetic: codes up
    to 128 against weights of ±127, and the two-kernel split of wide signed spikes)."""
    torch.manual_seed(2)
    conv = nn.Conv2d(16, 12, 3, padding=1, stride=2)
    quantize_weights_(conv)
    with torch.no_grad():
        conv.weight[0] = conv.weight[0].abs().amax()  # a channel of +127 levels only
        conv.weight[1] = -conv.weight[1].abs().amax()
    low, high = codes
    unit = 0.37
    n = torch.randint(low, high + 1, (5, 16, 9, 9)).float()
    n[0] = high  # the widest accumulation
    x = (n * unit).contiguous(memory_format=torch.channels_last)
    layer = Int8Conv2d.from_conv(conv, Grid(unit, low, high))
    with torch.inference_mode():
        out = layer(x)
    q, scale = int8_weight(conv.weight)
    exact = (F.conv2d(n.double(), q.double(), stride=2, padding=1)
             * (unit * scale.double()).view(1, -1, 1, 1)
             + conv.bias.detach().double().view(1, -1, 1, 1))
    assert layer.float_calls == 0
    assert torch.allclose(out.double(), exact, rtol=1e-6, atol=1e-6 * float(exact.abs().max()))
    with torch.inference_mode():
        dynamic = Int8Conv2d.from_conv(conv, Grid(unit, None, None))(x)  # measured range
    assert torch.allclose(dynamic, out, rtol=1e-6, atol=1e-6 * float(exact.abs().max()))


@needs_kernels
def test_int8_linear_and_the_float_path_beyond_the_exact_range():
    torch.manual_seed(3)
    linear = nn.Linear(40, 7)
    quantize_weights_(linear)
    layer = Int8Linear.from_linear(linear, Grid(0.5, None, None))
    n = torch.randint(-3, 9, (11, 40)).float()
    with torch.inference_mode():
        out = layer(n * 0.5)
        assert layer.float_calls == 0
        wide = torch.full((2, 40), 0.5 * (MAX_CODE + 1))  # too wide for 8-bit codes
        assert torch.equal(layer(wide), F.linear(wide, linear.weight, linear.bias))
        assert layer.float_calls == 1
    assert torch.allclose(out, F.linear(n * 0.5, linear.weight, linear.bias), rtol=1e-5,
                          atol=1e-5)
    out = layer(n * 0.5)  # autograd on: the float path
    assert layer.float_calls == 2 and torch.allclose(out, F.linear(n * 0.5, linear.weight,
                                                                   linear.bias), atol=1e-5)


def test_spike_codes_round_multiples_of_an_inexact_unit():
    unit = 0.1  # not a binary fraction: x / unit is an integer only up to rounding
    n = torch.arange(-7, 9, dtype=torch.float32)
    codes = spike_codes(n * unit, unit, 7)
    assert codes.dtype == torch.uint8
    assert torch.equal(codes.long(), n.long() + 7)


def test_int8_weight_recovers_the_levels_of_a_rounded_weight():
    torch.manual_seed(4)
    conv = nn.Conv2d(4, 5, 3)
    with torch.no_grad():
        conv.weight[2] = 0.0
    quantize_weights_(conv)
    q, scale = int8_weight(conv.weight)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127 and scale[2] == 1.0
    assert torch.allclose(q.float() * scale.view(-1, 1, 1, 1), conv.weight, rtol=1e-6, atol=0)


def test_layers_that_stay_float_say_why(monkeypatch):
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
            self.c, self.pool = nn.Conv2d(4, 4, 1), nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            y = F.relu(self.a(x))
            z = F.relu(self.b(y))
            return self.fc(self.pool(F.relu(self.c(y + z))).flatten(1))

    torch.manual_seed(5)
    net, x = Residual().eval(), images(2)
    snn = sf.convert(net, [x], timesteps=3, progress=False, precision="int8")
    kernels = snn.info["int8_kernels"]
    assert kernels["a"] == "analog input"
    assert kernels["c"].startswith("input from call_function add")
    assert kernels["fc"] == "input from AdaptiveAvgPool2d"
    if int8.int8_kernels_available() is None:
        assert kernels["b"] == "int8"
    channelwise = sf.convert(small_net(), [images()], timesteps=3, progress=False,
                             channelwise=True, precision="int8")
    assert set(channelwise.info["int8_kernels"].values()) == {
        "analog input", "per-channel thresholds upstream"}
    monkeypatch.setattr(int8, "int8_kernels_available", lambda: "no kernels in this test")
    ann, x = small_net(), images()
    unavailable = sf.convert(ann, [x], timesteps=4, progress=False, precision="int8")
    assert set(unavailable.info["int8_kernels"].values()) == {"analog input",
                                                              "no kernels in this test"}
    assert not unavailable.layers((Int8Conv2d, Int8Linear))
    reference = float_model(ann, x, "threshold_balancing", timesteps=4)
    assert torch.equal(unavailable(x), reference(x))
    plain = sf.SpikingNetwork(copy.deepcopy(reference.graph), 4, precision="int8",
                              integer_kernels=False)
    assert "int8_kernels" not in plain.info and not plain.layers((Int8Conv2d, Int8Linear))


@needs_kernels
def test_int8_network_copies_pickles_and_counts_sops_like_the_model():
    ann, x = small_net(), images()
    fast = sf.convert(ann, [x], "termapping", timesteps=5, progress=False, precision="int8")
    out = fast(x)
    assert torch.allclose(copy.deepcopy(fast)(x), out, rtol=1e-6, atol=1e-7)
    layer = next(iter(fast.layers(Int8Conv2d).values()))
    inputs = []
    handle = layer.register_forward_hook(lambda m, a, o: inputs.append(a[0]))
    fast(x)
    handle.remove()
    saved = _reload(layer)  # the packed weight is rebuilt after a copy
    with torch.inference_mode():
        assert torch.equal(saved(inputs[0]), layer(inputs[0])) and saved.float_calls == 0
    a = sf.evaluate(fast, [(x, torch.zeros(len(x), dtype=torch.long))], 5, progress=False)
    reference = float_model(ann, x, "termapping", timesteps=5)
    b = sf.evaluate(reference, [(x, torch.zeros(len(x), dtype=torch.long))], 5,
                    progress=False)
    assert a.sops_per_sample == b.sops_per_sample and a.accuracy == b.accuracy


def _reload(module: nn.Module) -> nn.Module:
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@needs_kernels
def test_a_network_converted_in_inference_mode_runs_its_kernels():
    """Weights made under ``torch.inference_mode()`` have no version counter."""
    ann, x = small_net(), images()
    with torch.inference_mode():
        fast = sf.convert(ann, [x], timesteps=3, progress=False, precision="int8")
        out = fast(x)
    reference = float_model(ann, x, "threshold_balancing", timesteps=3)
    assert torch.allclose(out, reference(x), rtol=1e-5, atol=1e-6)
    assert all(m.float_calls == 0 for m in fast.layers((Int8Conv2d, Int8Linear)).values())


@needs_kernels
@pytest.mark.parametrize("native_scan", [True, False])
def test_neurons_that_feed_only_integer_kernels_write_uint8_codes(native_scan, monkeypatch):
    """Every binary neuron of the small net feeds integer kernels only (directly, through
    the average pool, the spiking max pool and the flatten): they write uint8 codes, the
    average pool sums them, and outputs, spikes and SOPs are those of the same network
    reading θ·s — with the fused scan and with the eager one."""
    from spikeforge.neurons.native import NATIVE_ENV

    monkeypatch.setenv(NATIVE_ENV, "1" if native_scan else "0")
    ann, x = small_net(), images()
    fast = sf.convert(ann, [x], timesteps=6, percentile=100.0, progress=False,
                      precision="int8")
    assert fast.info["spike_codes"] == list(fast.neurons()) and len(fast.neurons()) == 4
    assert isinstance(fast.graph.get_submodule("4"), int8.Int8AvgPool2d)
    values = copy.deepcopy(fast)
    for neuron in values.neurons().values():
        neuron.codes = False
    coded, plain = record(fast), record(values)
    assert torch.equal(fast(x), values(x))
    assert coded.keys() == plain.keys()
    for name in plain:
        assert torch.equal(coded[name], plain[name]), name
    layers = fast.layers((Int8Conv2d, Int8Linear)).values()
    assert all(layer.float_calls == 0 for layer in layers)
    labels = [(x, torch.zeros(len(x), dtype=torch.long))]
    a, b = (sf.evaluate(n, labels, 6, progress=False) for n in (fast, values))
    assert a.sops_per_sample == b.sops_per_sample and a.firing_rates == b.firing_rates
    with torch.enable_grad():  # no integer kernel under autograd: codes read as n·unit
        first = fast.graph.get_submodule("2")
        codes = torch.randint(0, 2, (2, 8, 16, 16), dtype=torch.uint8)
        expected = nn.Conv2d.forward(first, codes.float() * first.grid.unit)
        assert torch.allclose(first(codes), expected) and first.float_calls == 1


def test_code_pools_sum_the_codes_of_the_average():
    pool = int8.Int8AvgPool2d.from_pool(nn.AvgPool2d(2))
    torch.manual_seed(0)
    codes = torch.randint(0, 2, (3, 4, 7, 9), dtype=torch.uint8).contiguous(
        memory_format=torch.channels_last)
    summed = pool(codes)
    assert summed.dtype == torch.uint8 and summed.shape == (3, 4, 3, 4)
    assert summed.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(summed.float(), F.avg_pool2d(codes.float(), 2) * 4)
    x = torch.rand(2, 3, 6, 6)
    assert torch.equal(pool(x), F.avg_pool2d(x, 2))  # float inputs are averaged
    assert not int8._sums_codes(nn.AvgPool2d(3, stride=1))  # overlapping windows
    assert not int8._sums_codes(nn.AvgPool2d(2, padding=1))


@needs_kernels
def test_neurons_with_other_readers_keep_their_values():
    """Ternary spikes, and binary spikes read by a layer without an integer kernel (after an
    adaptive pool), stay θ·s."""
    torch.manual_seed(0)
    ann = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                        nn.Linear(32, 10)).eval()
    x = images()
    snn = sf.convert(ann, [x], timesteps=4, progress=False, precision="int8")
    assert snn.info["spike_codes"] == [] and snn.info["int8_kernels"]["4"].startswith("input")
    ternary = sf.convert(small_net(), [x], "termapping", timesteps=4, progress=False,
                         precision="int8")
    assert ternary.info["spike_codes"] == []
    assert not any(isinstance(m, int8.Int8AvgPool2d) for m in ternary.graph.modules())
