"""The trigger guard (plugins/wedsync_dr_plugin.py) in front of a stand-in for Airflow's trigger endpoint.

Real parts: Airflow's SimpleAuthManager signing and verifying the JWTs, Airflow's own `get_user` (bearer
header, `_token` cookie) and `requires_access_dag`, Airflow's JWTRefreshMiddleware outside the guard (as
the api-server stacks them). Patched: only the two metadata-DB look-ups (revoked tokens, a DAG's team).
The stand-in endpoint records every request that reaches it: a request that reaches it would create a run.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from fastapi import Request  # at module level: the stand-in endpoint's annotation is resolved from here

PLUGIN = Path(__file__).resolve().parents[2] / "plugins" / "wedsync_dr_plugin.py"
REASON = "Venue system outage 3 days before the wedding"
EMERGENCY_FORM = {"reason": REASON, "scope": "all", "wedding_ids": None, "data_classes": None,
                  "requested_by": None}  # what the UI's Trigger form posts: every param, empty ones null
RESTORE_FORM = {"data_class": "critical_weddings", "backup_id": "latest", "point_in_time": None, "wedding_id": None,
                "target": None, "confirm": None, "source_cloud": "auto", "dry_run": False}


@pytest.fixture(scope="module")
def plugin():
    spec = importlib.util.spec_from_file_location("wedsync_dr_plugin_guard_under_test", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def api(plugin, monkeypatch):
    """(client, tokens by role, the requests that reached Airflow's endpoint)."""
    from airflow.api_fastapi import app as airflow_app
    from airflow.api_fastapi.auth.managers.base_auth_manager import BaseAuthManager
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.api_fastapi.auth.middlewares.refresh_token import JWTRefreshMiddleware
    from airflow.models import DagModel
    from airflow.models.revoked_token import RevokedToken
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    # Airflow caches its JWT signer and validator per process: an earlier test of the session may have built
    # them from another secret. Start from this test's secret, and leave none of it behind.
    caches = (BaseAuthManager._get_token_signer.__func__, BaseAuthManager._get_token_validator.__func__)
    for cached in caches:
        cached.cache_clear()
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "unit-test-" * 7)
    manager = SimpleAuthManager()
    monkeypatch.setattr(airflow_app._AuthManagerState, "instance", manager)
    monkeypatch.setattr(RevokedToken, "is_revoked", classmethod(lambda cls, jti, **_: False))
    monkeypatch.setattr(DagModel, "get_team_name", staticmethod(lambda dag_id, **_: None))
    reached = []
    root = FastAPI()

    @root.post("/api/v2/dags/{dag_id}/dagRuns")
    async def trigger(dag_id: str, request: Request) -> dict:
        reached.append((dag_id, await request.json()))
        return {"dag_run_id": f"manual__{len(reached)}"}

    root.add_middleware(plugin.TriggerConfGuard)
    root.add_middleware(JWTRefreshMiddleware)  # outside the guard, as in the api-server
    tokens = {role: manager.generate_jwt(SimpleAuthManagerUser(username=role, role=role))
              for role in ("admin", "viewer")}
    yield TestClient(root), tokens, reached
    for cached in caches:
        cached.cache_clear()


def _post(client, dag_id: str, conf, *, bearer: str | None = None, cookie: str | None = None, path: str = ""):
    headers = {}
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    if cookie is not None:
        headers["Cookie"] = f"_token={cookie}"
    return client.post(path or f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf},
                       headers=headers)


def _assert_refused_before_airflow(api, dag_id: str, conf, how: str, message: str) -> None:
    """HTTP 400 naming the problem, and nothing reached Airflow's endpoint: no run would exist."""
    client, tokens, reached = api
    response = _post(client, dag_id, conf, **_credentials(tokens, how))
    assert response.status_code == 400, response.text
    assert message in response.json()["detail"]
    assert reached == []


def _credentials(tokens, how: str) -> dict:
    return {"bearer": tokens["admin"]} if how == "bearer" else {"cookie": tokens["admin"]}


@pytest.mark.parametrize("how", ["bearer", "cookie"])
@pytest.mark.parametrize(("conf", "message"), [
    ({**EMERGENCY_FORM, "data_classes": ["vendor_data"]}, "only allowed when scope is 'classes'"),  # the form's
    ({**EMERGENCY_FORM, "scope": "weddings"}, "wedding_ids"),
    ({**EMERGENCY_FORM, "reason": " " * 12}, "whitespace and invisible"),
    ({**EMERGENCY_FORM, "reason": "\u200b" * 12}, "whitespace and invisible"),
    ({**EMERGENCY_FORM, "reason": "\u200b\u00a0\u2060\ufeff" * 4}, "whitespace and invisible"),
    ({**EMERGENCY_FORM, "scope": "classes", "data_classes": ["invoices"]}, "param data_classes"),
    ({"scope": "all"}, "param reason"),
    ({**EMERGENCY_FORM, "priority": "high"}, "Additional properties"),
])
def test_an_invalid_emergency_conf_is_400_and_never_reaches_airflow(api, how, conf, message):
    _assert_refused_before_airflow(api, "emergency_backup", conf, how, message)


