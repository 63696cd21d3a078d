"""SpikeConv2d: the forward and the weight gradient of a spike-fed convolution from its
nonzero inputs, checked against ATen's dense kernels, and the cases where it must stay
nn.Conv2d."""

from __future__ import annotations

import pytest
import torch
from conftest import needs_compiler
from torch import nn

from spikeforge.data import BatchLoader, load_dataset
from spikeforge.models.spiking import create_snn
from spikeforge.neurons import SpikingNeuron, native
from spikeforge.neurons.modules import compact_saved_spikes, mark_sparse, mark_spikes
from spikeforge.nn.pooling import TiledAvgPool2d
from spikeforge.nn.spike_conv import DENSE_ABOVE, SpikeConv2d, dense_above


def _gradients(conv: nn.Module, x: torch.Tensor, g: torch.Tensor, spikes: bool):
    x = x.clone().requires_grad_(True)
    with compact_saved_spikes():  # spikes saved as bits, as in a SpikingModel
        y = conv(mark_spikes(x) if spikes else x)
    return y, torch.autograd.grad(y, [x, conv.weight, conv.bias], g)


def _values_gradients(conv: SpikeConv2d, x: torch.Tensor, g: torch.Tensor):
    """The sparse weight gradient of inputs that are not 0/1 (θ·s: the kernel takes values)."""
    x = x.clone().requires_grad_(True)
    y = conv(mark_sparse(x))
    return y, torch.autograd.grad(y, [x, conv.weight, conv.bias], g)


#: (in channels, out channels, height, width, kernel, padding) of the layers checked
SHAPES = [
    (64, 64, 12, 12, 3, 1),  # one tile of 64 outputs
    (5, 200, 9, 7, 3, 0),  # 128 + 64 + a partial tile of 8; no padding
    (3, 37, 7, 8, 5, (2, 1)),  # a 5×5 kernel, padding per side, a tile of 16 + 5
    (70, 16, 6, 6, 1, 0),  # 1×1: more than 64 input channels in one pixel
]


@needs_compiler
@pytest.mark.parametrize(("c", "o", "h", "w", "k", "padding"), SHAPES)
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("values", ["binary", "theta"])
def test_weight_gradient_from_the_spikes_equals_atens(c, o, h, w, k, padding, layout, values):
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(c, o, k, padding=padding).to(memory_format=layout)
    spike_conv = SpikeConv2d.from_conv(conv)
    x = (torch.rand(5, c, h, w, generator=gen) < 0.15).float()  # 5: runs of 2 and 3 images
    if values == "theta":  # θ·s of a neuron with one threshold per channel
        x = x * torch.rand(1, c, 1, 1, generator=gen).add_(0.5)
    x = x.contiguous(memory_format=layout)
    y_ref = conv(x)
    g = torch.randn(y_ref.shape, generator=gen)
    _, (gx_ref, gw_ref, gb_ref) = _gradients(conv, x, g, spikes=False)
    y, (gx, gw, gb) = (_gradients(spike_conv, x, g, spikes=True) if values == "binary"
                       else _values_gradients(spike_conv, x, g))
    assert y.grad_fn.name() == "_SpikeInputConvBackward"
    assert torch.equal(y, y_ref) and torch.equal(gx, gx_ref)  # ATen's under autograd
    torch.testing.assert_close(gw, gw_ref, rtol=1e-5, atol=1e-5 * gw_ref.abs().max().item())
    torch.testing.assert_close(gb, gb_ref, rtol=1e-5, atol=1e-5 * gb_ref.abs().max().item())
    assert gw.stride() == conv.weight.stride()  # in the weight's memory format
    assert gw_ref.abs().max() > 1  # not a vanishing gradient


def test_from_conv_shares_the_parameters_and_draws_nothing():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    state = torch.get_rng_state()
    spike_conv = SpikeConv2d.from_conv(conv.train(False))
    assert torch.equal(state, torch.get_rng_state())
    assert isinstance(spike_conv, SpikeConv2d) and not spike_conv.training
    assert spike_conv.weight is conv.weight and spike_conv.bias is conv.bias
    assert SpikeConv2d.from_conv(nn.Conv2d(3, 8, 3, bias=False)).bias is None
    assert list(spike_conv.state_dict()) == list(conv.state_dict())
    for other in (nn.Conv2d(3, 8, 3, stride=2), nn.Conv2d(4, 8, 3, groups=2),
                  nn.Conv2d(3, 8, 3, dilation=2), nn.Conv2d(3, 8, 3, padding="same"),
                  nn.Conv2d(3, 8, 3, padding=1, padding_mode="circular")):
        assert SpikeConv2d.from_conv(other) is other


@needs_compiler
def test_dense_weight_gradient_above_the_density_where_it_is_faster():
    conv = nn.Conv2d(8, 16, 3, padding=1)
    gen = torch.Generator().manual_seed(0)
    assert dense_above() == DENSE_ABOVE.get(torch.backends.cpu.get_cpu_capability(),
                                            DENSE_ABOVE["default"])
    for density, exact in ((dense_above() + 0.1, True), (dense_above() - 0.1, False)):
        x = (torch.rand(4, 8, 10, 10, generator=gen) < density).float()
        g = torch.randn(4, 16, 10, 10, generator=gen)
        _, (_, gw_ref, _) = _gradients(conv, x, g, spikes=False)
        _, (_, gw, _) = _gradients(SpikeConv2d.from_conv(conv), x, g, spikes=True)
        assert torch.equal(gw, gw_ref) == exact  # ATen's own numbers above the density
        torch.testing.assert_close(gw, gw_ref, rtol=1e-5, atol=1e-5 * gw_ref.abs().max().item())


