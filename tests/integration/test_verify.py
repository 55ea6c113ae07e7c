"""backup_verify (in-process dag.test()) and the status page's catalog side against the real stack: verdicts
recorded per cloud, a corrupt copy alerting until it verifies again, open alerts following later events."""

from __future__ import annotations

import pytest

from tests.helpers import run_dag, sdk_get, sdk_put, stored_copies
from wedsync_dr import alerts, catalog, status, verification
from wedsync_dr.policy import load_policy
from wedsync_dr.wiring.backup_chain import build_backup_dag
from wedsync_dr.wiring.ops import build_verify_dag

POLICY = load_policy()


@pytest.fixture(scope="module")
def conn(stack, demo_data, airflow_db):
    with catalog.connect() as connection:
        yield connection


def _backup_vendor_data(conn) -> dict:
    run = run_dag(build_backup_dag(POLICY, POLICY.data_classes["vendor_data"], doc_md="test"))
    assert run.state == "success"
    return catalog.backup_for_run(conn, "backup_vendor_data", run.run_id)


@pytest.fixture(scope="module")
def record(conn) -> dict:
    """A fresh, validated vendor_data backup."""
    backup = _backup_vendor_data(conn)
    assert backup["status"] == "validated"
    return backup


def _verify(conf: dict):
    run = run_dag(build_verify_dag(POLICY, doc_md="test"), conf)
    return run, {ti.task_id: ti.state for ti in run.get_task_instances()}


def _open(conn, kind: str, subject: str) -> list[dict]:
    return [a for a in status.collect(POLICY, conn)["open_alerts"] if (a["kind"], a["subject"]) == (kind, subject)]


def test_verify_reads_every_copy_and_records_each_verdict(conn, record):
    run, _ = _verify({"data_class": "vendor_data", "backup_id": "latest", "cloud": "all", "sample": 1.0})
    assert run.state == "success"
    found = catalog.verifications(conn, run_id=run.run_id)
    assert sorted(v["cloud"] for v in found) == sorted(POLICY.cloud_names)
    total = len(record["manifest"]["objects"])
    for verdict in found:
        assert verdict["ok"] and verdict["backup_id"] == record["backup_id"], verdict
        assert verdict["objects_read"] == verdict["objects_total"] == total > 0
    shown = status.collect(POLICY, conn)
    assert shown["classes"]["vendor_data"]["last_verification"]["run_id"] == run.run_id
    assert {v["run_id"] for v in shown["verifications"][:3]} == {run.run_id}


def test_a_sample_in_one_cloud_reads_a_fraction_and_skips_the_others(conn, record):
    run, states = _verify({"data_class": "vendor_data", "backup_id": record["backup_id"], "cloud": "gcp",
                           "sample": 0.3, "seed": 5})
    assert run.state == "success"
    assert states["verify_in_gcp"] == "success"
    assert all(states[f"verify_in_{c}"] == "skipped" for c in POLICY.cloud_names if c != "gcp")
    [verdict] = catalog.verifications(conn, run_id=run.run_id)
    total = len(record["manifest"]["objects"])
    assert verdict["cloud"] == "gcp" and verdict["seed"] == 5
    assert verdict["objects_read"] == max(1, round(total * 0.3)) < total


def test_a_corrupt_copy_fails_alerts_and_clears_once_it_verifies(stack, conn, record):
    entry = stored_copies(record["manifest"])[0]
    original = sdk_get(stack, "azure", entry.key)
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x01
    sdk_put(stack, "azure", entry.key, bytes(damaged))
    conf = {"data_class": "vendor_data", "backup_id": record["backup_id"], "cloud": "azure", "sample": 1.0}
    try:
        run, states = _verify(conf)
    finally:
        sdk_put(stack, "azure", entry.key, original)
    assert run.state == "failed" and states["verify_in_azure"] == "failed"
    [verdict] = catalog.verifications(conn, run_id=run.run_id)
    assert not verdict["ok"] and verdict["problem_count"] >= 1 and verdict["problems"]
    [alert] = _open(conn, "verify_failed", f"azure:{record['backup_id']}")
    assert alert["severity"] == "critical" and alert["backup_id"] == record["backup_id"]
    shown = status.collect(POLICY, conn)
    assert shown["ok"] is False and "open critical alert" in " ".join(shown["problems"])
    assert "verification of" in status.render_html(shown)

    again, _ = _verify(conf)  # the copy is whole again (as backup_repair would leave it)
    assert again.state == "success"
    assert _open(conn, "verify_failed", f"azure:{record['backup_id']}") == []


