"""Bandwidth and request limits per cloud (the policy's `clouds[].limits`), and the one place bytes are counted.

Every byte a store sends or receives passes through its cloud's `TransferLimits`: uploads as the SDK reads
(or, for S3, reports sending) them, downloads as the caller reads them. That is where they are paced by a
token bucket (`bytes_per_second`) and where observers (`watch_transfers`: a terminal's progress bars) see
them. Every request a store makes holds one of the cloud's `concurrent_requests` slots while it runs (a
download stream from open to close).

A limit is shared by every store of the same cloud in one process (`shared_limits`): the upload task, its
validation and a repair in the same worker draw on one bucket. Processes do not share: a limit is per
process, so with several workers on one uplink, divide it between them.

Semantics, and why:
- The bucket holds at most `burst` bytes (a quarter second of traffic): after an idle spell a transfer may
  start that far ahead, never further. A request for more than is in the bucket borrows against the future
  and sleeps until the debt is paid, so the bytes granted by time t never exceed burst + rate * t, however
  many threads ask at once.
- SDKs move bytes in chunks (S3: 256 KiB as it sends; Azure blocks and GCS chunks: 8 MiB by default, read
  before sending): the average rate holds to the limit, a chunk itself leaves at line speed. Lower
  `max_block_size` / `chunk_size` in a cloud's options for a smoother line.
- A thread that already holds a slot of the cloud does not wait for a second one (a stream it keeps open
  while it asks for a HEAD): nesting can never deadlock. With a request limit set, multipart and block
  uploads send one part at a time, so each slot is one request on the wire.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

TransferObserver = Callable[[str, str, int], None]  # (cloud, "upload" | "download", bytes)
BURST_SECONDS = 0.25
MIN_BURST_BYTES = 16 * 1024  # at least a few socket writes' worth, so a tiny limit does not sleep per write


class TokenBucket:
    """`rate` bytes per second with a bucket of `burst` bytes; thread-safe. `take(n)` returns once n may go.

    `clock` and `sleep` are injectable so tests can run it on a fake clock.
    """

    def __init__(self, rate: float, burst: float | None = None, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate!r}")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(rate * BURST_SECONDS, MIN_BURST_BYTES))
        if self.burst <= 0:
            raise ValueError(f"burst must be positive, got {burst!r}")
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._stamp = clock()

    def take(self, n: int) -> float:
        """Reserve `n` bytes and sleep until they are covered; returns the seconds slept."""
        if n <= 0:
            return 0.0
        with self._lock:  # reserve under the lock, sleep outside it: others queue behind the debt, not the lock
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait


@dataclass
class SlotHold:
    """What `RequestSlots.hold()` took: release it exactly once (any thread may)."""

    owner: int  # the thread that took it
    counted: bool  # False: the owner already held a slot, so nothing was taken
    released: bool = False


class RequestSlots:
    """At most `limit` requests in flight; `in_flight` and `peak` count them (a thread counts once)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"concurrent request limit must be at least 1, got {limit!r}")
        self.limit = limit
        self._free = threading.Semaphore(limit)
        self._lock = threading.Lock()
        self._held: dict[int, int] = {}  # thread id -> holds it has open
        self.in_flight = 0
        self.peak = 0

    def hold(self) -> SlotHold:
        owner = threading.get_ident()
        with self._lock:
            if self._held.get(owner):
                self._held[owner] += 1
                return SlotHold(owner, counted=False)
        self._free.acquire()
        with self._lock:
            self._held[owner] = self._held.get(owner, 0) + 1
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        return SlotHold(owner, counted=True)

    def release(self, hold: SlotHold) -> None:
        with self._lock:
            if hold.released:
                return
            hold.released = True
            remaining = self._held.get(hold.owner, 1) - 1
            if remaining:
                self._held[hold.owner] = remaining
            else:
                self._held.pop(hold.owner, None)
            if hold.counted:
                self.in_flight -= 1
        if hold.counted:
            self._free.release()


_observers: tuple[TransferObserver, ...] = ()
_observers_lock = threading.Lock()


@contextmanager
def watch_transfers(observer: TransferObserver) -> Iterator[None]:
    """Call `observer(cloud, direction, nbytes)` for every byte any store of this process moves, meanwhile.

    It is called from the threads that move the bytes (SDK transfer threads among them): keep it quick.
    """
    global _observers
    with _observers_lock:
        _observers = (*_observers, observer)
    try:
        yield
    finally:
        with _observers_lock:
            remaining = list(_observers)
            remaining.remove(observer)
            _observers = tuple(remaining)


class TransferLimits:
    """One cloud's limits in this process: pace bytes, bound requests, tell observers. None = unlimited."""

    def __init__(self, cloud: str, bytes_per_second: int | None = None, concurrent_requests: int | None = None,
                 *, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.cloud = cloud
        self.bytes_per_second = bytes_per_second
        self.concurrent_requests = concurrent_requests
        self.bucket = TokenBucket(bytes_per_second, clock=clock, sleep=sleep) if bytes_per_second else None
        self.slots = RequestSlots(concurrent_requests) if concurrent_requests else None

    def __repr__(self) -> str:
        return (f"TransferLimits(cloud={self.cloud!r}, bytes_per_second={self.bytes_per_second!r}, "
                f"concurrent_requests={self.concurrent_requests!r})")

    def pace(self, direction: str, nbytes: int) -> None:
        """`nbytes` are about to go out (or have just come in): wait for the bandwidth, then count them."""
        if nbytes <= 0:
            return
        if self.bucket is not None:
            self.bucket.take(nbytes)
        for observer in _observers:
            observer(self.cloud, direction, nbytes)

    def hold(self) -> SlotHold | None:
        """Take a request slot (None when requests are unlimited); give it back with `release`."""
        return self.slots.hold() if self.slots is not None else None

    def release(self, hold: SlotHold | None) -> None:
        if hold is not None and self.slots is not None:
            self.slots.release(hold)

    @contextmanager
    def request(self) -> Iterator[None]:
        hold = self.hold()
        try:
            yield
        finally:
            self.release(hold)

    def parallel_parts(self, configured: int) -> int:
        """How many parts of one object may go at once: one when requests are limited (a slot is a request)."""
        return 1 if self.slots is not None else configured


_shared: dict[tuple[str, int | None, int | None], TransferLimits] = {}
_shared_lock = threading.Lock()


def shared_limits(cloud: str, bytes_per_second: int | None = None,
                  concurrent_requests: int | None = None) -> TransferLimits:
    """The process's one `TransferLimits` for this cloud and these values (every store of the cloud shares it)."""
    for name, value in (("bytes_per_second", bytes_per_second), ("concurrent_requests", concurrent_requests)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"limits.{name} of cloud {cloud!r} must be a positive integer, got {value!r}")
    key = (cloud, bytes_per_second, concurrent_requests)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = TransferLimits(cloud, bytes_per_second, concurrent_requests)
        return _shared[key]
