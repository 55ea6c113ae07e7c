"""Emergency backups through the real Airflow REST API (api-server, scheduler, dag-processor, triggerer)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from tests.helpers import http_json as _request
from tests.helpers import wait_for_run
from wedsync_dr import backup, catalog
from wedsync_dr.policy import load_policy

POLICY = load_policy()


@pytest.fixture(scope="module")
def api(airflow_api):
    return airflow_api


def _trigger(api, conf: dict, dag_id: str = "emergency_backup", token: str | None = "use") -> tuple[int, dict]:
    url, default_token = api
    return _request("POST", f"{url}/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf},
                    default_token if token == "use" else token)


def _runs(api, dag_id: str = "emergency_backup") -> list[dict]:
    url, token = api
    status, body = _request("GET", f"{url}/api/v2/dags/{dag_id}/dagRuns?limit=100", token=token)
    assert status == 200, body
    return body["dag_runs"]


def _wait(api, run_id: str, dag_id: str = "emergency_backup", timeout: float = 420) -> dict:
    url, token = api
    return wait_for_run(url, token, dag_id, run_id, timeout)


def _task_states(api, run_id: str, dag_id: str = "emergency_backup") -> dict[str, str]:
    url, token = api
    status, body = _request("GET", f"{url}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=200",
                            token=token)
    return {ti["task_id"]: ti["state"] for ti in body["task_instances"]}


@pytest.mark.parametrize("conf", [
    {"scope": "all"},                                                            # no reason
    {"reason": "too short"},                                                     # < 10 characters
    {"reason": "vendor outage before the wedding", "scope": "classes", "data_classes": ["invoices"]},
    {"reason": "vendor outage before the wedding", "scope": "weddings"},         # no wedding_ids
    {"reason": "vendor outage before the wedding", "scope": "all", "wedding_ids": [1]},
    {"reason": "vendor outage before the wedding", "scope": "classes"},          # no data_classes
])
def test_invalid_conf_is_refused_with_400_and_no_run(api, conf):
    before = len(_runs(api))
    status, body = _trigger(api, conf)
    assert status == 400, body
    assert body.get("detail")
    assert len(_runs(api)) == before


def _trigger_from_the_ui(api, conf: dict, dag_id: str = "emergency_backup", cookie: str | None = None):
    """As the UI's Trigger form does it: the public endpoint, the `_token` session cookie, no bearer header."""
    url, token = api
    request = urllib.request.Request(f"{url}/api/v2/dags/{dag_id}/dagRuns", method="POST",
                                     data=json.dumps({"logical_date": None, "conf": conf}).encode(),
                                     headers={"Content-Type": "application/json", "Referer": f"{url}/dags/{dag_id}",
                                              "Cookie": f"_token={cookie or token}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


FORM = {"reason": "Venue system outage 3 days before the wedding", "scope": "all", "wedding_ids": None,
        "data_classes": None, "requested_by": None}  # the Trigger form posts every param, empty ones null


@pytest.mark.parametrize("conf", [
    {**FORM, "data_classes": ["vendor_data"]},  # scope `all` with classes chosen: once a run that paged on-call
    {**FORM, "reason": " " * 12},
    {**FORM, "reason": "\u200b" * 12},
    {**FORM, "scope": "weddings"},
])
def test_invalid_conf_from_the_ui_session_is_refused_with_400_and_no_run(api, conf):
    before = len(_runs(api))
    status, body = _trigger_from_the_ui(api, conf)
    assert status == 400, body
    assert body.get("detail")
    assert len(_runs(api)) == before


def _restore_dag_is_parsed(api) -> None:
    url, token = api
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if _request("GET", f"{url}/api/v2/dags/restore", token=token)[0] == 200:
            return
        time.sleep(2)
    pytest.fail("the restore DAG was not parsed in time")


@pytest.mark.parametrize("how", ["bearer", "cookie"])
@pytest.mark.parametrize("conf", [
    {"data_class": "vendor_data", "target": "in_place"},                # no confirmation
    {"data_class": "client_data", "tagret": "restored_clients"},         # a typo'd key
    {"data_class": "assets", "target": "x"},                             # relative: the worker's cwd
    {"data_class": "client_data", "backup_id": "client_data-20261120T180000Z-ab12",
     "point_in_time": "2026-11-20T18:00:00Z"},
])
def test_an_invalid_restore_is_refused_with_400_and_no_run(api, how, conf):
    _restore_dag_is_parsed(api)
    before = len(_runs(api, "restore"))
    status, body = (_trigger(api, conf, dag_id="restore") if how == "bearer"
                    else _trigger_from_the_ui(api, conf, dag_id="restore"))
    assert status == 400, body
    assert body.get("detail")
    assert len(_runs(api, "restore")) == before


def test_a_forged_session_cookie_is_401_before_any_conf_check(api):
    before = len(_runs(api))
    status, body = _trigger_from_the_ui(api, {"scope": "all"}, cookie=api[1][:-8] + "AAAAAAAA")
    assert status == 401, body
    assert "reason" not in json.dumps(body)
    assert len(_runs(api)) == before


def test_a_valid_trigger_from_the_ui_session_runs(api):
    status, run = _trigger_from_the_ui(api, {**FORM, "reason": "Venue reports a failing disk: wedding 1 now",
                                             "scope": "weddings", "wedding_ids": [1]})
    assert status == 200, run
    assert run["conf"]["wedding_ids"] == [1]
    assert _wait(api, run["dag_run_id"])["state"] == "success", _task_states(api, run["dag_run_id"])


def test_no_token_or_a_bad_token_is_refused(api):
    status, _ = _trigger(api, {"reason": "vendor outage before the wedding"}, token=None)
    assert status == 401
    before = len(_runs(api))
    for bad in ("not.a.jwt", api[1][:-8] + "AAAAAAAA"):  # garbage, and a real token with a forged signature
        url, _ = api
        request = urllib.request.Request(f"{url}/api/v2/dags/emergency_backup/dagRuns", method="POST",
                                         data=json.dumps({"logical_date": None, "conf": {
                                             "reason": "vendor outage before the wedding"}}).encode(),
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": f"Bearer {bad}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 401
        assert refused.value.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert len(_runs(api)) == before


def test_a_valid_trigger_backs_up_to_every_cloud(api, stack):
    status, run = _trigger(api, {"reason": "Suspected breach at a vendor: snapshot now", "scope": "classes",
                                 "data_classes": ["vendor_data"], "requested_by": "pytest"})
    assert status == 200, run
    finished = _wait(api, run["dag_run_id"])
    assert finished["state"] == "success", _task_states(api, run["dag_run_id"])
    with catalog.connect() as conn:
        row = conn.execute("SELECT status, reason, requested_by, classes, clouds, backup_ids "
                           "FROM backup_catalog.emergency_runs WHERE run_id = %s", (run["dag_run_id"],)).fetchone()
        assert row[:4] == ("succeeded", "Suspected breach at a vendor: snapshot now", "pytest", ["vendor_data"])
        assert row[4] == ["aws", "azure", "gcp"]
        record = catalog.backup(conn, row[5][0])
    assert record["labels"] == ["emergency"] and record["status"] == "validated"
    for cloud, store in backup.stores(POLICY).items():
        assert store.head(f"{record['prefix']}/manifest.json") is not None, cloud


def test_unknown_wedding_ids_fail_fast_naming_them(api):
    status, run = _trigger(api, {"reason": "Venue reports data loss for these weddings", "scope": "weddings",
                                 "wedding_ids": [1, 987654]})
    assert status == 200, run
    finished = _wait(api, run["dag_run_id"], timeout=180)
    assert finished["state"] == "failed"
    states = _task_states(api, run["dag_run_id"])
    assert states["check_request"] == "failed"
    assert all(state in ("upstream_failed", "skipped", None) for task, state in states.items()
               if task.endswith(".extract"))
    with catalog.connect() as conn:
        refusals = [a for a in catalog.alerts(conn, kind="task_failed")
                    if run["dag_run_id"] in a["message"] and "unknown wedding ids: 987654" in a["message"]]
    assert refusals, "no alert names the unknown wedding"
    assert {(a["subject"], a["severity"]) for a in refusals} == {("emergency_backup.check_request", "warning")}


def test_a_second_trigger_for_a_covered_scope_is_coalesced(api):
    _, first = _trigger(api, {"reason": "Region outage: protect everything now", "scope": "all"})
    time.sleep(3)
    _, second = _trigger(api, {"reason": "Vendor outage, same incident", "scope": "classes",
                               "data_classes": ["vendor_data"]})
    second_done = _wait(api, second["dag_run_id"])
    first_done = _wait(api, first["dag_run_id"])
    assert first_done["state"] == "success", _task_states(api, first["dag_run_id"])
    assert second_done["state"] == "success"
    states = _task_states(api, second["dag_run_id"])
    assert states["check_request"] == "skipped"
    assert all(s == "skipped" for t, s in states.items() if t.endswith(".extract"))
    with catalog.connect() as conn:
        status, into = conn.execute("SELECT status, coalesced_into FROM backup_catalog.emergency_runs "
                                    "WHERE run_id = %s", (second["dag_run_id"],)).fetchone()
    assert (status, into) == ("coalesced", first["dag_run_id"])


def test_a_stale_critical_wedding_triggers_an_emergency_by_itself(api):
    with catalog.connect() as conn:  # every critical wedding's last backup is now 3 hours old (RPO 15 min)
        conn.execute("UPDATE backup_catalog.backups SET started_at = started_at - interval '3 hours' "
                     "WHERE data_class = 'critical_weddings'")
    before = {r["dag_run_id"] for r in _runs(api)}
    status, monitor = _trigger(api, {}, dag_id="backup_health")  # the monitor's routine run
    assert status == 200, monitor
    assert _wait(api, monitor["dag_run_id"], dag_id="backup_health", timeout=240)["state"] == "success"
    new = [r for r in _runs(api) if r["dag_run_id"] not in before]
    assert len(new) == 1, new
    assert new[0]["conf"]["reason"].startswith("automatic:")
    assert new[0]["conf"]["requested_by"] == "backup_health" and new[0]["conf"]["scope"] == "weddings"
    assert _wait(api, new[0]["dag_run_id"])["state"] == "success"
