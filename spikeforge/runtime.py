"""Runtime helpers shared by training, simulation and the CLI: device choice, seeding,
thread count, atomic file writes (binary, torch, JSON and JSON Lines) and provenance."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import json
import os
import platform
import random
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import numpy as np
import torch


def select_device(requested: str | None = None) -> torch.device:
    """Return ``requested`` if given (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...), else CUDA when
    available, else CPU. Asking for CUDA on a machine without it is an error, not a fallback."""
    if requested in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} was requested but CUDA is not available here")
    return device


COMPILE_ENV = "SPIKEFORGE_COMPILE"
Fn = TypeVar("Fn", bound=Callable[..., Any])


def compile_enabled() -> bool:
    """Whether :func:`compilable` functions run compiled: ``$SPIKEFORGE_COMPILE`` is ``1``."""
    return os.environ.get(COMPILE_ENV, "0") == "1"


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """Float32 convolutions and matrix products in IEEE float32 on CUDA within the block.

    PyTorch lets cuDNN compute float32 convolutions in TF32 (a 10-bit mantissa) by default.
    A simulation in float32 promises the arithmetic of its ANN: AugMapping on learned
    thresholds at T = 1 is the quantized ANN, decision for decision, and a TF32 rounding of
    a pre-activation that lies on a quantization level moves it to the next one. CPU
    computations are IEEE float32 either way. The switches are process-wide and restored on
    exit."""
    switches = [(torch.backends.cudnn.conv, "fp32_precision", "ieee"),
                (torch.backends.cuda.matmul, "fp32_precision", "ieee")]
    switches = [(obj, name, value) for obj, name, value in switches if hasattr(obj, name)]
    if not switches:  # torch < 2.9: the older switches
        switches = [(torch.backends.cudnn, "allow_tf32", False),
                    (torch.backends.cuda.matmul, "allow_tf32", False)]
    saved = [getattr(obj, name) for obj, name, _ in switches]
    try:
        for obj, name, value in switches:
            setattr(obj, name, value)
        yield
    finally:
        for (obj, name, _), value in zip(switches, saved, strict=True):
            setattr(obj, name, value)


def compilable(fn: Fn) -> Fn:
    """``fn``, run through ``torch.compile`` when :func:`compile_enabled`.

    For small pure functions of tensors that eager PyTorch runs as many passes over memory
    (chains of elementwise ops): inductor fuses each into one loop (C++/OpenMP on a CPU, Triton
    on CUDA). Compiling costs seconds per new input shape, so it is opt-in, for long runs
    (``SPIKEFORGE_COMPILE=1 spikeforge run ...``). Where compiling fails (no C++ compiler, an
    unsupported backend) it warns once and runs ``fn`` as it is from then on.
    """
    compiled: Callable[..., Any] | None = None

    @functools.wraps(fn)
    def call(*args: Any) -> Any:
        nonlocal compiled
        if not compile_enabled():
            return fn(*args)
        if compiled is None:
            # one graph per rank, dtype and int argument (e.g. QCFS levels) and a dynamic-shape
            # one per such combination; dynamo's default of 8 graphs per function is too few
            # for a run that trains several variants in one process
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            compiled = torch.compile(fn)
        try:
            return compiled(*args)
        except Exception as err:  # noqa: BLE001 - inductor fails in many ways
            if compiled is fn:
                raise
            warnings.warn(f"torch.compile of {fn.__qualname__} failed ({type(err).__name__}: "
                          f"{err}); running it uncompiled", stacklevel=2)
            compiled = fn
            return fn(*args)

    return call  # type: ignore[return-value]


def set_threads(threads: int | None) -> None:
    """Honour an explicit intra-op thread count (``None`` or 0 keeps PyTorch's default)."""
    if threads:
        torch.set_num_threads(int(threads))


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to serve large blocks from the heap and keep freed memory instead
    of returning it to the OS (``M_MMAP_MAX = 0``, ``M_TRIM_THRESHOLD`` = 2 GiB).

    Time-folded simulation allocates tensors of hundreds of MB per layer and call; by
    default glibc maps each one fresh from the kernel and unmaps it when freed, so every
    call pays page faults on first touch — on CPU that doubled the time of a converted
    MNIST CNN at T = 64. Process-wide, so only the command line calls it (a library should
    not). Returns whether it applied (glibc only; a no-op elsewhere).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(
            libc.mallopt(m_trim_threshold, ctypes.c_int(2**31 - 1)))
    except (OSError, AttributeError):
        return False


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Snapshot of every global RNG, for checkpoints. Only tensors and plain Python values, so
    that it loads with ``torch.load(..., weights_only=True)``."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {**np_state, "state": {"key": torch.from_numpy(np_state["state"]["key"].copy()),
                                        "pos": int(np_state["state"]["pos"])}},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a snapshot taken by :func:`rng_state`."""
    random.setstate(state["python"])
    np_state = dict(state["numpy"])
    np_state["state"] = {"key": np_state["state"]["key"].numpy(), "pos": np_state["state"]["pos"]}
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open ``path`` for binary writing so that a reader never sees a partial file: the data go
    to a temp file in the same folder, which is fsynced and then ``os.replace``d over the
    target when the ``with`` block ends without an exception (and deleted if it raises)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would make results unreadable to others
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` that never leaves a truncated checkpoint behind (see :func:`atomic_open`)."""
    with atomic_open(path) as handle:
        torch.save(obj, handle)


