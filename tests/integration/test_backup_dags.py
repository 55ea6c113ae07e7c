"""The four backup DAGs against the real stack: every copy, read back with each cloud's plain SDK,
decrypts to exactly the source rows; assets are incremental; outages degrade or fail as the quorum says.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import (
    a_supplier_changed,
    fresh_copy,
    latest_backup,
    owner_connection,
    run_dag,
    sdk_get,
    sdk_put,
    stored_copies,
)
from wedsync_dr import backup, catalog, crypto, extract
from wedsync_dr.policy import load_policy
from wedsync_dr.wiring.backup_chain import build_backup_dag
from wedsync_dr_dev import local_stack

POLICY = load_policy()
# Tests do not wait for Airflow's retry delays: an unreachable cloud fails its upload task at once; and the GCS
# client gives a stopped emulator up after 3 s of retrying, not the shipped 15 (its upload, then validate's cleanup)
FAST_POLICY = POLICY.with_overrides(upload_retries=0, upload_retry_delay_seconds=1, clouds=tuple(
    dataclasses.replace(c, options={**c.options, "retry_deadline": 3}) if c.kind == "gcs" else c
    for c in POLICY.clouds))


# ----------------------------------------------------------------------------- plain-SDK readers


def _decrypt(entry: dict, ciphertext: bytes, key_ring) -> bytes:
    enc = entry["encryption"]
    wrapped = crypto.WrappedKey(enc["kek_id"], base64.b64decode(enc["wrapped_key"]), enc["key_wrap"])
    out = io.BytesIO()
    crypto.decrypt_stream(io.BytesIO(ciphertext), out, key_ring.unwrap(wrapped),
                          base64.b64decode(enc["associated_data"]), object_name=entry["key"],
                          decompress=entry["compression"] == "zstd")
    return out.getvalue()


@pytest.fixture(scope="module")
def backup_env(stack, demo_data, airflow_db):
    with catalog.connect() as conn:
        yield conn


@pytest.fixture(scope="module")
def key_ring(stack):
    return crypto.KeyRing.from_connection(POLICY.key_ring_conn_id)


# ----------------------------------------------------------------------------- every class, every cloud


@pytest.mark.parametrize("name", ["vendor_data", "client_data", "critical_weddings", "assets"])
def test_backup_dag_copies_decrypt_to_the_source(stack, backup_env, key_ring, name):
    dag = build_backup_dag(POLICY, POLICY.data_classes[name], doc_md="test")
    run = run_dag(dag)
    assert run.state == "success"
    record = latest_backup(backup_env, name)
    assert record["status"] == "validated", record
    assert sorted(record["clouds_ok"]) == ["aws", "azure", "gcp"]
    manifest = record["manifest"]
    assert not list(Path(os.environ["WEDSYNC_STAGING_DIR"]).glob(f"{record['backup_id']}*")), "staging left behind"

    for cloud in ("aws", "azure", "gcp"):
        stored_manifest = json.loads(sdk_get(stack, cloud, f"{manifest['prefix']}/manifest.json"))
        assert stored_manifest == json.loads(json.dumps(manifest)), cloud
        by_content_id = {}
        stored = [o for o in stored_manifest["objects"] if "key" in o] + stored_manifest["blobs"]
        for entry in stored:  # every stored object it needs
            ciphertext = sdk_get(stack, cloud, entry["key"])
            assert hashlib.sha256(ciphertext).hexdigest() == entry["ciphertext_sha256"]
            plaintext = _decrypt(entry, ciphertext, key_ring)
            if "content_id" in entry:  # a blob: its keyed content id is the only name of its plaintext
                assert key_ring.content_id(hashlib.sha256(plaintext).hexdigest()) == entry["content_id"]
                by_content_id[entry["content_id"]] = plaintext
                if name == "assets":
                    _assert_matches_source(stack, name, entry, plaintext)
            else:
                assert hashlib.sha256(plaintext).hexdigest() == entry["plaintext_sha256"]
                _assert_matches_source(stack, name, entry, plaintext)
        for entry in stored_manifest["objects"]:
            assert "chunks" not in entry  # format 4 is read, no longer written: bundles are in packs too
            if "extents" not in entry:
                continue
            # format 5 (deduplicated tables and wedding bundles): its extents of packs' plaintexts, in order
            packs = [by_content_id[pack] for pack in entry["packs"]]
            plaintext = b"".join(packs[i][offset:offset + length] for i, offset, length in entry["extents"])
            assert hashlib.sha256(plaintext).hexdigest() == entry["plaintext_sha256"]
            _assert_matches_source(stack, name, entry, plaintext)
    if name == "assets":  # every file of the source is in a blob this one manifest describes
        assert len(manifest["blobs"]) == len({key_ring.content_id(hashlib.sha256(p.read_bytes()).hexdigest())
                                              for p in Path(os.environ["WEDSYNC_ASSET_SOURCE"]).rglob("*")
                                              if p.is_file()})


def test_backups_are_write_once_for_the_policys_immutability_days(stack, backup_env):
    """S3 Object Lock on every object and the manifest; the catalog and retention hold the backup as long."""
    from botocore.exceptions import ClientError

    from wedsync_dr import retention

    backup_id = backup_env.execute("SELECT backup_id FROM backup_catalog.backups WHERE data_class = 'vendor_data' "
                                   "AND status = 'validated' ORDER BY started_at DESC LIMIT 1").fetchone()[0]
    record = catalog.backup(backup_env, backup_id)
    started = dt.datetime.fromisoformat(record["manifest"]["created_at"])
    locked_until = started + dt.timedelta(days=POLICY.immutability_days)
    assert POLICY.immutability_days > 0 and POLICY.immutability_mode == "governance"
    assert dt.datetime.fromisoformat(record["manifest"]["locked_until"]) == locked_until
    assert record["retain_until"] == locked_until
    s3 = local_stack.sdk_s3(stack)
    # its packs are shared with other backups: each is locked at least as long (an extension never shortens)
    packs = [e.key for e in stored_copies(record["manifest"])]
    assert packs
    for key in packs + [f"{record['prefix']}/manifest.json"]:
        head = s3.head_object(Bucket=local_stack.BUCKET, Key=key)
        assert head["ObjectLockMode"] == "GOVERNANCE", key
        if key in packs:
            assert head["ObjectLockRetainUntilDate"] >= locked_until.replace(microsecond=0), key
        else:
            assert head["ObjectLockRetainUntilDate"] == locked_until.replace(microsecond=0), key
        with pytest.raises(ClientError, match="AccessDenied"):  # the locked version outlives any delete
            s3.delete_object(Bucket=local_stack.BUCKET, Key=key, VersionId=head["VersionId"])
    # a newer backup exists and every GFS bucket has lapsed: only the lock still holds this one
    later = locked_until - dt.timedelta(hours=1)
    history = [{"backup_id": backup_id, "data_class": "vendor_data", "status": "validated", "started_at": started,
                "labels": [], "retain_until": record["retain_until"]},
               {"backup_id": "newer", "data_class": "vendor_data", "status": "validated", "started_at": later,
                "labels": []}]
    rules = {"hourly_hours": 0, "daily_days": 0, "weekly_weeks": 0, "monthly_months": 0}
    policy = POLICY.with_overrides(data_classes={"vendor_data": dataclasses.replace(
        POLICY.data_classes["vendor_data"], retention=rules)})
    assert backup_id in retention.plan(policy, history, later).keep
    assert backup_id in retention.plan(policy, history, locked_until + dt.timedelta(minutes=1)).delete


def _assert_matches_source(stack, name: str, entry: dict, plaintext: bytes) -> None:
    data_class = POLICY.data_classes[name]
    with owner_connection(stack) as conn:
        if data_class.kind == "tables":
            assert entry["copy_format"] == "binary"
            source = f"wedsync.{entry['source']}"
            if "extents" in entry:  # deduplicated: copied in wedding order (`extract.clustered_order`)
                source = f"(SELECT * FROM {source}{extract.clustered_order(conn, source, entry['columns'])})"
                for setting in extract.INDEX_ORDER:  # read from its index, as extract reads it
                    conn.execute(setting)
            expected = fresh_copy(conn, f"COPY {source} TO STDOUT (FORMAT binary)")
            assert plaintext == expected, entry["source"]
        elif data_class.kind == "wedding_bundles":
            sections = {h["table"]: s.read() for h, s in extract.read_bundle(io.BytesIO(plaintext))}
            assert set(sections) == {t.name for t in data_class.bundle_tables}
            for spec in data_class.bundle_tables:
                expected = fresh_copy(conn, f"COPY (SELECT t.* FROM wedsync.{spec.name} t {spec.join} "
                                             f"WHERE {spec.wedding_key} = {entry['wedding_id']} ORDER BY 1) TO STDOUT")
                assert sorted(sections[spec.name].splitlines()) == sorted(expected.splitlines()), spec.name
        elif "content_id" in entry:
            source = Path(os.environ["WEDSYNC_ASSET_SOURCE"])
            matches = [p for p in source.rglob("*") if p.is_file() and p.read_bytes() == plaintext]
            assert matches, entry["key"]
        else:  # the asset index lists every file with its hash
            index = [json.loads(line) for line in plaintext.splitlines()]
            source = Path(os.environ["WEDSYNC_ASSET_SOURCE"])
            assert {i["path"] for i in index} == {p.relative_to(source).as_posix()
                                                  for p in source.rglob("*") if p.is_file()}


def test_critical_weddings_are_one_bundle_per_wedding_in_the_window(stack, backup_env):
    record = latest_backup(backup_env, "critical_weddings")
    with owner_connection(stack) as conn:
        expected = {r[0] for r in conn.execute(
            "SELECT wedding_id FROM wedsync.weddings WHERE wedding_date BETWEEN current_date AND current_date + 30 "
            "AND status <> 'cancelled'")}
    bundles = {o["wedding_id"] for o in record["manifest"]["objects"]}
    assert bundles == expected and len(expected) > 0


def test_extract_workers_from_the_policy_change_speed_not_content(stack, backup_env, key_ring, monkeypatch):
    """The class's `extract_workers` reaches the table extract; 1 or 3 at once stage the same objects."""
    seen: list[int] = []
    extract_tables = extract.extract_tables

    def recording(*args, workers, **kwargs):
        seen.append(workers)
        return extract_tables(*args, workers=workers, **kwargs)

    monkeypatch.setattr(extract, "extract_tables", recording)
    staged = {}
    with catalog.connect() as conn:
        for workers in (1, 3):
            data_class = dataclasses.replace(POLICY.data_classes["vendor_data"], extract_workers=workers,
                                             part_size_mb=0.0625)  # several parts: more objects than workers
            summary = backup.run_extract(POLICY, data_class, connect=catalog.db_connector("wedsync_db"),
                                         catalog_conn=conn, key_ring=key_ring)
            try:
                objects = json.loads((Path(summary["staging_dir"]) / "extract.json").read_text())["objects"]
                staged[workers] = [(o["name"], o["rows"], o["plaintext_sha256"]) for o in objects
                                   if o["source"] in data_class.tables]  # a pack begins with a random nonce
            finally:  # never uploaded: leave no staging and no "running" backup behind for later tests
                backup.cleanup(POLICY, summary["backup_id"])
                conn.execute("DELETE FROM backup_catalog.backups WHERE backup_id = %s", (summary["backup_id"],))
    assert seen == [1, 3]
    assert staged[1] == staged[3] and len(staged[1]) > 3


