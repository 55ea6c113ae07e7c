"""The status page's judgement without a database: which alerts are open, when it may say "all good", what
it shows (the catalog side is covered in tests/integration/test_verify.py and test_ops.py)."""

from __future__ import annotations

import datetime as dt

import pytest

from wedsync_dr.status import Evidence, alert_cleared, hours, open_alerts, overall, render_html

NOW = dt.datetime(2026, 11, 22, 12, tzinfo=dt.UTC)
RAISED = NOW - dt.timedelta(hours=2)
BEFORE, AFTER = RAISED - dt.timedelta(minutes=5), RAISED + dt.timedelta(minutes=5)


def _alert(kind: str, subject: str | None, severity: str = "critical", raised: dt.datetime = RAISED, **extra) -> dict:
    return {"alert_id": 7, "raised_at": raised, "first_raised_at": raised, "count": 1, "severity": severity,
            "kind": kind, "subject": subject, "message": f"{kind} {subject}", "backup_id": None, "details": None,
            **extra}


@pytest.mark.parametrize(("alert", "evidence", "cleared"), [
    # a failed backup: open until a good backup of the class commits after it
    (_alert("backup_failed", "vendor_data"), Evidence(NOW), False),
    (_alert("backup_failed", "vendor_data"), Evidence(NOW, good_committed={"vendor_data": BEFORE}), False),
    (_alert("backup_failed", "vendor_data"), Evidence(NOW, good_committed={"client_data": AFTER}), False),
    (_alert("backup_failed", "vendor_data"), Evidence(NOW, good_committed={"vendor_data": AFTER}), True),
    # degraded: its own backup repaired, or a validated (not merely good) backup after it
    (_alert("backup_degraded", "assets", "warning", backup_id="b1"),
     Evidence(NOW, good_committed={"assets": AFTER}, backup_status={"b1": "degraded"}), False),
    (_alert("backup_degraded", "assets", "warning", backup_id="b1"), Evidence(NOW, backup_status={"b1": "validated"}),
     True),
    (_alert("backup_degraded", "assets", "warning", backup_id="b1"),
     Evidence(NOW, validated_committed={"assets": AFTER}, backup_status={"b1": "degraded"}), True),
    # RPO: open while the class / wedding is past its RPO now
    (_alert("rpo_breach", "vendor_data", "warning"), Evidence(NOW, within_rpo={"vendor_data": False}), False),
    (_alert("rpo_breach", "vendor_data", "warning"), Evidence(NOW, within_rpo={"vendor_data": True}), True),
    (_alert("rpo_breach", "wedding:42"), Evidence(NOW, within_rpo={"wedding:42": False}), False),
    (_alert("rpo_breach", "wedding:42"), Evidence(NOW, within_rpo={}, weddings_known=True), True),  # date passed
    (_alert("rpo_breach", "wedding:42"), Evidence(NOW, within_rpo={}, weddings_known=False), False),  # cannot tell
    # drills, verifications, clouds
    (_alert("drill_failed", "client_data"), Evidence(NOW, drill_passed={"client_data": BEFORE}), False),
    (_alert("drill_failed", "client_data"), Evidence(NOW, drill_passed={"client_data": AFTER}), True),
    (_alert("verify_failed", "gcp:b1", backup_id="b1", details={"cloud": "gcp"}),
     Evidence(NOW, verification_passed={("b1", "aws"): AFTER, ("b2", "gcp"): AFTER}), False),
    (_alert("verify_failed", "gcp:b1", backup_id="b1", details={"cloud": "gcp"}),
     Evidence(NOW, verification_passed={("b1", "gcp"): AFTER}), True),
    (_alert("cloud_health", "azure"), Evidence(NOW, cloud_healthy={"azure": False}), False),
    (_alert("cloud_health", "azure"), Evidence(NOW, cloud_healthy={"azure": True}), True),
    # task failures: a backup task by a later good backup of its class; anything else after 24 h
    (_alert("task_failed", "backup_vendor_data.extract"), Evidence(NOW, good_committed={"vendor_data": AFTER}), True),
    (_alert("task_failed", "emergency_backup.assets.upload_to_aws"), Evidence(NOW, good_committed={"assets": AFTER}),
     True),
    (_alert("task_failed", "backup_retention.apply_retention"), Evidence(NOW, good_committed={"vendor_data": AFTER}),
     False),
    (_alert("task_failed", "backup_retention.apply_retention", raised=NOW - dt.timedelta(hours=25)), Evidence(NOW),
     True),
    (_alert("task_failed", "backup_retention.apply_retention"),
     Evidence(NOW, task_succeeded={"backup_retention.apply_retention": BEFORE}), False),
    (_alert("task_failed", "backup_retention.apply_retention"),
     Evidence(NOW, task_succeeded={"backup_retention.apply_retention": AFTER}), True),  # Airflow's metadata
])
def test_an_alert_stays_open_until_a_later_event_clears_it(alert, evidence, cleared):
    assert alert_cleared(alert, evidence) is cleared


def test_open_alerts_are_critical_first_then_newest_and_never_info():
    groups = [_alert("rpo_breach", "vendor_data", "warning", raised=NOW - dt.timedelta(minutes=1)),
              _alert("cloud_health", "azure", "info"),
              _alert("backup_failed", "assets", raised=NOW - dt.timedelta(hours=3)),
              _alert("drill_failed", "assets", raised=NOW - dt.timedelta(hours=1))]
    found = open_alerts(groups, Evidence(NOW, within_rpo={"vendor_data": False}))
    assert [(a["kind"], a["severity"]) for a in found] == [
        ("drill_failed", "critical"), ("backup_failed", "critical"), ("rpo_breach", "warning")]


