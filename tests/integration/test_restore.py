"""Restores against the real stack: damage the source, restore, compare row for row and byte for byte."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.helpers import fresh_copy, latest_backup, owner_connection, run_dag, sdk_get, sdk_put, stored_copies
from wedsync_dr import backup, catalog, crypto, extract, format
from wedsync_dr.policy import load_policy
from wedsync_dr.requests import RestoreError, check_request
from wedsync_dr.restore import restore_tables, run_restore
from wedsync_dr.wiring.backup_chain import build_backup_dag
from wedsync_dr.wiring.restore import build_restore_dag
from wedsync_dr_dev import local_stack

POLICY = load_policy()


@pytest.fixture(scope="module")
def backed_up(stack, demo_data, airflow_db):
    """A fresh backup of every class; yields {class: catalog record}."""
    records = {}
    with catalog.connect() as conn:
        for name in sorted(POLICY.data_classes):
            run = run_dag(build_backup_dag(POLICY, POLICY.data_classes[name], doc_md="test"))
            assert run.state == "success", name
            records[name] = latest_backup(conn, name)
    return records


@pytest.fixture
def key_ring(stack):
    return crypto.KeyRing.from_connection(POLICY.key_ring_conn_id)


def _restore(request_params: dict, key_ring, **kwargs):
    return run_restore(POLICY, check_request(POLICY, request_params), stores=backup.stores(POLICY),
                       key_ring=key_ring, db_connect=catalog.db_connector("wedsync_db_owner"),
                       catalog_connect=catalog.connect, **kwargs)


def _snapshot(stack, tables) -> dict[str, list[bytes]]:
    with owner_connection(stack) as conn:
        return {t: sorted(fresh_copy(conn, f"COPY wedsync.{t} TO STDOUT").splitlines()) for t in tables}


def _restored(stack, schema: str, tables) -> dict[str, list[bytes]]:
    with owner_connection(stack) as conn:
        return {t: sorted(fresh_copy(conn, f"COPY {schema}.{t} TO STDOUT").splitlines()) for t in tables}


def test_vendor_data_restores_in_place_after_rows_are_deleted(stack, backed_up, key_ring):
    tables = POLICY.data_classes["vendor_data"].tables
    original = _snapshot(stack, tables)
    with owner_connection(stack) as conn:
        conn.execute("DELETE FROM wedsync.reviews WHERE rating < 5")
        conn.execute("UPDATE wedsync.suppliers SET business_name = 'vandalised'")
    report = _restore({"data_class": "vendor_data", "target": "in_place", "confirm": "RESTORE vendor_data"},
                      key_ring)
    assert report.target.endswith("(in place)")
    assert _snapshot(stack, tables) == original
    with owner_connection(stack) as conn:  # no scratch schema is left behind
        assert not conn.execute("SELECT 1 FROM pg_namespace WHERE nspname LIKE 'restore_vendor_data%'").fetchall()


def test_client_data_restores_a_dropped_table_into_a_new_schema(stack, backed_up, key_ring):
    tables = POLICY.data_classes["client_data"].tables
    original = _snapshot(stack, tables)
    with owner_connection(stack) as conn:
        conn.execute("ALTER TABLE wedsync.guests RENAME TO guests_kept_by_test")
    try:
        report = _restore({"data_class": "client_data"}, key_ring)
        assert report.target.startswith("restore_client_data_")
        assert _restored(stack, report.target, tables) == original
        assert report.rows["guests"] == len(original["guests"])
    finally:
        with owner_connection(stack) as conn:
            conn.execute("ALTER TABLE wedsync.guests_kept_by_test RENAME TO guests")


def test_a_table_split_into_parts_backs_up_and_restores_whole(stack, backed_up, key_ring):
    """Large tables go out in parts (wedding ranges here, client_data being deduplicated; one object each,
    extracted in parallel); they add up exactly."""
    data_class = dataclasses.replace(POLICY.data_classes["client_data"], part_size_mb=0.125)
    policy = POLICY.with_overrides(data_classes={**POLICY.data_classes, "client_data": data_class})
    original = _snapshot(stack, data_class.tables)
    assert run_dag(build_backup_dag(policy, data_class, doc_md="test")).state == "success"
    with catalog.connect() as conn:
        manifest = latest_backup(conn, "client_data")["manifest"]
    parts = [o for o in manifest["objects"] if o["source"] == "guests"]
    assert len(parts) >= 3 and all(".part" in o["name"] for o in parts), [o["name"] for o in parts]
    assert sum(o["rows"] for o in parts) == len(original["guests"])
    report = _restore({"data_class": "client_data", "backup_id": manifest["backup_id"]}, key_ring)
    assert _restored(stack, report.target, data_class.tables) == original
    assert report.rows["guests"] == len(original["guests"])


def test_one_critical_wedding_restores_alone(stack, backed_up, key_ring):
    record = backed_up["critical_weddings"]
    wedding_id = record["manifest"]["objects"][0]["wedding_id"]
    report = _restore({"data_class": "critical_weddings", "wedding_id": wedding_id}, key_ring)
    assert report.seconds < 30  # generous bound; the figure in the README comes from bench/
    with owner_connection(stack) as conn:
        weddings = conn.execute(f"SELECT wedding_id FROM {report.target}.weddings").fetchall()
        guests = conn.execute(f"SELECT DISTINCT wedding_id FROM {report.target}.guests").fetchall()
        live_guests = conn.execute("SELECT count(*) FROM wedsync.guests WHERE wedding_id = %s",
                                   (wedding_id,)).fetchone()[0]
        restored_guests = conn.execute(f"SELECT count(*) FROM {report.target}.guests").fetchone()[0]
    assert weddings == [(wedding_id,)]
    assert guests in ([(wedding_id,)], [])
    assert restored_guests == live_guests


def test_one_wedding_restores_alone_from_deduplicated_table_objects(stack, backed_up, key_ring):
    """client_data stores each table's binary COPY stream as extents of packs (the shipped policy deduplicates
    it): a one-wedding restore reads them back and picks that wedding's rows out of them (server-side, through
    a temporary table) and restores nothing else."""
    manifest = backed_up["client_data"]["manifest"]
    assert manifest["format_version"] == 5 and all("extents" in o for o in manifest["objects"])  # deduplicated
    assert {o["copy_format"] for o in manifest["objects"]} == {"binary"}
    per_wedding = sorted({o["source"] for o in manifest["objects"] if "wedding_id" in o["columns"]})
    others = sorted({o["source"] for o in manifest["objects"]} - set(per_wedding))
    assert "guests" in per_wedding and others
    with owner_connection(stack) as conn:
        wedding_id = conn.execute("SELECT wedding_id FROM wedsync.guests GROUP BY 1 ORDER BY count(*) DESC, 1 "
                                  "LIMIT 1").fetchone()[0]
        expected = {t: sorted(fresh_copy(conn, f"COPY (SELECT * FROM wedsync.{t} WHERE wedding_id = {wedding_id}) "
                                                "TO STDOUT").splitlines()) for t in per_wedding}
    report = _restore({"data_class": "client_data", "wedding_id": wedding_id}, key_ring)
    assert expected["guests"] and _restored(stack, report.target, per_wedding) == expected
    assert report.rows["guests"] == len(expected["guests"])
    with owner_connection(stack) as conn:
        for table in others:
            assert conn.execute(f"SELECT count(*) FROM {report.target}.{table}").fetchone()[0] == 0, table
        assert not conn.execute("SELECT 1 FROM pg_class WHERE relname LIKE '_wedsync_restore_%'").fetchall()


def test_assets_restore_byte_for_byte_after_files_are_deleted(stack, backed_up, key_ring, tmp_path):
    source = Path(os.environ["WEDSYNC_ASSET_SOURCE"])
    originals = {p.relative_to(source).as_posix(): p.read_bytes() for p in source.rglob("*") if p.is_file()}
    target = tmp_path / "assets-restore"
    _restore({"data_class": "assets", "target": str(target)}, key_ring)
    restored = {p.relative_to(target).as_posix(): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert restored.keys() == originals.keys()
    assert all(restored[k] == originals[k] for k in originals)


def test_failover_when_the_preferred_cloud_holds_a_corrupt_copy(stack, backed_up, key_ring, caplog):
    manifest = backed_up["vendor_data"]["manifest"]
    entry = stored_copies(manifest)[0]
    original = sdk_get(stack, "aws", entry.key)
    tampered = bytearray(original)
    tampered[-20] ^= 0xFF
    sdk_put(stack, "aws", entry.key, bytes(tampered))
    try:
        report = _restore({"data_class": "vendor_data", "backup_id": manifest["backup_id"], "source_cloud": "aws"},
                          key_ring)
    finally:
        sdk_put(stack, "aws", entry.key, original)
    assert [f["key"] for f in report.failovers] == [entry.key]
    assert report.failovers[0]["cloud"] == "aws"
    # that one object came from the next cloud, everything else from the preferred one
    assert sum(n for cloud, n in report.sources.items() if cloud != "aws") == 1
    assert report.sources.get("aws", 0) >= len(stored_copies(manifest)) - 1
    assert "trying the next cloud" in caplog.text


def test_every_copy_corrupt_fails_clearly_and_leaves_the_live_data(stack, backed_up, key_ring):
    manifest = backed_up["vendor_data"]["manifest"]
    entry = stored_copies(manifest, "reviews")[0]
    originals = {c: sdk_get(stack, c, entry.key) for c in POLICY.cloud_names}
    before = _snapshot(stack, ["reviews"])
    for cloud, data in originals.items():
        sdk_put(stack, cloud, entry.key, data[:-1] + bytes([data[-1] ^ 1]))
    try:
        with owner_connection(stack) as conn:
            conn.execute("DELETE FROM wedsync.reviews WHERE rating = 3")
        damaged = _snapshot(stack, ["reviews"])
        with pytest.raises(RestoreError, match="no cloud delivered a valid copy"):
            _restore({"data_class": "vendor_data", "backup_id": manifest["backup_id"], "target": "in_place",
                      "confirm": "RESTORE vendor_data"}, key_ring)
        assert _snapshot(stack, ["reviews"]) == damaged  # untouched: not half-overwritten
    finally:
        for cloud, data in originals.items():
            sdk_put(stack, cloud, entry.key, data)
    _restore({"data_class": "vendor_data", "backup_id": manifest["backup_id"], "target": "in_place",
              "confirm": "RESTORE vendor_data"}, key_ring)
    assert _snapshot(stack, ["reviews"]) == before


def test_checksums_in_the_manifest_match_the_catalog(backed_up):
    with catalog.connect() as conn:
        for record in (backed_up["vendor_data"], backed_up["critical_weddings"]):  # tables and bundles in packs
            rows = conn.execute("SELECT name, plaintext_sha256, ciphertext_sha256 FROM backup_catalog.backup_objects "
                                "WHERE backup_id = %s", (record["backup_id"],)).fetchall()
            assert {n: (p, c) for n, p, c in rows} == {o["name"]: (o["plaintext_sha256"], o.get("ciphertext_sha256"))
                                                       for o in record["manifest"]["objects"]}
            # what is stored of them: the packs (of table chunks, of bundles), each as the catalog recorded it
            blobs = {b["key"]: b["ciphertext_sha256"] for b in record["manifest"]["blobs"]}
            recorded = dict(conn.execute("SELECT key, entry->>'ciphertext_sha256' FROM backup_catalog.blobs "
                                         "WHERE key = ANY(%s)", (list(blobs),)).fetchall())
            assert blobs and recorded == blobs


def test_catalog_lost_rebuild_then_restore_with_the_cli_without_airflow(stack, backed_up, tmp_path):
    env = {**os.environ, **local_stack.environment(stack)}
    # Airflow is "lost": no metadata DB the CLI could lean on.
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{tmp_path / 'does-not-exist' / 'airflow.db'}"
    cli = [sys.executable, "-m", "wedsync_dr.cli"]
    with psycopg.connect(stack.role_url(local_stack.CATALOG_ROLE, local_stack.CATALOG_DB)) as conn:
        conn.execute("DROP SCHEMA backup_catalog CASCADE")
    rebuilt = subprocess.run([*cli, "rebuild-catalog", "--from-cloud", "azure"], env=env, capture_output=True,
                             text=True, timeout=300)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "catalog rebuilt from azure" in rebuilt.stdout
    listed = subprocess.run([*cli, "list", "--class", "vendor_data"], env=env, capture_output=True, text=True)
    assert backed_up["vendor_data"]["backup_id"] in listed.stdout
    restored = subprocess.run([*cli, "restore", "--class", "vendor_data", "--target", "cli_restore"], env=env,
                              capture_output=True, text=True, timeout=300)
    assert restored.returncode == 0, restored.stderr
    tables = POLICY.data_classes["vendor_data"].tables
    assert _restored(stack, "cli_restore", tables) == _snapshot(stack, tables)


def test_cli_errors_are_one_line_and_non_zero(stack):
    env = {**os.environ, **local_stack.environment(stack)}
    result = subprocess.run([sys.executable, "-m", "wedsync_dr.cli", "restore", "--class", "client_data",
                             "--target", "in_place"], env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "RESTORE client_data" in result.stderr


def test_restore_dag_refuses_in_place_without_confirmation(stack, backed_up):
    dag = build_restore_dag(POLICY, doc_md="test")
    run = run_dag(dag, {"data_class": "vendor_data", "target": "in_place"})
    assert run.state == "failed"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["check_request"] == "failed" and states["restore"] == "upstream_failed"


def test_restore_dag_dry_run_writes_nothing(stack, backed_up):
    dag = build_restore_dag(POLICY, doc_md="test")
    with owner_connection(stack) as conn:
        before = {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace")}
    run = run_dag(dag, {"data_class": "client_data", "dry_run": True})
    assert run.state == "success"
    with owner_connection(stack) as conn:
        assert {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace")} == before


def test_a_format_1_backup_of_copy_text_still_restores(stack, backed_up, key_ring, monkeypatch):
    """Backups taken before binary COPY hold COPY text and no `copy_format`: the whole class and one
    wedding (filtered in Python, row by row) restore from them. Last in the module: the backup it takes
    becomes the latest client_data one."""
    monkeypatch.setattr(extract, "TABLE_COPY_FORMAT", "text")
    data_class = dataclasses.replace(POLICY.data_classes["client_data"], dedup_chunk_kib=0)  # format 1: whole tables
    policy = POLICY.with_overrides(data_classes={**POLICY.data_classes, "client_data": data_class})
    assert run_dag(build_backup_dag(policy, data_class, doc_md="test")).state == "success"
    with catalog.connect() as conn:
        manifest = latest_backup(conn, "client_data")["manifest"]
    assert {o["copy_format"] for o in manifest["objects"]} == {"text"}
    manifest = format.Manifest.from_json({
        **manifest, "format_version": 1,
        "objects": [{k: v for k, v in o.items() if k != "copy_format"} for o in manifest["objects"]]})
    original = _snapshot(stack, data_class.tables)
    with owner_connection(stack) as conn:
        wedding_id = conn.execute("SELECT wedding_id FROM wedsync.guests LIMIT 1").fetchone()[0]
        one = sorted(fresh_copy(conn, f"COPY (SELECT * FROM wedsync.guests WHERE wedding_id = {wedding_id}) "
                                       "TO STDOUT").splitlines())
    stores = backup.stores(POLICY)
    for schema, wanted in (("format1_whole", None), ("format1_wedding", wedding_id)):
        with owner_connection(stack) as conn:
            restore_tables(conn, manifest, stores, key_ring, order=list(POLICY.cloud_names), target_schema=schema,
                           wedding_id=wanted)
    try:
        assert _restored(stack, "format1_whole", data_class.tables) == original
        assert _restored(stack, "format1_wedding", ["guests"])["guests"] == one
    finally:
        with owner_connection(stack) as conn:
            for schema in ("format1_whole", "format1_wedding"):
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def _cli(stack, *argv: str, **env_changes: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **local_stack.environment(stack), **env_changes}
    return subprocess.run([sys.executable, "-m", "wedsync_dr.cli", *argv], env=env, capture_output=True, text=True,
                          timeout=300)


def test_cli_names_an_unknown_class_or_cloud_in_one_line(stack):
    for argv, expected in ((["verify", "--class", "honeymoons"], "unknown data class 'honeymoons'"),
                           (["list", "--from-cloud", "ibm"], "'ibm' is not a cloud of the policy")):
        result = _cli(stack, *argv)
        assert result.returncode == 1, result
        assert result.stderr.strip().count("\n") == 0 and expected in result.stderr, result.stderr


def test_list_says_the_catalog_is_unreachable_or_missing_and_offers_a_cloud(stack, backed_up):
    unreachable = json.dumps({"conn_type": "postgres", "host": "127.0.0.1", "port": local_stack.free_port(),
                              "login": "nobody", "password": "x", "schema": "nothing"})
    result = _cli(stack, "list", AIRFLOW_CONN_WEDSYNC_CATALOG=unreachable)
    assert result.returncode == 1 and "catalog is unreachable" in result.stderr and "--from-cloud" in result.stderr
    assert result.stderr.strip().count("\n") == 0
    with psycopg.connect(stack.role_url(local_stack.CATALOG_ROLE, local_stack.CATALOG_DB)) as conn:
        conn.execute("ALTER SCHEMA backup_catalog RENAME TO backup_catalog_away")
    try:
        result = _cli(stack, "list")
        assert result.returncode == 1 and "no backup_catalog schema" in result.stderr, result.stderr
        from_cloud = _cli(stack, "list", "--from-cloud", "gcp", "--class", "vendor_data")
        assert from_cloud.returncode == 0 and backed_up["vendor_data"]["backup_id"] in from_cloud.stdout
    finally:
        with psycopg.connect(stack.role_url(local_stack.CATALOG_ROLE, local_stack.CATALOG_DB)) as conn:
            conn.execute("ALTER SCHEMA backup_catalog_away RENAME TO backup_catalog")


def test_a_one_wedding_restore_of_a_wedding_the_backup_lacks_fails_before_creating_anything(stack, backed_up):
    result = _cli(stack, "restore", "--class", "client_data", "--wedding-id", "987654321", "--target",
                  "no_such_wedding")
    assert result.returncode == 1 and "wedding 987654321 is not in backup" in result.stderr, result.stderr
    with owner_connection(stack) as conn:
        assert not conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'no_such_wedding'").fetchall()
