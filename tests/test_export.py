"""NIR export and import: exact round trips through a file, refusals that name the layer,
and a third-party reader (snnTorch's NIR import) simulating our exported LIF network."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import spikeforge as sf
from spikeforge.export import ExportError, from_nir, read_nir, to_nir, write_nir
from spikeforge.models.spiking import SpikingModel
from spikeforge.neurons import LIF

nir = pytest.importorskip("nir")


def _round_trip(snn, x, tmp_path, **options):
    graph = to_nir(snn, x, **options)
    write_nir(graph, tmp_path / "net.nir")
    back = from_nir(read_nir(tmp_path / "net.nir"))
    return graph, back


@pytest.mark.parametrize("name, size", [("cnn_small", 28), ("resnet7", 32)])
def test_round_trip_through_a_nir_file_is_exact(tmp_path, name, size):
    torch.manual_seed(0)
    ann = sf.models.create(name, num_classes=10, in_channels=1).eval()
    x = torch.randn(4, 1, size, size)
    snn = sf.convert(ann, [x], "threshold_balancing", timesteps=6, channelwise=True,
                     progress=False)
    graph, back = _round_trip(snn, x, tmp_path)
    assert torch.equal(snn(x), back(x))
    assert back.timesteps == 6
    neurons = [n for n in graph.nodes.values() if isinstance(n, nir.IF)]
    assert neurons and all(n.metadata["reset"] == "subtract" for n in neurons)
    assert any(isinstance(n, nir.Scale) for n in graph.nodes.values())  # θ·s
    if name == "resnet7":  # residual sums: two edges into one node
        targets = [dst for _, dst in graph.edges]
        assert any(targets.count(t) == 2 for t in set(targets))


def test_what_nir_cannot_say_is_refused_or_reported(tmp_path):
    torch.manual_seed(0)
    ann = sf.models.create("cnn_small", num_classes=10, in_channels=1).eval()
    x = torch.randn(4, 1, 28, 28)
    aug = sf.convert(ann, [x], "augmapping", timesteps=2, progress=False)
    with pytest.raises(ExportError, match=r"layer 'spike_features_2': augmented spikes"):
        to_nir(aug, x)
    half = sf.convert(ann, [x], "threshold_balancing", timesteps=4, initial="half",
                      progress=False)
    with pytest.raises(ExportError, match="initial potential v\\(0\\) = θ/2"):
        to_nir(half, x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph, back = _round_trip(half, x, tmp_path, approximate=True)
    assert len(graph.metadata["approximations"]) == 4 and "approximated" in str(caught[0])
    assert torch.equal(half(x), back(x))  # our reader restores v(0) from the metadata
    pooled = sf.models.create("cnn_small", num_classes=10, in_channels=1, pool="max").eval()
    with pytest.raises(ExportError, match="spiking max-pool"):
        to_nir(sf.convert(pooled, [x], timesteps=2, progress=False), x)


def test_foreign_nir_features_are_refused_by_the_reader():
    graph = nir.NIRGraph(
        nodes={"input": nir.Input(torch.tensor([3]).numpy()),
               "lif": nir.LIF(tau=torch.ones(3).numpy(), r=torch.ones(3).numpy(),
                              v_leak=torch.ones(3).numpy(),
                              v_threshold=torch.ones(3).numpy()),
               "output": nir.Output(torch.tensor([3]).numpy())},
        edges=[("input", "lif"), ("lif", "output")])
    with pytest.raises(ExportError, match="'lif': a non-zero v_leak"):
        from_nir(graph)


def test_snntorch_simulates_our_exported_lif_network_identically(tmp_path):
    """Hard-reset LIF layers (a directly trained SNN's neurons) exported to a NIR file,
    read by snnTorch, simulated step by step: the same readout at every step."""
    import_nir = pytest.importorskip("snntorch.import_nir")
    from snntorch import utils

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 32), LIF(1.0, leak=0.9, reset="zero"),
                        nn.Linear(32, 16), LIF(1.0, leak=0.9, reset="zero"),
                        nn.Linear(16, 5))
    snn = sf.convert(SpikingModel(net, 8), None, "snn", progress=False)
    x = torch.rand(3, 20) * 2
    nir.write(tmp_path / "lif.nir", to_nir(snn, x))
    theirs = import_nir.import_from_nir(nir.read(tmp_path / "lif.nir"))
    utils.reset(theirs)
    steps = []
    with torch.no_grad():
        for _ in range(8):
            out = theirs(x)
            steps.append(out[0] if isinstance(out, tuple) else out)
        ours = snn(x)
    assert ours.abs().sum() > 0  # the hidden neurons fired
    torch.testing.assert_close(torch.stack(steps), ours, atol=1e-5, rtol=1e-5)


def test_cli_export_writes_a_file_that_reads_back(tmp_path, capsys):
    from spikeforge.cli import main
    from spikeforge.config import from_dict
    from spikeforge.train import TrainConfig, fit, load_model

    fit(from_dict(TrainConfig, {
        "data": {"dataset": "mnist_demo", "train_subset": 600, "test_subset": 100},
        "optim": {"epochs": 1, "lr": 0.05}, "run": {"out_dir": str(tmp_path / "ann")}}))
    out = tmp_path / "net.nir"
    assert main(["export", "--checkpoint", str(tmp_path / "ann" / "checkpoint.pt"),
                 "--out", str(out), "--method", "threshold_balancing:channelwise=true",
                 "--timesteps", "16", "--calibration-samples", "256"]) == 0
    assert "4 IF" in capsys.readouterr().out
    back = from_nir(nir.read(out))
    assert back.timesteps == 16
    x = torch.rand(2, 1, 28, 28)
    ann = load_model(tmp_path / "ann" / "checkpoint.pt")
    assert back(x).shape == (16, 2, 10) and ann(x).shape == (2, 10)
    assert main(["export", "--checkpoint", str(tmp_path / "ann" / "checkpoint.pt"),
                 "--out", str(out), "--method", "termapping"]) == 2
    assert "ternary spikes cannot be written in NIR" in capsys.readouterr().err



def test_export_is_part_of_the_public_api_and_imported_on_first_use():
    code = ("import sys, spikeforge as sf; assert 'spikeforge.export' not in sys.modules; "
            "assert callable(sf.export.to_nir) and 'spikeforge.export' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
