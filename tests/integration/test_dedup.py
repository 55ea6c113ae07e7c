"""Deduplicated table backups (format 5) against the real stack: each backup stores only the chunks that changed,
in packs; every backup still restores on its own (after the first one was retired and the packs only it needed
were swept), a corrupted pack fails over to the next cloud, a sweep stopped midway leaves every kept backup
restorable, repair copies packs, and a format-3 (unchunked) table backup still restores.

Everything here reads its own copy of three WedSync tables (schema `dedup_src`, changed by the tests as a live
database would be) and writes under its own key prefix with its own class (`ledger`): the other modules' backups
and demo data are not touched.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json

import pytest

from tests.helpers import fresh_copy, latest_backup, run_backup_steps
from wedsync_dr import backup, catalog, crypto, format, repair, retention
from wedsync_dr.policy import load_policy
from wedsync_dr.requests import check_request
from wedsync_dr.restore import RestoreError, run_restore

POLICY = load_policy()
PREFIX = "wedsync-dr-dedup"
SCHEMA = "dedup_src"
TABLES = ("clients", "weddings", "guests")
# packs of ~2 chunks: a test table is a few MB, and a change must leave some packs of day 1 needed by no later day;
# no repacking (a pack of two chunks is half dead after one change): its own test turns it on
LEDGER = dataclasses.replace(POLICY.data_classes["client_data"], name="ledger", tables=TABLES, dedup_chunk_kib=16,
                             dedup_pack_kib=32, part_size_mb=0, dedup_repack_below_percent=0)
DEDUP = POLICY.with_overrides(prefix=PREFIX, source_schema=SCHEMA, data_classes={"ledger": LEDGER})


def _owner():
    return catalog.db_connector("wedsync_db_owner")()


def _tables(schema: str) -> dict[str, list[bytes]]:
    """Each table's rows as COPY text lines, sorted (the copy of `guests` has duplicate rows: no key)."""
    with _owner() as conn:
        return {t: sorted(fresh_copy(conn, f'COPY "{schema}".{t} TO STDOUT').splitlines()) for t in TABLES}


def _source_tables() -> dict[str, list[bytes]]:
    return _tables(SCHEMA)


