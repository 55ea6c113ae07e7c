"""wedsync-dr's Airflow plugin (loaded by the API server).

- The status app, mounted at `/wedsync-dr`: `GET /wedsync-dr/api/status` (JSON) and `GET /wedsync-dr/`
  (a page, linked in the Airflow UI's navigation). Plugin endpoints are NOT protected by Airflow
  automatically: every route here depends on Airflow's own `requires_authenticated()` (a JWT bearer token,
  or the UI's session cookie), so they answer 401 exactly when Airflow's API would.
- `EmergencyConfGuard`, a root middleware: a trigger of `emergency_backup` whose conf breaks a rule that
  spans fields (scope vs. wedding_ids / data_classes) is answered HTTP 400 before a run exists. Per-field
  rules are Airflow's own Param validation (also 400). A request without credentials passes through
  untouched (Airflow answers 401); one whose bearer token does not verify is answered 401 with
  `WWW-Authenticate: Bearer error="invalid_token"` (RFC 6750 s.3.1) where Airflow would say 403, so the
  emergency endpoint tells "who are you?" (401) from "you may not" (403). Either way, before any conf
  check: the guard never tells an unauthenticated caller anything about the request.
"""

from __future__ import annotations

import json
import re

from airflow.plugins_manager import AirflowPlugin

_TRIGGER_PATH = re.compile(r"^/api/v2/dags/emergency_backup/dagRuns/?$")


class EmergencyConfGuard:
    """Pure ASGI middleware: reads the body once, replays it to Airflow when it passes."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not _TRIGGER_PATH.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)

        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        problem = await self._problem(scope, body)
        if problem is None:
            await self.app(scope, replay, send)
            return
        status, detail, extra_headers = problem
        payload = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode()), *extra_headers]})
        await send({"type": "http.response.body", "body": payload})

    @staticmethod
    async def _problem(scope, body: bytes) -> tuple[int, str, list] | None:
        """(status, detail, headers) to answer instead of Airflow, or None to let Airflow handle it."""
        headers = dict(scope.get("headers") or [])
        authorization = headers.get(b"authorization", b"").decode()
        if not authorization.lower().startswith("bearer "):
            return None  # Airflow will say 401 (or use its cookie session)
        try:
            from airflow.api_fastapi.app import get_auth_manager

            await get_auth_manager().get_user_from_token(authorization.split(" ", 1)[1])
        except Exception:  # noqa: BLE001 - undecodable, forged, expired: the caller is not authenticated
            return 401, "Invalid JWT token", [(b"www-authenticate", b'Bearer error="invalid_token"')]
        try:
            conf = (json.loads(body or b"{}") or {}).get("conf") or {}
        except (ValueError, AttributeError):
            return None  # not JSON: Airflow's own validation answers
        if not isinstance(conf, dict):
            return None
        from wedsync_dr.emergency import EmergencyRequestError, validate_conf
        from wedsync_dr.policy import load_policy

        try:
            validate_conf(load_policy(), conf)
        except EmergencyRequestError as err:
            return 400, str(err), []
        return None


def _status_app():
    from airflow.api_fastapi.core_api.security import requires_authenticated
    from fastapi import Depends, FastAPI
    from fastapi.responses import HTMLResponse

    app = FastAPI(title="wedsync-dr status", dependencies=[Depends(requires_authenticated())])

    def current_status() -> dict:
        from wedsync_dr import catalog, status
        from wedsync_dr.policy import load_policy

        policy = load_policy()
        with catalog.connect() as conn:
            try:
                source = catalog.db_connector("wedsync_db")()
            except Exception:  # noqa: BLE001 - the page still shows the catalog when the source is down
                source = None
            try:
                return status.collect(policy, conn, source)
            finally:
                if source is not None:
                    source.close()

    @app.get("/api/status")
    def status_json() -> dict:
        """Per class: last backup, age vs RPO, copies, last drill; degraded backups; cloud health; weddings."""
        return current_status()

    @app.get("/", response_class=HTMLResponse)
    def status_page() -> str:
        from wedsync_dr.status import render_html

        return render_html(current_status())

    return app


class WedsyncDrPlugin(AirflowPlugin):
    name = "wedsync_dr"
    fastapi_apps = [{"app": _status_app(), "url_prefix": "/wedsync-dr", "name": "wedsync-dr status"}]
    external_views = [{"name": "Backup status", "href": "/wedsync-dr/", "destination": "nav",
                       "category": "browse", "url_route": "wedsync-dr-status"}]
    fastapi_root_middlewares = [
        {"middleware": EmergencyConfGuard, "args": [], "kwargs": {}, "name": "wedsync-dr emergency conf guard"},
    ]
