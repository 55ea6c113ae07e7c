"""The one home of how a task process's heap is kept near what it holds (the issue's 200 MB per task).

Every heavy step streams through buffers of 1-8 MiB (COPY segments, packs, a restore's held packs, upload
parts) from worker threads. glibc's malloc, left as it starts, keeps such buffers once they are freed:

- its mmap threshold is dynamic: freeing one mmapped buffer raises the threshold to that buffer's size, so
  the next ones of that size come from a heap, which is returned to the system only from its top;
- each thread that allocates gets an arena of its own (up to 8 per core), and freed memory stays with the
  arena that served it.

`bound_heap()` also takes every object the process holds when its first step starts (Airflow, the providers,
the SDKs: about a million) out of the cyclic garbage collector's sweeps (`gc.freeze`). A step that keeps tens
of thousands of small containers (a day-1 extract's chunk places, a restore's extents) sets off full
collections, and each one walked the whole import graph: 2.5-3.5 % of both cores during a 1 GB extract
(perf; the extract process used 0.3-0.6 CPU-s less without them, of ~10). Objects created later are
collected as before; what is frozen was live anyway.

It fixes the mmap threshold (a buffer of 256 KiB or more is mapped on its own and unmapped when
freed), trims a heap whose free top exceeds 256 KiB, and caps the arenas at two. Measured on one 1 GB day-1
backup (`bench/bench_dedup.py` figures in the README): the steps' peak RSS fell by 5-9 MB each; the extract's
time did not change beyond run-to-run noise. Elsewhere than glibc (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

MMAP_THRESHOLD = 256 << 10
TRIM_THRESHOLD = 256 << 10
ARENA_MAX = 2

_bounded = False
_frozen = False


def bound_heap() -> bool:
    """Tune this process's malloc once (see the module docstring); True where it took effect. Idempotent and
    cheap: each heavy step calls it first, so the bench's forked steps and Airflow's tasks run alike."""
    global _bounded, _frozen
    if not _frozen:
        gc.freeze()  # once: a long-lived process (a test session) keeps collecting what later steps leave
        _frozen = True
    if _bounded:
        return True
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    settings = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_ARENA_MAX, ARENA_MAX))
    _bounded = all(mallopt(param, value) == 1 for param, value in settings)  # glibc: 1 on success
    if not _bounded:
        log.debug("malloc tuning not available here: heap left as the C library sets it")
    return _bounded


def return_free_memory() -> None:
    """Give the heap's free pages back to the system now (glibc `malloc_trim`): between a step's phases, so
    what the next one loads (another cloud's SDK for a commit) starts from what is held, not from what was."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library the interpreter runs on (its symbols are the process's own), or None where it cannot be
    opened."""
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None
