"""Staging as a location: a local directory or a staging bucket, the same hand-offs either way."""

from __future__ import annotations

import datetime as dt
import hashlib
import io

import pytest

from wedsync_dr import staging
from wedsync_dr.policy import load_policy
from wedsync_dr.storage import ObjectInfo


class MemoryStore:
    """A bucket in memory with the ObjectStore calls staging uses."""

    cloud = "staging"

    def __init__(self):
        self.objects: dict[str, bytes] = {}
        self.claims: dict[str, str] = {}

    def put_file(self, key, path, *, sha256, **_kwargs):
        self.objects[key] = path.read_bytes()
        self.claims[key] = sha256

    def put_bytes(self, key, data, **_kwargs):
        self.objects[key] = bytes(data)

    def download_to(self, key, fileobj):
        fileobj.write(self.objects[key])
        return len(self.objects[key])

    def open_read(self, key):
        return io.BytesIO(self.objects[key])

    def read_bytes(self, key):
        return self.objects[key]

    def head(self, key):
        data = self.objects.get(key)
        return None if data is None else ObjectInfo(key, len(data), None, {}, {}, dt.datetime.now(dt.UTC))

    def list(self, prefix):
        return [self.head(k) for k in sorted(self.objects) if k.startswith(prefix)]

    def delete_prefix(self, prefix):
        gone = [k for k in self.objects if k.startswith(prefix)]
        for key in gone:
            del self.objects[key]
        return len(gone)


def test_a_staging_url_names_adapter_bucket_prefix_and_connection():
    assert staging.parse_url("s3://wedsync-staging/runs/a?conn_id=stage") == ("s3", "wedsync-staging", "runs/a",
                                                                             "stage")
    assert staging.parse_url("gs://b?conn_id=c") == ("gcs", "b", "", "c")
    assert staging.parse_url("az://container/p?conn_id=c")[0] == "azure_blob"
    for bad, why in (("file:///tmp/x?conn_id=c", "scheme"), ("s3:///p?conn_id=c", "no bucket"),
                     ("s3://b/p", "conn_id")):
        with pytest.raises(staging.StagingError, match=why):
            staging.parse_url(bad)


def test_the_policy_stages_locally_unless_a_staging_url_is_set(monkeypatch, tmp_path):
    monkeypatch.setenv("WEDSYNC_STAGING_DIR", str(tmp_path))
    monkeypatch.delenv(staging.STAGING_URL_ENV, raising=False)
    local = staging.for_policy(load_policy())
    assert not local.remote and local.describe() == str(tmp_path)
    monkeypatch.setenv(staging.STAGING_URL_ENV, "s3://wedsync-staging/runs?conn_id=wedsync_staging")
    remote = staging.for_policy(load_policy())
    assert remote.remote and remote.store.bucket == "wedsync-staging" and remote.store.conn_id == "wedsync_staging"
    assert remote.scratch_root == tmp_path  # each worker's own scratch stays on its own disk


def test_a_bucket_hand_off_leaves_nothing_on_the_host_that_made_it(tmp_path):
    """What one worker publishes, another (another scratch directory: another host) reads; the file leaves
    the first host once published, and the reader's copy goes when it is done with it."""
    store = MemoryStore()
    maker = staging.ObjectStoreStaging(store, "runs", tmp_path / "host-a", "s3://b/runs?conn_id=c")
    reader = staging.ObjectStoreStaging(store, "runs", tmp_path / "host-b", "s3://b/runs?conn_id=c")
    made = maker.scratch("b-1") / "t.copy.zst.tink"
    made.write_bytes(b"ciphertext")
    maker.publish("b-1", made)
    assert not made.exists() and store.objects == {"runs/b-1/t.copy.zst.tink": b"ciphertext"}
    assert store.claims["runs/b-1/t.copy.zst.tink"] == hashlib.sha256(b"ciphertext").hexdigest()
    maker.write_json("b-1", "encrypt.json", [{"key": "k"}])
    with reader.local_copy("b-1", "t.copy.zst.tink") as path:
        assert path.parent == tmp_path / "host-b" / "b-1" and path.read_bytes() == b"ciphertext"
        assert path.stat().st_mode & 0o077 == 0
    assert not path.exists()
    assert reader.read_json("b-1", "encrypt.json") == [{"key": "k"}]
    assert reader.read_json("b-1", "referenced-blobs.json", default=[]) == []
    assert set(reader.staged_backups()) == {"b-1"}
    assert reader.remove("b-1") and store.objects == {}
    assert not reader.remove("b-1")  # twice is fine


def test_local_staging_is_one_directory_and_refuses_a_file_from_elsewhere(tmp_path):
    local = staging.LocalStaging(tmp_path)
    made = local.scratch("b-1") / "x.tink"
    made.write_bytes(b"c")
    local.publish("b-1", made)  # already where the next task reads it
    with local.local_copy("b-1", "x.tink") as path:
        assert path == made and path.read_bytes() == b"c"
    assert made.exists()  # nothing was fetched, so nothing is removed
    with pytest.raises(staging.StagingError):
        local.publish("b-1", tmp_path / "elsewhere.tink")
    with pytest.raises(FileNotFoundError, match=staging.STAGING_URL_ENV):
        local.read_json("b-1", "encrypt.json")  # the hint for a multi-host deployment without a staging URL
    assert set(local.staged_backups()) == {"b-1"} and local.remove("b-1") and not (tmp_path / "b-1").exists()
