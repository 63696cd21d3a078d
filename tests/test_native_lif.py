"""The fused CPU kernels of the BPTT scan against the eager scan they replace: the same spikes,
membrane and state bit for bit, the same gradients to float rounding, in every neuron and
surrogate setting and memory layout; and the fallback where they cannot be built."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import needs_compiler

from spikeforge.neurons import native
from spikeforge.neurons.bptt import _LIFScan, lif_scan
from spikeforge.neurons.surrogate import SURROGATES


def _currents(layout: str) -> torch.Tensor:
    """(T, B, C, H, W) currents, float32, in a memory layout: dense NCHW steps, channels-last
    steps, or a non-dense slice."""
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(7, 3, 5, 4, 6, generator=gen) * 0.8 + 0.35
    if layout == "channels_last":
        z = z.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    elif layout == "slice":
        z = torch.cat([z, z], dim=-1)[..., ::2]
    return z


def _run(z: torch.Tensor, enabled: bool, monkeypatch, **options):
    monkeypatch.setenv(native.NATIVE_ENV, "1" if enabled else "0")
    zz = z.clone().requires_grad_(True)
    theta = torch.tensor([0.6, 0.9, 1.0, 1.4, 2.0]).view(5, 1, 1)
    s = lif_scan(zz, theta, initial=0.25, **options)
    weights = torch.randn(s.shape, generator=torch.Generator().manual_seed(4))
    (s * weights).sum().backward()
    return s.detach(), s._spikeforge_bits, zz.grad


@needs_compiler
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "slice"])
@pytest.mark.parametrize("reset", ["zero", "subtract"])
@pytest.mark.parametrize("surrogate", list(SURROGATES))
def test_kernels_match_the_eager_scan(layout, reset, surrogate, monkeypatch):
    assert native.lif_kernels() is not None, "the kernels did not build"
    z = _currents(layout)
    for leak, detach_reset, grad_scale in [(0.9, False, "threshold"), (1.0, True, "unit")]:
        options = dict(leak=leak, reset=reset, surrogate=surrogate,
                       detach_reset=detach_reset, grad_scale=grad_scale)
        eager = _run(z, False, monkeypatch, **options)
        fused = _run(z, True, monkeypatch, **options)
        assert 0.05 < eager[0].mean() < 0.6  # neurons fire and stay silent
        assert torch.equal(fused[0], eager[0]) and torch.equal(fused[1], eager[1])
        assert fused[0].stride() == eager[0].stride() or layout == "slice"
        assert fused[2].abs().sum() > 1
        torch.testing.assert_close(fused[2], eager[2], rtol=1e-5, atol=1e-6)


@needs_compiler
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("surrogate", list(SURROGATES))
def test_bfloat16_scan_is_the_float32_scan_rounded(layout, surrogate, monkeypatch):
    """bfloat16 currents (autocast) run in the kernels with float32 membranes: the spikes and
    gradients are those of the float32 scan of the same currents, rounded to bfloat16."""
    z = _currents(layout).to(torch.bfloat16)
    for reset, leak in [("zero", 0.9), ("subtract", 1.0)]:
        options = dict(leak=leak, reset=reset, surrogate=surrogate)
        half = _run(z, True, monkeypatch, **options)
        zz = z.clone().requires_grad_(True)
        monkeypatch.setenv(native.NATIVE_ENV, "1")
        theta = torch.tensor([0.6, 0.9, 1.0, 1.4, 2.0]).view(5, 1, 1)
        s = lif_scan(zz.float(), theta, initial=0.25, **options).to(torch.bfloat16)
        weights = torch.randn(s.shape, generator=torch.Generator().manual_seed(4))
        (s * weights).sum().backward()
        assert half[0].dtype == half[2].dtype == torch.bfloat16
        assert half[0].stride() == z.stride()
        assert 0.05 < half[0].float().mean() < 0.6 and half[2].abs().sum() > 1
        assert torch.equal(half[0], s) and torch.equal(half[2], zz.grad)
        # kernels off between forward and backward: the eager backward, in float32
        zz = z.clone().requires_grad_(True)
        s = lif_scan(zz, theta, initial=0.25, **options)
        monkeypatch.setenv(native.NATIVE_ENV, "0")
        (s * weights).sum().backward()
        assert zz.grad.dtype == torch.bfloat16
        torch.testing.assert_close(zz.grad, half[2], rtol=1e-2, atol=1e-3)


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("surrogate", ["atan", "lee", "sigmoid"])
@pytest.mark.parametrize("enabled", [True, False])
def test_held_current_is_scanned_as_its_copies(dtype, surrogate, enabled, monkeypatch):
    """One step held for T steps (a direct input's current, ``steps=T``): the spikes of T
    copies bit for bit, the gradient their summed gradient to rounding (the kernels sum it
    in float32 themselves; without them, or for ``sigmoid``, autograd sums T views)."""
    from spikeforge.neurons.bptt import bptt_scan

    monkeypatch.setenv(native.NATIVE_ENV, "1" if enabled else "0")
    gen = torch.Generator().manual_seed(5)
    z = (torch.randn(4, 5, 6, 6, generator=gen) * 0.8 + 0.4).to(dtype).contiguous(
        memory_format=torch.channels_last)
    weights = torch.randn(7, 4, 5, 6, 6, generator=gen)
    theta = torch.tensor([0.6, 0.9, 1.0, 1.4, 2.0]).view(5, 1, 1)
    width = None if surrogate == "lee" else 1.0
    one = z.clone().requires_grad_(True)
    s = bptt_scan(one, theta, torch.tensor(0.0), 0.9, "zero", surrogate, width, False,
                  steps=7)
    (s.float() * weights).sum().backward()
    copies = z.clone().requires_grad_(True)
    rows = copies.expand(7, *z.shape).flatten(0, 1).contiguous(memory_format=torch.channels_last)
    c = bptt_scan(rows.unflatten(0, (7, 4)), theta, torch.tensor(0.0), 0.9, "zero", surrogate,
                  width, False)
    (c.float() * weights).sum().backward()
    assert torch.equal(s, c) and s.stride() == c.stride() and 0.05 < s.float().mean() < 0.6
    assert one.grad.shape == z.shape and one.grad.dtype == dtype
    tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2,
                                                                              atol=2e-2)
    torch.testing.assert_close(one.grad.float(), copies.grad.float(), **tolerance)


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inference_kernel_reads_a_held_current_once_per_step(dtype, monkeypatch):
    """The scan without gradient of one step held over time (an expanded view): the spikes
    and state of its T copies bit for bit, by the kernel, on the one step's values."""
    from spikeforge.neurons import functional

    sizes = []
    kernels = native.lif_kernels()

    class Counting:
        def scan_infer(self, z, *args):
            sizes.append(z.numel())
            return kernels.scan_infer(z, *args)

    monkeypatch.setattr(functional, "lif_kernels", lambda: Counting())
    step = _currents("channels_last")[0].to(dtype)
    params = functional.NeuronParams(torch.tensor([0.6, 0.9, 1.0, 1.4, 2.0]).view(5, 1, 1),
                                     "binary", "zero", 0.9, False, None)
    start = functional.init_state(torch.empty_like(step, dtype=torch.float32), params)
    held, state = functional.neuron_scan(step.expand(6, *step.shape), params, state=start,
                                         values=True)
    copies = step.expand(6, *step.shape).flatten(0, 1).contiguous(
        memory_format=torch.channels_last).unflatten(0, (6, len(step)))
    full, full_state = functional.neuron_scan(copies, params, state=start, values=True)
    assert sizes == [step.numel(), full.numel()]
    assert torch.equal(held, full) and held.stride() == full.stride()
    assert torch.equal(state.v, full_state.v) and 0 < (held != 0).float().mean() < 1


@needs_compiler
def test_forward_kernel_keeps_the_eager_membrane_and_state(monkeypatch):
    """What backward reads: the membrane in bfloat16 and the spikes as booleans."""
    z = _currents("channels_last")
    theta, v0 = torch.full((5, 1, 1), 0.8), torch.zeros(())
    saved = []
    for enabled in (False, True):
        monkeypatch.setenv(native.NATIVE_ENV, "1" if enabled else "0")

        class Ctx:  # what autograd's ctx receives
            def save_for_backward(self, *tensors):
                self.saved = tensors

            def mark_non_differentiable(self, *tensors):
                pass

        ctx = Ctx()
        _LIFScan.forward(ctx, z, theta, v0, 0.8, "subtract", "atan", 0.5, False, False, None)
        saved.append(ctx.saved)
    for eager, fused in zip(*saved, strict=True):
        assert eager.dtype == fused.dtype and torch.equal(eager, fused)


def test_fallback_when_the_kernels_cannot_be_built(monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("Error building extension: no compiler")

    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "load", fail)
    native._BUILDS.pop(native._SOURCE, None)
    try:
        with pytest.warns(UserWarning, match="could not be built .*no compiler.*eager scan"):
            assert native.lif_kernels() is None
        assert native.native_status() == "failed"
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once, not at every call
            z = _currents("contiguous").requires_grad_(True)
            lif_scan(z, 1.0, leak=0.9).sum().backward()
        assert z.grad.abs().sum() > 1
    finally:
        native._BUILDS.pop(native._SOURCE, None)
    monkeypatch.setenv(native.NATIVE_ENV, "0")
    assert native.lif_kernels() is None and native.native_status() == "off"


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "slice"])
@pytest.mark.parametrize("reset", ["zero", "subtract"])
def test_inference_kernel_matches_the_eager_scan(dtype, layout, reset, monkeypatch):
    """The scan without gradient (a converted network's neurons): the same spikes (or θ·s,
    ``values``, or uint8 codes, ``codes``) and final membranes bit for bit, in float32 and
    with bfloat16 currents (float32 membranes), also when a run is cut in two with the state
    carried over."""
    from spikeforge.neurons.functional import NeuronParams, init_state, neuron_scan

    assert native.lif_kernels() is not None, "the kernels did not build"
    z = _currents(layout).to(dtype)
    theta = torch.tensor([0.6, 0.9, 1.0, 1.4, 2.0]).view(5, 1, 1)
    for leak, values, codes in [(1.0, False, False), (0.9, False, False), (0.9, True, False),
                                (1.0, False, True), (0.9, False, True)]:
        params = NeuronParams(theta, "binary", reset, leak, False, None)
        runs = {}
        for enabled in (False, True):
            monkeypatch.setenv(native.NATIVE_ENV, "1" if enabled else "0")
            state = init_state(torch.empty_like(z[0], dtype=torch.float32), params, "half")
            options = {"values": values, "codes": codes}
            whole, end = neuron_scan(z, params, state=state, **options)
            first, mid = neuron_scan(z[:3], params, state=state, **options)
            second, end_cut = neuron_scan(z[3:], params, state=mid, **options)
            assert torch.equal(torch.cat([first, second]), whole)
            assert torch.equal(end_cut.v, end.v)
            runs[enabled] = whole, end.v
        (eager, v_eager), (fused, v_fused) = runs[False], runs[True]
        assert fused.dtype == (torch.uint8 if codes else dtype)
        assert 0.05 < (eager != 0).float().mean() < 0.6
        assert torch.equal(fused, eager) and torch.equal(v_fused, v_eager)
        if values or codes:  # θ·s of the spikes in the currents' dtype, or their codes
            spikes, _ = neuron_scan(z, params, state=init_state(
                torch.empty_like(z[0], dtype=torch.float32), params, "half"))
            assert torch.equal(fused, (spikes.float() * theta).to(dtype) if values
                               else spikes.to(torch.uint8))


