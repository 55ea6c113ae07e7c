"""The storage adapters against the real emulators: same behaviour on every cloud, or a documented gap.

Each test runs once per cloud. Small part/block/chunk sizes make an 11 MiB object take each adapter's
multipart path (S3 5 MiB parts, Azure 1 MiB blocks, GCS 256 KiB resumable chunks: the GCS adapter streams
everything over 2 MiB resumably, of a size the library is not told, so a 4 MiB object -- an exact
multiple of the chunk -- checks how such a stream ends). Every test writes under its own random prefix.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
import uuid
from pathlib import Path

import google_crc32c
import pytest

from wedsync_dr.storage import CloudUnavailable, ObjectInfo, ObjectNotFound, StorageError, open_store
from wedsync_dr_dev import local_stack
from wedsync_dr_dev.local_stack import BUCKET

MiB = 1 << 20
# local_stack service name -> the policy's (cloud, kind, conn_id)
CLOUDS = {
    "s3": ("aws", "s3", "backup_s3"),
    "azure": ("azure", "azure_blob", "backup_azure"),
    "gcs": ("gcp", "gcs", "backup_gcs"),
}
SMALL_PARTS = {
    "s3": {"multipart_threshold": 5 * MiB, "multipart_chunksize": 5 * MiB},
    "azure": {"max_block_size": 1 * MiB, "max_single_put_size": 1 * MiB},
    "gcs": {"chunk_size": 256 * 1024},
}
MULTIPART_SIZE = 11 * MiB + 3


def make_store(service: str, bucket: str = BUCKET, **options):
    cloud, kind, conn_id = CLOUDS[service]
    return open_store(cloud, kind, conn_id, bucket, **{**SMALL_PARTS[service], **options})


def hashes(data: bytes) -> dict[str, str]:
    return {"sha256": hashlib.sha256(data).hexdigest(), "md5": hashlib.md5(data).hexdigest(),
            "crc32c": google_crc32c.Checksum(data).digest().hex()}


def s3_composite_sha256(data: bytes, part_size: int) -> str:
    parts = [data[i:i + part_size] for i in range(0, len(data), part_size)]
    return f"{hashlib.sha256(b''.join(hashlib.sha256(p).digest() for p in parts)).hexdigest()}-{len(parts)}"


def expected_native(service: str, data: bytes) -> dict[str, str]:
    """What each emulator really holds after one of our uploads (checked field for field)."""
    true = hashes(data)
    if service == "s3":
        part = SMALL_PARTS["s3"]["multipart_chunksize"]
        if len(data) >= SMALL_PARTS["s3"]["multipart_threshold"]:
            return {"sha256_composite": s3_composite_sha256(data, part)}
        return {"sha256": true["sha256"]}
    if service == "azure":
        return {"md5": true["md5"]}  # the claim we sent; Azurite verifies it for single-request uploads
    return {"md5": true["md5"], "crc32c": true["crc32c"]}  # computed by the emulator


def mismatches(info: ObjectInfo, expected: dict[str, str]) -> list[str]:
    """Validation's view: our sha256 claim, then every native checksum comparable with a known hash."""
    found = [] if info.sha256 == expected["sha256"] else [f"sha256 claim {info.sha256}"]
    return found + [f"native {alg}" for alg, value in info.native.items() if alg in expected and value != expected[alg]]


def read_in_small_pieces(store, key: str, piece: int = 64 * 1024) -> bytes:
    chunks = []
    with store.open_read(key) as src:
        while chunk := src.read(piece):
            assert len(chunk) <= piece
            chunks.append(chunk)
    return b"".join(chunks)


