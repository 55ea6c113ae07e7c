"""The metrics without a database: the Prometheus exposition built from catalog rows (parsed back with
prometheus_client's own parser), and what the tasks send through Airflow's stats. The catalog queries and the
real api-server's endpoint are covered in tests/integration/test_observability.py."""

from __future__ import annotations

import datetime as dt
from unittest import mock

import pytest
from prometheus_client.parser import text_string_to_metric_families

from wedsync_dr import metrics
from wedsync_dr.metrics import AirflowEmitter, BackupStep, CatalogReadings, exposition
from wedsync_dr.policy import load_policy

POLICY = load_policy()
NOW = dt.datetime(2026, 11, 22, 12, tzinfo=dt.UTC)


def _samples(text: bytes) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted label pairs) -> value, as a Prometheus server would read the scrape."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode()) for s in family.samples}


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


def _readings(**overrides) -> CatalogReadings:
    vendor_started, vendor_finished = NOW - dt.timedelta(hours=3), NOW - dt.timedelta(hours=2, minutes=58)
    rows = {
        "now": NOW,
        # vendor_data within its 24 h RPO; critical_weddings 2 h old against 1 h; client_data and assets never
        "good_backup_times": [("vendor_data", vendor_started, vendor_finished),
                              ("critical_weddings", NOW - dt.timedelta(hours=2), NOW - dt.timedelta(hours=1.9)),
                              ("retired_class", NOW, NOW)],
        "backup_counts": [("vendor_data", "validated", 4), ("vendor_data", "degraded", 1),
                          ("critical_weddings", "failed", 2)],
        "step_totals": [
            ("vendor_data", "extract", None, None, 5, 10.0, 5000, 50),
            ("vendor_data", "upload", "aws", None, 5, 4.0, 9000, 55),
            ("vendor_data", "upload", "azure", None, 4, 6.0, 7200, 44),
            ("vendor_data", "upload", "elsewhere", None, 1, 1.0, 1, 1),  # a cloud no longer in the policy
            ("vendor_data", "validate", None, "validated", 3, 3.0, 0, 0),
            ("vendor_data", "validate", None, "degraded", 1, 1.5, 0, 0),
            ("vendor_data", "validate", None, "failed", 1, 0.5, 0, 0),
            ("critical_weddings", "validate", None, "failed", 2, 1.0, 0, 0),
        ],
        "latest_steps": [("vendor_data", "extract", None, 1.25, NOW), ("vendor_data", "upload", "aws", 0.75, NOW)],
        "drill_totals": [("vendor_data", True, 6), ("vendor_data", False, 1), ("assets", False, 2)],
        "latest_drills": [("vendor_data", NOW - dt.timedelta(minutes=5), True, 2.5),
                          ("assets", NOW - dt.timedelta(hours=1), False, 0.5)],
        "cloud_health": [("aws", True, 0, 12.5, NOW, None), ("azure", False, 3, 5000.0, NOW, "timed out"),
                         ("old-cloud", True, 0, 1.0, NOW, None)],
    }
    return CatalogReadings(**(rows | overrides))


@pytest.fixture(scope="module")
def scraped() -> dict:
    return _samples(exposition(POLICY, _readings))


def test_last_success_age_and_rpo_per_class(scraped):
    started, finished = NOW - dt.timedelta(hours=3), NOW - dt.timedelta(hours=2, minutes=58)
    assert _value(scraped, "wedsync_dr_catalog_up") == 1
    assert _value(scraped, "wedsync_dr_last_success_timestamp_seconds", data_class="vendor_data") == \
        finished.timestamp()
    assert _value(scraped, "wedsync_dr_backup_age_seconds", data_class="vendor_data") == \
        (NOW - started).total_seconds()
    for name, data_class in POLICY.data_classes.items():
        assert _value(scraped, "wedsync_dr_rpo_seconds", data_class=name) == data_class.rpo_minutes * 60
    assert _value(scraped, "wedsync_dr_within_rpo", data_class="vendor_data") == 1
    assert _value(scraped, "wedsync_dr_within_rpo", data_class="critical_weddings") == 0  # 2 h against 1 h
    assert _value(scraped, "wedsync_dr_within_rpo", data_class="client_data") == 0  # never backed up
    assert ("wedsync_dr_backup_age_seconds", (("data_class", "client_data"),)) not in scraped
    assert ("wedsync_dr_last_success_timestamp_seconds", (("data_class", "client_data"),)) not in scraped
    assert not [key for key in scraped if ("data_class", "retired_class") in key[1]]  # only the policy's classes


