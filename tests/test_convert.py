"""Conversion engine: graph checks, BN folding, calibration, the three methods on a network
trained here on the bundled MNIST subset, simulation, statistics and the CLI."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import spikeforge as sf
from spikeforge.convert import METHODS, ConversionError, StreamingPercentile, conversion_graph
from spikeforge.data import BatchLoader, load_dataset
from spikeforge.metrics import connectivity
from spikeforge.nn import ClippedReLU
from spikeforge.simulate import SpikingMaxPool


class UserNet(nn.Module):
    """Written the way users write models: functional relu, a residual add, BN, dropout,
    average pooling, view."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.drop = nn.Dropout(0.1)
        self.fc1 = nn.Linear(16 * 7 * 7, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.avg_pool2d(x, 2)
        x = torch.relu(x + self.bn2(self.conv2(x)))  # one neuron receives both currents
        x = F.avg_pool2d(x, 2)
        x = self.drop(x.view(x.size(0), -1))
        return self.fc2(self.fc1(x).relu())


@pytest.fixture(scope="module")
def mnist():
    train = load_dataset("mnist_demo", "train")
    test = load_dataset("mnist_demo", "test")
    return (BatchLoader(train, 64, shuffle=True, seed=0), BatchLoader(test, 500),
            [x for x, _ in BatchLoader(train.subset(1024, seed=0), 256)])


@pytest.fixture(scope="module")
def trained(mnist):
    """UserNet trained for two epochs on the bundled MNIST subset (about 10 s)."""
    torch.manual_seed(0)
    train, test, _ = mnist
    model = UserNet()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for epoch in range(2):
        train.set_epoch(epoch)
        model.train()
        for x, y in train:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


def ann_accuracy(model, loader):
    with torch.no_grad():
        hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader)
    return 100.0 * hits / sum(len(y) for _, y in loader)


# --- graph --------------------------------------------------------------------------------

def test_prepare_folds_bn_drops_dropout_and_keeps_the_function(trained, mnist):
    gm = conversion_graph(trained)
    kinds = {type(m).__name__ for m in gm.modules()}
    assert "BatchNorm2d" not in kinds and "Dropout" not in kinds
    x = mnist[2][0]
    with torch.no_grad():
        torch.testing.assert_close(gm(x), trained(x), atol=1e-4, rtol=1e-4)
    assert trained.bn1.running_var is not None  # the user's model is untouched
    assert any(isinstance(m, nn.BatchNorm2d) for m in trained.modules())


def test_unsupported_operation_names_node_and_source_line():
    class Sig(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return torch.sigmoid(self.fc(x).relu())

    with pytest.raises(ConversionError, match=r"sigmoid.*test_convert\.py:\d+"):
        sf.convert(Sig(), [torch.randn(8, 4)])


def test_model_without_activation_is_refused():
    with pytest.raises(ConversionError, match="no ReLU-like activation"):
        sf.convert(nn.Sequential(nn.Linear(4, 3)), [torch.randn(8, 4)])


def test_bad_calibration_data_is_refused():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(ConversionError, match="calibration data is empty"):
        sf.convert(model, [])
    with pytest.raises(ConversionError, match="NaN or Inf"):
        sf.convert(model, [torch.full((2, 4), float("nan"))])
    dead = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    nn.init.constant_(dead[0].bias, -100.0)
    with pytest.raises(ConversionError, match=r"module '1' \(ReLU\).*no positive value"):
        sf.convert(dead, [torch.randn(8, 4)])


def test_unknown_method_and_misplaced_options():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(ConversionError, match="unknown conversion method 'qcfs_typo'.*valid"):
        sf.convert(model, [torch.randn(8, 4)], "qcfs_typo")
    with pytest.raises(ConversionError, match="cap and levels apply to augmented"):
        sf.convert(model, [torch.randn(8, 4)], "termapping", cap=2)
    with pytest.raises(ConversionError, match="unknown initial 'middle'"):
        sf.convert(model, [torch.randn(8, 4)], initial="middle")


def test_max_pool_policies():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(4 * 3 * 3, 2))
    data = [torch.randn(8, 1, 8, 8)]
    with pytest.raises(ConversionError, match="max pooling.*average pooling"):
        sf.convert(model, data, max_pool="error")
    snn = sf.convert(model, data, progress=False)
    assert any(isinstance(m, SpikingMaxPool) for m in snn.modules())


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 12), st.integers(0, 2**31 - 1))
def test_spiking_max_pool_tracks_the_max_of_cumulative_inputs(steps, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(steps, 2, 3, 4, 4, generator=g) < 0.4).float()
    out = SpikingMaxPool(nn.MaxPool2d(2))(x.flatten(0, 1), steps).unflatten(0, (steps, 2))
    expected = F.max_pool2d(x.cumsum(0).flatten(0, 1), 2).unflatten(0, (steps, 2))
    torch.testing.assert_close(out.cumsum(0), expected)


