"""Backups killed with SIGKILL (issue #18, item 2) against the real stack: the process group of a backup is
killed where its staging holds compressed plaintext (right after extract) or after one cloud received its
objects; no teardown runs. The next backup of the class (its DAG, `dag.test()`) removes what the killed one
left -- staging, the objects in every cloud -- and marks it `abandoned`, and itself validates.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from pathlib import Path

import pytest

from tests.helpers import a_supplier_changed, run_backup_steps, run_dag, start_killable_backup
from wedsync_dr import backup, catalog, crypto, format
from wedsync_dr.policy import load_policy
from wedsync_dr.wiring import ops
from wedsync_dr.wiring.backup_chain import build_backup_dag
from wedsync_dr_dev import local_stack

POLICY = load_policy()
FAST_POLICY = POLICY.with_overrides(upload_retries=0, upload_retry_delay_seconds=1)


def _cloud_keys(stack, prefix: str) -> dict[str, list[str]]:
    """Every key under `prefix` in each cloud, listed with the cloud's own SDK."""
    pages = local_stack.sdk_s3(stack).get_paginator("list_objects_v2").paginate(Bucket=local_stack.BUCKET,
                                                                              Prefix=prefix)
    return {"aws": sorted(o["Key"] for page in pages for o in page.get("Contents", [])),
            "azure": sorted(b.name for b in local_stack.sdk_azure_container(stack).list_blobs(name_starts_with=prefix)),
            "gcp": sorted(b.name for b in local_stack.sdk_gcs_bucket(stack).list_blobs(prefix=prefix))}


def _killed_backup(tmp_path: Path, name: str, upload_to: tuple[str, ...], full_copy: bool = False) -> dict:
    """Run a backup in its own process group until it reports where it is, then SIGKILL the group."""
    marker = tmp_path / f"{name}-killed.json"
    run_id = f"manual__killed_{secrets.token_hex(4)}"  # a run Airflow never had
    child = start_killable_backup(name, marker, run_id=run_id, upload_to=upload_to, full_copy=full_copy)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            log = marker.with_name(marker.name + ".log")
            assert child.poll() is None, f"the backup child exited early: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the backup child did not reach its kill point in time"
            time.sleep(0.2)
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # start_new_session: the child leads its own group
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    return {**json.loads(marker.read_text()), "run_id": run_id}


def _record_liveness(monkeypatch) -> list[tuple[str, bool]]:
    """What Airflow answers the extract's sweep (run id, running?), beginning with the asking run's own."""
    answers: list[tuple[str, bool]] = []
    real = ops.airflow_is_running

    def recording(ti):
        ask = real(ti)
        answers.append((ti.run_id, ask(ti.dag_id, ti.run_id)))

        def is_running(dag_id, run_id):
            answers.append((run_id, ask(dag_id, run_id)))
            return answers[-1][1]

        return is_running

    monkeypatch.setattr(ops, "airflow_is_running", recording)
    return answers


@pytest.fixture(scope="module")
def catalog_conn(stack, demo_data, airflow_db):
    with catalog.connect() as conn:
        yield conn


# killed after one upload: a full copy (deduplication off), whose objects lie under the backup's own prefix; a
# deduplicated backup's packs are shared blobs, which retention's blob sweep collects once unreferenced
@pytest.mark.parametrize(("name", "upload_to"), [("client_data", ()), ("vendor_data", ("aws",))],
                         ids=["killed-after-extract", "killed-after-one-upload"])