def write_json(path: str | os.PathLike, record: Any) -> None:
    """Write ``record`` as indented JSON, atomically (see :func:`atomic_open`)."""
    with atomic_open(path) as handle:
        handle.write(json.dumps(record, indent=2).encode())


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> None:
    """Write ``records`` as JSON Lines (one compact JSON value per line), atomically: the
    file then holds exactly these lines, whatever :func:`append_jsonl` had added before."""
    with atomic_open(path) as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in records).encode())


def append_jsonl(path: str | os.PathLike, record: Any) -> None:
    """Append ``record`` as one JSON line, creating the folder and file if needed. Not
    atomic: a kill may leave the last line partial, so a resumed writer rewrites the file
    from its own state with :func:`write_jsonl`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def describe_checkout(directory: str | os.PathLike) -> str | None:
    """The commit checked out in ``directory``, suffixed ``+dirty`` when tracked files differ
    from it; ``None`` outside a git checkout."""
    cwd = Path(directory)
    commit = _git(["rev-parse", "HEAD"], cwd)
    if not commit:
        return None
    changes = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    return commit + "+dirty" if changes else commit


@functools.cache
def git_commit() -> str | None:
    """The commit of the spikeforge code this process runs (see :func:`describe_checkout`).

    Looked up once per process and cached, so a stage written hours into a long run records
    the code that was loaded at its start, not a commit made while it ran. The CLI looks it up
    before any work starts."""
    return describe_checkout(Path(__file__).resolve().parent)


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` does bfloat16 arithmetic in hardware: a CUDA GPU that supports it,
    or a CPU with AVX512-BF16 or AMX (oneDNN's test). On other CPUs bf16 is emulated in
    float32 and runs several times slower than float32 itself."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@functools.cache
def cpu_info() -> dict[str, str]:
    """The first processor's fields in ``/proc/cpuinfo`` (``flags``, ``model name``; on ARM
    ``Features``), each as its first line gives it; empty where there is no such file."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def machine_info(device: torch.device | None = None) -> dict[str, Any]:
    """What ran a job: host, CPU count and vector instruction set (``"AVX2"``,
    ``"AVX512"``, ...: throughputs differ by 2x between them), torch version, device, threads
    and whether :func:`compilable` functions were compiled and the fused LIF kernels built
    (:func:`spikeforge.neurons.native.native_status`)."""
    from spikeforge.neurons.native import native_status  # the neurons import this module

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native_bf16("cpu"),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "compile": compile_enabled(),
        "native_lif": native_status(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device is not None:
        info["device"] = str(device)
        if device.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(device)
    return info