# --- calibration --------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.floats(0.01, 1e4), st.sampled_from([50.0, 99.0, 99.9, 100.0]),
       st.integers(0, 2**31 - 1))
def test_streaming_percentile_matches_exact_quantile(chunks, scale, p, seed):
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(chunks * 2000, generator=g).exp() * scale * torch.rand(1, generator=g)
    data[::3] = -1.0  # non-positive entries are ignored
    sp = StreamingPercentile(bins=4096)
    for part in data.chunk(chunks):
        sp.update(part)
    positive = data[data > 0].double().numpy()
    exact = np.percentile(positive, p, method="inverted_cdf")
    got = float(sp.percentile(p))
    assert exact <= got * (1 + 1e-6)  # never below: thresholds err on the safe side
    assert got <= exact + 2 * positive.max() / 4096 + 1e-9
    if p == 100.0:
        assert got == pytest.approx(positive.max(), rel=1e-6)


def test_channelwise_percentile_per_channel():
    x = torch.rand(64, 3, 5, 5) * torch.tensor([1.0, 10.0, 100.0]).view(1, 3, 1, 1)
    sp = StreamingPercentile(channels=3)
    sp.update(x[:32])
    sp.update(x[32:])
    torch.testing.assert_close(sp.percentile(100.0), x.amax((0, 2, 3)))
    assert sp.percentile(50.0).tolist() == pytest.approx([0.5, 5.0, 50.0], rel=0.05)


# --- conversion on a trained network ------------------------------------------------------

def test_threshold_balancing_agrees_with_ann_at_t64(trained, mnist):
    _, test, calibration = mnist
    snn = sf.convert(trained, calibration, "threshold_balancing", timesteps=64, progress=False)
    result = sf.evaluate(snn, test, ann=trained, progress=False)
    assert len(result.accuracy) == 64
    assert result.agreement[-1] >= 99.0, result.agreement[-8:]
    assert result.accuracy[-1] >= result.ann_accuracy - 1.0
    assert result.accuracy[-1] > result.accuracy[3]  # rate coding improves with time
    assert result.ann_accuracy == pytest.approx(ann_accuracy(trained, test))


@pytest.mark.parametrize("method, options, t, tolerance", [
    ("termapping", {}, 32, 1.5),
    ("augmapping", {}, 32, 1.5),  # the paper's form: θ = λ, v(0) = 0, like TerMapping
    ("augmapping", {"levels": 16}, 2, 0.5)])  # ours: θ = λ/16, v(0) = θ/2
def test_termapping_and_augmapping_reach_the_ann(trained, mnist, method, options, t,
                                                 tolerance):
    _, test, calibration = mnist
    snn = sf.convert(trained, calibration, method, timesteps=t, progress=False, **options)
    result = sf.evaluate(snn, test, ann=trained, progress=False)
    assert result.accuracy[-1] >= result.ann_accuracy - tolerance


def test_channelwise_thresholds_one_per_channel(trained, mnist):
    snn = sf.convert(trained, mnist[2], channelwise=True, progress=False)
    widths = {name: n.threshold.numel() for name, n in snn.neurons().items()}
    assert sorted(widths.values()) == [16, 16, 64]


