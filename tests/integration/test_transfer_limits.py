"""The policy's per-cloud limits against the real emulators over loopback, where an unlimited transfer runs
at hundreds of MB/s: a limited one is measured no faster than its limit allows.

Only the direction a slow machine cannot break is asserted. With a bucket of `burst` bytes, N bytes at R
bytes/s cannot finish in less than (N - burst) / R seconds; a slow machine only takes longer. The request
limit is measured by the test's own counter of streams open at once, around the store's calls.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid

import pytest

from wedsync_dr.storage import open_store
from wedsync_dr_dev.local_stack import BUCKET

MiB = 1 << 20
CLOUDS = {  # the policy's cloud -> (kind, conn id, options that take each adapter's multipart/block/chunk path)
    "aws": ("s3", "backup_s3", {"multipart_threshold": 5 * MiB, "multipart_chunksize": 5 * MiB}),
    "azure": ("azure_blob", "backup_azure", {"max_block_size": 1 * MiB, "max_single_put_size": 1 * MiB}),
    "gcp": ("gcs", "backup_gcs", {"chunk_size": 256 * 1024}),
}
SIZE = 6 * MiB + 3  # two S3 parts, seven Azure blocks, 25 GCS chunks
RATE = 3 * MiB  # about 1.6 s per transfer; the emulators take 8-30 MiB/s unlimited (GCS in 256 KiB chunks slowest)
REQUESTS = 2
JOIN_TIMEOUT = 120  # a hang guard only


def _store(cloud: str):
    kind, conn_id, options = CLOUDS[cloud]
    return open_store(cloud, kind, conn_id, BUCKET, **options,
                      limits={"bytes_per_second": RATE, "concurrent_requests": REQUESTS})


def _fastest_allowed(size: int, burst: float) -> float:
    """The highest average rate the limit allows for `size` bytes: all of the burst, then RATE."""
    return size / ((size - burst) / RATE)


@pytest.mark.parametrize("cloud", sorted(CLOUDS))
def test_uploads_and_downloads_are_no_faster_than_the_limit(stack, tmp_path, cloud):
    store = _store(cloud)
    burst = store.limits.bucket.burst
    data = os.urandom(SIZE)
    path = tmp_path / "object"
    path.write_bytes(data)
    key = f"limits-test/{uuid.uuid4().hex}/object"
    assert store.head(key) is None  # the SDK's client is built and connected before the clock starts

    started = time.monotonic()
    store.put_file(key, path, sha256=hashlib.sha256(data).hexdigest())
    upload_rate = SIZE / (time.monotonic() - started)

    started = time.monotonic()
    with store.open_read(key) as stream:
        read_back = stream.read()
    download_rate = SIZE / (time.monotonic() - started)

    store.delete(key)
    assert read_back == data
    print(f"\n{cloud}: upload {upload_rate / MiB:.2f} MiB/s, download {download_rate / MiB:.2f} MiB/s, "
          f"limit {RATE / MiB:.0f} MiB/s")
    assert upload_rate <= _fastest_allowed(SIZE, burst)
    assert download_rate <= _fastest_allowed(SIZE, burst)


@pytest.mark.parametrize("cloud", sorted(CLOUDS))
def test_requests_in_flight_never_exceed_the_limit(stack, cloud):
    store = _store(cloud)
    prefix = f"limits-test/{uuid.uuid4().hex}/"
    lock = threading.Lock()
    open_now, peak = [0], [0]
    errors: list[BaseException] = []

    def read_one(key: str) -> None:
        try:
            with store.open_read(key) as stream:  # the stream holds its slot until closed
                with lock:
                    open_now[0] += 1
                    peak[0] = max(peak[0], open_now[0])
                stream.read()
                with lock:
                    open_now[0] -= 1
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    keys = [f"{prefix}{i}" for i in range(8)]
    writers = [threading.Thread(target=store.put_bytes, args=(key, os.urandom(64 * 1024))) for key in keys]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join(JOIN_TIMEOUT)
    readers = [threading.Thread(target=read_one, args=(key,)) for key in keys]
    for thread in readers:
        thread.start()
    for thread in readers:
        thread.join(JOIN_TIMEOUT)

    assert not errors, errors
    assert sorted(info.key for info in store.list(prefix)) == sorted(keys)
    assert store.delete_prefix(prefix) == len(keys)
    assert 1 <= peak[0] <= REQUESTS
    assert 1 <= store.limits.slots.peak <= REQUESTS
