"""Copies that look healthy to a HEAD but are not (issue #18 items 1 and 7), against the real stack: a copy
re-put by another writer that kept our metadata is caught by the checksum the cloud computed itself, and a
copy whose stored checksum still matches but whose bytes rotted is caught by a verification that reads it;
a manual repair of the named backup re-copies both from a cloud whose bytes prove good.

Under its own key prefix, so the other modules' backups are not disturbed.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import run_backup_steps, stored_copies
from wedsync_dr import backup, catalog, crypto, format, repair, verification
from wedsync_dr.policy import load_policy
from wedsync_dr_dev import local_stack

POLICY = load_policy()
ROT = POLICY.with_overrides(prefix="wedsync-dr-rot")


@pytest.fixture(scope="module")
def committed(stack, demo_data, airflow_db):
    key_ring = crypto.KeyRing.from_connection(POLICY.key_ring_conn_id)
    with catalog.connect() as conn:
        done = run_backup_steps(ROT, ROT.data_classes["vendor_data"], catalog_conn=conn, key_ring=key_ring)
        try:
            yield catalog.backup(conn, done["backup_id"]), key_ring
        finally:
            conn.execute("DELETE FROM backup_catalog.backups WHERE starts_with(prefix, %s)", (f"{ROT.prefix}/",))


def _tampered(data: bytes) -> bytes:
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0x01
    return bytes(damaged)


def test_a_copy_re_put_with_our_metadata_is_caught_by_the_clouds_own_checksum_and_repaired(stack, committed):
    record, _ = committed
    entry = stored_copies(record["manifest"], "reviews")[0]  # a pack of its rows
    s3 = local_stack.sdk_s3(stack)
    original = s3.get_object(Bucket=local_stack.BUCKET, Key=entry.key)["Body"].read()
    metadata = s3.head_object(Bucket=local_stack.BUCKET, Key=entry.key)["Metadata"]
    # a plain put: our sha256 claim kept, no checksum header of ours, so S3 computes its default CRC32
    s3.put_object(Bucket=local_stack.BUCKET, Key=entry.key, Body=_tampered(original), Metadata=metadata)
    store = backup.stores(ROT, ["aws"])["aws"]
    info = store.head(entry.key)
    assert info.sha256 == entry.ciphertext_sha256 and info.size == entry.ciphertext_size  # looks right
    assert "native crc32" in format.check_copy(info, entry)

    with catalog.connect() as conn:
        results = repair.run(ROT, conn, backup.stores(ROT), only_degraded=True, backup_ids=[record["backup_id"]])
    assert [(k, c) for k, _source, c in results[0].copied] == [(entry.key, "aws")]
    assert s3.get_object(Bucket=local_stack.BUCKET, Key=entry.key)["Body"].read() == original
    assert format.check_copy(store.head(entry.key), entry) is None


def test_rot_a_head_cannot_see_is_found_by_verify_and_repaired_by_a_named_repair(stack, committed):
    record, key_ring = committed
    entry = stored_copies(record["manifest"], "suppliers")[0]  # a pack of its rows
    container = local_stack.sdk_azure_container(stack)
    blob = container.get_blob_client(entry.key)
    properties = blob.get_blob_properties()
    original = blob.download_blob().readall()
    # stored MD5 and metadata as they were, bytes not: what rot (or a careful tamperer) leaves behind
    blob.upload_blob(_tampered(original), overwrite=True, metadata=properties.metadata)
    blob.set_http_headers(content_settings=properties.content_settings)  # the old MD5 back: set, not checked
    store = backup.stores(ROT, ["azure"])["azure"]
    assert format.check_copy(store.head(entry.key), entry) is None  # a HEAD sees nothing wrong

    with catalog.connect() as conn:
        found = verification.verify_copy(record, "azure", backup.stores(ROT), key_ring, conn, sample=1.0, seed=0)
        assert not found["ok"] and any(p.startswith(entry.key) for p in found["problems"])
        # the daily sweep (nothing degraded) would have trusted the HEAD: the named repair reads the finding
        results = repair.run(ROT, conn, backup.stores(ROT), only_degraded=False, backup_ids=[record["backup_id"]])
        assert (entry.key, "azure") in [(k, c) for k, _source, c in results[0].copied]
        assert container.get_blob_client(entry.key).download_blob().readall() == original
        again = verification.verify_copy(record, "azure", backup.stores(ROT), key_ring, conn, sample=1.0, seed=0)
        assert again["ok"], again["problems"]
        # once repaired (and verified), the next repair does not copy it again
        assert not repair.run(ROT, conn, backup.stores(ROT), only_degraded=False,
                              backup_ids=[record["backup_id"]])[0].copied


def test_the_repair_verb_names_an_unknown_backup_in_one_line(stack, committed):
    env = {**os.environ, **local_stack.environment(stack)}
    result = subprocess.run([sys.executable, "-m", "wedsync_dr.cli", "repair", "--backup-id",
                             "vendor_data-20990101T000000Z-abcdef"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1 and "not a committed backup" in result.stderr
    assert result.stderr.strip().count("\n") == 0