def test_outcomes_are_counters_and_the_catalog_status_a_gauge(scraped):
    assert _value(scraped, "wedsync_dr_backups_total", data_class="vendor_data", status="validated") == 3
    assert _value(scraped, "wedsync_dr_backups_total", data_class="vendor_data", status="degraded") == 1
    assert _value(scraped, "wedsync_dr_backups_total", data_class="vendor_data", status="failed") == 1
    assert _value(scraped, "wedsync_dr_backups_total", data_class="critical_weddings", status="failed") == 2
    assert _value(scraped, "wedsync_dr_backups_total", data_class="assets", status="validated") == 0  # zero-filled
    assert _value(scraped, "wedsync_dr_catalog_backups", data_class="vendor_data", status="validated") == 4
    assert _value(scraped, "wedsync_dr_catalog_backups", data_class="vendor_data", status="abandoned") == 0


def test_uploads_per_class_and_cloud_and_step_durations(scraped):
    assert _value(scraped, "wedsync_dr_uploaded_bytes_total", data_class="vendor_data", cloud="aws") == 9000
    assert _value(scraped, "wedsync_dr_uploaded_objects_total", data_class="vendor_data", cloud="azure") == 44
    assert _value(scraped, "wedsync_dr_uploaded_bytes_total", data_class="vendor_data", cloud="gcp") == 0
    assert not [key for key in scraped if ("cloud", "elsewhere") in key[1]]
    assert _value(scraped, "wedsync_dr_upload_duration_seconds_count", data_class="vendor_data", cloud="aws") == 5
    assert _value(scraped, "wedsync_dr_upload_duration_seconds_sum", data_class="vendor_data", cloud="azure") == 6
    assert _value(scraped, "wedsync_dr_step_duration_seconds_count", data_class="vendor_data", step="extract") == 5
    assert _value(scraped, "wedsync_dr_step_duration_seconds_sum", data_class="vendor_data", step="extract") == 10
    # validate's runs of every outcome
    assert _value(scraped, "wedsync_dr_step_duration_seconds_count", data_class="vendor_data", step="validate") == 5
    assert _value(scraped, "wedsync_dr_step_duration_seconds_sum", data_class="vendor_data", step="validate") == 5
    assert _value(scraped, "wedsync_dr_last_step_duration_seconds", data_class="vendor_data", step="extract") == 1.25
    assert _value(scraped, "wedsync_dr_last_upload_duration_seconds", data_class="vendor_data", cloud="aws") == 0.75
    assert ("wedsync_dr_last_step_duration_seconds", (("data_class", "vendor_data"), ("step", "encrypt"))) \
        not in scraped  # never recorded: absent, not zero


def test_drills_and_cloud_canaries(scraped):
    assert _value(scraped, "wedsync_dr_drills_total", data_class="vendor_data", result="passed") == 6
    assert _value(scraped, "wedsync_dr_drills_total", data_class="vendor_data", result="failed") == 1
    assert _value(scraped, "wedsync_dr_drills_total", data_class="client_data", result="passed") == 0
    assert _value(scraped, "wedsync_dr_drill_last_success", data_class="vendor_data") == 1
    assert _value(scraped, "wedsync_dr_drill_last_success", data_class="assets") == 0
    assert _value(scraped, "wedsync_dr_drill_last_duration_seconds", data_class="vendor_data") == 2.5
    assert _value(scraped, "wedsync_dr_drill_last_timestamp_seconds", data_class="assets") == \
        (NOW - dt.timedelta(hours=1)).timestamp()
    assert _value(scraped, "wedsync_dr_cloud_healthy", cloud="aws") == 1
    assert _value(scraped, "wedsync_dr_cloud_healthy", cloud="azure") == 0
    assert _value(scraped, "wedsync_dr_cloud_failures_in_a_row", cloud="azure") == 3
    assert _value(scraped, "wedsync_dr_cloud_canary_latency_seconds", cloud="aws") == 0.0125
    assert _value(scraped, "wedsync_dr_cloud_last_check_timestamp_seconds", cloud="aws") == NOW.timestamp()
    assert ("wedsync_dr_cloud_healthy", (("cloud", "gcp"),)) not in scraped  # never checked
    assert ("wedsync_dr_cloud_healthy", (("cloud", "old-cloud"),)) not in scraped


def _logged(logger: mock.Mock) -> str:
    """Everything a mocked module logger was asked to log, formatted (Airflow's logging setup is not involved)."""
    return "\n".join(c.args[0] % c.args[1:] for c in logger.method_calls)


def test_an_unreadable_catalog_is_catalog_up_0_and_nothing_else(monkeypatch):
    def down() -> CatalogReadings:
        raise OSError("connection refused")

    monkeypatch.setattr(metrics, "log", mock.Mock())
    scraped = _samples(exposition(POLICY, down))
    assert scraped == {("wedsync_dr_catalog_up", ()): 0}
    assert "cannot read the backup catalog" in _logged(metrics.log)


def test_each_scrape_has_a_registry_of_its_own():
    first = exposition(POLICY, _readings)
    assert exposition(POLICY, _readings) == first  # nothing accumulates between scrapes
    names = {name for name, _ in _samples(first)}
    assert all(name.startswith("wedsync_dr_") for name in names)  # the process-global registry's are not here
    later = _readings(drill_totals=[("vendor_data", True, 7)])
    assert _value(_samples(exposition(POLICY, lambda: later)), "wedsync_dr_drills_total", data_class="vendor_data",
                  result="passed") == 7


