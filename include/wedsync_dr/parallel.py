"""Bounded fan-out for many small cloud requests (uploads of small objects, HEAD checks)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, ThreadPoolExecutor
from typing import Any


def in_parallel(fn: Callable[[Any], Any], items: list[Any], concurrency: int, name: str) -> list[Any]:
    """`fn` over `items`, up to `concurrency` at a time; results in the order of `items`.

    On the first error no further item starts, those in flight finish, and the error is raised: a cloud
    that is down fails a task after one retry deadline, not one per object.
    """
    if concurrency <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    # The worker that fails raises the flag itself, before its exception travels anywhere: waiting for
    # the caller's thread to notice and cancel leaves a fast sibling time to start every remaining item.
    failed = threading.Event()

    def guarded(item: Any) -> Any:
        if failed.is_set():
            raise CancelledError
        try:
            return fn(item)
        except BaseException:
            failed.set()
            raise

    pool = ThreadPoolExecutor(max_workers=min(concurrency, len(items)), thread_name_prefix=name)
    try:
        futures = [pool.submit(guarded, item) for item in items]
        results = []
        for future in futures:
            try:
                results.append(future.result())
            except CancelledError:
                continue  # skipped after another item failed: that failure, further on, is what is raised
            except BaseException:
                failed.set()
                raise
        return results
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