def _status(**changes) -> dict:
    """A status where everything is fine, with the given parts replaced."""
    status = {
        "generated_at": NOW.isoformat(), "open_alerts": [], "recent_alerts": [], "degraded_backups": [],
        "classes": {"vendor_data": {
            "rpo_minutes": 1440, "age_minutes": 90.0, "age_hours": 1.5, "rpo_ok": True,
            "last_backup": {"backup_id": "vendor_data-20261122T103000Z-aa", "status": "validated",
                            "started_at": "2026-11-22T10:30:00+00:00", "finished_at": None, "age_hours": 1.5,
                            "clouds_ok": ["aws", "azure", "gcp"], "clouds_failed": [], "labels": [], "error": None},
            "last_attempt": {"backup_id": "vendor_data-20261122T113000Z-bb", "status": "failed",
                             "started_at": "2026-11-22T11:30:00+00:00", "finished_at": None, "age_hours": 0.5,
                             "clouds_ok": ["aws"], "clouds_failed": ["azure", "gcp"], "labels": [],
                             "error": "quorum not met"},
            "last_drill": None, "last_verification": None}},
        "cloud_health": {"aws": {"healthy": True, "failures_in_a_row": 0, "latency_ms": 12.0,
                                 "checked_at": NOW.isoformat(), "error": None}},
        "critical_weddings": [{"wedding_id": 42, "wedding_date": "2026-11-28", "last_backup_at": NOW.isoformat(),
                               "age_minutes": 30.0, "age_hours": 0.5, "rpo_minutes": 60, "rpo_ok": True}],
        "critical_weddings_known": True,
        "emergency_runs": [{"run_id": "manual__1", "requested_at": "2026-11-22T09:00:00+00:00", "age_hours": 3.0,
                            "finished_at": None, "reason": "Venue outage before wedding 42", "requested_by": "sre",
                            "scope": {"scope": "weddings"}, "classes": ["critical_weddings"], "status": "succeeded",
                            "coalesced_into": None, "clouds": ["aws", "gcp"], "backup_ids": ["b"]}],
        "restores": [{"restore_id": 1, "restored_at": "2026-11-22T08:00:00+00:00", "age_hours": 4.0,
                      "backup_id": "client_data-20261121T000000Z-cc", "data_class": "client_data",
                      "target": "restore_client_data_x", "wedding_id": 42, "dry_run": False, "rows": 1234,
                      "seconds": 3.2, "failovers": 1, "run_id": "manual__2"}],
        "verifications": [],
    }
    status.update(changes)
    status["ok"], status["problems"] = overall(status)
    return status


def test_not_all_good_while_a_warning_or_critical_alert_is_open():
    assert _status()["ok"] is True
    warning = {**_alert("backup_degraded", "assets", "warning"), "raised_at": RAISED.isoformat(),
               "first_raised_at": RAISED.isoformat(), "age_hours": 2.0}
    status = _status(open_alerts=[warning])
    assert status["ok"] is False and status["problems"] == ["1 open warning alert"]


@pytest.mark.parametrize(("changes", "problem"), [
    ({"critical_weddings": [{"wedding_id": 42, "wedding_date": "2026-11-28", "last_backup_at": None,
                             "age_minutes": None, "age_hours": None, "rpo_minutes": 60, "rpo_ok": False}]},
     "1 critical wedding past the RPO"),
    ({"critical_weddings": [], "critical_weddings_known": False}, "critical weddings not checked"),
    ({"cloud_health": {"gcp": {"healthy": False, "failures_in_a_row": 3, "latency_ms": None,
                               "checked_at": NOW.isoformat(), "error": "timeout"}}}, "cloud gcp is unhealthy"),
])
def test_not_all_good_when_a_wedding_a_cloud_or_the_source_is_in_doubt(changes, problem):
    status = _status(**changes)
    assert status["ok"] is False and any(problem in p for p in status["problems"]), status["problems"]


def test_ages_and_rpos_read_in_hours():
    assert [hours(m) for m in (90, 15, 60, 1440, 0, None)] == ["1.5 h", "0.25 h", "1.0 h", "24.0 h", "0.0 h", "-"]


def test_the_page_shows_alerts_attempts_emergencies_restores_weddings_and_reloads_itself():
    alert = {**_alert("backup_failed", "vendor_data"), "raised_at": RAISED.isoformat(), "count": 3,
             "first_raised_at": (RAISED - dt.timedelta(hours=1)).isoformat(), "age_hours": 2.0,
             "message": "backup vendor_data-x has 1 validated copies, quorum is 2"}
    page = render_html(_status(open_alerts=[alert]))
    assert '<meta http-equiv="refresh" content="60">' in page
    assert "attention needed" in page and "1 open critical alert" in page
    assert "quorum is 2" in page and "2.0 h ago" in page and "3 since" in page
    assert "failed 0.50 h ago" in page and 'title="quorum not met"' in page  # the last attempt beside the last good
    assert "validated" in page and "1.5 h" in page and "24.0 h" in page  # age and RPO of the class, in hours
    assert "Venue outage before wedding 42" in page and "succeeded" in page  # emergency runs
    assert "restore_client_data_x" in page and "1,234" in page  # restores
    assert "0.50 h" in page and "1.0 h" in page  # wedding 42: age against its RPO
    assert " min<" not in page


def test_the_page_escapes_what_it_shows():
    alert = {**_alert("task_failed", "<script>x</script>"), "raised_at": RAISED.isoformat(),
             "first_raised_at": RAISED.isoformat(), "age_hours": 2.0}
    page = render_html(_status(open_alerts=[alert]))
    assert "<script>x" not in page and "&lt;script&gt;" in page
