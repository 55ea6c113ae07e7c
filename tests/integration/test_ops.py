"""Operations against the real stack: health flips, RPO alerts, drills, retention, repair, the status plugin."""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.helpers import http_json, run_dag, sdk_get, sdk_put, stored_copies
from wedsync_dr import alerts, backup, catalog, crypto, drill, health, repair, retention
from wedsync_dr.policy import load_policy
from wedsync_dr.wiring.backup_chain import build_backup_dag
from wedsync_dr_dev import local_stack

POLICY = load_policy()


@pytest.fixture(scope="module")
def ops(stack, demo_data, airflow_db):
    """A fresh vendor_data backup, and a catalog connection."""
    run = run_dag(build_backup_dag(POLICY, POLICY.data_classes["vendor_data"], doc_md="test"))
    assert run.state == "success"
    with catalog.connect() as conn:
        yield conn


def _newest(conn, data_class: str) -> dict:
    backup_id = conn.execute("SELECT backup_id FROM backup_catalog.backups WHERE data_class = %s AND manifest IS NOT "
                             "NULL ORDER BY started_at DESC LIMIT 1", (data_class,)).fetchone()[0]
    return catalog.backup(conn, backup_id)


# ----------------------------------------------------------------------------- health


def test_a_stopped_cloud_turns_unhealthy_and_back(stack, ops):
    stores = backup.stores(POLICY)

    def check():
        return health.record_checks(ops, [health.canary(s, POLICY) for s in stores.values()])

    assert all(s["healthy"] for s in check().values())
    local_stack.stop_service(stack, "azure")
    try:
        states = [check() for _ in range(health.UNHEALTHY_AFTER)]
    finally:
        local_stack.restart_emulator(stack, "azure")
    assert [s["azure"]["healthy"] for s in states] == [True] * (health.UNHEALTHY_AFTER - 1) + [False]
    assert states[-1]["azure"]["changed"] and states[-1]["aws"]["healthy"]
    assert health.healthy_clouds(ops, POLICY) == ["aws", "gcp"]
    recovered = check()
    assert recovered["azure"]["healthy"] and recovered["azure"]["changed"]
    assert health.healthy_clouds(ops, POLICY) == ["aws", "azure", "gcp"]


def test_rpo_breach_alerts_and_asks_for_an_emergency(stack, ops):
    now = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)  # two days on, every class is past its RPO
    with catalog.db_connector("wedsync_db")() as source:
        breaches = health.rpo_breaches(ops, source, POLICY, now=now)
    subjects = {b.subject for b in breaches}
    assert {"vendor_data"} <= subjects
    weddings = [b.wedding_id for b in breaches if b.wedding_id]
    assert weddings  # the demo data always has weddings within 30 days
    request = health.emergency_conf_for(POLICY, breaches, {})
    assert request["scope"] == "weddings" and request["wedding_ids"] == sorted(weddings)
    from wedsync_dr.emergency import validate_conf

    validate_conf(POLICY, request)  # the monitor's request passes the same rules as a person's
    with catalog.db_connector("wedsync_db")() as source:
        assert not [b for b in health.rpo_breaches(ops, source, POLICY) if b.subject == "vendor_data"]


# ----------------------------------------------------------------------------- drills


def test_a_drill_restores_verifies_and_cleans_up(stack, ops):
    key_ring = crypto.KeyRing.from_connection(POLICY.key_ring_conn_id)
    result = drill.drill_class(POLICY, "vendor_data", ops, backup.stores(POLICY), key_ring,
                               catalog.db_connector("wedsync_db_owner"), seed=1)
    assert result["ok"] is True and result["rows"] > 0, result
    with catalog.db_connector("wedsync_db_owner")() as conn:
        assert not conn.execute("SELECT 1 FROM pg_namespace WHERE nspname LIKE 'drill_%'").fetchall()
    row = ops.execute("SELECT ok, cloud FROM backup_catalog.drills ORDER BY drill_id DESC LIMIT 1").fetchone()
    assert row == (True, result["cloud"])


