"""Shared, content-addressed asset blobs against the real stack (audit findings of issue #13, items 1-5):
later backups extend the write-once lock of the blobs they reference, repaired copies are locked like the
originals, every manifest restores its backup on its own (after the first backup is retired and the catalog
rebuilt from one cloud), blob keys, metadata and manifests name no plaintext, format-2 backups still
restore, the restore DAG honours cloud health, and wedding bundles carry the wedding's reviews.

Everything here lives under its own key prefix and a renamed assets class (`media`): the class is found by
its kind, never by its name, and nothing here disturbs the other modules' backups.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import os
import secrets
from pathlib import Path

import psycopg
import pytest

from tests.helpers import run_backup_steps, run_dag, run_worked_example, worked_example
from wedsync_dr import backup, catalog, crypto, format, repair, retention
from wedsync_dr.policy import load_policy
from wedsync_dr.requests import check_request
from wedsync_dr.restore import run_restore
from wedsync_dr_dev import local_stack

POLICY = load_policy()
PREFIX = "wedsync-dr-audit"
MEDIA = dataclasses.replace(POLICY.data_classes["assets"], name="media")
AUDIT = POLICY.with_overrides(prefix=PREFIX, data_classes={
    **{k: v for k, v in POLICY.data_classes.items() if k != "assets"}, "media": MEDIA})


class RecordingStores(dict):
    """The policy's stores, each remembering which keys it was asked to re-lock."""

    def __init__(self, policy):
        super().__init__(backup.stores(policy))
        self.relocked: dict[str, list[str]] = {cloud: [] for cloud in self}
        for cloud, store in self.items():
            def extend(key, retain_until, _cloud=cloud, _inner=store.extend_retention):
                self.relocked[_cloud].append(key)
                return _inner(key, retain_until)

            store.extend_retention = extend


def _source() -> Path:
    return Path(os.environ["WEDSYNC_ASSET_SOURCE"])