def test_the_next_backup_removes_what_a_killed_backup_left(stack, catalog_conn, tmp_path, monkeypatch, name,
                                                          upload_to):
    killed = _killed_backup(tmp_path, name, upload_to, full_copy=bool(upload_to))
    staging = Path(killed["staging_dir"])
    assert staging == backup.staging_dir(POLICY, killed["backup_id"])
    if upload_to:  # encrypt deleted the plaintext; one cloud holds the objects, no manifest
        assert list(staging.glob("*.tink"))
        keys = _cloud_keys(stack, killed["prefix"] + "/")
        assert keys["aws"] and not keys["azure"] and not keys["gcp"]
        assert format.manifest_key(killed["prefix"]) not in keys["aws"]
    else:
        assert len(list(staging.glob("*.zst"))) >= 3  # compressed client rows, in the clear
    assert catalog.backup(catalog_conn, killed["backup_id"])["status"] == "running"

    answers = _record_liveness(monkeypatch)
    run = run_dag(build_backup_dag(FAST_POLICY, FAST_POLICY.data_classes[name], doc_md="test"))
    assert run.state == "success"
    # Airflow itself answered, under dag.test() too: its own run is live, the killed one's is not
    assert answers == [(run.run_id, True), (killed["run_id"], False)]

    assert not staging.exists(), sorted(p.name for p in staging.iterdir())
    assert not [p for p in POLICY.staging_dir().rglob("*.zst") if killed["backup_id"] in str(p)]
    assert catalog.backup(catalog_conn, killed["backup_id"])["status"] == "abandoned"
    assert _cloud_keys(stack, killed["prefix"] + "/") == {"aws": [], "azure": [], "gcp": []}
    new = catalog.backup_for_run(catalog_conn, f"backup_{name}", run.run_id)
    assert new["backup_id"] != killed["backup_id"] and new["status"] == "validated"
    assert all(_cloud_keys(stack, format.manifest_key(new["prefix"])).values())


def test_a_killed_deduplicated_backup_leaves_packs_that_no_backup_names(stack, catalog_conn, tmp_path):
    """vendor_data as shipped (deduplicated), killed after its upload to aws: its new pack is in aws, under the
    shared chunks prefix, and in no manifest. The next backup marks it abandoned, names none of its packs (the
    catalog looks chunks up only in good backups' packs) and stores the same change in a pack of its own; the
    orphan is retention's blob sweep's, once its lock ends."""
    with a_supplier_changed(stack):
        killed = _killed_backup(tmp_path, "vendor_data", ("aws",))
        sealed = json.loads((Path(killed["staging_dir"]) / "encrypt.json").read_text())  # what encrypt sealed
        orphans = {e["key"] for e in sealed if e.get("content_id")}
        assert orphans, sealed  # the changed supplier's chunk, packed
        shared = _cloud_keys(stack, format.chunks_prefix(POLICY.prefix))
        assert orphans <= set(shared["aws"]) and not orphans & set(shared["azure"] + shared["gcp"])
        run = run_dag(build_backup_dag(FAST_POLICY, FAST_POLICY.data_classes["vendor_data"], doc_md="test"))
    assert run.state == "success"
    assert catalog.backup(catalog_conn, killed["backup_id"])["status"] == "abandoned"
    new = catalog.backup_for_run(catalog_conn, "backup_vendor_data", run.run_id)
    manifest = format.Manifest.from_json(new["manifest"])
    assert new["status"] == "validated" and manifest.totals["packs_stored"] >= 1
    assert not orphans & {b.key for b in manifest.blobs}


def test_a_backup_that_committed_before_its_catalog_update_was_lost_is_recorded_not_deleted(stack, catalog_conn):
    """Its manifest is in the clouds: it is a backup. The sweep records it from the manifest and deletes nothing."""
    from wedsync_dr import abandoned

    key_ring = crypto.KeyRing.from_connection(POLICY.key_ring_conn_id)
    result = run_backup_steps(POLICY, POLICY.data_classes["vendor_data"], catalog_conn=catalog_conn,
                              key_ring=key_ring)
    backup_id = result["backup_id"]
    catalog_conn.execute("UPDATE backup_catalog.backups SET status = 'running', manifest = NULL, dag_id = %s, "
                         "run_id = %s WHERE backup_id = %s", ("backup_vendor_data", "manual__lost_update", backup_id))
    prefix = catalog.backup(catalog_conn, backup_id)["prefix"]
    before = _cloud_keys(stack, prefix + "/")

    report = abandoned.sweep(POLICY, catalog_conn, backup.stores(POLICY), is_running=lambda _dag, _run: False,
                             data_classes=["vendor_data"])

    assert backup_id in report.recorded and backup_id not in report.abandoned
    record = catalog.backup(catalog_conn, backup_id)
    assert record["status"] == "degraded" and record["manifest"]["backup_id"] == backup_id
    assert _cloud_keys(stack, prefix + "/") == before
