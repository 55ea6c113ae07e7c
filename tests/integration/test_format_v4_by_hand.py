"""docs/FORMAT.md's by-hand restore of one chunked table (format 4), its blocks run verbatim on a real deduplicated
backup: the chunks listed from the manifest, downloaded with the plain S3 SDK, opened one by one with the
document's `decrypt_object.py` (tink + cryptography + the zstd CLI, no wedsync-dr, a key ring without the dedup
key), concatenated and checked against the object's plaintext sha256, then loaded with `psql`.

The backup is the second of two with nothing changed in between, so every chunk it needs was stored by the
first: its manifest alone describes them. Everything lives under its own key prefix and class (`byhand`, cut
into 16 KiB chunks, never in parts); the shipped policy's defaults play no part.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import secrets

import psycopg
import pytest

from tests.helpers import fresh_copy, run_backup_steps, run_worked_example, worked_example
from wedsync_dr import backup, catalog, crypto
from wedsync_dr.policy import load_policy
from wedsync_dr_dev import local_stack

POLICY = load_policy()
PREFIX = "wedsync-dr-byhand"
BYHAND = dataclasses.replace(POLICY.data_classes["client_data"], name="byhand", tables=("clients", "guests"),
                             dedup_chunk_kib=16, part_size_mb=0)
HAND = POLICY.with_overrides(prefix=PREFIX, data_classes={"byhand": BYHAND})
OBJECT = "guests.copy"


@pytest.fixture(scope="module")
def key_ring(stack):
    return crypto.KeyRing.from_connection(POLICY.key_ring_conn_id)


@pytest.fixture(scope="module")
def second_backup(stack, demo_data, airflow_db, key_ring):
    """The catalog record of the second of two `byhand` backups a day apart (injected clock), nothing changed."""
    store_map = backup.stores(HAND)
    t0 = dt.datetime.now(dt.UTC)
    with catalog.connect() as conn:
        try:
            records = []
            for day in range(2):
                result = run_backup_steps(HAND, BYHAND, catalog_conn=conn, key_ring=key_ring,
                                          started_at=t0 + dt.timedelta(days=day), store_map=store_map)
                records.append(catalog.backup(conn, result["backup_id"]))
            first, second = records
            assert first["status"] == second["status"] == "validated", records
            assert first["manifest"]["totals"]["chunks_stored"] > 0
            yield second
        finally:
            conn.execute("DELETE FROM backup_catalog.backups WHERE starts_with(prefix, %s)", (f"{PREFIX}/",))
            catalog.forget_blobs_under(conn, PREFIX)
            for store in store_map.values():
                store.delete_prefix(f"{PREFIX}/")


def test_the_format_md_blocks_restore_one_chunked_table_by_hand(stack, second_backup, key_ring, tmp_path):
    manifest = second_backup["manifest"]
    assert manifest["format_version"] == 4
    assert manifest["totals"]["chunks_stored"] == 0 and manifest["totals"]["stored_objects"] == 0
    (entry,) = [o for o in manifest["objects"] if o["name"] == OBJECT]
    assert "key" not in entry and "encryption" not in entry  # stored as its chunks only
    distinct = list(dict.fromkeys(cid for cid, _size in entry["chunks"]))
    assert len(entry["chunks"]) >= 20, "the table is too small to cut into many chunks"
    assert sum(size for _cid, size in entry["chunks"]) == entry["plaintext_size"]

    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    kek_only = json.loads(key_ring.to_json())
    del kek_only["dedup_key"]  # the document says a restore needs the KEKs alone
    (tmp_path / "keyring.json").write_text(json.dumps(kek_only))
    (tmp_path / "decrypt_object.py").write_text(worked_example("decrypt_object.py"))
    env = {"OBJECT": OBJECT}

    # 1. Which chunks to fetch: each distinct one once, and only this object's.
    result = run_worked_example(tmp_path, "chunk-keys", env)
    assert result.returncode == 0, result.stderr
    keys = (tmp_path / "chunk-keys.txt").read_text().split()
    assert int(result.stdout) == len(keys) == len(distinct)
    assert keys == [f"{PREFIX}/chunks/{cid[:2]}/{cid}.tink" for cid in distinct]
    s3 = local_stack.sdk_s3(stack)
    for key in keys:
        body = s3.get_object(Bucket=local_stack.BUCKET, Key=key)["Body"].read()
        (tmp_path / key.rsplit("/", 1)[1]).write_bytes(body)

    # 2. Open, check and concatenate them.
    result = run_worked_example(tmp_path, "shell-chunks", env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{OBJECT}: OK"
    plaintext = (tmp_path / OBJECT).read_bytes()
    assert hashlib.sha256(plaintext).hexdigest() == entry["plaintext_sha256"]
    assert len(plaintext) == entry["plaintext_size"] and plaintext.startswith(b"PGCOPY\n\xff\r\n\x00")

    # 3. Load it with psql: every row, byte for byte the source's.
    schema = f"byhand_{secrets.token_hex(4)}"
    owner = stack.role_url(local_stack.OWNER_ROLE, local_stack.SOURCE_DB)
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        result = run_worked_example(tmp_path, "psql-chunks", {**env, "SCHEMA": schema, "DATABASE_URL": owner})
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [str(entry["rows"])]
        with psycopg.connect(owner) as conn:
            columns = ", ".join(entry["columns"])
            restored = fresh_copy(conn, f"COPY (SELECT {columns} FROM {schema}.guests ORDER BY guest_id) TO STDOUT")
            source = fresh_copy(conn, f"COPY (SELECT {columns} FROM wedsync.guests ORDER BY guest_id) TO STDOUT")
        assert restored == source and restored.count(b"\n") == entry["rows"]
    finally:
        with psycopg.connect(owner, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

    # 4. The whole-object check is what catches chunks out of order (a manifest edited to swap two of them).
    swapped = json.loads(json.dumps(manifest))
    (forged,) = [o for o in swapped["objects"] if o["name"] == OBJECT]
    i = next(i for i in range(len(forged["chunks"]) - 1) if forged["chunks"][i][0] != forged["chunks"][i + 1][0])
    forged["chunks"][i], forged["chunks"][i + 1] = forged["chunks"][i + 1], forged["chunks"][i]
    (tmp_path / "manifest.json").write_text(json.dumps(swapped))
    result = run_worked_example(tmp_path, "shell-chunks", env)
    assert result.returncode != 0 and "FAILED" in result.stdout, (result.stdout, result.stderr)
