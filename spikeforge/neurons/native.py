"""spikeforge's C++ kernels for a CPU, built on first use: the fused binary LIF scan
(``lif_kernels.cpp``: BPTT's forward and backward, and the scan without gradient of a
converted network) and a spike-fed convolution's forward and weight gradient
(``spikeforge/nn/conv_kernels.cpp``, :mod:`spikeforge.nn.spike_conv`).

:func:`build_kernels` compiles a source with PyTorch's extension builder (a C++ compiler and
ninja are needed) for the CPU it runs on (:func:`build_target`), once per user (torch caches
the build in ``$TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``), and
returns the loaded module. Where it cannot be built it warns once and returns None, and the
callers run the same arithmetic with torch's operators, several times slower: the eager scans
(:mod:`spikeforge.neurons.bptt`, :mod:`spikeforge.neurons.functional`), ATen's dense
convolutions. The layout helpers at the end give the LIF kernels their (T, N) views.
``SPIKEFORGE_NATIVE=0`` turns the kernels off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import warnings
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from spikeforge.runtime import cpu_info

__all__ = ["NATIVE_ENV", "build_kernels", "build_target", "empty_steps", "held", "in_order",
           "lif_kernels", "memory_order", "native_enabled", "native_status", "repeating",
           "step_in_order"]

NATIVE_ENV = "SPIKEFORGE_NATIVE"
_SOURCE = Path(__file__).with_name("lif_kernels.cpp")
# -fopenmp: at::parallel_for spreads the loops over torch's threads, as its own ops do
# (without it the loops run on one thread); the target (-march) comes from build_target(),
# -ffp-contract from build_kernels' caller
_FLAGS = ["-O3", "-fopenmp"]

#: x86: a capability torch may be capped at (``ATEN_CPU_CAPABILITY``) → the flag of a CPU
#: above it, and the portable target of that level
_CAPPED = {"AVX2": ("avx512f", "x86-64-v3"), "DEFAULT": ("avx2", "x86-64-v2")}

log = logging.getLogger(__name__)


def native_enabled() -> bool:
    """Whether the kernels may be used: ``$SPIKEFORGE_NATIVE`` is not ``0``."""
    return os.environ.get(NATIVE_ENV, "1") != "0"


def build_target() -> tuple[str, str]:
    """The suffix of the kernels' build names and their ``-march`` flag, for the vector ISA
    torch runs at (``torch.backends.cpu.get_cpu_capability()``). On x86 when that is capped
    below the CPU (``ATEN_CPU_CAPABILITY=avx2`` on an AVX-512 CPU), a portable target of
    that level (AVX2: ``x86-64-v3``), so the kernels use what torch uses; else
    ``-march=native``, with a digest of the CPU's feature flags in the name: a build
    directory shared by different CPUs (a network home) keeps one build per CPU, never
    loading code for instructions this one lacks."""
    capability = torch.backends.cpu.get_cpu_capability()
    flags = _cpu_flags()
    above, target = _CAPPED.get(capability, (None, None))
    if platform.machine().lower() in ("x86_64", "amd64") and above in flags:
        return capability.lower(), f"-march={target}"
    digest = hashlib.sha1(" ".join(sorted(flags)).encode()).hexdigest()[:8]
    return f"{capability.lower()}_{digest}", "-march=native"


def _cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; the processor's name elsewhere)."""
    info = cpu_info()
    flags = info.get("flags") or info.get("Features")
    return set(flags.split()) if flags else {platform.processor() or platform.machine()}


#: the builds of this process by source: the loaded module, or None where the build failed
_BUILDS: dict[Path, ModuleType | None] = {}