# ----------------------------------------------------------------------------- assets are incremental


def _blob_count(stack, cloud: str) -> int:
    from wedsync_dr.backup import stores

    return sum(1 for _ in stores(POLICY, [cloud])[cloud].list(f"{POLICY.prefix}/assets/blobs/"))


def _uploaded_blobs(run) -> dict[str, int]:
    """Per cloud, how many objects the upload tasks sent (the index counts as one)."""
    return {ti.task_id: ti.xcom_pull(task_ids=ti.task_id)["objects"]
            for ti in run.get_task_instances() if ti.task_id.startswith("upload_to_")}


def test_assets_are_content_addressed_and_incremental(stack, backup_env):
    dag = build_backup_dag(POLICY, POLICY.data_classes["assets"], doc_md="test")
    run_dag(dag)  # whatever earlier tests stored, everything is stored now
    before = {c: _blob_count(stack, c) for c in POLICY.cloud_names}

    unchanged = run_dag(dag)
    assert unchanged.state == "success"
    assert set(_uploaded_blobs(unchanged).values()) == {1}  # the index alone
    assert {c: _blob_count(stack, c) for c in POLICY.cloud_names} == before

    source = Path(os.environ["WEDSYNC_ASSET_SOURCE"])
    files = sorted(p for p in source.rglob("*.pdf"))[:3]
    originals = {p: p.read_bytes() for p in files}
    added = [source / "weddings" / "new" / f"added_{i}.pdf" for i in range(2)]
    try:
        for i, path in enumerate(files):
            path.write_bytes(originals[path] + f"\n% revised {i}\n".encode())
        for i, path in enumerate(added):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(5000 + i))
        changed = run_dag(dag)
    finally:  # other tests compare the source with its metadata rows
        for path, data in originals.items():
            path.write_bytes(data)
        shutil.rmtree(source / "weddings" / "new", ignore_errors=True)
    assert changed.state == "success"
    assert set(_uploaded_blobs(changed).values()) == {1 + 5}
    assert {c: _blob_count(stack, c) for c in POLICY.cloud_names} == {c: n + 5 for c, n in before.items()}