def test_a_drill_over_a_corrupted_copy_reports_failure(stack, ops):
    key_ring = crypto.KeyRing.from_connection(POLICY.key_ring_conn_id)
    manifest, cloud = drill.choose(ops, POLICY, "vendor_data")  # what the next drill will read, and where
    originals = {}
    for entry in stored_copies(manifest):
        originals[entry.key] = sdk_get(stack, cloud, entry.key)
        data = bytearray(originals[entry.key])
        data[-1] ^= 0x01
        sdk_put(stack, cloud, entry.key, bytes(data))
    try:
        result = drill.drill_class(POLICY, "vendor_data", ops, backup.stores(POLICY), key_ring,
                                   catalog.db_connector("wedsync_db_owner"), seed=2)
    finally:
        for key, data in originals.items():
            sdk_put(stack, cloud, key, data)
    assert result["ok"] is False and result["cloud"] == cloud
    alerts = catalog.alerts(ops, kind="drill_failed")
    assert alerts and cloud in alerts[-1]["message"]


# ----------------------------------------------------------------------------- retention


def test_retention_deletes_manifest_first_and_keeps_the_last_good_backup(stack, ops):
    record = _newest(ops, "vendor_data")
    stores = backup.stores(POLICY)
    problems = retention.delete_backup({"aws": stores["aws"]}, record["prefix"])
    assert problems == {}
    assert stores["aws"].head(f"{record['prefix']}/manifest.json") is None
    assert not list(stores["aws"].list(record["prefix"] + "/"))
    repair.run(POLICY, ops, stores, only_degraded=False)  # put it back for the next tests


# ----------------------------------------------------------------------------- repair


def test_repair_heals_a_missing_and_a_corrupted_copy(stack, ops):
    record = _newest(ops, "vendor_data")
    first, second = stored_copies(record["manifest"])[:2]
    stores = backup.stores(POLICY)
    stores["gcp"].delete(first.key)
    stores["gcp"].delete(f"{record['prefix']}/manifest.json")
    corrupted = bytearray(sdk_get(stack, "azure", second.key))
    corrupted[10] ^= 0xFF
    sdk_put(stack, "azure", second.key, bytes(corrupted))
    ops.execute("UPDATE backup_catalog.backups SET status = 'degraded' WHERE backup_id = %s", (record["backup_id"],))
    results = repair.run(POLICY, ops, stores, only_degraded=True)
    healed = next(r for r in results if r.backup_id == record["backup_id"])
    assert sorted((k, t) for k, _, t in healed.copied) == sorted([(first.key, "gcp"), (second.key, "azure")])
    assert not healed.unrepairable
    assert catalog.backup(ops, record["backup_id"])["status"] == "validated"
    assert stores["gcp"].head(f"{record['prefix']}/manifest.json") is not None
    assert sdk_get(stack, "azure", second.key) == sdk_get(stack, "aws", second.key)


# ----------------------------------------------------------------------------- status plugin


@pytest.fixture(scope="module")
def api(airflow_api):
    return airflow_api


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # urllib then raises HTTPError for the 30x: the test sees the redirect itself


def _browser_visit(url: str) -> tuple[int, str | None]:
    """A browser without a session opening the page: (status, Location)."""
    request = urllib.request.Request(url, headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    try:
        with urllib.request.build_opener(_NoRedirect).open(request, timeout=60) as response:
            return response.status, None
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Location")


def test_status_api_requires_airflow_authentication(api, ops):
    url, token = api
    drill.drill_class(POLICY, "vendor_data", ops, backup.stores(POLICY),
                      crypto.KeyRing.from_connection(POLICY.key_ring_conn_id), catalog.db_connector("wedsync_db_owner"))
    assert _get(f"{url}/wedsync-dr/api/status")[0] == 401
    assert _get(f"{url}/wedsync-dr/")[0] == 401  # an API client (no Accept: text/html)
    for path in ("api/verifications", "openapi.json", "docs", "redoc", "docs/oauth2-redirect"):
        assert _get(f"{url}/wedsync-dr/{path}")[0] in (401, 404), path  # FastAPI's own routes included
    code, location = _browser_visit(f"{url}/wedsync-dr/")
    assert code in (302, 307) and location is not None
    assert urllib.parse.urlsplit(location).path.endswith("/auth/login"), location
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)["next"] == [f"{url}/wedsync-dr/"]
    status, body = _get(f"{url}/wedsync-dr/openapi.json", token)
    assert status == 200 and "/api/verifications" in json.loads(body)["paths"]
    status, body = _get(f"{url}/wedsync-dr/api/status", token)
    assert status == 200
    data = json.loads(body)
    assert set(data["classes"]) == set(POLICY.data_classes)
    vendor = data["classes"]["vendor_data"]
    assert vendor["last_backup"]["backup_id"] == _newest(ops, "vendor_data")["backup_id"]
    assert vendor["last_attempt"]["backup_id"] and vendor["age_hours"] is not None
    assert vendor["rpo_ok"] is True and vendor["last_drill"] is not None
    assert set(data["cloud_health"]) == {"aws", "azure", "gcp"}
    assert isinstance(data["critical_weddings"], list) and data["critical_weddings_known"] is True
    for key in ("open_alerts", "recent_alerts", "emergency_runs", "restores", "verifications", "problems"):
        assert isinstance(data[key], list), key
    assert data["ok"] is (not data["problems"])