def _source_files() -> dict[str, bytes]:
    return {p.relative_to(_source()).as_posix(): p.read_bytes() for p in _source().rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def key_ring(stack):
    return crypto.KeyRing.from_connection(POLICY.key_ring_conn_id)


@pytest.fixture(scope="module")
def two_backups(stack, demo_data, airflow_db, key_ring):
    """A first `media` backup now, and a second one a lock period and a day later (injected clock) after one file
    changed and one was added; then the source as the second backup saw it."""
    store_map = RecordingStores(AUDIT)
    changed = sorted(_source().rglob("*.pdf"))[0]
    original = changed.read_bytes()
    added = _source() / "weddings" / "audit" / "added.pdf"
    t0 = dt.datetime.now(dt.UTC)
    with catalog.connect() as conn:
        try:
            first = run_backup_steps(AUDIT, MEDIA, catalog_conn=conn, key_ring=key_ring, started_at=t0,
                                     store_map=store_map)
            relocked_by_first = {c: len(keys) for c, keys in store_map.relocked.items()}
            first_locks = {b["key"]: local_stack.sdk_s3(stack).head_object(
                Bucket=local_stack.BUCKET, Key=b["key"])["ObjectLockRetainUntilDate"]
                for b in catalog.backup(conn, first["backup_id"])["manifest"]["blobs"]}
            changed.write_bytes(original + b"\n% revised by the audit test\n")
            added.parent.mkdir(parents=True, exist_ok=True)
            added.write_bytes(os.urandom(3000))
            # new blobs are stored locked for a period beyond the first backup's lock: the second comes after it
            second = run_backup_steps(AUDIT, MEDIA, catalog_conn=conn, key_ring=key_ring,
                                      started_at=t0 + dt.timedelta(days=AUDIT.lock_days(MEDIA) + 1),
                                      store_map=store_map)
            yield {"t0": t0, "stores": store_map, "first": catalog.backup(conn, first["backup_id"]),
                   "second": catalog.backup(conn, second["backup_id"]), "relocked_by_first": relocked_by_first,
                   "first_locks": first_locks,
                   "files": _source_files(), "changed": changed.relative_to(_source()).as_posix()}
        finally:
            changed.write_bytes(original)
            added.unlink(missing_ok=True)
            conn.execute("DELETE FROM backup_catalog.backups WHERE starts_with(prefix, %s)", (f"{PREFIX}/",))
            catalog.forget_blobs_under(conn, PREFIX)


def test_a_later_backup_extends_the_lock_of_every_blob_it_references(stack, two_backups):
    first, second = two_backups["first"]["manifest"], two_backups["second"]["manifest"]
    stored_by_first = {b["key"] for b in first["blobs"]}
    referenced = {b["key"] for b in second["blobs"]}
    assert second["totals"]["blobs_stored"] == 2  # the changed file and the added one: nothing else again
    assert len(referenced - stored_by_first) == 2 and len(stored_by_first & referenced) == len(stored_by_first) - 1
    locked_until = dt.datetime.fromisoformat(second["locked_until"]).replace(microsecond=0)
    first_locked_until = dt.datetime.fromisoformat(first["locked_until"]).replace(microsecond=0)
    assert locked_until > first_locked_until
    # the first backup stored its blobs locked one period longer than itself
    period = dt.timedelta(days=AUDIT.lock_days(MEDIA))
    assert all(until >= first_locked_until + period for until in two_backups["first_locks"].values())
    s3 = local_stack.sdk_s3(stack)
    for key in referenced:
        head = s3.head_object(Bucket=local_stack.BUCKET, Key=key)
        assert head["ObjectLockMode"] == "GOVERNANCE", key
        assert head["ObjectLockRetainUntilDate"] >= locked_until, key
    # Azurite and the GCS emulator accept retention and keep none: what matters is that each was asked.
    shared = stored_by_first & referenced
    for cloud in POLICY.cloud_names:
        asked = set(two_backups["stores"].relocked[cloud][two_backups["relocked_by_first"][cloud]:])
        assert shared <= asked, cloud


def test_repaired_copies_carry_the_backups_lock_and_metadata(stack, two_backups, tmp_path):
    manifest = two_backups["second"]["manifest"]
    blob = manifest["blobs"][0]
    index = next(o for o in manifest["objects"] if o["source"] == "asset-index")
    s3 = local_stack.sdk_s3(stack)
    for key in (blob["key"], index["key"], format.manifest_key(manifest["prefix"])):
        s3.delete_object(Bucket=local_stack.BUCKET, Key=key)  # a delete marker hides the locked version
    result = repair.repair_backup(format.Manifest.from_json(manifest), two_backups["stores"], tmp_path,
                                  lock_days=AUDIT.immutability_days)
    assert {(key, cloud) for key, _source, cloud in result.copied} == {(blob["key"], "aws"), (index["key"], "aws")}
    assert "aws" in result.clouds_ok
    locked_until = dt.datetime.fromisoformat(manifest["locked_until"]).replace(microsecond=0)
    for key in (blob["key"], index["key"], format.manifest_key(manifest["prefix"])):
        head = s3.head_object(Bucket=local_stack.BUCKET, Key=key)
        assert head["ObjectLockMode"] == "GOVERNANCE" and head["ObjectLockRetainUntilDate"] >= locked_until, key
    metadata = s3.head_object(Bucket=local_stack.BUCKET, Key=blob["key"])["Metadata"]
    assert metadata["content-id"] == blob["content_id"] and "plaintext-sha256" not in metadata


def test_blob_keys_metadata_and_manifests_name_no_plaintext(stack, two_backups):
    files = two_backups["files"]
    hashes = {hashlib.sha256(data).hexdigest() for data in files.values()}
    names = {Path(path).name for path in files} | set(files)
    listed = {
        "aws": [(o["Key"], local_stack.sdk_s3(stack).head_object(Bucket=local_stack.BUCKET, Key=o["Key"])["Metadata"])
                for o in local_stack.sdk_s3(stack).list_objects_v2(Bucket=local_stack.BUCKET,
                                                                   Prefix=PREFIX)["Contents"]],
        "azure": [(b.name, b.metadata) for b in local_stack.sdk_azure_container(stack).list_blobs(
            name_starts_with=PREFIX, include=["metadata"])],
        "gcp": [(b.name, b.metadata or {}) for b in local_stack.sdk_gcs_bucket(stack).client.list_blobs(
            local_stack.BUCKET, prefix=PREFIX)],
    }
    for cloud, objects in listed.items():
        blobs = [(key, meta) for key, meta in objects if key.startswith(format.blobs_prefix(PREFIX))]
        assert blobs, cloud
        for key, metadata in objects:
            assert not any(h in key for h in hashes), f"{cloud}: {key} names a plaintext hash"
            assert not (set(metadata.values()) & hashes), f"{cloud}: {key} metadata holds a plaintext hash"
            assert not any("plaintext" in name.lower() for name in metadata), (cloud, key, metadata)
    for record in (two_backups["first"], two_backups["second"]):
        text = local_stack.sdk_s3(stack).get_object(
            Bucket=local_stack.BUCKET, Key=format.manifest_key(record["prefix"]))["Body"].read().decode()
        assert not [h for h in hashes if h in text], "a manifest holds a plaintext hash of a file"
        assert not [n for n in names if n in text], "a manifest names a file"


def test_the_newest_backup_restores_on_its_own_after_the_first_is_retired_and_the_catalog_rebuilt(
        stack, two_backups, key_ring, tmp_path):
    first, second = two_backups["first"], two_backups["second"]
    store_map = two_backups["stores"]
    only_newest = dataclasses.replace(MEDIA, retention={"daily_days": 0})
    policy = AUDIT.with_overrides(data_classes={**AUDIT.data_classes, "media": only_newest})
    stale = next(b["key"] for b in first["manifest"]["blobs"]
                 if b["key"] not in {s["key"] for s in second["manifest"]["blobs"]})  # the changed file's old blob
    with catalog.connect() as conn:
        result = retention.run(policy, conn, store_map, now=two_backups["t0"] + dt.timedelta(days=30))
    assert result["deleted"] == [first["backup_id"]] and second["backup_id"] in result["kept"]
    for cloud, store in store_map.items():
        assert store.head(format.manifest_key(first["prefix"])) is None, cloud
        assert store.head(stale) is None, f"{cloud}: the blob no kept backup needs was not swept"

    database = f"rebuilt_catalog_{secrets.token_hex(3)}"
    with psycopg.connect(stack.admin_url(local_stack.CATALOG_DB), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {database}")
    rebuilt_url = stack.admin_url(database)
    with psycopg.connect(rebuilt_url, autocommit=True) as conn:
        catalog.ensure_schema(conn)
        assert catalog.rebuild_from_cloud(conn, policy, store_map["gcp"]) == 1
        assert conn.execute("SELECT count(*) FROM backup_catalog.blobs").fetchone()[0] == len(
            second["manifest"]["blobs"])

    for label, catalog_connect in (("rebuilt catalog", lambda: psycopg.connect(rebuilt_url)), ("no catalog", None)):
        target = tmp_path / label.replace(" ", "-")
        report = run_restore(policy, check_request(policy, {"data_class": "media", "target": str(target),
                                                            "source_cloud": "aws"}),
                             stores=store_map, key_ring=key_ring, db_connect=catalog.db_connector("wedsync_db_owner"),
                             catalog_connect=catalog_connect)
        assert report.backup_id == second["backup_id"], label
        restored = {p.relative_to(target).as_posix(): p.read_bytes() for p in target.rglob("*") if p.is_file()}
        assert restored == two_backups["files"], label


def _seal(key_ring, plaintext: bytes, ad: bytes, zstd_level: int | None):
    data_key = key_ring.new_data_key()
    out = io.BytesIO()
    stats = crypto.encrypt_stream(io.BytesIO(plaintext), out, data_key, ad, zstd_level=zstd_level)
    return out.getvalue(), stats, crypto.encryption_entry(key_ring.wrap(data_key), ad)


def test_a_format_2_assets_backup_still_restores(stack, two_backups, key_ring, tmp_path):
    """Written the way format 2 did: blobs keyed by plaintext sha256 with the hash as metadata and AD, the
    manifest describing only the blobs its backup stored, the catalog the rest."""
    store_map = two_backups["stores"]
    files = dict(sorted(two_backups["files"].items())[:3])
    started = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    backup_id = backup.new_backup_id("media", started)
    prefix = format.backup_prefix(PREFIX, "media", backup_id, started)
    blob_entries = []
    for data in files.values():
        sha = hashlib.sha256(data).hexdigest()
        ciphertext, stats, encryption = _seal(key_ring, data, crypto.associated_data("assets-blob", sha), None)
        entry = {"name": f"blob-{sha}", "key": format.blob_key(PREFIX, sha), "source": "asset:x", "rows": 0,
                 "columns": None, "wedding_id": None, "compression": "none", "plaintext_sha256": sha,
                 "plaintext_size": len(data), "compressed_size": len(data), "ciphertext_size": len(ciphertext),
                 "ciphertext_sha256": stats.ciphertext_sha256, "encryption": encryption, "blob": True}
        for store in store_map.values():
            store.put_bytes(entry["key"], ciphertext, metadata={"backup-id": backup_id, "plaintext-sha256": sha})
        blob_entries.append(entry)
    index = b"".join(json.dumps({"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                                 "mtime_ns": 0}).encode() + b"\n" for path, data in files.items())
    name = "asset-index.jsonl.zst.tink"
    ciphertext, stats, encryption = _seal(key_ring, index, crypto.associated_data(backup_id, name), 3)
    index_entry = {"name": name, "key": f"{prefix}/{name}", "source": "asset-index", "rows": len(files),
                   "columns": None, "wedding_id": None, "compression": "zstd",
                   "plaintext_sha256": hashlib.sha256(index).hexdigest(), "plaintext_size": len(index),
                   "compressed_size": 0, "ciphertext_size": len(ciphertext),
                   "ciphertext_sha256": stats.ciphertext_sha256, "encryption": encryption}
    manifest = {"format_version": 2, "backup_id": backup_id, "data_class": "media", "created_at": started.isoformat(),
                "snapshot_at": started.isoformat(), "source_schema": "wedsync", "labels": [], "reason": None,
                "prefix": prefix, "locked_until": None, "objects": [index_entry, blob_entries[0]],
                "referenced_blobs": sorted(e["plaintext_sha256"] for e in blob_entries), "tables": {}}
    for store in store_map.values():
        store.put_bytes(f"{prefix}/{name}", ciphertext)
        store.put_bytes(format.manifest_key(prefix), json.dumps(manifest).encode())
    with catalog.connect() as conn:
        catalog.record_asset_blobs(conn, [format.entry_from_json(e) for e in blob_entries[1:]], backup_id)
    try:
        target = tmp_path / "format2"
        run_restore(AUDIT, check_request(AUDIT, {"data_class": "media", "backup_id": backup_id,
                                                 "target": str(target)}),
                    stores=store_map, key_ring=key_ring, db_connect=catalog.db_connector("wedsync_db_owner"),
                    catalog_connect=catalog.connect)
        assert {p.relative_to(target).as_posix(): p.read_bytes() for p in target.rglob("*") if p.is_file()} == files
    finally:
        with catalog.connect() as conn:
            conn.execute("DELETE FROM backup_catalog.asset_blobs WHERE starts_with(key, %s)", (f"{PREFIX}/",))
        for store in store_map.values():  # nothing of it stays behind for a later test to find
            store.delete_prefix(f"{prefix}/")
            for entry in blob_entries:
                store.delete(entry["key"])


def test_the_restore_dag_prefers_healthy_clouds(stack, two_backups, key_ring):
    from wedsync_dr.wiring.restore import build_restore_dag

    vendor = AUDIT.data_classes["vendor_data"]
    with catalog.connect() as conn:
        done = run_backup_steps(AUDIT, vendor, catalog_conn=conn, key_ring=key_ring)
        conn.execute("INSERT INTO backup_catalog.cloud_health (cloud, healthy, failures_in_a_row, changed_at, "
                     "checked_at) VALUES ('aws', false, 3, now(), now()) ON CONFLICT (cloud) DO UPDATE SET "
                     "healthy = false, failures_in_a_row = 3")
    try:
        run = run_dag(build_restore_dag(AUDIT, doc_md="test"),
                      {"data_class": "vendor_data", "backup_id": done["backup_id"], "dry_run": True})
        assert run.state == "success"
        ti = next(t for t in run.get_task_instances() if t.task_id == "restore")
        report = ti.xcom_pull(task_ids="restore")
    finally:
        with catalog.connect() as conn:
            conn.execute("DELETE FROM backup_catalog.cloud_health WHERE cloud = 'aws'")
    # auto: healthy clouds first (azure, then gcp), the unhealthy one only as a last resort
    assert set(report["sources"]) == {"azure"} and report["sources"]["azure"] >= 1  # (pack downloads)


def test_a_wedding_bundle_carries_the_weddings_reviews(stack, two_backups, key_ring):
    bundles = AUDIT.data_classes["critical_weddings"]
    owner = stack.role_url(local_stack.OWNER_ROLE, local_stack.SOURCE_DB)
    with psycopg.connect(owner, autocommit=True) as conn:
        wedding_id, supplier_id = conn.execute(
            "SELECT w.wedding_id, wv.supplier_id FROM wedsync.weddings w JOIN wedsync.wedding_vendors wv "
            "USING (wedding_id) WHERE w.wedding_date >= current_date ORDER BY 1 LIMIT 1").fetchone()
        review_id = conn.execute(
            "INSERT INTO wedsync.reviews (supplier_id, wedding_id, rating, title, body) VALUES (%s, %s, 5, "
            "'Perfect day', 'The audit test wrote this review.') RETURNING review_id",
            (supplier_id, wedding_id)).fetchone()[0]
    try:
        with catalog.connect() as conn:
            done = run_backup_steps(AUDIT, bundles, catalog_conn=conn, key_ring=key_ring, wedding_ids=[wedding_id])
        report = run_restore(AUDIT, check_request(AUDIT, {"data_class": "critical_weddings",
                                                          "backup_id": done["backup_id"], "wedding_id": wedding_id}),
                             stores=backup.stores(AUDIT), key_ring=key_ring,
                             db_connect=catalog.db_connector("wedsync_db_owner"), catalog_connect=catalog.connect)
        with psycopg.connect(owner, autocommit=True) as conn:
            restored = conn.execute(f"SELECT review_id, title FROM {report.target}.reviews").fetchall()
            conn.execute(f"DROP SCHEMA {report.target} CASCADE")
        assert (review_id, "Perfect day") in restored
    finally:
        with psycopg.connect(owner, autocommit=True) as conn:
            conn.execute("DELETE FROM wedsync.reviews WHERE review_id = %s", (review_id,))


def test_the_format_md_worked_example_opens_a_table_object_and_a_blob_of_a_later_backup(
        stack, two_backups, key_ring, tmp_path):
    """docs/FORMAT.md's blocks, verbatim, on objects read from the stack with the plain S3 SDK: the guests table
    of a client_data backup, and a file whose blob the FIRST media backup stored, opened through the SECOND's
    manifest (every manifest describes every blob it needs)."""
    s3 = local_stack.sdk_s3(stack)

    def download(key: str, path: Path) -> None:
        path.write_bytes(s3.get_object(Bucket=local_stack.BUCKET, Key=key)["Body"].read())

    # one object per table: client_data with deduplication off (the shipped policy stores its tables as packs,
    # which the document's "One chunked table, by hand" opens: tests/integration/test_format_v4_by_hand.py)
    whole = dataclasses.replace(AUDIT.data_classes["client_data"], dedup_chunk_kib=0)
    policy = AUDIT.with_overrides(data_classes={**AUDIT.data_classes, "client_data": whole})
    with catalog.connect() as conn:
        clients = catalog.backup(conn, run_backup_steps(policy, whole, catalog_conn=conn,
                                                        key_ring=key_ring)["backup_id"])["manifest"]
    later = two_backups["second"]["manifest"]
    for directory, manifest in ((tmp_path / "table", clients), (tmp_path / "blob", later)):
        directory.mkdir()
        (directory / "manifest.json").write_text(json.dumps(manifest))
        (directory / "keyring.json").write_text(key_ring.to_json())
        (directory / "decrypt_object.py").write_text(worked_example("decrypt_object.py"))

    guests = next(o for o in clients["objects"] if o["name"] == "guests.copy.zst.tink")
    download(guests["key"], tmp_path / "table" / guests["name"])
    result = run_worked_example(tmp_path / "table", "shell")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == guests["plaintext_sha256"]

    stored_first = {b["content_id"] for b in two_backups["first"]["manifest"]["blobs"]}
    path, data = next((p, d) for p, d in sorted(two_backups["files"].items())
                      if key_ring.content_id(hashlib.sha256(d).hexdigest()) in stored_first)
    content_id = key_ring.content_id(hashlib.sha256(data).hexdigest())
    index = next(o for o in later["objects"] if o["source"] == "asset-index")
    download(index["key"], tmp_path / "blob" / "asset-index.jsonl.zst.tink")
    download(format.blob_key(PREFIX, content_id), tmp_path / "blob" / f"{content_id}.tink")
    result = run_worked_example(tmp_path / "blob", "shell-blob", {"ASSET": path})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "blob" / "asset.file").read_bytes() == data


def test_blobs_a_cloud_holds_but_the_catalog_forgot_are_adopted_never_re_encrypted(stack, two_backups, key_ring):
    """After the catalog lost its blob rows (a rebuild gap, a failed run's leftovers), the next backup takes
    each stored blob as it is -- proven to decrypt to its file -- instead of writing a second ciphertext under
    the same key, which would break every older manifest that names the first."""
    store_map = two_backups["stores"]
    s3 = local_stack.sdk_s3(stack)
    before = {b["key"]: s3.head_object(Bucket=local_stack.BUCKET, Key=b["key"])["ETag"]
              for b in two_backups["second"]["manifest"]["blobs"]}
    with catalog.connect() as conn:
        catalog.forget_blobs_under(conn, PREFIX)
        third = run_backup_steps(AUDIT, MEDIA, catalog_conn=conn, key_ring=key_ring,
                                 started_at=two_backups["t0"] + dt.timedelta(days=2), store_map=store_map)
        manifest = catalog.backup(conn, third["backup_id"])["manifest"]
        assert len(catalog.known_blobs(conn, PREFIX)) == len(manifest["blobs"])  # the catalog knows them again
    assert third["status"] == "validated" and manifest["totals"]["blobs_stored"] == 0
    assert {b["key"]: b["encryption"]["wrapped_key"] for b in manifest["blobs"]} == {
        b["key"]: b["encryption"]["wrapped_key"] for b in two_backups["second"]["manifest"]["blobs"]}
    assert {k: s3.head_object(Bucket=local_stack.BUCKET, Key=k)["ETag"] for k in before} == before


def test_the_blob_sweep_spares_locked_blobs_and_waits_for_running_assets_backups(stack, two_backups):
    store = backup.stores(AUDIT, ["aws"])["aws"]
    now = dt.datetime.now(dt.UTC)
    locked, loose = format.blob_key(PREFIX, "e" * 64), format.blob_key(PREFIX, "f" * 64)
    store.put_bytes(locked, b"locked", retain_until=now + dt.timedelta(days=10))
    store.put_bytes(loose, b"loose")
    deleted = retention.collect_garbage_blobs(AUDIT, {"aws": store}, referenced=set(),
                                              now=now + dt.timedelta(days=2))
    assert store.head(locked) is not None and store.head(loose) is None
    assert deleted["aws"] >= 1
    with catalog.connect() as conn:
        conn.execute("INSERT INTO backup_catalog.backups (backup_id, data_class, status, prefix, started_at) "
                     "VALUES ('media-running', 'media', 'running', %s, %s)",  # began an hour before the sweep
                     (f"{PREFIX}/media/x", now + dt.timedelta(days=2, hours=-1)))
        try:
            store.put_bytes(loose, b"loose again")
            result = retention.run(AUDIT, conn, {"aws": store}, now=now + dt.timedelta(days=2))
        finally:
            conn.execute("DELETE FROM backup_catalog.backups WHERE backup_id = 'media-running'")
    assert result["blobs_deleted"] == {} and store.head(loose) is not None


def test_blobs_are_staged_in_extract_like_tables_so_a_later_change_cannot_reach_the_backup(stack, two_backups,
                                                                                           key_ring, tmp_path):
    """Tables and blobs are compressed in the same stage (extract, into 0600 staging); encrypt seals what was
    staged, so a file rewritten between the two steps leaves the backup as the extract saw it."""
    store_map = two_backups["stores"]
    added = _source() / "weddings" / "audit" / "staged.pdf"
    original = b"%PDF-1.4 " + b"contract terms " * 2000
    added.parent.mkdir(parents=True, exist_ok=True)
    added.write_bytes(original)
    try:
        with catalog.connect() as conn:
            summary = backup.run_extract(AUDIT, MEDIA, connect=catalog.db_connector("wedsync_db"), catalog_conn=conn,
                                         key_ring=key_ring, store_map=store_map,
                                         started_at=two_backups["t0"] + dt.timedelta(days=3))
            try:
                staged = [o for o in json.loads((Path(summary["staging_dir"]) / "extract.json").read_text())["objects"]
                          if o["extra"].get("blob")]
                assert len(staged) == 1 and Path(staged[0]["path"]).parent == Path(summary["staging_dir"])
                assert Path(staged[0]["path"]).stat().st_mode & 0o077 == 0  # private, like every staged object
                assert staged[0]["compression"] == "zstd" and staged[0]["compressed_size"] < len(original)
                added.write_bytes(b"%PDF-1.4 rewritten after the extract")  # too late for this backup
                summary = backup.run_encrypt(AUDIT, summary, key_ring)
                assert not Path(staged[0]["path"]).exists()  # the staged plaintext went with its encryption
                uploads = {c: backup.run_upload(AUDIT, c, summary, s) for c, s in store_map.items()}
                done = backup.run_validate(AUDIT, summary, uploads, key_ring, conn, store_map)
            finally:
                backup.cleanup(AUDIT, summary["backup_id"])
        target = tmp_path / "staged"
        run_restore(AUDIT, check_request(AUDIT, {"data_class": "media", "backup_id": done["backup_id"],
                                                 "target": str(target)}),
                    stores=store_map, key_ring=key_ring, db_connect=catalog.db_connector("wedsync_db_owner"),
                    catalog_connect=catalog.connect)
        assert (target / "weddings" / "audit" / "staged.pdf").read_bytes() == original
    finally:
        added.unlink(missing_ok=True)


def test_a_backup_within_a_lock_period_of_the_last_re_locks_nothing_in_s3(stack, demo_data, key_ring):
    """The blobs a backup stores are locked a period beyond it: the next backup, a day later, references them all
    and extends no lock (S3, which keeps locks; the other emulators keep none). Under a prefix of its own, so
    that no other test's copies or repairs stand in for the upload's."""
    policy = AUDIT.with_overrides(prefix=f"{PREFIX}-period")
    store_map = RecordingStores(policy)
    t0 = dt.datetime.now(dt.UTC)
    with catalog.connect() as conn:
        try:
            first = run_backup_steps(policy, MEDIA, catalog_conn=conn, key_ring=key_ring, started_at=t0,
                                     store_map=store_map)
            before = len(store_map.relocked["aws"])
            second = run_backup_steps(policy, MEDIA, catalog_conn=conn, key_ring=key_ring, store_map=store_map,
                                      started_at=t0 + dt.timedelta(days=1))
            manifest = catalog.backup(conn, second["backup_id"])["manifest"]
        finally:
            conn.execute("DELETE FROM backup_catalog.backups WHERE starts_with(prefix, %s)", (f"{policy.prefix}/",))
            catalog.forget_blobs_under(conn, policy.prefix)
    assert first["status"] == second["status"] == "validated"
    assert manifest["blobs"] and manifest["totals"]["blobs_stored"] == 0  # every blob is the first's
    assert store_map.relocked["aws"][before:] == []
