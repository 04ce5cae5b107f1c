"""Process settings that make the CPU path fast.

glibc hands every freed block above its mmap threshold (128 KiB at first,
adapting up to 32 MiB) straight back to the kernel, and PyTorch's CPU
allocator takes each temporary from ``posix_memalign``. A batched ablation
forward makes tens of MB of temporaries per layer (activations of 16 rows x
256 tokens), so every forward page-faults them in afresh: measured on the
2-core reference machine at N=1024, F=256, one 16-ablation batch took 0.6 M
minor faults and 2.5 s of system time (about 13% of its wall time).
Keeping freed memory in the heap, as jemalloc or tcmalloc would (PyTorch's
CPU performance guide recommends preloading one of them), brings that to
20 k faults and 0.1 s.

The price: the process's resident memory stays at its peak instead of
shrinking after it. Set ``FI_RETAIN_HEAP=0`` to keep glibc's defaults.

It is a process-wide setting, so the library never makes it on its own
(:func:`~forward_influence.hf.models.load_model` and the engine leave the
allocator as they find it): ``fi-measure`` and ``fi-bench``
(:mod:`forward_influence.cli`) and the Ray workers they start call
:func:`retain_freed_memory`, and so do the timing scripts
(``scripts/bench_*.py``, ``profile_engine.py``, ``precision_floor.py``). A
program that calls the library and wants the CPU speed calls it itself.

>>> from forward_influence.runtime.host import retain_freed_memory, runtime_info
>>> isinstance(retain_freed_memory(), bool)
True
>>> sorted(runtime_info())
['heap_retained', 'threads']
>>> used = heap_in_use()
>>> used is None or used > 0
True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from typing import Any

import torch

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_RETAINED: bool | None = None


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (musl's mallopt is a stub, and it has no mallinfo2)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (an attribute lookup that fails off glibc)
    except (OSError, AttributeError):
        return None
    return libc


def retain_freed_memory() -> bool:
    """Ask glibc to keep freed blocks for reuse (idempotent).

    Raises the mmap threshold to 1 GiB (32 MiB where glibc caps it) and the
    trim threshold to 2 GiB. Returns whether the setting is in force; a
    no-op returning False off Linux/glibc or with ``FI_RETAIN_HEAP=0``.
    """
    global _RETAINED
    if _RETAINED is not None:
        return _RETAINED
    _RETAINED = False
    libc = _glibc()
    if os.environ.get("FI_RETAIN_HEAP", "1") == "0" or libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mmap_ok = bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) or bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20))
    trim_ok = bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    _RETAINED = mmap_ok and trim_ok
    return _RETAINED


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@functools.cache
def _mallinfo2() -> Any:
    libc = _glibc()
    fn = getattr(libc, "mallinfo2", None) if libc is not None else None  # glibc >= 2.33
    if fn is not None:
        fn.restype = _MallInfo2
    return fn


def heap_in_use() -> int | None:
    """Bytes the process's allocations hold now (glibc ``mallinfo2``: heap
    blocks in use plus mmap-ed blocks), or None where unavailable.

    Unlike the resident set size this falls when tensors are freed even while
    :func:`retain_freed_memory` keeps the pages, so it measures peak working
    memory.
    """
    fn = _mallinfo2()
    if fn is None:
        return None
    info = fn()
    return int(info.uordblks + info.hblkhd)


def runtime_info() -> dict[str, Any]:
    """What shapes the timings (not the numbers): threads and heap policy."""
    return {"threads": torch.get_num_threads(), "heap_retained": bool(_RETAINED)}


def available_bytes(device: torch.device) -> int:
    """Free memory on ``device``: CUDA's free bytes, else ``MemAvailable`` of ``/proc/meminfo`` (8 GiB when unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def set_threads_from_env() -> None:
    """Respect ``FI_NUM_THREADS`` (CLI/bench convenience)."""
    n = os.environ.get("FI_NUM_THREADS")
    if n:
        torch.set_num_threads(int(n))