class RecordingStats:
    """Airflow's stats module as the emitter calls it: incr(stat, count), gauge(stat, value), timing(stat, dt)."""

    def __init__(self):
        self.calls: list[tuple] = []

    def __getattr__(self, kind: str):
        if kind not in ("incr", "gauge", "timing"):
            raise AttributeError(kind)
        return lambda stat, value, tags=None: self.calls.append((kind, stat, value, tags))


def test_an_upload_is_timed_and_counted_with_its_class_and_cloud_as_tags():
    stats = RecordingStats()
    AirflowEmitter(stats).step(BackupStep("b1", "vendor_data", "upload", 1.5, cloud="aws", size=9000, objects=12))
    tags = {"data_class": "vendor_data", "cloud": "aws"}
    assert stats.calls == [("timing", "wedsync_dr.backup.upload.duration", dt.timedelta(seconds=1.5), tags),
                           ("incr", "wedsync_dr.backup.upload.bytes", 9000, tags),
                           ("incr", "wedsync_dr.backup.upload.objects", 12, tags)]


def test_names_with_labels_are_sent_too_when_asked_for_statsd_without_tags():
    stats = RecordingStats()
    AirflowEmitter(stats, names_with_labels=True, clock=lambda: 1234.0).step(
        BackupStep("b1", "vendor_data", "validate", 0.5, outcome="degraded"))
    sent = {(kind, stat): (value, tags) for kind, stat, value, tags in stats.calls}
    assert sent["incr", "wedsync_dr.backup.degraded"] == (1, {"data_class": "vendor_data"})
    assert sent["incr", "wedsync_dr.backup.degraded.vendor_data"] == (1, None)
    assert sent["gauge", "wedsync_dr.backup.last_success_timestamp.vendor_data"] == (1234.0, None)
    assert ("timing", "wedsync_dr.backup.validate.duration.vendor_data") in sent


def test_a_failed_backup_sends_no_last_success():
    stats = RecordingStats()
    AirflowEmitter(stats).step(BackupStep("b1", "vendor_data", "validate", 0.5, outcome="failed"))
    assert [stat for _, stat, _, _ in stats.calls] == ["wedsync_dr.backup.validate.duration",
                                                       "wedsync_dr.backup.failed"]


def test_drills_canaries_and_ages():
    stats = RecordingStats()
    emitter = AirflowEmitter(stats)
    emitter.drill({"data_class": "assets", "ok": False, "seconds": 2.0})
    emitter.drill({"data_class": "assets", "ok": None, "detail": "no backup to drill yet"})  # sends nothing
    emitter.canary("azure", ok=False, latency_ms=5000.0, healthy=True)
    emitter.backup_age("client_data", None, 86400)
    assert [(kind, stat, value) for kind, stat, value, _ in stats.calls] == [
        ("incr", "wedsync_dr.drill.failed", 1), ("gauge", "wedsync_dr.drill.last_success", 0),
        ("timing", "wedsync_dr.drill.duration", dt.timedelta(seconds=2)),
        ("timing", "wedsync_dr.cloud.canary.latency", dt.timedelta(seconds=5)),
        ("incr", "wedsync_dr.cloud.canary.failed", 1), ("gauge", "wedsync_dr.cloud.healthy", 1),
        ("gauge", "wedsync_dr.backup.rpo_seconds", 86400)]  # never backed up: no age


def test_a_metrics_backend_that_fails_never_fails_the_task(monkeypatch):
    class Broken:
        def timing(self, *args, **kwargs):
            raise ConnectionError("statsd unreachable")

    monkeypatch.setattr(metrics, "log", mock.Mock())
    AirflowEmitter(Broken()).step(BackupStep("b1", "vendor_data", "extract", 1.0))
    assert "step not sent: ConnectionError: statsd unreachable" in _logged(metrics.log)


def test_the_wiring_sends_through_airflows_stats_and_survives_a_catalog_that_fails(monkeypatch):
    from airflow.sdk.observability import stats

    from wedsync_dr.wiring import common

    sent = []
    for kind in ("incr", "gauge", "timing"):
        monkeypatch.setattr(stats, kind, lambda stat, value, *a, _kind=kind, tags=None, **k: sent.append(
            (_kind, stat, value, tags)))

    class BrokenConnection:
        def execute(self, *args):
            raise OSError("catalog gone")

    monkeypatch.setattr(common, "log", mock.Mock())
    common.step_finished(BackupStep("vendor_data-20261122T120000Z-ab12", "vendor_data", "upload", 2.0, cloud="gcp",
                                    size=10, objects=1), BrokenConnection())
    assert "not recorded for metrics: OSError: catalog gone" in _logged(common.log)
    assert ("incr", "wedsync_dr.backup.upload.bytes", 10, {"data_class": "vendor_data", "cloud": "gcp"}) in sent