def test_an_unknown_backup_is_refused_before_anything_is_read(conn, record):
    run, states = _verify({"data_class": "vendor_data", "backup_id": "vendor_data-20200101T000000Z-abc",
                           "cloud": "all", "sample": 1.0})
    assert run.state == "failed" and states["check_request"] == "failed"
    assert catalog.verifications(conn, run_id=run.run_id) == []
    with pytest.raises(verification.VerificationError, match="not client_data"):
        verification.resolve_backup(conn, "client_data", record["backup_id"])


def test_a_failed_backup_alert_stays_open_until_a_later_backup_commits(conn, record):
    alerts.alert(severity="critical", kind="backup_failed", subject="vendor_data", catalog_conn=conn,
                 message="backup vendor_data-test has 1 validated copies, quorum is 2")
    alerts.alert(severity="critical", kind="backup_failed", subject="vendor_data", catalog_conn=conn,
                 message="backup vendor_data-test2 has 0 validated copies, quorum is 2")
    [alert] = _open(conn, "backup_failed", "vendor_data")  # the two show as one line
    assert alert["count"] >= 2 and "test2" in alert["message"]
    assert status.collect(POLICY, conn)["ok"] is False
    _backup_vendor_data(conn)
    assert _open(conn, "backup_failed", "vendor_data") == []


def test_an_acknowledged_alert_closes_until_it_is_raised_again(conn):
    def raise_it():
        alerts.alert(severity="warning", kind="task_failed", subject="backup_retention.apply_retention",
                     message="backup_retention.apply_retention failed", catalog_conn=conn)

    subject = "backup_retention.apply_retention"
    raise_it()
    [alert] = _open(conn, "task_failed", subject)
    assert alert["alert_id"] in status.acknowledge(conn, alert["alert_id"], by="sre-oncall")
    assert _open(conn, "task_failed", subject) == []
    assert status.acknowledge(conn, 10**12, by="sre-oncall") is None
    raise_it()
    assert len(_open(conn, "task_failed", subject)) == 1


def test_the_last_attempt_shows_beside_the_last_good_backup(conn, record):
    good = status.collect(POLICY, conn)["classes"]["vendor_data"]["last_backup"]
    backup_id = "vendor_data-20990101T000000Z-0f0f"  # sorts after every real backup: the newest attempt
    catalog.record_backup_start(conn, backup_id=backup_id, data_class="vendor_data",
                                prefix="wedsync-dr/vendor_data/test-attempt", started_at=record["started_at"]
                                .replace(year=2099))
    try:
        shown = status.collect(POLICY, conn)["classes"]["vendor_data"]
        assert shown["last_attempt"]["backup_id"] == backup_id and shown["last_attempt"]["status"] == "running"
        assert shown["last_backup"]["backup_id"] == good["backup_id"]
        catalog.record_backup_result(conn, None, backup_id=backup_id, status="failed", copies={},
                                     error="quorum not met (test)")
        shown = status.collect(POLICY, conn)["classes"]["vendor_data"]
        assert shown["last_attempt"]["status"] == "failed" and shown["last_attempt"]["error"] == "quorum not met (test)"
    finally:
        conn.execute("DELETE FROM backup_catalog.backups WHERE backup_id = %s", (backup_id,))


def test_recent_emergency_runs_and_restores_are_shown(conn, record):
    request = {"reason": "status page test: venue outage", "requested_by": "tester", "scope": "classes",
               "wedding_ids": None, "data_classes": ["vendor_data"]}
    catalog.record_emergency_run(conn, "manual__status_test", request, ["vendor_data"], status="running")
    catalog.finish_emergency_run(conn, "manual__status_test", "succeeded", ["aws", "gcp"], [record["backup_id"]])
    catalog.record_restore(conn, {"backup_id": record["backup_id"], "data_class": "vendor_data",
                                  "target": "restore_vendor_data_status_test", "wedding_id": None, "dry_run": True,
                                  "rows": {"vendors": 10}, "seconds": 1.5, "sources": {"aws": 1}, "failovers": []},
                           run_id="manual__restore_test")
    shown = status.collect(POLICY, conn)
    emergency = next(r for r in shown["emergency_runs"] if r["run_id"] == "manual__status_test")
    assert emergency["status"] == "succeeded" and emergency["clouds"] == ["aws", "gcp"]
    assert emergency["age_hours"] is not None and emergency["age_hours"] < 1
    restore = next(r for r in shown["restores"] if r["run_id"] == "manual__restore_test")
    assert restore["target"] == "restore_vendor_data_status_test" and restore["rows"] == 10
    page = status.render_html(shown)
    assert "status page test: venue outage" in page and "restore_vendor_data_status_test" in page
