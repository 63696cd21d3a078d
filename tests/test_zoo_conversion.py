"""Every zoo model (as test_models.py builds every one) through conversion and NIR export:
threshold balancing, then a NIR file round trip that reproduces the SNN spike for spike; QCFS
at T = L = 1, which reproduces the BN-folded ANN bit for bit in float64 and whose v(0) = θ/2
export refuses, naming the layer, unless asked to approximate; and each model's max-pool
variant, refused naming its first pool unless approximated by the average of its window.
Large models are marked ``slow``."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import spikeforge as sf
from spikeforge.convert import conversion_graph
from spikeforge.export import ExportError, from_nir, read_nir, to_nir, write_nir
from spikeforge.models import available, create
from spikeforge.neurons import SpikingNeuron
from spikeforge.nn import QCFS
from spikeforge.simulate import SpikingMaxPool, SpikingNetwork

# 8-18 s for the four tests of each (the others: 1-3 s), measured on a loaded 2-core machine
SLOW = {"resnet11", "resnet18", "resnet19", "vgg11", "vgg16"}
MNIST_LIKE = {"lenet", "cnn_small"}  # designed for 1x28x28; the others get 3x32x32
pytestmark = pytest.mark.usefixtures("two_threads")
BATCH = 2  # batch norm needs > 1 value per channel in training mode
STEPS = 2
NAMES = [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name
         for name in available()]


def _input(name: str) -> Tensor:
    channels, size = (1, 28) if name in MNIST_LIKE else (3, 32)
    return torch.randn(BATCH, channels, size, size)


def _ann(name: str, **options) -> tuple[nn.Module, Tensor]:
    """``create(name, **options)`` with batch-norm statistics in place, and an input batch."""
    x = _input(name)
    return _with_statistics(create(name, num_classes=10, in_channels=x.shape[1], **options),
                            x), x


def _with_statistics(model: nn.Module, x: Tensor) -> nn.Module:
    """``model`` in eval mode, its batch-norm statistics the plain average over two
    training-mode passes on random data like ``x``."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # cumulative average: the statistics of the passes
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn_like(x))
    return model.eval()


def _qcfs_ann(name: str) -> tuple[nn.Module, Tensor]:
    """The model with one-level QCFS activations, each λ twice the standard deviation of its
    input current, set layer by layer during the batch-norm passes (so that the statistics
    match the thresholds): about one value in six reaches λ/2 and fires, in every layer (the
    default λ = 8 would leave most layers silent)."""
    x = _input(name)
    model = create(name, num_classes=10, in_channels=x.shape[1], activation="qcfs",
                   activation_options={"levels": 1})

    def set_threshold(module: QCFS, args: tuple[Tensor, ...]) -> None:
        module.threshold.data.fill_(2 * float(args[0].std()))

    handles = [m.register_forward_pre_hook(set_threshold) for m in model.modules()
               if isinstance(m, QCFS)]
    _with_statistics(model, x)
    for handle in handles:
        handle.remove()
    return model, x


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for _, m in model.named_modules(remove_duplicate=False))


def _nodes(snn: SpikingNetwork, kind: type) -> list[str]:
    """The names of the graph's nodes calling a ``kind`` module (as export names them)."""
    return [n.name for n in snn.graph.graph.nodes
            if n.op == "call_module" and isinstance(snn.graph.get_submodule(n.target), kind)]


def _outputs(module: nn.Module, kind: type, call) -> list[Tensor]:
    """The outputs of ``module``'s ``kind`` layers in call order, then ``call()``'s result."""
    outputs: list[Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _a, out: outputs.append(out.clone()))
               for m in module.modules() if isinstance(m, kind)]
    with torch.no_grad():
        result = call()
    for handle in handles:
        handle.remove()
    return [*outputs, result]


def _spikes_and_readout(snn: SpikingNetwork, x: Tensor) -> list[Tensor]:
    """Where each neuron layer spiked (T·B, ...), then the readout (T, B, classes)."""
    # one chunk, so one hook call per layer; and no size probe on the first call (a network
    # read from NIR has not measured its activations yet: the probe runs the graph once more)
    snn.memory_budget = snn.working_set = 1 << 40
    snn.bytes_per_sample_step = max(snn.bytes_per_sample_step, 1)
    *outputs, readout = _outputs(snn.graph, SpikingNeuron, lambda: snn(x))
    return [*(out != 0 for out in outputs), readout]


def _assert_same_run(snn: SpikingNetwork, back: SpikingNetwork, x: Tensor) -> None:
    """``back`` (read from NIR) spikes exactly where ``snn`` does, in every layer, and gives
    the same readout, bit for bit."""
    ours, theirs = _spikes_and_readout(snn, x), _spikes_and_readout(back, x)
    assert len(ours) == len(theirs) == len(snn.neurons()) + 1
    for layer, (a, b) in enumerate(zip(ours[:-1], theirs[:-1], strict=True)):
        assert a.any(), f"layer {layer} never spiked: nothing compared"
        assert torch.equal(a, b), f"layer {layer} spikes differently after the round trip"
    assert torch.equal(theirs[-1], ours[-1])