# ----------------------------------------------------------------------------- outages and corruption


def _recorded_steps(conn, backup_id: str) -> list[tuple]:
    """(step, cloud, outcome) the backup's tasks recorded for the metrics (backup_catalog.backup_steps)."""
    return conn.execute("SELECT step, cloud, outcome FROM backup_catalog.backup_steps WHERE backup_id = %s "
                        "ORDER BY step, cloud", (backup_id,)).fetchall()


def test_one_cloud_down_degrades_and_alerts(stack, backup_env):
    dag = build_backup_dag(FAST_POLICY, POLICY.data_classes["vendor_data"], doc_md="test")
    local_stack.stop_service(stack, "gcs")
    try:
        with a_supplier_changed(stack):  # a new pack to send: an unchanged day sends nothing, and fails nowhere
            run = run_dag(dag)
    finally:
        local_stack.restart_emulator(stack, "gcs")
    assert run.state == "success"
    record = latest_backup(backup_env, "vendor_data")
    assert record["status"] == "degraded"
    assert sorted(record["clouds_ok"]) == ["aws", "azure"] and record["clouds_failed"] == ["gcp"]
    fired = catalog.alerts(backup_env, kind="backup_degraded", backup_id=record["backup_id"])
    assert len(fired) == 1 and "gcp" in fired[0]["message"]
    assert _recorded_steps(backup_env, record["backup_id"]) == [  # what the metrics endpoint counts
        ("encrypt", None, None), ("extract", None, None), ("upload", "aws", None), ("upload", "azure", None),
        ("validate", None, "degraded")]