def _change_a_stretch_of_guests() -> None:
    """Updates, inserts and deletes of neighbouring weddings' guests, then VACUUM, as a live day would."""
    with _owner() as conn:
        conn.autocommit = True
        ids = [r[0] for r in conn.execute(f"SELECT guest_id FROM {SCHEMA}.guests ORDER BY guest_id").fetchall()]
        # 5 %, in one stretch: enough that some of day 1's packs hold nothing a later day keeps, whatever the key
        # ring's chunk boundaries (the retirement test kills its sweep among those)
        start, count = len(ids) // 3, max(3, len(ids) // 20)
        changed = ids[start:start + count]
        conn.execute(f"UPDATE {SCHEMA}.guests SET dietary = 'vegan (changed)' WHERE guest_id = ANY(%s)",
                     (changed[: count // 2],))
        conn.execute(f"DELETE FROM {SCHEMA}.guests WHERE guest_id = ANY(%s)", (changed[count // 2:],))
        conn.execute(f"INSERT INTO {SCHEMA}.guests SELECT * FROM {SCHEMA}.guests WHERE guest_id = ANY(%s)",
                     (changed[: count // 4],))  # duplicates of some rows: no key in this copy of the table
        conn.execute(f"VACUUM {SCHEMA}.guests")


@pytest.fixture(scope="module")
def key_ring(stack):
    return crypto.KeyRing.from_connection(POLICY.key_ring_conn_id)


@pytest.fixture(scope="module")
def backups(stack, demo_data, airflow_db, key_ring):
    """Day 1, day 2 after 2 % of the guests changed, day 3 with no change (injected clock); each day's source."""
    with _owner() as conn:
        conn.autocommit = True
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        conn.execute(f"CREATE SCHEMA {SCHEMA}")
        for table in TABLES:
            conn.execute(f"CREATE TABLE {SCHEMA}.{table} AS SELECT * FROM wedsync.{table} ORDER BY 1")
    store_map = backup.stores(DEDUP)
    t0 = dt.datetime.now(dt.UTC)
    days, sources = [], []
    with catalog.connect() as conn:
        try:
            for day in range(3):
                if day == 1:
                    _change_a_stretch_of_guests()
                result = run_backup_steps(DEDUP, LEDGER, catalog_conn=conn, key_ring=key_ring,
                                          started_at=t0 + dt.timedelta(days=day), store_map=store_map)
                days.append(catalog.backup(conn, result["backup_id"]))
                sources.append(_source_tables())
            yield {"t0": t0, "stores": store_map, "days": days, "sources": sources}
        finally:
            conn.execute("DELETE FROM backup_catalog.backups WHERE starts_with(prefix, %s)", (f"{PREFIX}/",))
            catalog.forget_blobs_under(conn, PREFIX)
            for store in store_map.values():
                store.delete_prefix(f"{PREFIX}/")
            with _owner() as owner:
                owner.autocommit = True
                owner.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


def _chunks(record: dict, table: str) -> list[str]:
    """The table's chunk ids in stream order: its extents of packs, read through the catalog's record of which
    chunks each pack holds (`pack_chunks`, written by the extract that stored the pack)."""
    (obj,) = [o for o in record["manifest"]["objects"] if o["source"] == table]
    keys = {b["content_id"]: b["key"] for b in record["manifest"]["blobs"]}
    with catalog.connect() as conn:
        rows = conn.execute("SELECT key, content_id, pack_offset, size FROM backup_catalog.pack_chunks "
                            "WHERE key = ANY(%s) ORDER BY key, pack_offset", ([keys[p] for p in obj["packs"]],))
        in_pack: dict[str, list[tuple[int, str, int]]] = {}
        for key, cid, offset, size in rows:
            in_pack.setdefault(key, []).append((offset, cid, size))
    ids = []
    for index, start, length in obj["extents"]:
        inside = [(o, c, n) for o, c, n in in_pack[keys[obj["packs"][index]]] if start <= o < start + length]
        assert inside[0][0] == start and inside[-1][0] + inside[-1][2] == start + length  # whole chunks
        ids += [c for _o, c, _n in inside]
    assert len(ids) == obj["chunk_count"]
    return ids


def _packs(record: dict, table: str) -> list[str]:
    """The content ids of the packs that hold the table's plaintext, in the order its extents first need them."""
    (obj,) = [o for o in record["manifest"]["objects"] if o["source"] == table]
    return [obj["packs"][index] for index, _offset, _length in obj["extents"]]


def _restore(policy, backup_id: str, store_map, key_ring, **request):
    return run_restore(policy, check_request(policy, {"data_class": "ledger", "backup_id": backup_id, **request}),
                       stores=store_map, key_ring=key_ring, db_connect=catalog.db_connector("wedsync_db_owner"))


_restored_tables = _tables


def _drop(schema: str) -> None:
    with _owner() as conn:
        conn.autocommit = True
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_a_backup_stores_only_the_chunks_around_what_changed(backups):
    day1, day2, day3 = backups["days"]
    for record in (day1, day2, day3):
        assert record["status"] == "validated" and record["manifest"]["format_version"] == 5, record
    for table in ("clients", "weddings"):  # unchanged tables: the same chunks, none stored again
        assert _chunks(day2, table) == _chunks(day1, table)
    before, after = _chunks(day1, "guests"), _chunks(day2, "guests")
    assert len(before) >= 20, "the test table is too small to cut into many chunks"
    new = [c for c in after if c not in set(before)]
    # the changes sit in one stretch of the table (and VACUUM's freed space): the chunks before it are unchanged
    assert 0 < len(new) <= len(after) // 3, (len(new), len(after))
    assert after[: len(before) // 4] == before[: len(before) // 4]
    totals1, totals2, totals3 = (r["manifest"]["totals"] for r in (day1, day2, day3))
    assert totals2["chunks_stored"] == len(set(new)) and totals2["ciphertext_bytes"] < totals1["ciphertext_bytes"] / 3
    # the new chunks went into new packs, and only they (the catalog records which; no manifest lists chunk ids)
    new_packs = {b["key"] for b in day2["manifest"]["blobs"]} - {b["key"] for b in day1["manifest"]["blobs"]}
    with catalog.connect() as conn:
        stored = {cid for _key, cid, _offset in catalog.pack_chunks(conn, new_packs)}
    assert stored == set(new) and all("pack_chunks" not in r["manifest"] for r in (day1, day2, day3))
    assert 0 < totals2["packs_stored"] == len(new_packs) < totals1["packs_stored"], totals2
    assert totals3["packs_stored"] == 0
    # a manifest grows with what changed, not with the table: a run of unchanged chunks is one extent
    (guests1,) = [o for o in day1["manifest"]["objects"] if o["source"] == "guests"]
    (guests2,) = [o for o in day2["manifest"]["objects"] if o["source"] == "guests"]
    assert len(guests1["extents"]) == len(guests1["packs"]) < len(before) / 1.5
    assert len(guests2["extents"]) <= len(guests1["extents"]) + 2 * len(new) + 2
    assert totals3["chunks_stored"] == 0 and totals3["ciphertext_bytes"] == 0 and totals3["stored_objects"] == 0
    assert _chunks(day3, "guests") == after


def test_every_chunk_is_stored_once_per_cloud_named_by_its_keyed_content_id(backups, key_ring):
    store_map = backups["stores"]
    needed = {b["key"]: b for r in backups["days"] for b in r["manifest"]["blobs"]}
    for cloud, store in store_map.items():
        stored = {info.key for info in store.list(format.chunks_prefix(PREFIX))}
        assert stored == set(needed), cloud
    for key, blob in needed.items():
        assert key == format.chunk_key(PREFIX, blob["content_id"])
        assert "plaintext_sha256" not in blob  # nothing names the plaintext of a pack
    day1 = backups["days"][0]["manifest"]
    with catalog.connect() as conn:
        chunks = {cid for _key, cid, _offset in catalog.pack_chunks(conn, [b["key"] for b in day1["blobs"]])}
    assert len(day1["blobs"]) < len(chunks) / 1.5, (len(day1["blobs"]), len(chunks))  # packed, not one per chunk
    assert not {format.chunk_key(PREFIX, cid) for cid in chunks} & needed.keys()  # a chunk id names no object


class _Killed(BaseException):
    """Stands for SIGKILL at that point of a sweep: nothing after it runs, no cleanup, no except clause."""


class _DiesAfter:
    """A store whose process dies after `budget` more deletes (shared by all clouds of one sweep)."""

    def __init__(self, store, budget: dict[str, int]):
        self._store, self._budget = store, budget

    def delete(self, key: str) -> None:
        if self._budget["left"] <= 0:
            raise _Killed
        self._budget["left"] -= 1
        self._store.delete(key)

    def __getattr__(self, name):
        return getattr(self._store, name)


def _only_in_day1(backups) -> set[str]:
    day1, day2, day3 = backups["days"]
    return ({b["key"] for b in day1["manifest"]["blobs"]}
            - {b["key"] for r in (day2, day3) for b in r["manifest"]["blobs"]})


def test_retiring_the_first_backup_killed_at_any_point_leaves_every_kept_backup_restorable(backups, key_ring):
    """Day 1 is retired -- its manifest in every cloud, then the chunks only it needed -- by a process killed after
    0, 1, 2, ... deletes, again and again until one run completes: after the kills, days 2 and 3 restore."""
    day1, day2, day3 = backups["days"]
    store_map = backups["stores"]
    assert _only_in_day1(backups), "day 2 replaced no chunk of day 1"
    kept = [format.Manifest.from_json(r["manifest"]) for r in (day2, day3)]
    referenced = {key for m in kept for key in m.referenced_blob_keys(PREFIX)}
    later = backups["t0"] + dt.timedelta(days=30)
    kills, among_chunks = 0, 0
    for budget in range(0, 1000):
        left = {"left": budget}
        dying = {cloud: _DiesAfter(store, left) for cloud, store in store_map.items()}
        manifests_gone = False
        try:
            assert retention.delete_backup(dying, day1["prefix"]) == {}
            manifests_gone = True
            retention.collect_garbage_blobs(DEDUP, dying, referenced, later)
            break
        except _Killed:
            kills += 1
            among_chunks += manifests_gone
            if kills in (2, 5) or kills % 7 == 0:  # a restore after some of the kills: each takes seconds
                for record, source in ((day2, backups["sources"][1]), (day3, backups["sources"][2])):
                    report = _restore(DEDUP, record["backup_id"], store_map, key_ring)
                    try:
                        assert _restored_tables(report.target) == source, f"after kill {kills}"
                    finally:
                        _drop(report.target)
    assert kills >= 3 and among_chunks >= 3, (kills, among_chunks)  # killed among manifests and among chunks
    with catalog.connect() as conn:
        catalog.mark_deleted(conn, day1["backup_id"])
    for cloud, store in store_map.items():
        assert store.head(format.manifest_key(day1["prefix"])) is None, cloud
        assert {i.key for i in store.list(format.chunks_prefix(PREFIX))} == referenced, cloud


def test_each_later_backup_restores_on_its_own_after_the_first_is_retired(backups, key_ring):
    store_map = backups["stores"]
    for cloud, store in store_map.items():
        assert not any(store.head(key) for key in _only_in_day1(backups)), cloud
    for record, source in ((backups["days"][1], backups["sources"][1]), (backups["days"][2], backups["sources"][2])):
        report = _restore(DEDUP, record["backup_id"], store_map, key_ring)
        try:
            assert _restored_tables(report.target) == source  # byte-identical to a fresh COPY of the source
            assert report.rows["guests"] == len(source["guests"])
        finally:
            _drop(report.target)


def test_the_live_chunks_of_a_pack_the_newest_backup_uses_little_of_are_stored_again(backups, key_ring):
    """`dedup_repack_below_percent`: a pack the newest backup uses less than that share of is referenced by no
    later backup -- its live chunks go into the new backup's own packs -- so it can go once the backups that name
    it expire; every other pack is referenced as before, and the backup restores byte-identical. At 100 % nearly
    every pack day 3 uses is sparse (its nonce prefix is never a chunk), whatever the key ring's chunk
    boundaries; one whose chunk recurs in the table counts that chunk each time and may not be. (Where the line
    falls between packs: `tests/unit/test_chunking.py`.)"""
    store_map = backups["stores"]
    day3, source = backups["days"][2], backups["sources"][2]
    sizes = {b["content_id"]: b["plaintext_size"] for b in day3["manifest"]["blobs"]}
    keys = {b["content_id"]: b["key"] for b in day3["manifest"]["blobs"]}
    used: dict[str, int] = {}
    for obj in day3["manifest"]["objects"]:
        for index, _offset, length in obj["extents"]:
            used[obj["packs"][index]] = used.get(obj["packs"][index], 0) + length
    sparse = {p for p in used if used[p] < sizes[p]}
    assert len(sparse) > len(used) // 2
    day3_chunks = {cid for table in TABLES for cid in _chunks(day3, table)}
    with catalog.connect() as conn:
        kept = {cid for _key, cid, _offset in catalog.pack_chunks(conn, {keys[p] for p in set(used) - sparse})}
    repacking = dataclasses.replace(LEDGER, dedup_repack_below_percent=100)
    policy = DEDUP.with_overrides(data_classes={"ledger": repacking})
    with catalog.connect() as conn:
        result = run_backup_steps(policy, repacking, catalog_conn=conn, key_ring=key_ring,
                                  started_at=backups["t0"] + dt.timedelta(days=3), store_map=store_map)
        record = catalog.backup(conn, result["backup_id"])
        catalog.mark_deleted(conn, result["backup_id"])  # day 3 stays the newest for the tests after this one
    try:
        manifest = record["manifest"]
        referenced = {p for o in manifest["objects"] for p in o["packs"]}
        assert result["status"] == "validated"
        assert not referenced & sparse  # no chunk is read from a sparse pack any more
        assert referenced & set(used) == set(used) - sparse  # every other pack of day 3 still is
        assert {cid for table in TABLES for cid in _chunks(record, table)} == day3_chunks  # the same content
        assert manifest["totals"]["chunks_stored"] == len(day3_chunks - kept)  # the sparse packs' chunks, once each
        report = _restore(DEDUP, record["backup_id"], store_map, key_ring)
        try:
            assert _restored_tables(report.target) == source
        finally:
            _drop(report.target)
    finally:
        with catalog.connect() as conn:
            conn.execute("DELETE FROM backup_catalog.backups WHERE backup_id = %s", (result["backup_id"],))


def test_a_corrupted_pack_fails_over_to_the_next_cloud(backups, key_ring):
    day3 = backups["days"][2]
    store_map = backups["stores"]
    first = _packs(day3, "guests")[0]  # the table's first chunks: read in one stretch, so fetched once
    victim = next(b for b in day3["manifest"]["blobs"] if b["content_id"] == first)
    original = store_map["aws"].read_bytes(victim["key"])
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x01
    store_map["aws"].put_bytes(victim["key"], bytes(damaged))
    try:
        report = _restore(DEDUP, day3["backup_id"], store_map, key_ring, source_cloud="aws")
        try:
            assert _restored_tables(report.target) == backups["sources"][2]
            assert [f["key"] for f in report.failovers] == [victim["key"]], report.failovers
            assert report.failovers[0]["cloud"] == "aws"
            assert report.sources["aws"] >= 1 and sum(n for c, n in report.sources.items() if c != "aws") == 1
        finally:
            _drop(report.target)
        # repair re-copies that one pack from a good cloud, not the table
        manifest = format.Manifest.from_json(day3["manifest"])
        result = repair.repair_backup(manifest, store_map, DEDUP.staging_dir() / "repair-dedup")
        assert [(key, target) for key, _source, target in result.copied] == [(victim["key"], "aws")], result
        assert hashlib.sha256(store_map["aws"].read_bytes(victim["key"])).hexdigest() == victim["ciphertext_sha256"]
    finally:
        if hashlib.sha256(store_map["aws"].read_bytes(victim["key"])).digest() != hashlib.sha256(original).digest():
            store_map["aws"].put_bytes(victim["key"], original)


def test_a_format_3_table_backup_still_restores(backups, key_ring):
    """Written as format 3 did: one object per table, no chunks (the same class with deduplication off), its
    manifest stamped with version 3."""
    plain = dataclasses.replace(LEDGER, dedup_chunk_kib=0)
    policy = DEDUP.with_overrides(data_classes={"ledger": plain})
    store_map = backups["stores"]
    with catalog.connect() as conn:
        result = run_backup_steps(policy, plain, catalog_conn=conn, key_ring=key_ring,
                                  started_at=backups["t0"] + dt.timedelta(days=3), store_map=store_map)
        record = catalog.backup(conn, result["backup_id"])
    manifest = {**record["manifest"], "format_version": 3}
    assert all("chunks" not in o for o in manifest["objects"])
    for store in store_map.values():
        store.put_bytes(format.manifest_key(record["prefix"]), json.dumps(manifest).encode())
    report = run_restore(policy, check_request(policy, {"data_class": "ledger", "backup_id": record["backup_id"]}),
                         stores=store_map, key_ring=key_ring, db_connect=catalog.db_connector("wedsync_db_owner"))
    try:
        assert _restored_tables(report.target) == backups["sources"][2]
    finally:
        _drop(report.target)


def test_a_pack_the_catalog_knows_but_two_clouds_lack_is_copied_to_them_by_the_next_backup(backups, key_ring):
    """The catalog is never trusted alone: a pack it lists that a cloud lost (or never got) is copied to that
    cloud, ciphertext as it is, when the next backup that needs it validates."""
    day3 = backups["days"][2]
    store_map = backups["stores"]
    lost = next(b for b in day3["manifest"]["blobs"] if b["content_id"] in set(_packs(day3, "guests")))
    for cloud in ("azure", "gcp"):
        store_map[cloud].delete(lost["key"])
    with catalog.connect() as conn:
        result = run_backup_steps(DEDUP, LEDGER, catalog_conn=conn, key_ring=key_ring,
                                  started_at=backups["t0"] + dt.timedelta(days=4), store_map=store_map)
        record = catalog.backup(conn, result["backup_id"])
    assert result["status"] == "validated" and record["manifest"]["totals"]["chunks_stored"] == 0, result
    for cloud, store in store_map.items():
        assert store.head(lost["key"]).sha256 == lost["ciphertext_sha256"], cloud


def test_a_pack_no_cloud_holds_a_good_copy_of_is_forgotten_and_its_chunks_stored_again(backups, key_ring):
    """A pack damaged in every cloud: the backup that needs it fails (no quorum: nothing can be filled), the
    catalog forgets the pack and the chunks it held, and the next backup stores those chunks again -- in a new
    pack, under a new key -- and restores."""
    store_map = backups["stores"]
    with catalog.connect() as conn:
        latest = latest_backup(conn, "ledger")
    victim = next(b for b in latest["manifest"]["blobs"] if b["content_id"] == _packs(latest, "guests")[0])
    originals = {cloud: store.read_bytes(victim["key"]) for cloud, store in store_map.items()}
    try:
        for cloud, store in store_map.items():
            damaged = bytearray(originals[cloud])
            damaged[len(damaged) // 2] ^= 0x01
            store.put_bytes(victim["key"], bytes(damaged))
        with catalog.connect() as conn:
            with pytest.raises(backup.QuorumNotMet, match="good in no cloud"):
                run_backup_steps(DEDUP, LEDGER, catalog_conn=conn, key_ring=key_ring,
                                 started_at=backups["t0"] + dt.timedelta(days=4, hours=12), store_map=store_map)
            assert catalog.pack_chunks(conn, [victim["key"]]) == []
            result = run_backup_steps(DEDUP, LEDGER, catalog_conn=conn, key_ring=key_ring,
                                      started_at=backups["t0"] + dt.timedelta(days=4, hours=13), store_map=store_map)
            record = catalog.backup(conn, result["backup_id"])
        assert result["status"] == "validated" and record["manifest"]["totals"]["packs_stored"] >= 1
        assert victim["key"] not in {b["key"] for b in record["manifest"]["blobs"]}
        report = _restore(DEDUP, record["backup_id"], store_map, key_ring)
        try:
            assert _restored_tables(report.target) == backups["sources"][2]
        finally:
            _drop(report.target)
    finally:
        for cloud, store in store_map.items():  # the earlier days' backups still need it
            store.put_bytes(victim["key"], originals[cloud])


def test_the_chunks_a_backup_references_are_proven_from_one_listing_where_listings_carry_checksums(backups, key_ring,
                                                                                                   monkeypatch):
    """Azure's and GCS's listings carry what HEAD does: a backup that references every chunk it needs proves them
    from one listing there. S3's listing proves their bytes (ETag = MD5) but not their locks: it is asked by HEAD
    only for a chunk whose lock, as the catalog recorded it, is shorter than this backup's (none here: the earlier
    backups locked every chunk for a lock period beyond their own), and with a HEAD each once that is forgotten."""
    # the emulators share this host's clock: a lock recorded after a copy was written is about that copy, even
    # within the minute a cloud's clock may differ by
    monkeypatch.setattr(backup, "LOCK_RECORD_MARGIN", dt.timedelta(0))
    store_map = backup.stores(DEDUP)
    chunk_heads = dict.fromkeys(store_map, 0)
    for cloud, store in store_map.items():
        def head(key, _cloud=cloud, _inner=store.head):
            chunk_heads[_cloud] += key.startswith(format.chunks_prefix(PREFIX))
            return _inner(key)

        store.head = head
    with catalog.connect() as conn:
        result = run_backup_steps(DEDUP, LEDGER, catalog_conn=conn, key_ring=key_ring,
                                  started_at=backups["t0"] + dt.timedelta(days=5), store_map=store_map)
        manifest = catalog.backup(conn, result["backup_id"])["manifest"]
    referenced = len(manifest["blobs"])
    assert result["status"] == "validated" and manifest["totals"]["chunks_stored"] == 0, result
    assert referenced >= 2 * backup.HEADS_PER_LISTING_PAGE  # enough for one listing to be the cheaper question
    assert chunk_heads == dict.fromkeys(store_map, 0), chunk_heads
    with catalog.connect() as conn:  # the recorded locks lost: S3 asks for each chunk again, and records them
        conn.execute("DELETE FROM backup_catalog.blob_locks WHERE cloud = 'aws' AND starts_with(key, %s)",
                     (f"{PREFIX}/",))
        result = run_backup_steps(DEDUP, LEDGER, catalog_conn=conn, key_ring=key_ring,
                                  started_at=backups["t0"] + dt.timedelta(days=5, hours=1), store_map=store_map)
        recorded = catalog.recorded_locks(conn, "aws", [b["key"] for b in manifest["blobs"]])
    assert result["status"] == "validated" and chunk_heads["aws"] >= referenced, chunk_heads
    assert chunk_heads["azure"] == chunk_heads["gcp"] == 0, chunk_heads
    lock_until = backups["t0"] + dt.timedelta(days=5, hours=1) + dt.timedelta(days=DEDUP.lock_days(LEDGER))
    assert len(recorded) == referenced and min(until for until, _at in recorded.values()) >= lock_until


HOT = dataclasses.replace(POLICY.data_classes["critical_weddings"], name="hot", dedup_bundles=True)
HOT_POLICY = POLICY.with_overrides(prefix=PREFIX, data_classes={"hot": HOT})


def test_an_unchanged_wedding_bundle_is_not_sent_again(backups, key_ring):  # `backups` cleans up the prefix
    store_map = backup.stores(HOT_POLICY)
    t0 = dt.datetime.now(dt.UTC)
    with _owner() as conn:
        conn.autocommit = True
        wedding_id, guest_id, dietary = conn.execute(
            "SELECT g.wedding_id, g.guest_id, g.dietary FROM wedsync.guests g JOIN wedsync.weddings w USING "
            "(wedding_id) WHERE w.wedding_date BETWEEN current_date + 1 AND current_date + 29 "
            "AND w.status <> 'cancelled' ORDER BY g.guest_id LIMIT 1").fetchone()
    try:
        with catalog.connect() as conn:
            runs = []
            for step in range(3):
                if step == 2:  # one guest of one wedding changes: only its bundle is new
                    with _owner() as owner:
                        owner.autocommit = True
                        owner.execute("UPDATE wedsync.guests SET dietary = 'no nuts (changed)' WHERE guest_id = %s",
                                      (guest_id,))
                result = run_backup_steps(HOT_POLICY, HOT, catalog_conn=conn, key_ring=key_ring,
                                          started_at=t0 + dt.timedelta(minutes=15 * step), store_map=store_map)
                runs.append(catalog.backup(conn, result["backup_id"])["manifest"])
        first, same, changed = runs
        assert first["format_version"] == 5 and len(first["objects"]) > 3
        assert first["totals"]["chunks_stored"] == len(first["objects"])  # one content-addressed chunk a bundle
        assert first["totals"]["stored_objects"] == first["totals"]["packs_stored"] == 1  # all in one pack
        assert all(len(o["extents"]) == 1 and o["chunk_count"] == 1 for o in first["objects"])
        assert same["totals"]["chunks_stored"] == 0 and same["totals"]["ciphertext_bytes"] == 0
        assert changed["totals"]["chunks_stored"] == 1 and changed["totals"]["stored_objects"] == 1
        by_wedding = {m["backup_id"]: {o["wedding_id"]: (o["packs"], o["extents"]) for o in m["objects"]}
                      for m in runs}
        differs = [w for w, c in by_wedding[changed["backup_id"]].items() if c != by_wedding[same["backup_id"]][w]]
        assert differs == [wedding_id]
        report = run_restore(HOT_POLICY, check_request(HOT_POLICY, {"data_class": "hot", "wedding_id": wedding_id,
                                                                    "backup_id": changed["backup_id"]}),
                             stores=store_map, key_ring=key_ring, db_connect=catalog.db_connector("wedsync_db_owner"))
        try:
            with _owner() as conn:
                restored = conn.execute(f'SELECT dietary FROM "{report.target}".guests WHERE guest_id = %s',
                                        (guest_id,)).fetchone()
            assert restored == ("no nuts (changed)",)
        finally:
            _drop(report.target)
    finally:
        with _owner() as owner:
            owner.autocommit = True
            owner.execute("UPDATE wedsync.guests SET dietary = %s WHERE guest_id = %s", (dietary, guest_id))
        with catalog.connect() as conn:
            conn.execute("DELETE FROM backup_catalog.backups WHERE data_class = 'hot'")


def test_an_emergency_run_of_a_few_weddings_does_not_make_the_next_run_store_every_bundle_again(backups, key_ring):
    """A run scoped to some weddings (an emergency run) references only their bundles' packs: the next full run
    looks its stored bundles up in the newest *full* backup's packs, so with nothing changed it stores none."""
    hot = dataclasses.replace(HOT, dedup_pack_kib=16)  # a bundle or two a pack: a scoped run references few
    policy = POLICY.with_overrides(prefix=PREFIX, data_classes={"hot": hot})
    store_map = backup.stores(policy)
    t0 = dt.datetime.now(dt.UTC)
    try:
        with catalog.connect() as conn:
            runs = []
            for minutes, wedding_ids in ((0, None), (5, "two"), (15, None)):
                if wedding_ids == "two":
                    wedding_ids = sorted(o["wedding_id"] for o in runs[0]["objects"])[:2]
                done = run_backup_steps(policy, hot, catalog_conn=conn, key_ring=key_ring, wedding_ids=wedding_ids,
                                        started_at=t0 + dt.timedelta(minutes=minutes), store_map=store_map)
                runs.append(catalog.backup(conn, done["backup_id"])["manifest"])
        first, emergency, second = runs
        assert len(first["objects"]) > 3 and len(first["blobs"]) > 3  # packs of a bundle or two
        assert len(emergency["objects"]) == 2 and emergency["totals"]["chunks_stored"] == 0
        assert len(emergency["blobs"]) <= 2 < len(first["blobs"])
        assert second["totals"]["chunks_stored"] == 0 and second["totals"]["stored_objects"] == 0
        assert {b["key"] for b in second["blobs"]} == {b["key"] for b in first["blobs"]}
    finally:
        with catalog.connect() as conn:
            conn.execute("DELETE FROM backup_catalog.backups WHERE data_class = 'hot'")


def test_a_new_dedup_key_stores_every_chunk_anew_and_every_older_backup_still_restores(backups, key_ring):
    """Replacing the dedup key (`with_new_dedup_key`) gives new content ids and new chunk boundaries: the next
    backup stores every chunk again. The older backups' chunks carry ids only the old key computes, and restore
    checks every chunk against its id: they restore with the old key listed as a previous one, not without."""
    store_map = backups["stores"]
    day3, source = backups["days"][2], backups["sources"][2]
    rotated = key_ring.with_new_dedup_key()
    report = _restore(DEDUP, day3["backup_id"], store_map, rotated)
    try:
        assert _restored_tables(report.target) == source
    finally:
        _drop(report.target)
    forgotten = crypto.KeyRing.from_json({**json.loads(rotated.to_json()), "previous_dedup_keys": []})
    with pytest.raises(RestoreError, match="content id"):
        _restore(DEDUP, day3["backup_id"], store_map, forgotten)
    with catalog.connect() as conn:
        result = run_backup_steps(DEDUP, LEDGER, catalog_conn=conn, key_ring=rotated,
                                  started_at=backups["t0"] + dt.timedelta(days=6), store_map=store_map)
        record = catalog.backup(conn, result["backup_id"])
    totals = record["manifest"]["totals"]
    distinct = {cid for table in TABLES for cid in _chunks(record, table)}  # (a chunk may recur in a table)
    assert result["status"] == "validated" and totals["chunks_stored"] == len(distinct) > 0, totals
    assert not {b["key"] for b in record["manifest"]["blobs"]} & {b["key"] for b in day3["manifest"]["blobs"]}
    report = _restore(DEDUP, record["backup_id"], store_map, rotated)
    try:
        assert _restored_tables(report.target) == source
    finally:
        _drop(report.target)


def test_a_large_deduplicated_table_is_split_by_wedding_ranges_that_take_every_row_once(stack):
    """Parts of an ordered table are ranges of `wedding_id` (read in order from its index, no sort of a block
    range), and rows without a wedding get a part of their own: together every row, once, each part in order --
    by wedding, and within a wedding in the rows' heap order, as the index holds them (no sort at all)."""
    from wedsync_dr import extract

    with _owner() as conn:
        conn.autocommit = True
        conn.execute("DROP SCHEMA IF EXISTS split_src CASCADE")
        conn.execute("CREATE SCHEMA split_src")
        conn.execute("CREATE TABLE split_src.notes (note_id int PRIMARY KEY, wedding_id int, body text)")
        conn.execute("CREATE INDEX ON split_src.notes (wedding_id)")
        conn.execute("INSERT INTO split_src.notes SELECT g, CASE WHEN g % 50 = 0 THEN NULL ELSE (g * 7919) % 400 END,"
                     " repeat('x', 200) FROM generate_series(1, 20000) g")
        try:
            size = conn.execute("SELECT pg_relation_size('split_src.notes')").fetchone()[0]
            columns = {"notes": ["note_id", "wedding_id", "body"]}
            jobs = extract.plan_copies(conn, "split_src", ["notes"], size // 4, columns)
            assert len(jobs) == 5 and all("ctid" not in job.query for job in jobs), [j.query for j in jobs]
            conn.execute("UPDATE split_src.notes SET body = 'moved' WHERE note_id % 97 = 0")  # rows out of key order
            for setting in extract.INDEX_ORDER:
                conn.execute(setting)
            seen = []
            for job in jobs:
                select = job.query.removeprefix("COPY (").rsplit(") TO STDOUT", 1)[0]
                assert "Sort" not in str(conn.execute(f"EXPLAIN {select}").fetchall())
                rows = conn.execute(select.replace("SELECT *", "SELECT wedding_id, note_id, (ctid::text::point)[0], "
                                                   "(ctid::text::point)[1]", 1)).fetchall()
                assert rows == sorted(rows, key=lambda r: (r[0] is None, r[0] or 0, r[2], r[3]))
                seen += [note_id for _, note_id, _, _ in rows]
            assert sorted(seen) == list(range(1, 20001))
            conn.execute("ALTER TABLE split_src.notes ALTER COLUMN wedding_id SET DATA TYPE text")
            text_jobs = extract.plan_copies(conn, "split_src", ["notes"], size // 4, columns)
            assert all("ctid >=" in job.query for job in text_jobs)  # not an integer: block ranges, sorted
        finally:
            conn.execute("DROP SCHEMA split_src CASCADE")
