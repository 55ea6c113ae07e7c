"""The storage layer's cloud-independent rules and each adapter's error and checksum translation, offline."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import pickle
import subprocess
import sys

import pytest

from wedsync_dr.storage import (
    CloudAuthError,
    CloudUnavailable,
    ObjectInfo,
    ObjectNotFound,
    StorageError,
    open_store,
)
from wedsync_dr.storage.base import BaseStore, ProgressReporter, Upload, check_metadata
from wedsync_dr.storage.errors import redact

SHA = hashlib.sha256(b"payload").hexdigest()


class MemoryStore(BaseStore):
    """The base class over a dict: shows what the shared half hands the adapters."""

    kind = "memory"

    def __init__(self, **options) -> None:
        super().__init__("mem", "conn", "bucket", **options)
        self.objects: dict[str, bytes] = {}
        self.uploads: dict[str, Upload] = {}
        self.fail_reads_with: Exception | None = None

    def _upload(self, key: str, upload: Upload) -> ObjectInfo:
        with upload.open() as stream:
            self.objects[key] = stream.read()
        self.uploads[key] = upload
        return self._head(key)

    def _open(self, key):
        if key not in self.objects:
            raise KeyError(key)
        stream = io.BytesIO(self.objects[key])

        def read(n: int) -> bytes:
            if self.fail_reads_with is not None:
                raise self.fail_reads_with
            return stream.read(n)

        return read, stream.close

    def _head(self, key: str) -> ObjectInfo:
        if key not in self.objects:
            raise KeyError(key)
        upload = self.uploads[key]
        return ObjectInfo(key, len(self.objects[key]), upload.sha256, upload.metadata, {}, None)

    def _list(self, prefix: str):
        for key in sorted(self.objects):
            if key.startswith(prefix):
                yield self._head(key)

    def _delete(self, key: str) -> None:
        if key not in self.objects:
            raise KeyError(key)
        del self.objects[key]

    def _translate(self, err: Exception, key: str) -> StorageError | None:
        if isinstance(err, KeyError):
            return ObjectNotFound(self.cloud, key, "no such key")
        if isinstance(err, ConnectionError):
            return CloudUnavailable(self.cloud, key, str(err))
        return None


# --------------------------------------------------------------------------- the shared half


def test_put_file_describes_the_upload_with_our_claims(tmp_path):
    store = MemoryStore()
    path = tmp_path / "f"
    path.write_bytes(b"payload")
    info = store.put_file("k", path, sha256=SHA.upper(), md5="AB" * 16, metadata={"backup-id": "b-1"})
    upload = store.uploads["k"]
    assert (upload.sha256, upload.md5, upload.crc32c) == (SHA, "ab" * 16, None)  # normalised to lower-case hex
    assert upload.metadata == {"sha256": SHA, "backup-id": "b-1"}
    assert info.size == 7 and info.sha256 == SHA


def test_put_bytes_computes_every_checksum():
    store = MemoryStore()
    store.put_bytes("m.json", b"payload", content_type="application/json")
    upload = store.uploads["m.json"]
    assert upload.sha256 == SHA
    assert upload.md5 == hashlib.md5(b"payload").hexdigest()
    assert len(upload.crc32c) == 8 and upload.content_type == "application/json"


@pytest.mark.parametrize("kwargs, match", [
    ({"sha256": "abc"}, "sha256 must be 64 hex digits"),
    ({"sha256": SHA, "md5": "xyz"}, "md5 must be 32 hex digits"),
    ({"sha256": SHA, "metadata": {"sha256": SHA}}, "reserved"),
    ({"sha256": SHA, "metadata": {"Backup_ID": "b"}}, "metadata key"),
    ({"sha256": SHA, "metadata": {"note": "café"}}, "printable ASCII"),
    ({"sha256": SHA, "retain_until": dt.datetime(2030, 1, 1)}, "timezone-aware"),
    ({"sha256": SHA, "key": "/k"}, "relative"),
])
def test_bad_arguments_fail_before_any_upload(tmp_path, kwargs, match):
    store = MemoryStore()
    path = tmp_path / "f"
    path.write_bytes(b"payload")
    with pytest.raises(ValueError, match=match):
        store.put_file(kwargs.pop("key", "k"), path, **kwargs)
    assert store.objects == {}


def test_portable_metadata_keys():
    assert check_metadata({"backup-id": "b-1", "kek-id": "k1", "plaintext-sha256": SHA}) == {
        "backup-id": "b-1", "kek-id": "k1", "plaintext-sha256": SHA}
    for bad in ("Backup-Id", "backup_id", "1st", "-x", ""):
        with pytest.raises(ValueError):
            check_metadata({bad: "v"})


def test_open_read_is_a_file_whose_reads_return_what_was_asked():
    store = MemoryStore()
    store.put_bytes("k", bytes(range(256)) * 5000)
    with store.open_read("k") as src:
        assert src.read(3) == b"\x00\x01\x02"
        assert len(src.read(1_000_000)) == 1_000_000  # many raw reads joined, as from a file
        assert len(src.read(1_000_000)) == 256 * 5000 - 1_000_003  # then up to EOF
        assert src.read(10) == b""


def test_read_errors_mid_stream_are_typed():
    store = MemoryStore()
    store.put_bytes("k", b"x" * 10)
    with store.open_read("k") as src:
        store.fail_reads_with = ConnectionError("reset by peer")
        with pytest.raises(CloudUnavailable, match="mem: k: reset by peer"):
            src.read(5)


def test_missing_keys_and_idempotent_deletes():
    store = MemoryStore()
    assert store.head("nope") is None
    with pytest.raises(ObjectNotFound):
        store.read_bytes("nope")
    store.delete("nope")
    for key in ("p/1", "p/2", "q/1"):
        store.put_bytes(key, b"x")
    assert store.delete_prefix("p/") == 2
    assert sorted(store.objects) == ["q/1"]


def test_foreign_exceptions_are_not_disguised_as_storage_errors():
    store = MemoryStore()
    store.put_bytes("k", b"x")
    with store.open_read("k") as src:
        store.fail_reads_with = TypeError("a bug")
        with pytest.raises(TypeError):
            src.read(1)


def test_progress_is_clamped_monotonic_per_signal_and_always_ends_at_the_total():
    calls = []
    reporter = ProgressReporter(lambda done, total: calls.append((done, total)), 100)
    reporter.add(60)
    reporter.add(-20)  # S3 rewinds a retried part
    reporter.add(80)
    reporter.finish()
    assert calls == [(60, 100), (40, 100), (100, 100)]  # no second call at the total

    empty = []
    ProgressReporter(lambda done, total: empty.append((done, total)), 0).finish()
    assert empty == [(0, 0)]


# --------------------------------------------------------------------------- errors


def test_errors_name_cloud_and_key_pickle_and_classify():
    err = CloudAuthError("aws", "a/b", "AccessDenied: nope")
    assert str(err) == "aws: a/b: AccessDenied: nope"
    assert isinstance(err, CloudUnavailable) and isinstance(err, StorageError)
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is CloudAuthError and (again.cloud, again.key, str(again)) == ("aws", "a/b", str(err))


def test_redact_removes_credentials_from_messages():
    text = ("failed GET https://acct.blob.core.windows.net/c/k?sv=2024&sig=SECRETSIG&se=2030 with "
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=SECRETKEY==;EndpointSuffix=x password=hunter2")
    clean = redact(text)
    assert "SECRETSIG" not in clean and "SECRETKEY" not in clean and "hunter2" not in clean
    assert "https://acct.blob.core.windows.net/c/k?<redacted>" in clean
    assert len(redact("x" * 5000)) == 400


def test_s3_errors_are_typed():
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    store = open_store("aws", "s3", "conn", "bucket")

    def client_error(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                           "GetObject")

    assert type(store._translate(client_error("NoSuchKey", 404), "k")) is ObjectNotFound
    assert type(store._translate(client_error("404", 404), "k")) is ObjectNotFound
    assert type(store._translate(client_error("InvalidAccessKeyId", 403), "k")) is CloudAuthError
    assert type(store._translate(client_error("SlowDown", 503), "k")) is CloudUnavailable
    assert type(store._translate(client_error("InvalidRequest", 400), "k")) is StorageError
    assert type(store._translate(EndpointConnectionError(endpoint_url="http://x"), "k")) is CloudUnavailable
    assert type(store._translate(NoCredentialsError(), "k")) is CloudAuthError
    try:
        try:
            raise client_error("AccessDenied", 403)
        except ClientError:
            raise S3UploadFailedError("Failed to upload f to bucket/k: ...") from None
    except S3UploadFailedError as wrapped:
        assert type(store._translate(wrapped, "k")) is CloudAuthError
    assert store._translate(TypeError("bug"), "k") is None


def test_s3_native_checksums_tell_full_object_from_composite():
    from wedsync_dr.storage.s3 import _native_checksums

    full = "n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg="  # sha256 of b"test"
    hexed = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    assert _native_checksums({"ETag": '"abc"', "ChecksumSHA256": full}) == {"sha256": hexed}
    assert _native_checksums({"ETag": '"abc"', "ChecksumSHA256": full, "ChecksumType": "FULL_OBJECT"}) == {
        "sha256": hexed}
    # real S3: suffix and type; moto's HeadObject: neither, only the multipart ETag
    assert _native_checksums({"ETag": '"abc-3"', "ChecksumSHA256": full + "-3", "ChecksumType": "COMPOSITE"}) == {
        "sha256_composite": hexed + "-3"}
    assert _native_checksums({"ETag": '"abc-3"', "ChecksumSHA256": full}) == {"sha256_composite": hexed + "-3"}
    # a full-object CRC on a multipart upload stays comparable
    assert _native_checksums({"ETag": '"abc-2"', "ChecksumCRC32C": "AAAAAA==", "ChecksumType": "FULL_OBJECT"}) == {
        "crc32c": "00000000"}


def test_azure_errors_are_typed():
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
    )

    store = open_store("azure", "azure_blob", "conn", "container")
    assert type(store._translate(ResourceNotFoundError("The specified blob does not exist.\nRequestId:1"), "k")) \
        is ObjectNotFound
    assert type(store._translate(ServiceRequestError("Connection refused"), "k")) is CloudUnavailable
    assert type(store._translate(ClientAuthenticationError("Server failed to authenticate"), "k")) is CloudAuthError
    busy = HttpResponseError("busy")
    busy.status_code = 503
    assert type(store._translate(busy, "k")) is CloudUnavailable
    translated = store._translate(ResourceNotFoundError("The specified blob does not exist.\nRequestId:1"), "k")
    assert "RequestId" not in str(translated)


def test_gcs_errors_are_typed():
    import requests
    from google.api_core import exceptions as api

    store = open_store("gcp", "gcs", "conn", "bucket")
    assert type(store._translate(api.NotFound("gone"), "k")) is ObjectNotFound
    assert type(store._translate(api.Forbidden("no"), "k")) is CloudAuthError
    assert type(store._translate(api.ServiceUnavailable("busy"), "k")) is CloudUnavailable
    gave_up = store._translate(api.RetryError("deadline", requests.ConnectionError("refused")), "k")
    assert type(gave_up) is CloudUnavailable and "refused" in str(gave_up)


# --------------------------------------------------------------------------- factory


def test_open_store_picks_the_adapter_by_kind_and_checks_options():
    assert type(open_store("aws", "s3", "c", "b")).__name__ == "S3Store"
    assert type(open_store("azure", "azure_blob", "c", "b")).__name__ == "AzureBlobStore"
    assert type(open_store("gcp", "gcs", "c", "b")).__name__ == "GcsStore"
    with pytest.raises(ValueError, match="unknown storage kind 'ftp'"):
        open_store("x", "ftp", "c", "b")
    with pytest.raises(TypeError):
        open_store("aws", "s3", "c", "b", multipart_chunk_size=5)  # misspelt
    with pytest.raises(ValueError, match="multiple of 262144"):
        open_store("gcp", "gcs", "c", "b", chunk_size=1000)
    with pytest.raises(ValueError, match="retention_mode"):
        open_store("aws", "s3", "c", "b", retention_mode="forever")


def test_importing_the_package_loads_no_sdk():
    code = ("import sys, wedsync_dr.storage\n"
            "heavy = [m for m in ('airflow', 'boto3', 'botocore', 'azure.storage.blob', 'google.cloud.storage')"
            " if m in sys.modules]\n"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_service_that_refuses_retention_is_asked_once_per_store_and_says_so(caplog):
    """An emulator answers every re-lock as unimplemented: the store stops sending them (thousands of shared
    blobs per run) and warns once; a service that locks keeps being asked."""
    class Unlocking(MemoryStore):
        def __init__(self, locks: bool) -> None:
            super().__init__()
            self.locks, self.asked = locks, 0

        def _extend_retention(self, key, retain_until) -> bool:
            self.asked += 1
            return self.locks

    until = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    refusing, locking = Unlocking(False), Unlocking(True)
    with caplog.at_level("WARNING", logger="wedsync_dr.storage.base"):
        assert [refusing.extend_retention(f"k{i}", until) for i in range(3)] == [False] * 3
    assert refusing.asked == 1
    assert [r.getMessage() for r in caplog.records].count(
        "mem does not implement object retention (refused for k0): this store stops asking to extend locks; "
        "a real cloud never answers so") == 1
    assert [locking.extend_retention(f"k{i}", until) for i in range(3)] == [True] * 3 and locking.asked == 3