@needs_compiler
def test_inference_kernel_runs_where_the_layout_allows(monkeypatch):
    """A dense sequence is scanned by the kernel, a non-dense one by the eager loop (both
    give the same spikes, above): the kernel is really used."""
    from spikeforge.neurons import functional

    calls = []
    kernels = native.lif_kernels()

    class Counting:
        def scan_infer(self, *args):
            calls.append(1)
            return kernels.scan_infer(*args)

    monkeypatch.setattr(functional, "lif_kernels", lambda: Counting())
    params = functional.NeuronParams(1.0, "binary", "subtract", 1.0, False, None)
    for layout, expected in [("channels_last", 1), ("slice", 0)]:
        calls.clear()
        functional.neuron_scan(_currents(layout), params)
        assert len(calls) == expected, layout


@pytest.mark.parametrize(("machine", "capability", "flags", "name", "march"), [
    # torch capped below the CPU: a portable target of torch's level
    ("x86_64", "AVX2", {"avx2", "avx512f", "avx512_bf16"}, "avx2",
     "-march=x86-64-v3"),
    ("x86_64", "DEFAULT", {"sse4_2", "avx2"}, "default", "-march=x86-64-v2"),
    # torch at the CPU's own level: this CPU's build, named by its flags
    ("x86_64", "AVX2", {"avx2", "fma"}, None, "-march=native"),
    ("x86_64", "AVX512", {"avx2", "avx512f"}, None, "-march=native"),
    ("aarch64", "DEFAULT", {"asimd", "avx2"}, None, "-march=native"),
])
def test_build_target_follows_torchs_vector_isa(monkeypatch, machine, capability, flags, name,
                                                march):
    monkeypatch.setattr(native.platform, "machine", lambda: machine)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(native, "_cpu_flags", lambda: flags)
    got_name, got_march = native.build_target()
    assert got_march == march
    if name is not None:
        assert got_name == name
    else:  # one build per CPU: the flags' digest is in the name
        assert got_name.startswith(f"{capability.lower()}_")
        monkeypatch.setattr(native, "_cpu_flags", lambda: flags | {"amx_tile"})
        assert native.build_target()[0] != got_name


def test_every_kernel_source_ships_with_the_package():
    """The C++ sources are built on the user's machine, so an installed (non-editable)
    package must carry each one: pyproject's package-data covers every ``*.cpp``."""
    from fnmatch import fnmatch
    from pathlib import Path

    import tomllib

    root = Path(native.__file__).resolve().parents[2]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]
    sources = sorted((root / "spikeforge").rglob("*.cpp"))
    assert len(sources) >= 2  # the LIF kernels and the convolution's weight gradient
    for source in sources:
        package = ".".join(source.parent.relative_to(root).parts)
        assert any(fnmatch(source.name, glob) for glob in data.get(package, [])), source