def raw_put(service: str, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
    """An upload that bypasses our adapters: what a careless tool or an attacker would do."""
    if service == "s3":
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        extra = {"Metadata": metadata, "ChecksumAlgorithm": "SHA256"} if metadata else {}
        S3Hook(aws_conn_id="backup_s3").get_conn().put_object(Bucket=BUCKET, Key=key, Body=data, **extra)
    elif service == "azure":
        from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

        blob = WasbHook(wasb_conn_id="backup_azure").get_conn().get_blob_client(BUCKET, key)
        blob.upload_blob(data, overwrite=True, metadata=metadata)
    else:
        from airflow.providers.google.cloud.hooks.gcs import GCSHook

        blob = GCSHook(gcp_conn_id="backup_gcs").get_conn().bucket(BUCKET).blob(key)
        blob.metadata = metadata
        blob.upload_from_string(data)


@pytest.fixture(params=sorted(CLOUDS))
def service(request, stack) -> str:
    return request.param


@pytest.fixture
def store(service):
    return make_store(service)


@pytest.fixture
def prefix(store):
    prefix = f"test-storage/{uuid.uuid4().hex}/"
    yield prefix
    store.delete_prefix(prefix)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("size", [0, 1, 4 * MiB, MULTIPART_SIZE], ids=["empty", "one-byte", "4MiB", "multipart"])
def test_put_file_round_trips_and_head_shows_claims_and_native_checksums(service, store, prefix, tmp_path, size):
    data = os.urandom(size)
    path = tmp_path / "object.tink"
    path.write_bytes(data)
    true = hashes(data)
    key = f"{prefix}object.tink"

    put = store.put_file(key, path, sha256=true["sha256"], md5=true["md5"], crc32c=true["crc32c"],
                         metadata={"backup-id": "b-1", "kek-id": "kek-2026"})

    assert read_in_small_pieces(store, key) == data
    head = store.head(key)
    assert head == put
    assert (head.key, head.size, head.sha256) == (key, size, true["sha256"])
    assert head.metadata == {"sha256": true["sha256"], "backup-id": "b-1", "kek-id": "kek-2026"}
    assert head.native == expected_native(service, data)
    assert mismatches(head, true) == []
    assert isinstance(head.updated, dt.datetime)
    if service == "azure" and size == MULTIPART_SIZE:  # S3's part count shows in its composite checksum above
        from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

        blob = WasbHook(wasb_conn_id="backup_azure").get_conn().get_blob_client(BUCKET, key)
        assert len(blob.get_block_list("committed")[0]) == 12  # 1 MiB blocks


def test_put_bytes_and_read_bytes(service, store, prefix):
    manifest = json.dumps({"backup_id": "b-1", "objects": []}).encode()
    key = f"{prefix}manifest.json"
    info = store.put_bytes(key, manifest, metadata={"backup-id": "b-1"}, content_type="application/json")
    assert store.read_bytes(key) == manifest
    assert info.sha256 == hashlib.sha256(manifest).hexdigest()
    assert info.metadata["backup-id"] == "b-1"
    assert info.native == expected_native(service, manifest)


def test_download_to_writes_the_whole_object(store, prefix, tmp_path):
    data = os.urandom(3 * MiB + 5)
    store.put_bytes(f"{prefix}blob", data)
    with open(tmp_path / "out", "wb") as out:
        assert store.download_to(f"{prefix}blob", out) == len(data)
    assert (tmp_path / "out").read_bytes() == data


def test_progress_is_reported_as_bytes_go_out_and_reaches_the_total(store, prefix, tmp_path):
    path = tmp_path / "big"
    path.write_bytes(os.urandom(MULTIPART_SIZE))
    calls: list[tuple[int, int]] = []
    store.put_file(f"{prefix}big", path, sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                   progress=lambda done, total: calls.append((done, total)))
    assert len(calls) > 2  # during the transfer, not just at the end
    assert calls[-1] == (MULTIPART_SIZE, MULTIPART_SIZE)
    assert all(total == MULTIPART_SIZE and 0 <= done <= total for done, total in calls)


# --------------------------------------------------------------------------- listing and deleting


def test_list_returns_every_object_under_the_prefix_across_pages(service, stack, prefix):
    store = make_store(service, list_page_size=2)
    for i in range(5):
        store.put_bytes(f"{prefix}a/{i}", b"x" * i)
    store.put_bytes(f"{prefix}ab", b"outside a/")
    requests = []
    if service == "s3":  # count the ListObjectsV2 pages; gcp-storage-emulator ignores page_size (one page)
        store._client.meta.events.register("before-call.s3.ListObjectsV2", lambda **_: requests.append(1))

    listed = {info.key: info.size for info in store.list(f"{prefix}a/")}

    assert listed == {f"{prefix}a/{i}": i for i in range(5)}
    if service == "s3":
        assert len(requests) == 3


def test_a_listing_that_claims_checksums_carries_what_head_does(service, store, prefix, tmp_path):
    """Validate proves thousands of shared blobs from one listing where `listing_has_checksums`: its items must
    be what HEAD answers (our sha256 claim, metadata, the cloud's checksums), else that shortcut is not sound."""
    data = os.urandom(3000)
    (tmp_path / "blob").write_bytes(data)
    true = hashes(data)
    store.put_file(f"{prefix}blob.tink", tmp_path / "blob", sha256=true["sha256"], md5=true["md5"],
                   crc32c=true["crc32c"], metadata={"content-id": "c" * 64, "wrapped-key": "d3JhcA=="})
    listed = next(iter(store.list(prefix)))
    head = store.head(f"{prefix}blob.tink")
    carried = (listed.key, listed.size, listed.sha256, listed.metadata, listed.native, listed.retain_until)
    if store.listing_has_checksums:  # (retain_until: None on the emulators; on a cloud, the lock HEAD shows)
        assert carried == (head.key, head.size, head.sha256, head.metadata, head.native, head.retain_until)
        assert head.native and mismatches(listed, true) == []
    else:  # S3: ListObjectsV2 has no user metadata, checksum values or lock; the ETag of one PUT is the MD5
        assert store.listing_has_md5
        assert (listed.sha256, listed.metadata, listed.native, listed.retain_until) == (None, {}, {"md5": true["md5"]},
                                                                                        None)


def test_delete_and_delete_prefix(store, prefix):
    for name in ("x/1", "x/2", "x/3", "y/1"):
        store.put_bytes(f"{prefix}{name}", name.encode())
    store.delete(f"{prefix}x/1")
    store.delete(f"{prefix}x/1")  # idempotent
    assert store.head(f"{prefix}x/1") is None
    assert store.delete_prefix(f"{prefix}x/") == 2
    assert list(store.list(f"{prefix}x/")) == []
    assert [info.key for info in store.list(prefix)] == [f"{prefix}y/1"]
    assert store.delete_prefix(f"{prefix}x/") == 0


def test_a_missing_key_is_not_found(store, prefix, tmp_path):
    key = f"{prefix}missing"
    assert store.head(key) is None
    with open(tmp_path / "out", "wb") as out:
        for read in (store.open_read, store.read_bytes, lambda k: store.download_to(k, out)):
            with pytest.raises(ObjectNotFound) as caught:
                read(key)
            assert (caught.value.cloud, caught.value.key) == (store.cloud, key)
            assert str(caught.value).startswith(f"{store.cloud}: {key}: ")


# --------------------------------------------------------------------------- tampering and outages


def test_an_object_overwritten_outside_the_pipeline_no_longer_matches(service, store, prefix, tmp_path):
    original = os.urandom(100_000)
    expected = hashes(original)
    key = f"{prefix}object.tink"
    path = tmp_path / "object.tink"
    path.write_bytes(original)
    store.put_file(key, path, sha256=expected["sha256"], md5=expected["md5"], crc32c=expected["crc32c"])
    altered = bytearray(original)
    altered[5000] ^= 0xFF

    raw_put(service, key, bytes(altered))  # no metadata: our claim is gone
    plain = store.head(key)
    assert plain.sha256 is None
    assert mismatches(plain, expected)
    # where the cloud computed a checksum of the new bytes it is the true one (S3 got botocore's default CRC32)
    now = hashes(bytes(altered))
    assert {alg: value for alg, value in plain.native.items() if alg in expected} == {
        "s3": {}, "azure": {"md5": now["md5"]}, "gcs": {"md5": now["md5"], "crc32c": now["crc32c"]}}[service]

    raw_put(service, key, bytes(altered), metadata={"sha256": expected["sha256"]})  # a forged claim
    forged = store.head(key)
    assert forged.sha256 == expected["sha256"]
    assert mismatches(forged, expected), "the cloud's own checksum must expose the altered bytes"


def test_a_stopped_cloud_is_unavailable_within_seconds(service, stack):
    store = make_store(service)  # default retries and timeouts: what the pipeline runs with
    store.head("warm-up")
    local_stack.stop_service(stack, service)
    try:
        started = time.monotonic()
        with pytest.raises(CloudUnavailable) as caught:
            store.head("test-storage/outage")
        elapsed = time.monotonic() - started
    finally:
        local_stack.restart_emulator(stack, service)  # same port; moto comes back empty, buckets recreated
    assert elapsed < 30
    message = str(caught.value)
    assert message.startswith(f"{store.cloud}: test-storage/outage: ")
    assert local_stack.AZURITE_KEY not in message and "AccountKey" not in message
    assert store.head("test-storage/outage") is None  # the same store works again once the cloud is back


# --------------------------------------------------------------------------- memory


def resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_streaming_download_never_holds_the_object(service, stack, tmp_path):
    """Resident memory, sampled after every read, stays far below the object's size.

    RSS rather than tracemalloc: azure-core's download generator reports its byte count as its length,
    so the SDK's `list(generator)` reserves 8 pointers per byte of each chunk (32 MiB for a 4 MiB chunk)
    that are never touched. tracemalloc counts that reservation; the machine does not.
    """
    size = 64 * MiB
    path = tmp_path / "large"
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            chunk = os.urandom(MiB)
            digest.update(chunk)
            f.write(chunk)
    # gcp-storage-emulator rewrites the whole upload for every resumable chunk: one chunk keeps this fast
    uploader = make_store(service, **({"chunk_size": size} if service == "gcs" else {}))
    key = f"test-storage/{uuid.uuid4().hex}/large"
    uploader.put_file(key, path, sha256=digest.hexdigest())
    cloud, kind, conn_id = CLOUDS[service]
    store = open_store(cloud, kind, conn_id, BUCKET)  # the adapters' default read sizes
    try:
        received = hashlib.sha256()
        baseline = peak = resident_bytes()
        with store.open_read(key) as src:
            while chunk := src.read(MiB):
                received.update(chunk)
                peak = max(peak, resident_bytes())
        assert received.hexdigest() == digest.hexdigest()
        growth = peak - baseline
        assert growth < size // 2, f"RSS grew {growth / MiB:.1f} MiB while streaming a {size // MiB} MiB object"
    finally:
        store.delete(key)


# --------------------------------------------------------------------------- retention requests


def test_s3_retention_sets_an_object_lock(stack):
    """moto implements Object Lock, on a bucket created with it enabled (as the stack's bucket is)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    locked_bucket = f"wedsync-locked-{uuid.uuid4().hex[:8]}"
    client = S3Hook(aws_conn_id="backup_s3").get_conn()
    client.create_bucket(Bucket=locked_bucket, ObjectLockEnabledForBucket=True)
    retain_until = (dt.datetime.now(dt.UTC) + dt.timedelta(days=35)).replace(microsecond=0)

    info = make_store("s3", locked_bucket, retention_mode="compliance").put_bytes("m.json", b"{}",
                                                                                 retain_until=retain_until)
    assert info.retain_until == retain_until
    assert client.head_object(Bucket=locked_bucket, Key="m.json")["ObjectLockMode"] == "COMPLIANCE"
    from botocore.exceptions import ClientError

    version = client.list_object_versions(Bucket=locked_bucket, Prefix="m.json")["Versions"][0]["VersionId"]
    with pytest.raises(ClientError, match="AccessDenied"):  # a locked version cannot be deleted before its time
        client.delete_object(Bucket=locked_bucket, Key="m.json", VersionId=version)
    plain_bucket = f"wedsync-plain-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=plain_bucket)
    with pytest.raises(StorageError, match="ObjectLockConfiguration"):  # the request reaches S3 and is refused
        make_store("s3", plain_bucket).put_bytes("unlockable", b"{}", retain_until=retain_until)


def test_azure_retention_sends_an_immutability_policy(stack, monkeypatch):
    """Azurite 3.35 accepts the immutability headers and ignores them: check what we ask for."""
    from azure.storage.blob import BlobClient

    sent = {}
    upload_blob = BlobClient.upload_blob

    def recording_upload(self, data, *args, **kwargs):
        sent.update(kwargs)
        return upload_blob(self, data, *args, **kwargs)

    monkeypatch.setattr(BlobClient, "upload_blob", recording_upload)
    retain_until = dt.datetime.now(dt.UTC) + dt.timedelta(days=35)
    store = make_store("azure")
    store.put_bytes("test-storage/retained", b"{}", retain_until=retain_until)
    store.delete("test-storage/retained")
    assert sent["immutability_policy"].expiry_time == retain_until
    assert sent["immutability_policy"].policy_mode == "Unlocked"


def test_gcs_retention_sends_object_retention(stack, monkeypatch):
    """gcp-storage-emulator accepts an object's `retention` and does not store it: check what we ask for."""
    from google.cloud.storage import Blob

    sent = {}
    upload_from_file = Blob.upload_from_file

    def recording_upload(self, *args, **kwargs):
        sent.update(self._get_writable_metadata())
        return upload_from_file(self, *args, **kwargs)

    monkeypatch.setattr(Blob, "upload_from_file", recording_upload)
    retain_until = dt.datetime.now(dt.UTC) + dt.timedelta(days=35)
    store = make_store("gcs", retention_mode="compliance")
    store.put_bytes("test-storage/retained", b"{}", retain_until=retain_until)
    store.delete("test-storage/retained")
    assert sent["retention"]["mode"] == "Locked"
    assert dt.datetime.fromisoformat(sent["retention"]["retainUntilTime"]) == retain_until
