"""Object-store staging: each step of a backup on "another host" (its own scratch directory), handing off only
through the staging bucket in the S3 emulator, and only ciphertext leaving the worker that read the data."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.helpers import a_supplier_changed, owner_connection
from wedsync_dr import backup, catalog, crypto, format, staging
from wedsync_dr.policy import load_policy
from wedsync_dr.requests import check_request
from wedsync_dr.restore import run_restore
from wedsync_dr_dev import local_stack

POLICY = load_policy()


@pytest.fixture
def hosts(stack, tmp_path, monkeypatch):
    """`on(step)` makes the next call run as if on its own host: its own scratch, the shared staging bucket."""
    monkeypatch.setenv(staging.STAGING_URL_ENV, local_stack.staging_url(stack))

    def on(step: str):
        directory = tmp_path / step
        monkeypatch.setenv(POLICY.staging_dir_env, str(directory))
        return directory

    return on


def _staged(stack, backup_id: str) -> dict[str, bytes]:
    s3 = local_stack.sdk_s3(stack)
    listed = s3.list_objects_v2(Bucket=local_stack.STAGING_BUCKET, Prefix=f"runs/{backup_id}/")
    return {o["Key"].rsplit("/", 1)[1]: s3.get_object(Bucket=local_stack.STAGING_BUCKET, Key=o["Key"])["Body"].read()
            for o in listed.get("Contents", [])}


def _files(directory) -> list:
    return [p for p in directory.rglob("*") if p.is_file()] if directory.exists() else []


@pytest.mark.parametrize("data_class", ["vendor_data", "assets"])
def test_every_step_on_another_host_hands_off_only_ciphertext_through_the_bucket(stack, demo_data, hosts,
                                                                                data_class):
    dc = POLICY.data_classes[data_class]
    key_ring = crypto.KeyRing.from_connection(POLICY.key_ring_conn_id)
    store_map = backup.stores(POLICY)
    with catalog.connect() as conn:
        extract_host = hosts("extract")
        with a_supplier_changed(stack):  # a new pack to stage (deduplicated vendor_data stores only change)
            summary = backup.run_extract(POLICY, dc, connect=catalog.db_connector("wedsync_db"), catalog_conn=conn,
                                         key_ring=key_ring, store_map=store_map)
        backup_id = summary["backup_id"]
        try:
            assert summary["staging"] == local_stack.staging_url(stack) and "staging_dir" not in summary
            assert _files(extract_host) == []  # nothing of the run stays on the host that read the data
            staged = _staged(stack, backup_id)
            # a table in packs is sealed as its packs: those are the stored objects
            sealed_objects = backup._stored([format.entry_from_json(e) for e in json.loads(staged.pop("sealed.json"))])
            documents = {n for n in staged if n.endswith(".json")}
            assert documents <= {"tables.json", "referenced-blobs.json"}
            # every other staged file is exactly a sealed object: no compressed plaintext, no list of paths
            assert sealed_objects
            assert {n: hashlib.sha256(b).hexdigest() for n, b in staged.items() if n not in documents} == {
                backup._ciphertext_name(e): e.ciphertext_sha256 for e in sealed_objects}
            assert len(sealed_objects) == len(staged) - len(documents)

            hosts("encrypt")
            summary = backup.run_encrypt(POLICY, summary, key_ring)  # proves each sealed object
            uploads = {}
            for cloud, store in store_map.items():
                upload_host = hosts(f"upload-{cloud}")
                uploads[cloud] = backup.run_upload(POLICY, cloud, summary, store)
                assert _files(upload_host) == []  # each fetched ciphertext is removed once sent
            hosts("validate")
            result = backup.run_validate(POLICY, summary, uploads, key_ring, conn, store_map)
            assert result["status"] == "validated", result
        finally:
            hosts("teardown")
            backup.cleanup(POLICY, backup_id)
        assert _staged(stack, backup_id) == {}  # the teardown empties the bucket from any host


def test_a_tampered_staged_object_is_refused_before_any_cloud_sees_it(stack, demo_data, hosts):
    key_ring = crypto.KeyRing.from_connection(POLICY.key_ring_conn_id)
    with catalog.connect() as conn:
        hosts("extract")
        with a_supplier_changed(stack):
            summary = backup.run_extract(POLICY, POLICY.data_classes["vendor_data"],
                                         connect=catalog.db_connector("wedsync_db"), catalog_conn=conn,
                                         key_ring=key_ring)
    try:
        s3 = local_stack.sdk_s3(stack)
        key = next(k for k in (o["Key"] for o in s3.list_objects_v2(
            Bucket=local_stack.STAGING_BUCKET, Prefix=f"runs/{summary['backup_id']}/")["Contents"])
            if k.endswith(".tink"))
        body = bytearray(s3.get_object(Bucket=local_stack.STAGING_BUCKET, Key=key)["Body"].read())
        body[-1] ^= 1
        s3.put_object(Bucket=local_stack.STAGING_BUCKET, Key=key, Body=bytes(body))
        hosts("encrypt")
        with pytest.raises(crypto.DecryptionError):
            backup.run_encrypt(POLICY, summary, key_ring)
    finally:
        backup.cleanup(POLICY, summary["backup_id"])


def test_without_the_key_ring_nothing_is_read_or_staged(stack, demo_data, hosts):
    with catalog.connect() as conn, pytest.raises(crypto.KeyUnavailableError, match="key ring"):
        backup.run_extract(POLICY, POLICY.data_classes["vendor_data"], connect=catalog.db_connector("wedsync_db"),
                           catalog_conn=conn, key_ring=None)


def test_the_staging_bucket_expires_what_a_killed_run_leaves(stack):
    rules = local_stack.sdk_s3(stack).get_bucket_lifecycle_configuration(Bucket=local_stack.STAGING_BUCKET)["Rules"]
    assert [(r["Status"], r["Expiration"]["Days"]) for r in rules] == [("Enabled", staging.EXPIRY_DAYS)]


def test_a_restore_of_a_backup_staged_remotely_matches_the_source(stack, demo_data, hosts):
    from tests.helpers import run_backup_steps

    key_ring = crypto.KeyRing.from_connection(POLICY.key_ring_conn_id)
    hosts("worker")
    with catalog.connect() as conn:
        result = run_backup_steps(POLICY, POLICY.data_classes["vendor_data"], catalog_conn=conn, key_ring=key_ring)
    report = run_restore(POLICY, check_request(POLICY, {"data_class": "vendor_data",
                                                        "backup_id": result["backup_id"],
                                                        "target": "restored_remote_staging"}),
                         stores=backup.stores(POLICY), key_ring=key_ring,
                         db_connect=catalog.db_connector("wedsync_db_owner"))
    with owner_connection(stack) as conn:
        for table, rows in report.rows.items():
            live = conn.execute(f"SELECT count(*) FROM wedsync.{table}").fetchone()[0]
            assert rows == live, table
        conn.execute("DROP SCHEMA restored_remote_staging CASCADE")
