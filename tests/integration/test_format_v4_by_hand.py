"""docs/FORMAT.md's by-hand restore of one chunked table (format 5: chunks in packs), its blocks run verbatim on a
real deduplicated backup: the packs listed from the manifest, downloaded with the plain S3 SDK, each opened once
with the document's `decrypt_object.py` (tink + cryptography + the zstd CLI, no wedsync-dr, a key ring without
the dedup key), the object's extents cut out of them in order and checked against its plaintext sha256, then
loaded with `psql`.

The backup is the second of two with nothing changed in between, so every pack it needs was stored by the
first: its manifest alone describes them. Everything lives under its own key prefix and class (`byhand`, cut
into 16 KiB chunks in packs of 128 KiB, so the table fills several; never in parts); the shipped policy's
defaults play no part. (The file keeps the name of the format that brought chunked tables.)
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
from wedsync_dr import backup, catalog, crypto, extract
from wedsync_dr.policy import load_policy
from wedsync_dr_dev import local_stack

POLICY = load_policy()
PREFIX = "wedsync-dr-byhand"
BYHAND = dataclasses.replace(POLICY.data_classes["client_data"], name="byhand", tables=("clients", "guests"),
                             dedup_chunk_kib=16, dedup_pack_kib=128, part_size_mb=0)
HAND = POLICY.with_overrides(prefix=PREFIX, data_classes={"byhand": BYHAND})
OBJECT = "guests.copy"


@pytest.fixture(scope="module")
def key_ring(stack):
    return crypto.KeyRing.from_connection(POLICY.key_ring_conn_id)


@pytest.fixture(scope="module")
def backups(stack, demo_data, airflow_db, key_ring):
    """The catalog records of two `byhand` backups a day apart (injected clock), nothing changed in between, and
    the catalog's `pack_chunks` rows of the first's packs (pack key, chunk id, offset)."""
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
            assert first["manifest"]["totals"]["chunks_stored"] > 0 and first["manifest"]["totals"]["packs_stored"] > 1
            # the chunks of the packs the first stored: in the catalog (where the second found them), in no manifest
            assert "pack_chunks" not in first["manifest"] and "pack_chunks" not in second["manifest"]
            keys = {b["key"] for b in first["manifest"]["blobs"]}
            assert all(key.startswith(f"{PREFIX}/chunks/") for key in keys)
            assert len(keys) == first["manifest"]["totals"]["packs_stored"]
            rows = catalog.pack_chunks(conn, keys)
            assert {key for key, _cid, _offset in rows} == keys
            assert len(rows) == first["manifest"]["totals"]["chunks_stored"]
            yield first, second, rows
        finally:
            conn.execute("DELETE FROM backup_catalog.backups WHERE starts_with(prefix, %s)", (f"{PREFIX}/",))
            catalog.forget_blobs_under(conn, PREFIX)
            for store in store_map.values():
                store.delete_prefix(f"{PREFIX}/")


def test_the_format_md_blocks_restore_one_chunked_table_by_hand(stack, backups, key_ring, tmp_path):
    first, second, pack_chunks = backups
    manifest = second["manifest"]
    assert manifest["format_version"] == 5
    totals = manifest["totals"]
    assert totals["chunks_stored"] == totals["packs_stored"] == totals["stored_objects"] == 0
    (entry,) = [o for o in manifest["objects"] if o["name"] == OBJECT]
    assert "key" not in entry and "encryption" not in entry and "chunks" not in entry  # extents of packs only
    packs, extents = entry["packs"], entry["extents"]
    assert entry["chunk_count"] >= 20, "the table is too small to cut into many chunks"
    assert len(packs) >= 2 and len(set(packs)) == len(packs), packs
    assert all(len(extent) == 3 for extent in extents)  # pack index, offset, length
    assert entry["chunk_count"] > len(extents) >= len(packs)  # adjacent chunks of a pack merged
    assert sum(length for _pack, _offset, length in extents) == entry["plaintext_size"]
    sizes = {b["content_id"]: b["plaintext_size"] for b in manifest["blobs"]}
    assert all(0 <= offset and offset + length <= sizes[packs[pack]] for pack, offset, length in extents)
    # nothing changed: the object is the first backup's packs, byte range for byte range
    (earlier,) = [o for o in first["manifest"]["objects"] if o["name"] == OBJECT]
    assert (earlier["packs"], earlier["extents"]) == (packs, extents)

    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    kek_only = json.loads(key_ring.to_json())
    del kek_only["dedup_key"]  # the document says a restore needs the KEKs alone
    (tmp_path / "keyring.json").write_text(json.dumps(kek_only))
    (tmp_path / "decrypt_object.py").write_text(worked_example("decrypt_object.py"))
    env = {"OBJECT": OBJECT}

    # 1. Which packs to fetch: each once, and only those holding this object's chunks.
    result = run_worked_example(tmp_path, "pack-keys", env)
    assert result.returncode == 0, result.stderr
    keys = (tmp_path / "pack-keys.txt").read_text().split()
    assert int(result.stdout) == len(keys) == len(packs)
    assert keys == [f"{PREFIX}/chunks/{cid[:2]}/{cid}.tink" for cid in packs]
    s3 = local_stack.sdk_s3(stack)
    for key in keys:
        body = s3.get_object(Bucket=local_stack.BUCKET, Key=key)["Body"].read()
        (tmp_path / key.rsplit("/", 1)[1]).write_bytes(body)

    # 2. Open and check each pack, and cut the extents out of them in order.
    result = run_worked_example(tmp_path, "shell-packs", env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{OBJECT}: OK"
    plaintext = (tmp_path / OBJECT).read_bytes()
    assert hashlib.sha256(plaintext).hexdigest() == entry["plaintext_sha256"]
    assert len(plaintext) == entry["plaintext_size"] and plaintext.startswith(b"PGCOPY\n\xff\r\n\x00")

    # The catalog's `pack_chunks` rows of the packs just opened (the first backup's): each pack's chunks in order,
    # end to end from the nonce, each named by the content id of its bytes.
    for cid, key in zip(packs, keys, strict=True):
        pack = (tmp_path / f"{cid}.pack").read_bytes()
        offsets = sorted((offset, chunk) for row_key, chunk, offset in pack_chunks if row_key == key)
        assert offsets and offsets[0][0] == extract.PACK_NONCE_BYTES
        ends = [offset for offset, _chunk in offsets[1:]] + [len(pack)]
        for (offset, chunk), end in zip(offsets, ends, strict=True):
            assert end > offset and chunk == key_ring.content_id(hashlib.sha256(pack[offset:end]).hexdigest())

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

    # 4. The whole-object check is what catches extents out of order (a manifest edited to swap two of them, each
    # still a valid range of its pack: only the order is wrong).
    swapped = json.loads(json.dumps(manifest))
    (forged,) = [o for o in swapped["objects"] if o["name"] == OBJECT]
    i = next(i for i in range(len(extents) - 1) if extents[i] != extents[i + 1])
    forged["extents"][i], forged["extents"][i + 1] = extents[i + 1], extents[i]
    (tmp_path / "manifest.json").write_text(json.dumps(swapped))
    result = run_worked_example(tmp_path, "shell-packs", env)
    assert result.returncode != 0 and "FAILED" in result.stdout, (result.stdout, result.stderr)