def test_augmapping_is_the_rounded_ann_at_t1_for_one_layer():
    """One augmented layer with θ = λ/L, v(0) = θ/2 emits round(z·L/λ) units at t = 1."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
    data = [torch.randn(256, 6)]
    snn = sf.convert(model, data, "augmapping", levels=4, percentile=100, progress=False)
    (theta,) = [n.threshold for n in snn.neurons().values()]
    x = data[0][:16]
    with torch.no_grad():
        z = model[0](x)
        hidden = torch.floor(z.clamp(min=0) / theta + 0.5) * theta
        expected = model[2](hidden)
    torch.testing.assert_close(snn(x, timesteps=1)[0], expected, atol=1e-5, rtol=1e-5)


def test_clipped_relu_model_converts_with_threshold_at_most_clip():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), ClippedReLU(0.5), nn.Linear(32, 3))
    snn = sf.convert(model, [torch.randn(256, 6) * 3], percentile=100, progress=False)
    (theta,) = [float(n.threshold) for n in snn.neurons().values()]
    assert 0 < theta <= 0.5


# --- simulation ---------------------------------------------------------------------------

def test_direct_input_is_deterministic_and_poisson_is_seeded(trained, mnist):
    x = mnist[2][0][:32]
    snn = sf.convert(trained, mnist[2], timesteps=8, progress=False)
    torch.testing.assert_close(snn(x), snn(x), rtol=0, atol=0)
    p1 = sf.convert(trained, mnist[2], timesteps=8, encoder="poisson", seed=1, progress=False)
    p2 = sf.convert(trained, mnist[2], timesteps=8, encoder="poisson", seed=2, progress=False)
    torch.testing.assert_close(p1(x), p1(x), rtol=0, atol=0)
    assert not torch.equal(p1(x), p2(x))


def test_chunking_keeps_the_result(trained, mnist):
    x = mnist[2][0][:40]
    snn = sf.convert(trained, mnist[2], timesteps=6, progress=False)
    full = snn(x)
    snn.memory_budget = snn.bytes_per_sample_step * 6 * 7  # 7 samples per chunk
    assert snn.chunk_size(6) == 7
    torch.testing.assert_close(snn(x), full)
    snn.working_set = 1  # cache-sized chunks on a CPU: one sample each, same result
    assert snn.chunk_size(6) == 1 and snn.chunk_size(6, "cuda") == 7
    torch.testing.assert_close(snn(x), full, rtol=0, atol=0)
    snn.memory_budget = snn.bytes_per_sample_step * 6 // 2  # not even one sample fits
    with pytest.raises(MemoryError, match=r"one sample needs .* MiB .* for 6 steps.*"
                                          r"memory_budget = .* MiB"):
        snn(x)


def test_non_finite_weights_name_the_layer(trained, mnist):
    broken = copy.deepcopy(trained)
    next(broken.parameters()).data[0] = float("nan")
    name = next(n for n, _ in broken.named_parameters()).rsplit(".", 1)[0]
    with pytest.raises(sf.ConversionError, match=f"layer '{name}' has non-finite values"):
        sf.convert(broken, mnist[2], progress=False)


def test_non_finite_input_and_bad_timesteps(trained, mnist):
    snn = sf.convert(trained, mnist[2], progress=False)
    x = mnist[2][0][:2].clone()
    x[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        snn(x)
    with pytest.raises(ValueError, match="timesteps must be an integer >= 1"):
        snn(mnist[2][0][:2], timesteps=0)


# --- statistics ---------------------------------------------------------------------------

def test_sops_and_macs_count_synapses_exactly():
    """Linear(6→5)-ReLU-Linear(5→3): each hidden spike drives 3 synapses; MACs 6·5 + 5·3."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    data = [torch.randn(64, 6)]
    snn = sf.convert(model, data, timesteps=5, progress=False)
    conn = connectivity(snn, data[0])
    assert conn.macs == {"0": 30, "2": 15}
    assert conn.fan_out["input"].flatten().tolist() == [5.0] * 6
    (name,) = snn.neurons()
    x = data[0][:10]
    with torch.no_grad():
        spikes = snn.graph.get_submodule(name)(model[0](x).repeat(5, 1), 5)
    result = sf.evaluate(snn, [(x, torch.zeros(10, dtype=torch.long))], progress=False)
    assert result.sops_per_sample == pytest.approx(float((spikes != 0).sum()) * 3 / 10)
    assert result.ann_macs_per_sample == 45
    rate = float((spikes != 0).sum()) / (10 * 5 * 5)
    assert result.firing_rates[name] == pytest.approx(rate)
    energy = 0.9e-12 * result.sops_per_sample + 4.6e-12 * 30 * 5  # direct input: MACs each step
    assert result.energy_per_sample["snn"] == pytest.approx(energy)
    assert result.energy_per_sample["ann"] == pytest.approx(4.6e-12 * 45)


