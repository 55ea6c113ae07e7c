"""Small objects go to (and are checked in) a cloud several at a time; large ones one at a time; a failure
stops the rest."""

from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path

import pytest

from wedsync_dr import backup, format, staging
from wedsync_dr.parallel import in_parallel
from wedsync_dr.policy import load_policy
from wedsync_dr.repair import repair_backup
from wedsync_dr.storage import ObjectInfo

BARRIER_TIMEOUT = 30  # generous: a slow machine only makes the parties arrive later, never fail


def test_in_parallel_runs_up_to_concurrency_at_once_and_keeps_the_order():
    meet = threading.Barrier(4, timeout=BARRIER_TIMEOUT)  # breaks unless 4 calls are in flight together

    def square(n: int) -> int:
        meet.wait()
        return n * n

    assert in_parallel(square, list(range(8)), 4, "t") == [n * n for n in range(8)]


def test_in_parallel_with_concurrency_one_runs_in_the_callers_thread():
    threads = in_parallel(lambda _: threading.current_thread(), [1, 2, 3], 1, "t")
    assert threads == [threading.current_thread()] * 3


def test_in_parallel_cancels_what_has_not_started_after_an_error():
    started: list[int] = []
    lock = threading.Lock()

    def fail_first(n: int) -> int:
        with lock:
            started.append(n)
        if n == 0:
            raise RuntimeError("cloud down")
        return n

    with pytest.raises(RuntimeError, match="cloud down"):
        in_parallel(fail_first, list(range(500)), 2, "t")
    assert 0 in started and len(started) < 500


class RecordingStore:
    """An ObjectStore stand-in that records how many puts overlap and holds one blob already."""

    cloud = "mem"

    def __init__(self, small_parties: int, existing_blob: tuple[str, str] | None = None):
        self.meet = threading.Barrier(small_parties, timeout=BARRIER_TIMEOUT)
        self.lock = threading.Lock()
        self.in_flight = 0
        self.overlapping_large: list[str] = []
        self.put: dict[str, int] = {}
        self.existing = dict([existing_blob]) if existing_blob else {}

    def head(self, key: str):
        sha = self.existing.get(key)
        return type("Info", (), {"sha256": sha})() if sha else None

    def put_file(self, key: str, path: Path, **_kwargs):
        size = path.stat().st_size
        small = size <= backup.SMALL_OBJECT_BYTES
        with self.lock:
            self.in_flight += 1
            if not small and self.in_flight > 1:
                self.overlapping_large.append(key)
        try:
            if small:
                self.meet.wait()
            self.put[key] = size
        finally:
            with self.lock:
                self.in_flight -= 1


def _staged(tmp_path: Path, sizes: list[int], blob_index: int | None = None) -> dict:
    """encrypt's hand-off to the uploads: entries in encrypt.json, ciphertexts beside it (local staging in
    `tmp_path`, which the caller makes the policy's staging directory)."""
    area, work = staging.LocalStaging(tmp_path), tmp_path / "b-1"
    work.mkdir(exist_ok=True)
    entries = []
    for i, size in enumerate(sizes):
        common = {"key": f"backup/object-{i}", "compression": "none", "plaintext_size": size,
                  "ciphertext_size": size, "ciphertext_sha256": f"{i:064x}", "ciphertext_md5": "0" * 32,
                  "ciphertext_crc32c": "0" * 8, "encryption": {"kek_id": "k1", "wrapped_key": "w"}}
        entry = format.Blob(content_id=f"object-{i}", **common) if i == blob_index else \
            format.DataObject(name=f"object-{i}.tink", source="t", plaintext_sha256=f"{i:064x}", **common)
        backup._ciphertext_path(work, entry).write_bytes(b"x" * size)
        entries.append(entry)
    backup._write_entries(area, "b-1", "encrypt.json", entries)
    return {"backup_id": "b-1", "lock_until": None}


