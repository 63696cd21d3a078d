"""precision="auto": bf16 where the device computes it in hardware, else float32; the choice
and its reason recorded; a warning for bf16 where it is emulated; the command line's
default."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import spikeforge as sf
from spikeforge import simulate
from spikeforge.simulate import resolve_precision


def net_and_images() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                        nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).eval()
    return net, torch.rand(5, 1, 8, 8)


@pytest.mark.parametrize(("native", "chosen"), [(True, "bf16"), (False, "float32")])
def test_auto_picks_bf16_where_the_cpu_computes_it_else_float32(monkeypatch, native, chosen):
    monkeypatch.setattr(simulate, "native_bf16", lambda device: native)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto never warns
        precision, reason = resolve_precision("auto", "cpu")
    assert precision == chosen
    assert reason.startswith("auto on cpu") and reason.endswith(chosen)
    assert ("AVX512-BF16/AMX" in reason) and (("emulated" in reason) != native)
    net, x = net_and_images()
    snn = sf.convert(net, [x], timesteps=3, progress=False, precision="auto")
    assert snn.precision == chosen and snn.dtype == simulate.PRECISIONS[chosen]
    assert (snn.info["precision"], snn.info["precision_requested"],
            snn.info["precision_reason"]) == (chosen, "auto", reason)
    exact = sf.convert(net, [x], timesteps=3, progress=False)
    assert exact.info["precision"] == exact.info["precision_requested"] == "float32"
    if chosen == "float32":  # the same network as the one asked for by name
        assert torch.equal(snn(x), exact(x))
    else:  # the bf16 network (its accuracy is tested with the bf16 precision itself)
        assert all(m.weight.dtype == torch.bfloat16
                   for m in snn.layers((nn.Conv2d, nn.Linear)).values())
        out = snn(x)
        assert out.dtype == torch.float32 and out.shape == exact(x).shape


def test_cuda_without_native_bf16_stays_float32(monkeypatch):
    monkeypatch.setattr(simulate, "native_bf16", lambda device: False)
    assert resolve_precision("auto", "cuda")[0] == "float32"


def test_bf16_where_it_is_emulated_warns_and_says_so(monkeypatch):
    monkeypatch.setattr(simulate, "native_bf16", lambda device: False)
    with pytest.warns(UserWarning, match="bf16.*emulated.*precision='auto' chooses float32"):
        precision, reason = resolve_precision("bf16", "cpu")
    assert precision == "bf16" and "emulated" in reason
    monkeypatch.setattr(simulate, "native_bf16", lambda device: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision("bf16", "cpu") == ("bf16", "requested")
        assert resolve_precision("float32", "cpu") == ("float32", "requested")
        assert resolve_precision("int8", "cpu") == ("int8", "requested")
    with pytest.raises(ValueError, match="unknown precision 'fp16'; valid: float32, bf16, "
                                         "int8, auto"):
        resolve_precision("fp16")


def test_the_commands_default_to_auto_and_the_library_to_float32(tmp_path, monkeypatch):
    import inspect

    from spikeforge import cli
    from spikeforge.convert import convert

    parser = cli.build_parser()
    args = parser.parse_args(["convert", "--checkpoint", "model.pt"])
    assert args.precision == "auto"
    assert parser.parse_args(["convert", "--checkpoint", "m.pt", "--precision", "int8"]
                             ).precision == "int8"
    assert inspect.signature(convert).parameters["precision"].default == "float32"
    assert inspect.signature(sf.SpikingNetwork).parameters["precision"].default == "float32"

    seen = []  # `run`: auto unless the config sets a precision
    monkeypatch.setattr("spikeforge.experiments.run.run_experiment",
                        lambda exp, force=False: seen.append(dict(exp.config.conversion)) or [])
    monkeypatch.setattr("spikeforge.experiments.run.print_summary", lambda exp, entries: None)
    config = tmp_path / "exp.yaml"
    config.write_text("name: x\nann: {model: {name: cnn_small}}\n")
    assert cli.main(["run", str(config), "--out-dir", str(tmp_path / "out")]) == 0
    assert cli.main(["run", str(config), "conversion.precision=int8",
                     "--out-dir", str(tmp_path / "out")]) == 0
    assert seen == [{"precision": "auto"}, {"precision": "int8"}]


def test_exact_float32_turns_tf32_off_and_restores_it():
    """The switch that keeps a float32 simulation in IEEE float32 on CUDA (see
    tests/test_cuda.py for its effect there): set inside the block, restored after it, also
    when the block raises."""
    from spikeforge.runtime import exact_float32

    conv = torch.backends.cudnn.conv
    before = conv.fp32_precision
    with pytest.raises(RuntimeError), exact_float32():
        assert conv.fp32_precision == "ieee"
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        raise RuntimeError
    assert conv.fp32_precision == before
