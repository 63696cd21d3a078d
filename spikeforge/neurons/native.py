"""The fused CPU kernels of the BPTT scan (``lif_kernels.cpp``), built on first use.

:func:`lif_kernels` compiles the C++ source with PyTorch's extension builder (a C++ compiler
and ninja are needed) for the CPU it runs on, once per user (torch caches the build in
``$TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``), and returns the loaded
module. Where it cannot be built it warns once and returns None, and
:mod:`spikeforge.neurons.bptt` runs its eager scan, the same arithmetic several times slower.
``SPIKEFORGE_NATIVE=0`` turns the kernels off.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["NATIVE_ENV", "lif_kernels", "native_enabled", "native_status"]

NATIVE_ENV = "SPIKEFORGE_NATIVE"
_SOURCE = Path(__file__).with_name("lif_kernels.cpp")
# -march=native: the build is for this CPU, so its vector ISA is in the module's name (a home
# directory shared by machines of different kinds keeps one build per kind);
# -ffp-contract=off: no fused multiply-adds, so the forward equals the eager scan bit for bit
_FLAGS = ["-O3", "-march=native", "-ffp-contract=off"]

log = logging.getLogger(__name__)


def native_enabled() -> bool:
    """Whether the kernels may be used: ``$SPIKEFORGE_NATIVE`` is not ``0``."""
    return os.environ.get(NATIVE_ENV, "1") != "0"


@functools.cache
def _build() -> ModuleType | None:
    from torch.utils import cpp_extension

    name = f"spikeforge_lif_{torch.backends.cpu.get_cpu_capability().lower()}"
    log.info("building the fused LIF kernels (%s, once per machine)", name)
    try:
        return cpp_extension.load(name, [str(_SOURCE)], extra_cflags=_FLAGS)
    except Exception as err:  # noqa: BLE001 - no compiler, no ninja, a failed build
        warnings.warn(f"the fused LIF kernels could not be built ({type(err).__name__}: "
                      f"{str(err).strip().splitlines()[-1] if str(err).strip() else ''}); "
                      f"training runs the eager scan (slower). Set {NATIVE_ENV}=0 to skip "
                      "the build.", stacklevel=3)
        return None


def lif_kernels() -> ModuleType | None:
    """The loaded kernels (``scan_forward``, ``scan_backward``), or None where they are
    turned off or cannot be built."""
    return _build() if native_enabled() else None


def native_status() -> str:
    """For provenance, without building anything: ``"off"`` (``SPIKEFORGE_NATIVE=0``),
    ``"unused"`` (not asked for yet in this process), ``"built"`` or ``"failed"``."""
    if not native_enabled():
        return "off"
    if not _build.cache_info().currsize:
        return "unused"
    return "built" if _build() is not None else "failed"