@pytest.fixture
def staging_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("WEDSYNC_STAGING_DIR", str(tmp_path))
    monkeypatch.delenv(staging.STAGING_URL_ENV, raising=False)
    return tmp_path


def test_upload_sends_small_objects_together_and_large_ones_alone(staging_dir):
    policy = load_policy().with_overrides(upload_concurrency=4)
    big = backup.SMALL_OBJECT_BYTES + 1
    sizes = [100] * 8 + [big, big]
    store = RecordingStore(small_parties=4)
    result = backup.run_upload(policy, "mem", _staged(staging_dir, sizes), store=store)
    assert store.put == {f"backup/object-{i}": size for i, size in enumerate(sizes)}
    assert store.overlapping_large == []
    assert result["objects"] == 10 and result["bytes"] == sum(sizes) and result["skipped_blobs"] == 0


def test_upload_skips_a_blob_the_cloud_already_holds(staging_dir):
    policy = load_policy().with_overrides(upload_concurrency=3)
    summary = _staged(staging_dir, [10, 20, 30, 40], blob_index=3)
    store = RecordingStore(small_parties=3, existing_blob=("backup/object-3", f"{3:064x}"))
    result = backup.run_upload(policy, "mem", summary, store=store)
    assert sorted(store.put) == ["backup/object-0", "backup/object-1", "backup/object-2"]
    assert (result["objects"], result["skipped_blobs"], result["bytes"]) == (3, 1, 60)


class SweepStore:
    """A cloud for repair: HEADs of the check phase must overlap (a barrier), later calls run freely."""

    def __init__(self, cloud: str, objects: dict[str, bytes], barrier: threading.Barrier | None):
        self.cloud, self.objects, self.barrier = cloud, objects, barrier
        self.heads = 0
        self.lock = threading.Lock()

    def head(self, key: str):
        with self.lock:
            self.heads += 1
            in_check_phase = self.barrier is not None and self.heads <= self.barrier.parties
        if in_check_phase:
            self.barrier.wait()
        data = self.objects.get(key)
        if data is None:
            return None
        digest = hashlib.sha256(data).hexdigest()
        return ObjectInfo(key=key, size=len(data), sha256=digest, metadata={}, native={}, updated=None)

    def open_read(self, key: str):
        return io.BytesIO(self.objects[key])

    def put_file(self, key: str, path: Path, **_kwargs) -> None:
        self.objects[key] = path.read_bytes()

    def put_bytes(self, key: str, data: bytes, **_kwargs) -> None:
        self.objects[key] = data


def test_repair_checks_objects_together_then_copies_what_is_missing(tmp_path):
    bodies = {f"b/object-{i}": f"ciphertext {i}".encode() for i in range(8)}
    manifest = format.Manifest.from_json({
        "backup_id": "b-1", "prefix": "b", "data_class": "vendor_data", "created_at": "2026-01-01T00:00:00+00:00",
        "objects": [{"key": key, "name": key.rsplit("/", 1)[1], "source": "t", "compression": "zstd",
                     "plaintext_size": 1, "plaintext_sha256": "0" * 64, "ciphertext_size": len(body),
                     "ciphertext_sha256": hashlib.sha256(body).hexdigest(), "encryption": {"kek_id": "k1"}}
                    for key, body in bodies.items()]})
    whole = SweepStore("aws", dict(bodies), threading.Barrier(4, timeout=BARRIER_TIMEOUT))
    gappy = SweepStore("gcp", {k: v for k, v in bodies.items() if not k.endswith(("-2", "-5"))}, None)
    result = repair_backup(manifest, {"aws": whole, "gcp": gappy}, tmp_path, concurrency=4)
    assert sorted(result.copied) == [("b/object-2", "aws", "gcp"), ("b/object-5", "aws", "gcp")]
    assert result.unrepairable == [] and result.clouds_ok == ["aws", "gcp"]
    assert {k: gappy.objects[k] for k in bodies} == bodies and "b/manifest.json" in gappy.objects