def build_kernels(source: Path, fused_multiply_add: bool = False) -> ModuleType | None:
    """The C++ ``source`` built for this CPU and loaded (once per process; torch caches the
    build across processes), or None, with one warning, where it cannot be built or
    ``SPIKEFORGE_NATIVE=0``. Without ``fused_multiply_add`` (``-ffp-contract=off``) every
    ``a·b + c`` rounds twice, as torch's eager operators compute it: the LIF kernels equal
    the eager scan bit for bit."""
    if not native_enabled():
        return None
    if source not in _BUILDS:
        from torch.utils import cpp_extension

        suffix, march = build_target()
        contract = f"-ffp-contract={'fast' if fused_multiply_add else 'off'}"
        name = f"spikeforge_{source.stem}_{suffix}"
        log.info("building spikeforge's kernels %s (once per machine)", name)
        try:
            _BUILDS[source] = cpp_extension.load(name, [str(source)],
                                                 extra_cflags=[*_FLAGS, march, contract],
                                                 extra_ldflags=["-fopenmp"])
        except Exception as err:  # noqa: BLE001 - no compiler, no ninja, a failed build
            last = str(err).strip().splitlines()[-1] if str(err).strip() else ""
            warnings.warn(f"spikeforge's kernels {source.name} could not be built "
                          f"({type(err).__name__}: {last}); torch's operators run instead "
                          f"(slower: the eager scan, the dense convolutions). Set "
                          f"{NATIVE_ENV}=0 to skip the build.", stacklevel=3)
            _BUILDS[source] = None
    return _BUILDS[source]


def lif_kernels() -> ModuleType | None:
    """The loaded LIF kernels (``scan_forward``, ``scan_backward``, ``scan_infer``), or None
    where they are turned off or cannot be built."""
    return build_kernels(_SOURCE)


def native_status() -> str:
    """For provenance, without building anything: ``"off"`` (``SPIKEFORGE_NATIVE=0``),
    ``"unused"`` (the LIF kernels not asked for yet in this process), ``"built"`` or
    ``"failed"``."""
    if not native_enabled():
        return "off"
    if _SOURCE not in _BUILDS:
        return "unused"
    return "built" if _BUILDS[_SOURCE] is not None else "failed"


# --- how tensors are laid out for the kernels ------------------------------------------------

def step_in_order(x: Tensor, z: Tensor, order: list[int]) -> Tensor:
    """``x`` (broadcastable to one step of ``z``) as a view of one step in the memory order
    of ``z.permute(order)``'s steps."""
    return x.expand(z.shape[1:]).permute([d - 1 for d in order[1:]])


def repeating(x: Tensor, z: Tensor, order: list[int]) -> Tensor:
    """The shortest contiguous run of values that, repeated, gives ``x``'s value for every
    neuron of a step in memory order: its values along the dims after its outermost broadcast
    ones (a per-channel θ of a channels-last layer: its C values; a scalar: one value; a
    tensor of one step's size: all of it)."""
    step = step_in_order(x, z, order)
    outer = next((d for d in range(step.ndim) if step.stride(d) != 0), step.ndim)
    return step[(0,) * outer].contiguous()


def memory_order(x: Tensor) -> list[int]:
    """The dims of ``x`` from the largest stride to the smallest, time first:
    ``x.permute(order)`` is contiguous for a dense ``x`` in any memory format."""
    return [0, *sorted(range(1, x.ndim), key=lambda d: -x.stride(d))]


def held(z: Tensor) -> bool:
    """Whether the time-first ``z`` is one step held for all its T > 1 steps (time stride 0:
    an expanded step, as a direct input's current)."""
    return z.ndim > 0 and z.shape[0] > 1 and z.stride(0) == 0


def in_order(z: Tensor, order: list[int]) -> Tensor:
    """``z`` as the kernels read it, in memory ``order`` (:func:`memory_order`): its steps
    (T, ...), or for a :func:`held` ``z`` its one step (...)."""
    return z[0].permute([d - 1 for d in order[1:]]) if held(z) else z.permute(order)


def empty_steps(z: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """An empty tensor of ``z``'s (T, ...) shape with each step laid out as ``z``'s and the
    steps one after another: ``torch.empty_like(z)``, also for a :func:`held` ``z`` (where
    ``empty_like`` would fall back to the contiguous format)."""
    if not held(z):
        return torch.empty_like(z, dtype=dtype)
    order = memory_order(z)
    return z.new_empty([z.shape[d] for d in order], dtype=dtype or z.dtype).permute(
        [order.index(d) for d in range(z.ndim)])
