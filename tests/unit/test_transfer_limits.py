"""Bandwidth and request limits per cloud, offline: the token bucket on a fake clock, the request slots with
real threads (barriers prove overlap; a counter proves the bound), and both applied by the shared store half."""

from __future__ import annotations

import copy
import io
import threading
from pathlib import Path

import pytest
import yaml

from wedsync_dr import backup
from wedsync_dr.policy import DEFAULT_POLICY_FILE, PolicyError, parse_policy
from wedsync_dr.storage import ObjectInfo, ObjectNotFound, open_store
from wedsync_dr.storage.base import BaseStore
from wedsync_dr.storage.limits import (
    RequestSlots,
    TokenBucket,
    TransferLimits,
    shared_limits,
    watch_transfers,
)

JOIN_TIMEOUT = 30  # a hang guard only: a slow machine finishes later, never fails


class FakeClock:
    """Time that passes only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class MemoryStore(BaseStore):
    """The shared store half over a dict: what it does around each adapter call."""

    def __init__(self) -> None:
        super().__init__("mem", "conn", "bucket")
        self.objects: dict[str, bytes] = {}

    def _upload(self, key, upload):
        with upload.open() as stream:
            self.objects[key] = stream.read()
        return self._head(key)

    def _open(self, key):
        stream = io.BytesIO(self.objects[key])
        return stream.read, stream.close

    def _head(self, key):
        return ObjectInfo(key, len(self.objects[key]), None, {}, {}, None)

    def _list(self, prefix):
        for key in sorted(self.objects):
            if key.startswith(prefix):
                yield self._head(key)

    def _translate(self, err, key):
        return ObjectNotFound(self.cloud, key, "no such key") if isinstance(err, KeyError) else None


# --------------------------------------------------------------------------- the token bucket


def test_n_bytes_at_r_bytes_per_second_take_n_over_r_seconds_beyond_the_burst():
    clock = FakeClock()
    bucket = TokenBucket(1000, burst=100, clock=clock, sleep=clock.sleep)
    for _ in range(50):
        bucket.take(100)  # 5,000 bytes
    assert sum(clock.slept) == pytest.approx((5000 - 100) / 1000)
    assert clock.now == pytest.approx(4.9)


def test_the_bucket_never_grants_more_than_the_burst_plus_the_rate_times_the_time():
    clock = FakeClock()
    bucket = TokenBucket(10_000, burst=2_000, clock=clock, sleep=clock.sleep)
    granted = 0
    for n in [1, 5_000, 3, 700, 12_000, 64, 64, 64, 9_999, 1]:
        bucket.take(n)
        granted += n
        assert granted <= 2_000 + 10_000 * clock.now + 1e-6
    assert granted == pytest.approx(2_000 + 10_000 * clock.now)  # and it waited no longer than it had to


def test_an_idle_bucket_refills_only_up_to_its_burst():
    clock = FakeClock()
    bucket = TokenBucket(1000, burst=100, clock=clock, sleep=clock.sleep)
    clock.now += 3600  # an hour idle
    assert bucket.take(100) == 0  # the burst goes at once
    assert bucket.take(50) == pytest.approx(0.05)  # the rest at the rate, not an hour's worth


def test_a_request_larger_than_the_bucket_borrows_and_waits_out_the_debt():
    clock = FakeClock()
    bucket = TokenBucket(1000, burst=100, clock=clock, sleep=clock.sleep)
    assert bucket.take(5_100) == pytest.approx(5.0)
    assert bucket.take(1) == pytest.approx(0.001)  # the debt is paid, nothing more is owed


def test_the_default_burst_is_a_quarter_second_of_traffic():
    assert TokenBucket(4 << 20).burst == 1 << 20
    assert TokenBucket(1024).burst == 16 * 1024  # never less than a few socket writes


def test_concurrent_takers_reserve_one_after_another():
    """On a clock that never moves, every reservation deepens the debt by exactly its size: a lost update
    between threads would change the sum of the waits."""
    waits: list[float] = []
    lock = threading.Lock()

    def record(seconds: float) -> None:
        with lock:
            waits.append(seconds)

    bucket = TokenBucket(1000, burst=100, clock=lambda: 0.0, sleep=record)
    threads = [threading.Thread(target=lambda: [bucket.take(100) for _ in range(50)]) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    # reservation i (1-based, of 400) waits (100 i - 100) / 1000 s, whichever thread made it
    assert len(waits) == 399
    assert sum(waits) == pytest.approx(sum((100 * i - 100) / 1000 for i in range(1, 401)))


# --------------------------------------------------------------------------- request slots


def test_request_slots_let_exactly_the_limit_run_at_once():
    slots = RequestSlots(2)
    both_in = threading.Barrier(2, timeout=JOIN_TIMEOUT)  # breaks unless 2 holders overlap
    active, peak, lock = [0], [0], threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        hold = slots.hold()
        try:
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            both_in.wait()
            with lock:
                active[0] -= 1
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)
        finally:
            slots.release(hold)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    assert not errors
    assert peak[0] == 2 and slots.peak == 2 and slots.in_flight == 0


def test_a_thread_holding_a_slot_never_waits_for_another():
    slots = RequestSlots(1)
    outer = slots.hold()
    nested = threading.Thread(target=lambda: slots.release(slots.hold()))
    nested.start()  # another thread waits ...
    inner = slots.hold()  # ... but this one already holds the only slot: no deadlock
    assert slots.in_flight == 1
    slots.release(inner)
    slots.release(outer)
    nested.join(JOIN_TIMEOUT)
    assert not nested.is_alive() and slots.in_flight == 0 and slots.peak == 1


def test_a_slot_released_twice_or_from_another_thread_is_given_back_once():
    slots = RequestSlots(1)
    hold = slots.hold()
    releaser = threading.Thread(target=slots.release, args=(hold,))
    releaser.start()
    releaser.join(JOIN_TIMEOUT)
    slots.release(hold)
    again = slots.hold()  # the slot is free again (a double release would have made two)
    assert slots.in_flight == 1
    slots.release(again)
    assert slots._free.acquire(blocking=False) and not slots._free.acquire(blocking=False)


# --------------------------------------------------------------------------- applied by the store


def _limited_store(bytes_per_second: int | None = None, concurrent_requests: int | None = None):
    clock = FakeClock()
    store = MemoryStore()
    store.limits = TransferLimits("mem", bytes_per_second, concurrent_requests, clock=clock, sleep=clock.sleep)
    return store, clock


def test_uploads_and_downloads_are_paced_and_seen_by_transfer_watchers(tmp_path):
    store, clock = _limited_store(bytes_per_second=100_000)
    burst = store.limits.bucket.burst
    path = tmp_path / "object"
    path.write_bytes(b"x" * 500_000)
    seen: dict[str, int] = {}

    def watch(cloud: str, direction: str, nbytes: int) -> None:
        seen[f"{cloud} {direction}"] = seen.get(f"{cloud} {direction}", 0) + nbytes

    with watch_transfers(watch):
        store.put_file("k", path, sha256="0" * 64)
        assert clock.now == pytest.approx((500_000 - burst) / 100_000)
        assert store.read_bytes("k") == path.read_bytes()
        assert clock.now == pytest.approx((1_000_000 - burst) / 100_000)  # reads draw on the same bucket
    assert seen == {"mem upload": 500_000, "mem download": 500_000}
    store.put_bytes("after", b"y" * 10)
    assert seen == {"mem upload": 500_000, "mem download": 500_000}  # a watcher sees only its own span


class OverlapStore(MemoryStore):
    """Counts SDK calls in flight (inside the adapter, where the requests are made)."""

    def __init__(self) -> None:
        super().__init__()
        self.in_sdk, self.peak = 0, 0
        self.lock = threading.Lock()
        self.two_in = threading.Barrier(2, timeout=JOIN_TIMEOUT)

    def _upload(self, key, upload):
        with self.lock:
            self.in_sdk += 1
            self.peak = max(self.peak, self.in_sdk)
        try:
            self.two_in.wait()  # breaks unless two uploads overlap
            return super()._upload(key, upload)
        finally:
            with self.lock:
                self.in_sdk -= 1


def test_concurrent_uploads_never_exceed_the_request_limit():
    store = OverlapStore()
    store.limits = TransferLimits("mem", concurrent_requests=2)
    threads = [threading.Thread(target=store.put_bytes, args=(f"k{i}", b"data")) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    assert len(store.objects) == 8
    assert store.peak == 2 and store.limits.slots.peak == 2


def test_a_download_stream_holds_a_slot_from_open_to_close_and_a_listing_only_while_it_fetches():
    store, _ = _limited_store(concurrent_requests=1)
    store.put_bytes("a", b"1")
    store.put_bytes("b", b"2")
    with store.open_read("a") as stream:
        assert store.limits.slots.in_flight == 1
        stream.read()
    assert store.limits.slots.in_flight == 0
    for info in store.list(""):
        assert store.limits.slots.in_flight == 0  # the caller's turn: it may HEAD or delete what it got
        other = threading.Thread(target=store.head, args=(info.key,))  # another thread is not kept waiting
        other.start()
        other.join(JOIN_TIMEOUT)
        assert not other.is_alive()
    assert store.limits.slots.in_flight == 0


def test_a_failed_open_gives_its_slot_back():
    store, _ = _limited_store(concurrent_requests=1)
    with pytest.raises(Exception, match="no such key"):
        store.open_read("missing")
    assert store.limits.slots.in_flight == 0


def test_with_a_request_limit_an_objects_parts_go_one_at_a_time():
    limited = open_store("aws", "s3", "c", "b", max_concurrency=8, limits={"concurrent_requests": 3})
    unlimited = open_store("aws", "s3", "c", "b", max_concurrency=8)
    assert limited._transfer_config.max_concurrency == 1
    assert unlimited._transfer_config.max_concurrency == 8
    assert open_store("azure", "azure_blob", "c", "b", limits={"concurrent_requests": 3}).limits.parallel_parts(2) == 1


def test_every_store_of_a_cloud_shares_one_limit_in_a_process():
    first = shared_limits("limits-test", 1 << 20, 4)
    assert shared_limits("limits-test", 1 << 20, 4) is first
    assert shared_limits("limits-test-2", 1 << 20, 4) is not first
    assert shared_limits("limits-test").bucket is None and shared_limits("limits-test").slots is None


@pytest.mark.parametrize("bad", [0, -5, 1.5, "50MB", True])
def test_a_store_refuses_limits_that_are_not_positive_integers(bad):
    with pytest.raises(ValueError, match="must be a positive integer"):
        open_store("aws", "s3", "c", "b", limits={"bytes_per_second": bad})


# --------------------------------------------------------------------------- from the policy

RAW = yaml.safe_load(Path(DEFAULT_POLICY_FILE).read_text())


def _policy_with(**limits_by_cloud) -> dict:
    raw = copy.deepcopy(RAW)
    for cloud in raw["clouds"]:
        if cloud["name"] in limits_by_cloud:
            cloud["limits"] = limits_by_cloud[cloud["name"]]
    return raw


def test_the_policys_limits_reach_every_store_of_their_cloud():
    policy = parse_policy(_policy_with(azure={"bytes_per_second": 5 << 20, "concurrent_requests": 3}))
    assert policy.cloud("azure").limits == {"bytes_per_second": 5 << 20, "concurrent_requests": 3}
    assert policy.cloud("aws").limits == {}
    first, second = backup.stores(policy), backup.stores(policy, ["azure"])
    assert first["azure"].limits is second["azure"].limits  # per cloud per process, however often opened
    assert (first["azure"].limits.bytes_per_second, first["azure"].limits.concurrent_requests) == (5 << 20, 3)
    assert first["aws"].limits.bucket is None and first["aws"].limits.slots is None  # absent = unlimited


@pytest.mark.parametrize(("limits", "message"), [
    ({"bytes_per_second": 10}, "clouds/1 (azure)/limits/bytes_per_second: 10 is less than the minimum of 1024"),
    ({"bytes_per_second": "50MB"}, "clouds/1 (azure)/limits/bytes_per_second: '50MB' is not of type 'integer'"),
    ({"concurrent_requests": 0}, "clouds/1 (azure)/limits/concurrent_requests: 0 is less than the minimum of 1"),
    ({"bandwidth": 100}, "clouds/1 (azure)/limits: Additional properties are not allowed ('bandwidth'"),
])
def test_bad_limits_are_refused_naming_the_cloud_and_the_field(limits, message):
    with pytest.raises(PolicyError) as refused:
        parse_policy(_policy_with(azure=limits))
    assert message in str(refused.value)
