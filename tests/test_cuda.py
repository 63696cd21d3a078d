"""The GPU paths against the CPU ones, on the bundled MNIST subset: a converted network
simulated on CUDA (float32: the CPU's spikes and readout up to the order of float sums;
bf16, which precision="auto" picks on a GPU with bfloat16; the int8 model, which a GPU
simulates in float32 without integer kernels), the BPTT scan's spikes and gradients, and a
training run with device auto-selection and bf16 autocast. Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import spikeforge as sf
from spikeforge.data import BatchLoader, load_dataset
from spikeforge.neurons.bptt import lif_scan
from spikeforge.simulate import resolve_precision

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _trained_cnn() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """cnn_small trained for two epochs on 2 000 bundled training images, and 500 test
    images with their labels (normalised)."""
    torch.manual_seed(0)
    train, test = load_dataset("mnist_demo", "train"), load_dataset("mnist_demo", "test")
    x, y = _normalised(train, 2000)
    net = sf.models.create("cnn_small", num_classes=10, in_channels=1, activation="relu")
    optimiser = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(2):
        for i in range(0, len(x), 100):
            loss = nn.functional.cross_entropy(net(x[i:i + 100]), y[i:i + 100])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return net.eval(), *_normalised(test, 500)


def _normalised(data, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` seeded images of ``data`` as the loaders give them, with their labels."""
    return next(iter(BatchLoader(data.subset(n, seed=0), n)))


@pytest.fixture(scope="module")
def cnn():
    return _trained_cnn()


def _simulate(net: nn.Module, x: torch.Tensor, device: str, precision: str) -> torch.Tensor:
    net = net.to(device)
    snn = sf.convert(net, [x[:200].to(device)], timesteps=16, precision=precision)
    assert snn.precision == precision
    return snn(x.to(device)).float().sum(0).cpu()  # the readout summed over t


def test_float32_simulation_on_cuda_matches_the_cpu(cnn):
    net, x, y = cnn
    cpu = _simulate(net, x, "cpu", "float32")
    gpu = _simulate(net, x, "cuda", "float32")
    assert (cpu.argmax(1) == y).float().mean() > 0.85  # a working network
    # the same spikes but where a membrane lands within float rounding of θ
    assert (gpu.argmax(1) == cpu.argmax(1)).float().mean() >= 0.99
    assert (gpu - cpu).abs().mean() < 0.02 * cpu.abs().mean()


def test_auto_is_bf16_on_a_bf16_gpu_and_close_to_float32(cnn):
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    assert resolve_precision("auto", "cuda")[0] == "bf16"
    net, x, y = cnn
    exact = _simulate(net, x, "cuda", "float32").argmax(1)
    bf16 = _simulate(net, x, "cuda", "bf16").argmax(1)
    assert (bf16 == exact).float().mean() >= 0.97
    assert abs((bf16 == y).float().mean() - (exact == y).float().mean()) <= 0.02


def test_int8_model_on_cuda_matches_the_cpu(cnn):
    net, x, _ = cnn
    cpu = _simulate(net, x, "cpu", "int8").argmax(1)
    gpu = _simulate(net, x, "cuda", "int8").argmax(1)
    assert (gpu == cpu).float().mean() >= 0.99


@pytest.mark.parametrize("surrogate", ["atan", "lee"])
def test_bptt_scan_on_cuda_matches_the_cpu(surrogate):
    """IF neurons (no leak, reset by subtraction: every step exact in float32), so the spikes
    are equal bit for bit; the gradients to float rounding."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(6, 4, 8, 5, 5, generator=gen) * 0.7 + 0.3
    theta = torch.rand(8, 1, 1, generator=gen) + 0.5
    weights = torch.randn(z.shape, generator=gen)
    results = []
    for device in ("cpu", "cuda"):
        zz = z.to(device, copy=True).requires_grad_(True)
        s = lif_scan(zz, theta.to(device), surrogate=surrogate)
        (s * weights.to(device)).sum().backward()
        results.append((s.detach().cpu(), zz.grad.cpu()))
    (s_cpu, g_cpu), (s_gpu, g_gpu) = results
    assert 0.05 < s_cpu.mean() < 0.6 and torch.equal(s_gpu, s_cpu)
    torch.testing.assert_close(g_gpu, g_cpu, rtol=1e-4, atol=1e-5)


def test_training_selects_the_gpu_with_bf16_autocast(tmp_path):
    from spikeforge.config import load_config
    from spikeforge.train import TrainConfig, fit

    cfg = load_config(TrainConfig, None, [
        "kind=snn", "data.dataset=mnist_demo", "data.train_subset=2000", "data.batch_size=100",
        "model.name=cnn_small", "optim.epochs=1", "snn.timesteps=4", "run.progress=false",
        f"run.out_dir={tmp_path}"])
    result = fit(cfg)
    summary = result.summary
    assert summary["provenance"]["machine"]["device"].startswith("cuda")
    assert summary["precision"] == ("bfloat16" if torch.cuda.is_bf16_supported() else "float16")
    assert result.history[-1]["test_accuracy"] > 50.0  # percent


def test_augmapping_at_t1_is_the_quantized_ann_on_cuda(cnn):
    """At T = 1, AugMapping on learned thresholds is the CS-QCFS ANN decision for decision —
    on a GPU too, where float32 convolutions would run in TF32 unless the simulation asks
    for IEEE float32 (spikeforge.runtime.exact_float32)."""
    _, x, _ = cnn
    torch.manual_seed(1)
    ann = sf.models.create("cnn_small", num_classes=10, in_channels=1, activation="csqcfs",
                           activation_options={"levels": 8, "threshold": 2.0}).eval().cuda()
    snn = sf.convert(ann, None, "augmapping", thresholds="learned", timesteps=1)
    xs = x.cuda()
    with torch.no_grad():
        expected = ann(xs).argmax(1)
    assert torch.equal(snn(xs)[0].argmax(1), expected)
