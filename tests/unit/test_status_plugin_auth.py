"""The status plugin's routes without credentials: nothing is served, browsers go to Airflow's login.

The plugin's app runs here under a bare FastAPI root (no API server); the authenticated side is covered
against a real api-server in tests/integration/test_ops.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

PLUGIN = Path(__file__).resolve().parents[2] / "plugins" / "wedsync_dr_plugin.py"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.fixture(scope="module")
def status_app():
    from airflow.api_fastapi.app import create_auth_manager

    create_auth_manager()  # the configured one (SimpleAuthManager), as the api-server creates it
    spec = importlib.util.spec_from_file_location("wedsync_dr_plugin_under_test", PLUGIN)
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    return plugin._status_app()


@pytest.fixture(scope="module")
def client(status_app):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    root = FastAPI()
    root.mount("/wedsync-dr", status_app)  # where Airflow mounts it (fastapi_apps url_prefix)
    return TestClient(root, follow_redirects=False)


def test_the_schema_lists_the_routes_and_asks_for_nothing_but_their_own_parameters(status_app):
    paths = status_app.openapi()["paths"]  # what /openapi.json serves (to authenticated callers)
    assert set(paths) == {"/", "/api/status", "/api/verifications", "/api/alerts/{alert_id}/acknowledge", "/metrics"}
    acknowledge = paths["/api/alerts/{alert_id}/acknowledge"]["post"]
    assert [p["name"] for p in acknowledge["parameters"]] == ["alert_id"]  # the user comes from the token
    assert {p["name"] for p in paths["/api/verifications"]["get"]["parameters"]} == {
        "backup_id", "data_class", "cloud", "run_id", "limit"}


@pytest.mark.parametrize("path", ["/", "/api/status", "/api/verifications", "/metrics", "/openapi.json", "/docs",
                                  "/redoc", "/docs/oauth2-redirect"])
def test_no_route_answers_without_credentials(client, path):
    response = client.get(f"/wedsync-dr{path}", headers={"Accept": "application/json"})
    assert response.status_code in (401, 404), (path, response.status_code)
    assert response.status_code == 401 or path.startswith(("/docs", "/redoc")), path


def test_acknowledging_an_alert_needs_credentials(client):
    assert client.post("/wedsync-dr/api/alerts/1/acknowledge").status_code == 401


@pytest.mark.parametrize("cookies", [{}, {"_token": "expired-or-forged"}])
def test_a_browser_without_a_session_is_sent_to_the_login_and_back(client, cookies):
    client.cookies.clear()
    for name, value in cookies.items():
        client.cookies.set(name, value)
    response = client.get("/wedsync-dr/", headers={"Accept": BROWSER_ACCEPT})
    client.cookies.clear()
    assert response.status_code in (302, 307)
    location = urlsplit(response.headers["location"])
    assert location.path.endswith("/auth/login")  # SimpleAuthManager's login page
    assert parse_qs(location.query)["next"] == ["http://testserver/wedsync-dr/"]


def test_api_clients_still_get_401_and_a_bad_token_is_not_redirected(client):
    assert client.get("/wedsync-dr/api/status").status_code == 401  # no Accept: text/html
    forged = client.get("/wedsync-dr/", headers={"Accept": BROWSER_ACCEPT, "Authorization": "Bearer forged"})
    assert forged.status_code in (401, 403)  # Airflow's own answer to a token that does not verify


def test_a_viewer_may_read_the_status_but_not_acknowledge_alerts(client, monkeypatch):
    """Acknowledging turns the headline green: it needs the right to run the operations DAGs."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.base_auth_manager import BaseAuthManager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.models import DagModel
    from airflow.models.revoked_token import RevokedToken

    caches = (BaseAuthManager._get_token_signer.__func__, BaseAuthManager._get_token_validator.__func__)
    for cached in caches:  # sign and verify with this process's current secret
        cached.cache_clear()
    monkeypatch.setattr(RevokedToken, "is_revoked", classmethod(lambda cls, jti, **_: False))
    monkeypatch.setattr(DagModel, "get_team_name", staticmethod(lambda dag_id, **_: None))
    try:
        token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="viewer", role="viewer"))
        response = client.post("/wedsync-dr/api/alerts/1/acknowledge", headers={"Authorization": f"Bearer {token}"})
    finally:
        for cached in caches:
            cached.cache_clear()
    assert response.status_code == 403, response.text