@pytest.mark.parametrize("name", NAMES)
def test_threshold_balancing_round_trips_through_a_nir_file(name, tmp_path):
    pytest.importorskip("nir")
    ann, x = _ann(name)
    # λ at the median of each layer's positive activations: every layer spikes within two
    # steps (with the usual 99.9th percentile the deep layers stay silent that long)
    snn = sf.convert(ann, [x], "threshold_balancing", timesteps=STEPS, percentile=50)
    assert len(snn.neurons()) == _count(ann, nn.ReLU) > 0
    assert snn.info["initial"] == "zero"  # the paper's form: NIR can say it exactly
    graph = to_nir(snn, x)
    assert graph.metadata["approximations"] == []
    write_nir(graph, tmp_path / f"{name}.nir")
    back = from_nir(read_nir(tmp_path / f"{name}.nir"))
    assert back.timesteps == STEPS
    _assert_same_run(snn, back, x)


@pytest.mark.parametrize("name", NAMES)
def test_qcfs_at_t1_l1_is_the_folded_ann_bit_for_bit(name):
    """T = L = 1, v(0) = θ/2: every neuron emits exactly its QCFS activation and the readout
    is the BN-folded ANN's output, bit for bit in float64 (docs/conversion.md); the unfolded
    ANN's to rounding."""
    ann, x = _qcfs_ann(name)
    ann, x = ann.double(), x.double()
    snn = sf.convert(ann, None, "qcfs", timesteps=1)
    folded = conversion_graph(ann)
    expected = _outputs(folded, QCFS, lambda: folded(x))
    got = _outputs(snn.graph, SpikingNeuron, lambda: snn(x)[0])
    assert len(expected) == len(got) == _count(ann, QCFS) + 1
    for layer, (a, s) in enumerate(zip(expected[:-1], got[:-1], strict=True)):
        assert 0 < float((s != 0).double().mean()) < 0.5, f"layer {layer} is not informative"
        assert torch.equal(a, s), f"layer {layer}"
    assert torch.equal(got[-1], expected[-1])
    with torch.no_grad():
        torch.testing.assert_close(got[-1], ann(x))


@pytest.mark.parametrize("name", NAMES)
def test_qcfs_export_is_refused_naming_the_layer_unless_approximated(name):
    pytest.importorskip("nir")
    ann, x = _qcfs_ann(name)
    snn = sf.convert(ann, None, "qcfs", timesteps=STEPS)
    neurons = _nodes(snn, SpikingNeuron)
    assert len(neurons) == _count(ann, QCFS)
    with pytest.raises(ExportError, match=rf"^layer '{neurons[0]}': an initial potential "
                                          r"v\(0\) = θ/2 cannot be written in NIR"):
        to_nir(snn, x)
    with pytest.warns(UserWarning, match="NIR export approximated"):
        graph = to_nir(snn, x, approximate=True)
    assert graph.metadata["approximations"] == [f"{n}: an initial potential v(0) = θ/2"
                                                for n in neurons]
    # our reader restores v(0) from the metadata (the file itself: the test above)
    _assert_same_run(snn, from_nir(graph), x)


@pytest.mark.parametrize("name", NAMES)
def test_max_pool_variant_is_refused_naming_the_pool(name):
    """With ``pool="max"`` every downsampling pool becomes a spiking max-pool, which NIR
    cannot say: export names the first one. resnet18/19/20 downsample by strided
    convolutions only: there ``pool`` changes nothing (their export is the first test's)."""
    pytest.importorskip("nir")
    x = _input(name)
    ann = create(name, num_classes=10, in_channels=x.shape[1], pool="max")
    if _count(ann, nn.MaxPool2d) == 0:
        assert name in {"resnet18", "resnet19", "resnet20"}
        assert _count(ann, nn.AvgPool2d) == 0
        return
    ann = _with_statistics(ann, x)
    snn = sf.convert(ann, [x], "threshold_balancing", timesteps=STEPS)
    pools = _nodes(snn, SpikingMaxPool)
    assert len(pools) == _count(ann, nn.MaxPool2d)
    with pytest.raises(ExportError, match=rf"^layer '{pools[0]}': a spiking max-pool cannot "
                                          "be written in NIR"):
        to_nir(snn, x)


class _WindowAverage(nn.Module):
    """What an approximated max-pool reads back as: the average pool of its window."""

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(pool.kernel_size, pool.stride, pool.padding)

    def forward(self, x: Tensor, timesteps: int) -> Tensor:
        return self.pool(x)


def test_approximate_export_writes_each_max_pool_as_its_window_average():
    """docs/export.md: with ``approximate=True`` a spiking max-pool is written as the
    average pool of its window and listed in ``metadata["approximations"]``; the file reads
    back as that network."""
    pytest.importorskip("nir")
    ann, x = _ann("cnn_small", pool="max")
    snn = sf.convert(ann, [x], "threshold_balancing", timesteps=STEPS)
    pools = _nodes(snn, SpikingMaxPool)
    assert len(pools) == 2
    with pytest.warns(UserWarning, match="NIR export approximated"):
        graph = to_nir(snn, x, approximate=True)
    assert graph.metadata["approximations"] == [f"{p}: a spiking max-pool" for p in pools]
    averaged = copy.deepcopy(snn.graph)
    for node in averaged.graph.nodes:
        if node.name in pools:
            averaged.set_submodule(
                node.target, _WindowAverage(averaged.get_submodule(node.target).pool))
    ours = _spikes_and_readout(SpikingNetwork(averaged, snn.timesteps, snn.encoder), x)
    theirs = _spikes_and_readout(from_nir(graph), x)
    assert ours[0].any() and ours[1].any()  # (thresholds balanced for max-pools: the
    for a, b in zip(ours, theirs, strict=True):  # averaged net's later layers may be silent)
        assert torch.equal(a, b)