def test_fan_out_through_pooling_and_padding(trained, mnist):
    snn = sf.convert(trained, mnist[2], progress=False)
    conn = connectivity(snn, mnist[2][0])
    # conv1 (1→16, 3x3, pad 1, 28x28): MACs = 28·28·16·9 (padding included, as usual), but
    # a pixel drives only real connections: per axis 26 pixels reach 3 rows, 2 edge ones 2
    assert conn.macs["conv1"] == 28 * 28 * 16 * 9
    assert float(conn.fan_out["input"].sum()) == (26 * 3 + 2 * 2) ** 2 * 16
    assert conn.input_macs == conn.macs["conv1"]
    # an interior input pixel drives 16 channels x 9 positions
    assert float(conn.fan_out["input"][0, 0, 10, 10]) == 144
    # the first neurons reach conv2 through a 2x2 sum-pool and the residual add's neuron
    first = next(iter(snn.neurons()))
    assert float(conn.fan_out[first][0, 0, 10, 10]) == 16 * 9


def test_augmented_units_counted_beside_events(trained, mnist):
    snn = sf.convert(trained, mnist[2], "augmapping", levels=16, timesteps=2, progress=False)
    result = sf.evaluate(snn, [next(iter(mnist[1]))], progress=False)
    assert result.unit_sops_per_sample > result.sops_per_sample > 0
    assert {"accuracy", "firing_rates", "sops_per_sample"} <= set(result.to_dict())
    assert result.unit_sops_per_step[-1] == pytest.approx(result.unit_sops_per_sample)
    assert sum(result.layer_unit_sops.values()) == pytest.approx(result.unit_sops_per_sample)


