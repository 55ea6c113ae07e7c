"""Bounded fan-out for many small cloud requests (uploads of small objects, HEAD checks)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def in_parallel(fn: Callable[[Any], Any], items: list[Any], concurrency: int, name: str) -> list[Any]:
    """`fn` over `items`, up to `concurrency` at a time; results in the order of `items`.

    On the first error the items not yet started are cancelled, those in flight finish, and the error
    is raised: a cloud that is down fails a task after one retry deadline, not one per object.
    """
    if concurrency <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    pool = ThreadPoolExecutor(max_workers=min(concurrency, len(items)), thread_name_prefix=name)
    try:
        return list(pool.map(fn, items))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