@pytest.mark.parametrize("how", ["bearer", "cookie"])
@pytest.mark.parametrize(("conf", "message"), [
    ({**RESTORE_FORM, "typo_target": "in_place"}, "unknown restore option"),
    ({**RESTORE_FORM, "backup_id": "vendor_data-20261120T180000Z-ab12", "point_in_time": "2026-11-20T18:00:00Z"},
     "not both"),
    ({**RESTORE_FORM, "data_class": "vendor_data", "target": "in_place"}, "RESTORE vendor_data"),
    ({**RESTORE_FORM, "data_class": "assets", "target": "x"}, "absolute directory"),
    ({"data_class": "assets", "target": "restored/assets"}, "param target"),  # per field: Airflow's Param says no
    ({**RESTORE_FORM, "data_class": "client_data", "target": "/srv/x"}, "only for the assets"),
    ({**RESTORE_FORM, "data_class": "invoices"}, "param data_class"),
    ({**RESTORE_FORM, "target": "Robert'); DROP TABLE"}, "param target"),
])
def test_an_invalid_restore_conf_is_400_and_never_reaches_airflow(api, how, conf, message):
    _assert_refused_before_airflow(api, "restore", conf, how, message)


@pytest.mark.parametrize("how", ["bearer", "cookie"])
@pytest.mark.parametrize(("dag_id", "conf"), [
    ("emergency_backup", EMERGENCY_FORM),
    ("emergency_backup", {"reason": "DB is down"}),  # REST: only what differs from the defaults
    ("emergency_backup", {**EMERGENCY_FORM, "scope": "classes", "data_classes": ["critical_weddings", "assets"]}),
    ("emergency_backup", {**EMERGENCY_FORM, "scope": "weddings", "wedding_ids": [42]}),
    ("restore", RESTORE_FORM),  # the form with its defaults: a new schema from the latest backup
    ("restore", {}),
    ("restore", {**RESTORE_FORM, "data_class": "assets", "target": "/srv/restores/assets"}),
    ("restore", {**RESTORE_FORM, "data_class": "vendor_data", "target": "in_place", "confirm": "RESTORE vendor_data"}),
])
def test_a_valid_conf_reaches_airflow_unchanged(api, how, dag_id, conf):
    client, tokens, reached = api
    response = _post(client, dag_id, conf, **_credentials(tokens, how))
    assert response.status_code == 200, response.text
    assert reached == [(dag_id, {"logical_date": None, "conf": conf})]  # the body is replayed as sent


@pytest.mark.parametrize("dag_id", ["emergency_backup", "restore"])
@pytest.mark.parametrize("credentials", [
    {},
    {"cookie": "expired-or-forged"},
    {"bearer": "not.a.jwt"},
])
def test_an_unauthenticated_caller_gets_401_before_any_conf_check(api, dag_id, credentials):
    client, _, reached = api
    response = _post(client, dag_id, {"no": "such option"}, **credentials)  # invalid: would be 400 if checked
    assert response.status_code == 401, response.text
    assert "option" not in response.text and "param" not in response.text
    assert ("www-authenticate" in response.headers) == ("bearer" in credentials)
    assert reached == []


def test_a_forged_bearer_token_is_401_even_beside_a_valid_cookie(api):
    """Airflow's rule: an explicit bearer credential wins over the ambient session cookie."""
    client, tokens, reached = api
    forged = tokens["admin"][:-8] + "AAAAAAAA"
    response = _post(client, "emergency_backup", EMERGENCY_FORM, bearer=forged, cookie=tokens["admin"])
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert reached == []


@pytest.mark.parametrize("how", ["bearer", "cookie"])
def test_a_caller_who_may_not_trigger_gets_403_before_any_conf_check(api, how):
    client, tokens, reached = api
    credentials = {"bearer": tokens["viewer"]} if how == "bearer" else {"cookie": tokens["viewer"]}
    response = _post(client, "restore", {"no": "such option"}, **credentials)
    assert response.status_code == 403, response.text
    assert "option" not in response.text
    assert reached == []


@pytest.mark.parametrize("path", ["/api/v2/dags/restore/dagRuns/", "/airflow/api/v2/dags/restore/dagRuns"])
def test_the_trigger_path_is_guarded_with_a_trailing_slash_and_below_a_base_url_path(plugin, path):
    scope = {"type": "http", "method": "POST", "path": path, "root_path": "/airflow" * path.startswith("/airflow")}
    assert plugin.TriggerConfGuard._guarded_dag_id(scope) == "restore"


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/api/v2/dags/backup_health/dagRuns"),  # not one of ours
    ("GET", "/api/v2/dags/restore/dagRuns"),  # listing runs
    ("POST", "/api/v2/dags/~/dagRuns/list"),
    ("POST", "/api/v2/dags/restore/dagRuns/manual__1/clear"),  # re-runs a run whose conf was checked
])
def test_other_requests_pass_untouched(plugin, method, path):
    assert plugin.TriggerConfGuard._guarded_dag_id({"type": "http", "method": method, "path": path}) is None


def test_other_dags_are_not_checked(api):
    client, tokens, reached = api
    response = _post(client, "backup_health", {"anything": "goes"}, bearer=tokens["admin"])
    assert response.status_code == 200
    assert reached == [("backup_health", {"logical_date": None, "conf": {"anything": "goes"}})]


def test_an_oversized_trigger_body_is_refused_without_reaching_airflow(api):
    client, tokens, reached = api
    conf = {"reason": REASON, "padding": "x" * (2 << 20)}
    response = _post(client, "emergency_backup", conf, bearer=tokens["admin"])
    assert response.status_code == 413 and reached == []