def test_energy_charges_every_unit_spike_of_an_augmented_event():
    """Linear(4→3)-ReLU-Linear(3→2) with one augmented layer: energy["snn"] = 0.9 pJ per unit
    spike and synapse (|c| accumulates per event) + the input layer's MACs every step;
    energy["snn_events"] = 0.9 pJ per event and synapse + the same MACs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    data = [torch.randn(64, 4) * 3]
    snn = sf.convert(model, data, "augmapping", levels=8, timesteps=3, percentile=100,
                     progress=False)
    (name,) = snn.neurons()
    neuron = snn.graph.get_submodule(name)
    x = data[0][:8]
    with torch.no_grad():
        out = neuron(model[0](x).repeat(3, 1), 3)  # θ·c(t), (T·B, 3)
    c = (out / neuron.threshold).round().abs()
    events, units = float((c > 0).sum()) * 2 / 8, float(c.sum()) * 2 / 8  # fan-out 2
    assert units > events > 0  # some events carry several unit spikes
    result = sf.evaluate(snn, [(x, torch.zeros(8, dtype=torch.long))], progress=False)
    assert result.sops_per_sample == pytest.approx(events)
    assert result.unit_sops_per_sample == pytest.approx(units)
    analog = 4.6e-12 * 12 * 3  # Linear(4→3) sees the image at every step
    assert result.energy_per_sample["snn"] == pytest.approx(0.9e-12 * units + analog)
    assert result.energy_per_sample["snn_events"] == pytest.approx(0.9e-12 * events + analog)
    assert result.energy_per_step[-1] == result.energy_per_sample["snn"]
    assert result.energy_events_per_step[-1] == result.energy_per_sample["snn_events"]
    per_step = c.view(3, 8, 3).sum((1, 2)).cumsum(0) * 2 / 8
    assert result.unit_sops_per_step == pytest.approx(per_step.tolist())


def test_energy_of_older_results_is_rederived_at_t():
    from spikeforge.metrics import rederive_energy

    old = {"sops_per_sample": 1e6, "unit_sops_per_sample": 3e6, "accuracy": [90.0, 95.0],
           "energy_per_sample": {"snn": 2e-6, "ann": 5e-6}, "energy_per_step": [1e-6, 2e-6]}
    new = rederive_energy(old)
    assert new["energy_per_sample"] == pytest.approx(
        {"snn": 2e-6 + 0.9e-12 * 2e6, "snn_events": 2e-6, "ann": 5e-6})
    assert new["energy_events_per_step"] == [1e-6, 2e-6] and new["energy_per_step"] is None
    assert rederive_energy(new) is new  # current entries are left alone
    binary = rederive_energy({**old, "unit_sops_per_sample": 1e6})
    assert binary["energy_per_step"] == binary["energy_events_per_step"] == [1e-6, 2e-6]


def test_spike_counts_do_not_depend_on_the_memory_format():
    """The monitor reads channels-last outputs in memory order (no copy): same events, SOPs
    and unit spikes as from the contiguous tensor, with per-channel augmented thresholds."""
    from types import SimpleNamespace

    from spikeforge.metrics import _Monitor
    from spikeforge.neurons import SpikingNeuron

    gen = torch.Generator().manual_seed(0)
    steps, batch = 3, 2
    out = torch.randint(-1, 4, (steps * batch, 4, 5, 6), generator=gen).float()
    fan = torch.randint(0, 10, (1, 4, 5, 6), generator=gen).float()
    neuron = SpikingNeuron(torch.tensor([0.5, 1.0, 2.0, 4.0]), "augmented")
    counts = []
    for x in (out, out.contiguous(memory_format=torch.channels_last)):
        no_layers = SimpleNamespace(layers=lambda kinds: {})  # counting only: nothing to hook
        monitor = _Monitor(no_layers, None, steps)
        monitor.count("n", x, neuron, fan)
        counts.append((monitor.events, monitor.layer_units["n"], monitor.unit_spikes["n"]))
    assert torch.equal(counts[0][0], counts[1][0]) and float(counts[0][0].sum()) > 0
    assert counts[0][1:] == pytest.approx(counts[1][1:])
    expected = ((out != 0).float().view(steps, batch, -1) * fan.view(-1)).sum((1, 2))
    assert torch.equal(counts[0][0], expected.double())


# --- CLI ----------------------------------------------------------------------------------

def test_convert_cli_writes_results_json_and_table(tmp_path, capsys):
    from spikeforge.cli import main

    assert main(["train", "configs/mnist_cnn.yaml", "data.dataset=mnist_demo",
                 "data.train_subset=1024", "data.test_subset=200", "optim.epochs=1",
                 "model.options={width: 0.25}", f"--out-dir={tmp_path / 'run'}"]) == 0
    out = tmp_path / "conv.json"
    code = main(["convert", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"),
                 "--method", "threshold_balancing", "augmapping:cap=4", "--timesteps", "4",
                 "--test-subset", "100", "--calibration-samples", "256", "--no-progress",
                 "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "augmapping cap=4" in printed and re.search(r"\|\s+ANN\s+\|", printed)
    entries = json.loads(out.read_text())["results"]
    assert [e["method"] for e in entries] == ["threshold_balancing", "augmapping"]
    for e in entries:
        for key in ("dataset", "model", "timesteps", "accuracy", "ann_accuracy",
                    "sops_per_sample", "ann_macs_per_sample", "energy_per_sample",
                    "firing_rates", "provenance"):
            assert key in e
        assert e["dataset"] == "mnist_demo" and len(e["accuracy"]) == 4
    # only what was asked for, and the command's own default precision
    assert entries[1]["options"] == {"precision": "auto", "cap": 4}
    assert entries[1]["neuron"]["initial"] == "half" and entries[1]["neuron"]["levels"] == 1
    assert entries[1]["name"] == "AugMapping (Yu et al.), cap 4"
    for e in entries:  # |c| accumulates per augmented event: never less than the unit spikes
        assert e["energy_per_sample"]["snn"] >= 0.9e-12 * e["unit_sops_per_sample"]
        assert e["energy_per_sample"]["snn"] >= e["energy_per_sample"]["snn_events"]
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_convert_cli_errors_are_clear(tmp_path, capsys):
    from spikeforge.cli import main

    assert main(["convert", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_channels_last_simulation_is_identical(trained, mnist):
    x = mnist[2][0][:16]
    snn = sf.convert(trained, mnist[2], timesteps=8, progress=False)
    assert snn.channels_last
    fast = snn(x)
    snn.graph = snn.graph.to(memory_format=torch.contiguous_format)
    snn.channels_last = False
    assert torch.equal(fast, snn(x))


@pytest.mark.parametrize("name", ["vgg7", "resnet7"])
def test_constant_input_runs_the_first_layer_once(name):
    from spikeforge.encoding import encode
    from spikeforge.models import create

    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32)
    snn = sf.convert(create(name, num_classes=10).eval(), [x], timesteps=5, progress=False)
    first = next(m for m in snn.graph.modules() if isinstance(m, nn.Conv2d))
    rows, held = [], []
    first.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    next(iter(snn.neurons().values())).register_forward_pre_hook(
        lambda module, args, kwargs: held.append((args[0].shape[0], kwargs.get("constant"))),
        with_kwargs=True)
    direct = snn(x)  # the image is the same at every step: the first conv sees B rows
    folded = snn.simulate(encode("direct", x, 5))  # the plain run sees T·B rows
    assert rows == [4, 20]
    assert held == [(4, True), (20, None)]  # the first neuron holds its current, no T copies
    assert torch.equal(direct, folded)
    assert (direct != 0).any()


def test_bf16_keeps_spikes_exact_and_accuracy_close(trained, mnist):
    from spikeforge.metrics import evaluate

    test = mnist[1]
    fp32 = sf.convert(trained, mnist[2], timesteps=16, progress=False)
    bf16 = sf.convert(trained, mnist[2], timesteps=16, progress=False, precision="bf16")
    assert all(n.threshold.dtype == torch.float32 for n in bf16.neurons().values())
    spikes = []
    for neuron in bf16.neurons().values():
        neuron.register_forward_hook(lambda m, a, out: spikes.append(out / m.threshold.view(
            -1, *[1] * (out.ndim - 2)) if m.threshold.ndim else out / m.threshold))
    x = next(iter(test))[0][:64]
    out = bf16(x)
    assert out.dtype == torch.float32  # the readout is summed in float32
    for s in spikes:  # θ·s in bfloat16: s is a whole number of spikes up to θ's rounding
        assert torch.allclose(s.float(), s.float().round(), atol=1e-2)
    a, b = evaluate(fp32, test), evaluate(bf16, test)
    assert abs(a.at(16) - b.at(16)) <= 1.0, (a.at(16), b.at(16))
    assert abs(a.sops_per_sample - b.sops_per_sample) <= 0.02 * a.sops_per_sample
    with pytest.raises(ValueError, match="unknown precision 'fp8'; valid: float32, bf16, int8"):
        sf.convert(trained, mnist[2], progress=False, precision="fp8")


def test_int8_weights_are_8_bit_integers_per_channel_and_cost_little_accuracy(trained, mnist):
    from spikeforge.metrics import evaluate

    before = {k: v.clone() for k, v in trained.state_dict().items()}
    fp32 = sf.convert(trained, mnist[2], timesteps=16, progress=False)
    int8 = sf.convert(trained, mnist[2], timesteps=16, progress=False, precision="int8")
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in before.items())  # untouched
    layers = int8.layers((nn.Conv2d, nn.Linear))
    assert layers
    for name, layer in layers.items():
        w = layer.weight.detach().flatten(1)
        scale = w.abs().amax(1, keepdim=True) / 127
        steps = w / scale
        assert torch.allclose(steps, steps.round(), atol=1e-3), name  # integers
        assert steps.abs().max() <= 127 + 1e-3
        original = fp32.layers((nn.Conv2d, nn.Linear))[name].weight.detach().flatten(1)
        assert ((w - original).abs() <= scale / 2 + 1e-7).all(), name  # rounded to nearest
    assert 0 < int8.info["weight_rounding"] <= 1 / 254 + 1e-6
    assert int8.info["weight_bits"] == 8
    a, b = evaluate(fp32, mnist[1]), evaluate(int8, mnist[1])
    assert abs(a.at(16) - b.at(16)) <= 1.0, (a.at(16), b.at(16))


def test_quantize_weights_handles_zero_channels_and_refuses_bad_bit_widths():
    from spikeforge.simulate import quantize_weights_

    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, 0, 0, 0], [1.0, -0.5, 0.25, 0.1], [3, 2, 1, 0]]))
    error = quantize_weights_(layer, bits=3)  # levels -3..3
    assert torch.equal(layer.weight[0], torch.zeros(4))
    assert torch.allclose(layer.weight[1], torch.tensor([1.0, -2 / 3, 1 / 3, 0.0]))
    assert torch.allclose(layer.weight[2], torch.tensor([3.0, 2.0, 1.0, 0.0]))
    assert error[""] == pytest.approx((2 / 3 - 0.5) / 3)
    with pytest.raises(ValueError, match="bits must be in 2..16"):
        quantize_weights_(layer, bits=1)


def _untrained_checkpoint(path, method):
    """A checkpoint of cnn_small (quarter width) with the activation ``method`` needs: ReLU,
    QCFS, CS-QCFS or LIF neurons (a directly trained SNN). Weights are random: only the
    options matter here."""
    from spikeforge.models import create
    from spikeforge.models.spiking import create_snn

    torch.manual_seed(0)
    activation = {"qcfs": "qcfs", "csqcfs": "csqcfs"}.get(method, "relu")
    if method == "snn":
        model = create_snn("cnn_small", 4, "direct", num_classes=10, in_channels=1, width=0.25)
    else:
        model = create("cnn_small", num_classes=10, in_channels=1, width=0.25,
                       activation=activation, activation_options=(
                           {"levels": 2, "threshold": 2.0} if activation != "relu" else {}))
    torch.save({"model": model.state_dict(), "model_spec": model.spikeforge_spec,
                "config": {"data": {"dataset": "mnist_demo"}}}, path)
    return model.eval()


@pytest.mark.parametrize("method", list(METHODS))
def test_convert_cli_without_options_records_the_library_defaults(tmp_path, method):
    """One source of defaults: `spikeforge convert --method M` with no option writes the same
    neuron options into the results JSON as `sf.convert(model, calibration, M)`."""
    from spikeforge.cli import main
    from spikeforge.convert.recipes import method_defaults

    checkpoint, out = tmp_path / "model.pt", tmp_path / "out.json"
    model = _untrained_checkpoint(checkpoint, method)
    assert main(["convert", "--checkpoint", str(checkpoint), "--method", method,
                 "--timesteps", "2", "--test-subset", "20", "--calibration-samples", "64",
                 "--no-progress", "--out", str(out)]) == 0
    (entry,) = json.loads(out.read_text())["results"]
    calibration = [x for x, _ in BatchLoader(load_dataset("mnist_demo", "train").subset(64), 64)]
    snn = sf.convert(model, calibration, method, timesteps=2, progress=False,
                     precision="auto")  # the command's own default (the library's: float32)
    library = {k: v for k, v in snn.info.items() if k not in ("thresholds", "convert_seconds")}
    written = {k: v for k, v in entry["neuron"].items() if k != "convert_seconds"}
    assert written == library
    assert entry["options"] == {"precision": "auto"}  # nothing passed on the method's behalf
    assert written["initial"] == method_defaults(method)["initial"] or method == "snn"


def test_augmapping_defaults_are_the_papers_form_and_ours_by_name(trained, mnist):
    """`augmapping` is the paper's form (θ = λ); `levels=16` our extension (θ = λ/16): the
    two differ in thresholds by exactly 16; both start at v(0) = θ/2."""
    calibration = mnist[2]
    paper = sf.convert(trained, calibration, "augmapping", timesteps=2, progress=False)
    ours = sf.convert(trained, calibration, "augmapping", levels=16, timesteps=2,
                      progress=False)
    assert (paper.info["levels"], paper.info["initial"]) == (1, "half")
    assert (ours.info["levels"], ours.info["initial"]) == (16, "half")
    assert paper.info["name"] == "AugMapping (Yu et al.)"
    assert ours.info["name"] == "AugMapping, 16 levels"
    for name, neuron in paper.neurons().items():
        torch.testing.assert_close(neuron.threshold, ours.neurons()[name].threshold * 16)
    tb = sf.convert(trained, calibration, "threshold_balancing", timesteps=2, progress=False)
    assert tb.info["levels"] is None  # binary spikes carry no levels
    for name, neuron in paper.neurons().items():  # the paper's θ = λ of threshold balancing
        torch.testing.assert_close(neuron.threshold, tb.neurons()[name].threshold)
    named = sf.convert(trained, calibration, "augmapping", levels=16, initial="zero",
                       progress=False)
    assert named.info["name"] == "AugMapping, 16 levels, v(0) = 0"