def test_two_clouds_down_fail_the_run_and_leave_no_manifest(stack, backup_env):
    dag = build_backup_dag(FAST_POLICY, POLICY.data_classes["vendor_data"], doc_md="test")
    local_stack.stop_service(stack, "azure")
    local_stack.stop_service(stack, "gcs")
    try:
        with a_supplier_changed(stack):
            run = run_dag(dag)
    finally:
        local_stack.restart_emulator(stack, "azure")
        local_stack.restart_emulator(stack, "gcs")
    assert run.state == "failed"
    record = latest_backup(backup_env, "vendor_data")
    assert record["status"] == "failed" and record["manifest"] is None
    assert catalog.alerts(backup_env, kind="backup_failed", backup_id=record["backup_id"])
    assert _recorded_steps(backup_env, record["backup_id"])[-2:] == [("upload", "aws", None),
                                                                    ("validate", None, "failed")]
    for cloud, store in backup.stores(POLICY).items():
        leftovers = [o.key for o in store.list(record["prefix"] + "/")]
        assert leftovers == [], f"{cloud} still holds {leftovers}"


def test_validate_catches_an_object_altered_in_one_cloud(stack, backup_env, key_ring):
    data_class = POLICY.data_classes["vendor_data"]
    with a_supplier_changed(stack):  # a new pack, sealed and sent by this backup
        summary = backup.run_extract(POLICY, data_class, connect=catalog.db_connector("wedsync_db"),
                                     catalog_conn=backup_env, key_ring=key_ring)
    try:
        summary = backup.run_encrypt(POLICY, summary, key_ring)
        results = {c: backup.run_upload(POLICY, c, summary) for c in POLICY.cloud_names}
        encrypted = json.loads((Path(summary["staging_dir"]) / "encrypt.json").read_text())
        victim = next(e["key"] for e in encrypted if "key" in e)  # the new pack (a table in packs has no key)
        tampered = bytearray(sdk_get(stack, "azure", victim))
        tampered[len(tampered) // 2] ^= 0x01  # same size, one bit flipped
        sdk_put(stack, "azure", victim, bytes(tampered))
        result = backup.run_validate(POLICY, summary, results, key_ring, backup_env)
    finally:
        backup.cleanup(POLICY, summary["backup_id"])
    assert result["status"] == "degraded"
    assert result["clouds_failed"] == ["azure"]
    assert result["copies"]["azure"][0] == "corrupt"


def test_an_emergency_skips_a_cloud_marked_unhealthy(stack, backup_env):
    """The monitor says azure is down: the emergency backup does not wait on it, and the quorum holds."""
    from wedsync_dr.wiring.emergency import build_emergency_dag

    backup_env.execute(
        "INSERT INTO backup_catalog.cloud_health (cloud, healthy, failures_in_a_row, last_error, changed_at, "
        "checked_at) VALUES ('azure', false, 3, 'canary timed out', now(), now()) ON CONFLICT (cloud) DO UPDATE "
        "SET healthy = false, failures_in_a_row = 3, last_error = 'canary timed out', changed_at = now()")
    try:
        run = run_dag(build_emergency_dag(POLICY, doc_md="test"),
                      {"reason": "Azure region outage: protect vendor data", "scope": "classes",
                       "data_classes": ["vendor_data"], "requested_by": "pytest"})
    finally:
        backup_env.execute("DELETE FROM backup_catalog.cloud_health WHERE cloud = 'azure'")
    assert run.state == "success"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["vendor_data.upload_to_azure"] == "skipped"
    assert states["vendor_data.upload_to_aws"] == states["vendor_data.upload_to_gcp"] == "success"
    record = latest_backup(backup_env, "vendor_data")
    assert record["status"] == "degraded" and record["labels"] == ["emergency"]
    assert sorted(record["clouds_ok"]) == ["aws", "gcp"]
    assert list(backup.stores(POLICY)["azure"].list(record["prefix"] + "/")) == []
    clouds = backup_env.execute("SELECT clouds FROM backup_catalog.emergency_runs WHERE run_id = %s",
                                (run.run_id,)).fetchone()[0]
    assert clouds == ["aws", "gcp"]