def test_a_trained_neuron_tags_its_output_as_sparse():
    z = torch.randn(3 * 2, 4, 6, 6, requires_grad=True)  # T = 3 steps of 2 images, folded
    for emit in ("count", "value"):
        neuron = SpikingNeuron(torch.rand(4) + 0.5, emit=emit, surrogate="atan")
        s = neuron(z, 3)
        assert s._spikeforge_sparse and getattr(s, "_spikeforge_spikes", False) == (
            emit == "count")  # θ·s is not 0/1: never saved as bits
        pooled = TiledAvgPool2d(2)(s)  # zero where no input of the window fired
        assert pooled._spikeforge_sparse and not hasattr(pooled, "_spikeforge_spikes")
    assert not hasattr(TiledAvgPool2d(2)(z), "_spikeforge_sparse")  # currents: untagged
    with torch.no_grad():  # θ·s without gradient: nothing to speed up, untagged
        assert not hasattr(neuron(z, 3), "_spikeforge_sparse")


@needs_compiler
def test_dense_backward_where_the_input_is_no_spikes_or_under_autocast():
    spike_conv = SpikeConv2d.from_conv(nn.Conv2d(3, 8, 3, padding=1))
    x = (torch.rand(2, 3, 8, 8) < 0.2).float().requires_grad_(True)
    assert spike_conv(x).grad_fn.name() == "ConvolutionBackward0"  # not tagged as spikes
    conv64 = SpikeConv2d.from_conv(nn.Conv2d(3, 8, 3).double())  # float64: dense
    assert conv64(mark_spikes(x.double())).grad_fn.name() == "ConvolutionBackward0"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert spike_conv(mark_spikes(x.clone())).grad_fn.name() != "_SpikeInputConvBackward"
    with torch.no_grad():
        assert spike_conv(mark_spikes(x.clone())).grad_fn is None
    spike_conv.sparse_weight_grad = False  # switched off: ATen's weight gradient
    assert spike_conv(mark_spikes(x.clone())).grad_fn.name() == "ConvolutionBackward0"


@needs_compiler
def test_an_snn_trains_with_the_same_gradients_on_real_digits(monkeypatch):
    """A spiking VGG on MNIST digits: the spike-fed convolutions take the sparse weight
    gradient (where few inputs are nonzero), and the gradients equal those of the dense
    backward (the kernels switched off: ATen's backward and the eager scan) to float
    rounding."""
    torch.manual_seed(0)
    snn = create_snn("vgg7", timesteps=4, encoder="direct", in_channels=1,
                     neuron={"leak": 0.9, "surrogate": "atan"})
    snn = snn.to(memory_format=torch.channels_last)
    convs = [m for m in snn.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is SpikeConv2d for m in convs)
    x, y = next(iter(BatchLoader(load_dataset("mnist_demo", "test"), 16)))
    x = nn.functional.interpolate(x, size=32).contiguous(memory_format=torch.channels_last)
    sparse = []
    monkeypatch.setattr(SpikeConv2d, "forward", _counting(SpikeConv2d.forward, sparse))
    grads = []
    for native_on in ("1", "0"):
        monkeypatch.setenv(native.NATIVE_ENV, native_on)
        snn.zero_grad()
        nn.functional.cross_entropy(snn(x), y).backward()
        grads.append({k: p.grad.clone() for k, p in snn.named_parameters()})
    # the convolutions fed by a neuron or by a pool of its spikes; the first (analog input)
    # keeps the dense backward
    assert sparse == [False, True, True, True, True, True]
    for key, grad in grads[1].items():
        scale = grad.abs().max().item()
        torch.testing.assert_close(grads[0][key], grad, rtol=1e-4, atol=1e-4 * scale, msg=key)
    assert max(g.abs().max() for g in grads[0].values()) > 0


def _counting(forward, calls: list):
    """``forward`` that records, while the kernels are on, whether each call took the sparse
    weight gradient."""
    def counted(self, x):
        y = forward(self, x)
        if native.native_enabled():
            calls.append(y.grad_fn is not None and y.grad_fn.name() == "_SpikeInputConvBackward")
        return y
    return counted


@needs_compiler
@pytest.mark.parametrize(("c", "o", "h", "w", "k", "padding"), SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_forward_from_the_spikes_equals_atens(c, o, h, w, k, padding, bias, monkeypatch):
    """Without autograd (a converted network, an evaluation) the forward of a channels-last
    input with few nonzero values is summed over them: ATen's result to float rounding, in
    channels-last; denser inputs, other layouts and ``sparse_forward = False`` run ATen's."""
    from spikeforge.nn import spike_conv as module

    calls = []
    sparse = module._sparse_conv2d
    monkeypatch.setattr(module, "_sparse_conv2d", lambda *a: calls.append(1) or sparse(*a))
    gen = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(c, o, k, padding=padding, bias=bias)
    spike_conv = SpikeConv2d.from_conv(conv)
    x = ((torch.rand(6, c, h, w, generator=gen) < 0.1).float()
         * torch.rand(1, c, 1, 1, generator=gen).add_(0.5))  # θ·s, one θ per channel
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        y_ref, y = conv(x), spike_conv(x)
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6 * y_ref.abs().max().item())
        assert y.is_contiguous(memory_format=torch.channels_last) and calls == [1]
        dense = (torch.rand(6, c, h, w, generator=gen) < 0.9).float().contiguous(
            memory_format=torch.channels_last)
        assert torch.equal(spike_conv(dense), conv(dense))
        assert torch.equal(spike_conv(x.contiguous()), conv(x.contiguous()))
        spike_conv.sparse_forward = False
        assert torch.equal(spike_conv(x), y_ref) and calls == [1]
    with torch.no_grad():  # no graph to build: the same sparse forward
        spike_conv.sparse_forward = True
        assert torch.equal(spike_conv(x), y) and calls == [1, 1]
