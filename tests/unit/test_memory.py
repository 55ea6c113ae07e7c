"""A task process's heap: buffers a step freed go back to the system (`wedsync_dr.memory`)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from wedsync_dr import memory

INCLUDE = Path(memory.__file__).resolve().parents[1]

# A fresh interpreter each: malloc's state is per process. MiB buffers freed below a live allocation, the way
# a pipeline frees its last pack while a log line or a row from the catalog sits above it in the heap.
_RETAINED_AFTER_FREE = textwrap.dedent("""
    import sys
    sys.path.insert(0, {include!r})
    from wedsync_dr import memory
    if {bound}:
        assert memory.bound_heap() and memory.bound_heap()  # the second call is a no-op that still says so
    def anon_mib():
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("RssAnon")) >> 10
    first = bytearray(1 << 20)
    del first  # glibc: freeing a mapped buffer raises its mmap threshold to that size
    base = anon_mib()
    buffers = [bytearray(1 << 20) for _ in range(64)]
    above = bytearray(100_000)
    del buffers
    print(anon_mib() - base)
""")


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc")
@pytest.mark.skipif(any(k.startswith("MALLOC_") or k in ("GLIBC_TUNABLES", "LD_PRELOAD") for k in os.environ),
                    reason="malloc is tuned or replaced in this environment: its defaults are what is compared")
def test_buffers_a_step_frees_go_back_to_the_system_once_the_heap_is_bounded():
    def retained(bound: bool) -> int:
        script = _RETAINED_AFTER_FREE.format(include=str(INCLUDE), bound=bound)
        return int(subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                                  text=True).stdout)

    assert retained(False) >= 48  # what the tuning is for: glibc left alone keeps the 64 MiB resident
    assert retained(True) <= 8


_FROZEN_BEFORE_THE_STEP = textwrap.dedent("""
    import gc, sys
    sys.path.insert(0, {include!r})
    from wedsync_dr import memory
    loaded = [[i] for i in range(200_000)]  # what a task process imported before its step: long-lived containers
    memory.bound_heap()
    frozen = gc.get_freeze_count()
    memory.bound_heap()  # a second step of the same process freezes nothing more
    class Cycle:
        pass
    cycle = Cycle()
    cycle.me = cycle
    del cycle
    print(frozen, gc.get_freeze_count() - frozen, gc.collect())
""")


def test_what_was_loaded_before_the_first_step_leaves_the_collectors_sweeps_and_later_garbage_is_still_collected():
    script = _FROZEN_BEFORE_THE_STEP.format(include=str(INCLUDE))
    frozen, more, collected = map(int, subprocess.run([sys.executable, "-c", script], check=True,
                                                      capture_output=True, text=True).stdout.split())
    assert frozen >= 200_000
    assert more == 0
    assert collected >= 1  # the cycle made after the freeze is found and freed