def test_an_open_alert_turns_the_status_red_until_acknowledged(api, ops):
    url, token = api
    subject = "backup_retention.apply_retention"
    alerts.alert(severity="critical", kind="task_failed", subject=subject, catalog_conn=ops,
                 message=f"{subject} failed in run scheduled__test: RuntimeError: some backups could not be deleted")

    def shown() -> tuple[dict, list[dict]]:
        status, body = _get(f"{url}/wedsync-dr/api/status", token)
        assert status == 200
        data = json.loads(body)
        return data, [a for a in data["open_alerts"] if (a["kind"], a["subject"]) == ("task_failed", subject)]

    data, [alert] = shown()
    assert data["ok"] is False and any("open critical alert" in p for p in data["problems"])
    assert alert["severity"] == "critical" and alert["age_hours"] < 1
    page = _get(f"{url}/wedsync-dr/", token)[1].decode()
    assert "attention needed" in page and "some backups could not be deleted" in page
    ack = f"{url}/wedsync-dr/api/alerts/{alert['alert_id']}/acknowledge"
    assert http_json("POST", ack)[0] == 401
    status, body = http_json("POST", ack, token=token)
    assert status == 200 and alert["alert_id"] in body["acknowledged"] and body["by"] == "admin"
    assert shown()[1] == []


def test_backup_verify_is_triggered_and_answered_over_rest(api, ops):
    url, token = api
    deadline = time.monotonic() + 120
    while http_json("GET", f"{url}/api/v2/dags/backup_verify", token=token)[0] != 200:
        assert time.monotonic() < deadline, "backup_verify was not parsed"
        time.sleep(2)
    assert http_json("PATCH", f"{url}/api/v2/dags/backup_verify", {"is_paused": False}, token)[0] == 200
    trigger = f"{url}/api/v2/dags/backup_verify/dagRuns"
    refused, _ = http_json("POST", trigger, {"logical_date": None, "conf": {"data_class": "vendor_data",
                                                                           "sample": 0}}, token)
    assert refused == 400  # typed Params: a sample of nothing never becomes a run
    earlier = "backup_verify.verify_in_aws"  # a failure before this run: its success must clear the alert
    alerts.alert(severity="critical", kind="task_failed", subject=earlier, catalog_conn=ops,
                 message=f"{earlier} failed in run manual__earlier: RuntimeError: 1 problems in aws")
    conf = {"data_class": "vendor_data", "backup_id": "latest", "cloud": "all", "sample": 0.5, "seed": 3}
    status, run = http_json("POST", trigger, {"logical_date": None, "conf": conf}, token)
    assert status == 200, run
    deadline = time.monotonic() + 300
    while (state := http_json("GET", f"{trigger}/{run['dag_run_id']}", token=token)[1].get("state")) not in (
            "success", "failed"):
        assert time.monotonic() < deadline, state
        time.sleep(2)
    assert state == "success"
    status, body = _get(f"{url}/wedsync-dr/api/verifications?run_id={urllib.parse.quote(run['dag_run_id'])}",
                        token)
    assert status == 200
    verdicts = json.loads(body)
    assert sorted(v["cloud"] for v in verdicts) == sorted(POLICY.cloud_names)
    assert all(v["ok"] and v["backup_id"] == _newest(ops, "vendor_data")["backup_id"] and v["seed"] == 3
               for v in verdicts), verdicts
    data = json.loads(_get(f"{url}/wedsync-dr/api/status", token)[1])
    assert not [a for a in data["open_alerts"] if a["subject"] == earlier]  # Airflow's metadata: it succeeded since
