"""wedsync-dr's Airflow plugin (loaded by the API server).

- The status app, mounted at `/wedsync-dr`: `GET /wedsync-dr/api/status` (JSON), `GET /wedsync-dr/`
  (a page, linked in the Airflow UI's navigation) and `GET /wedsync-dr/metrics` (Prometheus text format,
  computed from the catalog at scrape time: wedsync_dr.metrics). Plugin endpoints are NOT protected by Airflow
  automatically: every route here (the OpenAPI schema included; FastAPI's /docs and /redoc are off) depends
  on Airflow's own `requires_authenticated()` (a JWT bearer token, or the UI's session cookie): API clients
  get 401 exactly when Airflow's API would, a browser without a session is redirected to the login.
- `TriggerConfGuard`, a root middleware: a trigger of `emergency_backup` or `restore` whose conf would
  fail the DAG's first task (its Params, then the same check that task runs: rules that span fields,
  unknown keys, ...) is answered HTTP 400 before a run exists -- from a REST client's bearer token and from
  the UI's Trigger form (its `_token` session cookie) alike. The caller is identified first, with
  Airflow's own rules: no credentials, or a token/cookie that does not verify, is answered 401 (a bad
  bearer token with `WWW-Authenticate: Bearer error="invalid_token"`, RFC 6750 s.3.1, where Airflow would
  say 403), and a caller who may not trigger the DAG gets 403: the guard never tells a caller who cannot
  trigger anything about the request.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from functools import partial
from typing import Any

from airflow.plugins_manager import AirflowPlugin

# Every run the UI or REST creates is a POST here: Airflow 3.3's Trigger form calls this public endpoint
# with the `_token` cookie. (Backfills, the other way, refuse DAGs without a schedule, as these two are.)
_TRIGGER_PATH = re.compile(r"^/api/v2/dags/(?P<dag_id>[^/]+)/dagRuns/?$")
GUARDED_DAG_IDS = frozenset({"emergency_backup", "restore"})


MAX_TRIGGER_BODY = 1 << 20


async def _answer(send, status: int, detail: str, extra_headers: list) -> None:
    payload = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()), *extra_headers]})
    await send({"type": "http.response.body", "body": payload})


class TriggerConfGuard:
    """Pure ASGI middleware: reads the body once, replays it to Airflow when it passes."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        dag_id = self._guarded_dag_id(scope)
        if dag_id is None:
            await self.app(scope, receive, send)
            return
        chunks, more, size = [], True, 0
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > MAX_TRIGGER_BODY:  # a trigger's conf is a few hundred bytes: refuse before buffering more
                await _answer(send, 413, f"a trigger body is at most {MAX_TRIGGER_BODY} bytes", [])
                return
        body = b"".join(chunks)

        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        problem = await self._problem(scope, dag_id, body)
        if problem is None:
            await self.app(scope, replay, send)
            return
        await _answer(send, *problem)

    @staticmethod
    def _guarded_dag_id(scope) -> str | None:
        """The DAG a request triggers, when it is one of ours; None for anything else."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        path, root = scope["path"], scope.get("root_path") or ""
        if root and path.startswith(root):  # as Starlette's router sees it, below a base_url's sub-path
            path = path[len(root):]
        match = _TRIGGER_PATH.match(path)
        return match["dag_id"] if match and match["dag_id"] in GUARDED_DAG_IDS else None

    @staticmethod
    def checks() -> dict[str, tuple[dict[str, Any], Callable[[dict[str, Any]], Any]]]:
        """Per guarded DAG: its Params as the DAG file builds them, and the check its first task runs on them."""
        from wedsync_dr import emergency
        from wedsync_dr.policy import load_policy
        from wedsync_dr.requests import check_request
        from wedsync_dr.wiring.emergency import emergency_params
        from wedsync_dr.wiring.restore import restore_params

        policy = load_policy()
        return {emergency.DAG_ID: (emergency_params(policy), partial(emergency.validate_conf, policy)),
                "restore": (restore_params(policy), partial(check_request, policy))}

    @staticmethod
    def run_params(dag_params: dict[str, Any], conf: dict[str, Any]) -> dict[str, Any]:
        """The params a run with this conf hands its tasks (the task runner's `process_params`)."""
        from airflow.configuration import conf as airflow_conf
        from airflow.sdk.definitions.param import ParamsDict

        params = ParamsDict(copy.deepcopy(dag_params))
        if airflow_conf.getboolean("core", "dag_run_conf_overrides_params") and conf:
            params.update(conf)
        return params.validate()

    @classmethod
    async def _problem(cls, scope, dag_id: str, body: bytes) -> tuple[int, str, list] | None:
        """(status, detail, headers) to answer instead of Airflow, or None to let Airflow handle it."""
        from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
        from airflow.api_fastapi.core_api.security import bearer_scheme, get_user, requires_access_dag
        from airflow.sdk.exceptions import ParamValidationError
        from fastapi import HTTPException
        from starlette.concurrency import run_in_threadpool
        from starlette.requests import Request

        from wedsync_dr.requests import InvalidRequest

        request = Request(scope)
        bearer = await bearer_scheme(request)
        try:  # Airflow's own resolution: a bearer header wins over the cookie; a refreshed session counts
            user = await get_user(request, None, bearer)
        except HTTPException as err:  # none, undecodable, forged, expired, revoked: not authenticated
            challenge = [(b"www-authenticate", b'Bearer error="invalid_token"')] if bearer else []
            return 401, err.detail, challenge
        try:  # a DB look-up (the DAG's team): off the event loop
            await run_in_threadpool(requires_access_dag("POST", DagAccessEntity.RUN, param_dag_id=dag_id),
                                    request, user)
        except HTTPException as err:
            return err.status_code, err.detail, []
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            return None  # not JSON: Airflow's own validation answers (422)
        conf = payload.get("conf") if isinstance(payload, dict) else None
        if conf is not None and not isinstance(conf, dict):
            return None  # Airflow's own validation answers (422)
        dag_params, check = cls.checks()[dag_id]
        try:
            check(cls.run_params(dag_params, conf or {}))
        except (ParamValidationError, InvalidRequest) as err:
            return 400, str(err), []
        return None


def _status_app():
    """Every route, the OpenAPI schema included, depends on Airflow's `requires_authenticated()`.

    FastAPI's own /docs, /redoc and /openapi.json would bypass that dependency: /docs and /redoc are off,
    /openapi.json is served as an ordinary (authenticated) route.
    """
    import logging

    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import get_user, requires_access_dag, requires_authenticated
    from fastapi import Depends, FastAPI, HTTPException, Query
    from fastapi.exception_handlers import http_exception_handler
    from fastapi.responses import HTMLResponse, RedirectResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app = FastAPI(title="wedsync-dr", dependencies=[Depends(requires_authenticated())], docs_url=None,
                  redoc_url=None, openapi_url=None)

    def page_visit(request) -> bool:
        """A browser opening a page, not an API client: it is sent to the login rather than answered 401."""
        return (request.method in ("GET", "HEAD") and "authorization" not in request.headers
                and "text/html" in request.headers.get("accept", ""))

    @app.exception_handler(StarletteHTTPException)
    async def login_for_browsers(request, exc):
        if exc.status_code in (401, 403) and page_visit(request):
            from airflow.api_fastapi.app import get_auth_manager

            return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=307)
        return await http_exception_handler(request, exc)

    def task_successes(subjects: list[str]) -> dict:
        """Newest successful end of each `<dag_id>.<task_id>`, from Airflow's metadata DB (clears task_failed)."""
        from airflow.models.taskinstance import TaskInstance as TI
        from airflow.utils.session import create_session
        from sqlalchemy import func, select, tuple_

        pairs = [tuple(subject.split(".", 1)) for subject in subjects if "." in subject]
        try:
            with create_session() as session:
                rows = session.execute(
                    select(TI.dag_id, TI.task_id, func.max(TI.end_date))
                    .where(TI.state == "success", tuple_(TI.dag_id, TI.task_id).in_(pairs))
                    .group_by(TI.dag_id, TI.task_id)).all()
        except Exception:
            logging.getLogger(__name__).exception("cannot read task successes from the metadata DB")
            return {}
        return {f"{dag_id}.{task_id}": end for dag_id, task_id, end in rows if end}

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
                return status.collect(policy, conn, source, task_successes=task_successes)
            finally:
                if source is not None:
                    source.close()

    @app.get("/openapi.json", include_in_schema=False)
    def openapi_schema() -> dict:
        """This app's OpenAPI schema (Airflow's own /docs does not list plugin routes)."""
        return app.openapi()

    @app.get("/api/status")
    def status_json() -> dict:
        """Overall ok and why not; open alerts; per class the last attempt, the last good backup, age vs RPO,
        copies, last drill and verification; clouds; critical weddings vs RPO; recent emergency runs, restores,
        verifications."""
        return current_status()

    @app.get("/", response_class=HTMLResponse)
    def status_page() -> str:
        from wedsync_dr.status import render_html

        return render_html(current_status())

    @app.get("/metrics", response_class=Response)
    def prometheus_metrics():  # no return annotation: a locally imported type never resolves (see below)
        """Prometheus text format: per class and cloud, computed from the catalog now (wedsync_dr.metrics)."""
        from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4

        from wedsync_dr import catalog, metrics
        from wedsync_dr.policy import load_policy

        return Response(metrics.catalog_exposition(load_policy(), catalog.connect), media_type=CONTENT_TYPE_PLAIN_0_0_4)

    # Acknowledging turns the headline green: only who may run the operations DAGs (trigger backup_repair) may.
    @app.post("/api/alerts/{alert_id}/acknowledge", dependencies=[Depends(
        requires_access_dag("POST", DagAccessEntity.RUN, param_dag_id="backup_repair"))])
    # not `user: GetUserDep`: under `from __future__ import annotations` a locally imported type never resolves
    def acknowledge_alert(alert_id: int, user=Depends(get_user)) -> dict:  # noqa: B008 - FastAPI's idiom
        """Close an open alert (and the earlier ones of its kind and subject); a later alert opens it again."""
        from wedsync_dr import catalog, status

        with catalog.connect() as conn:
            closed = status.acknowledge(conn, alert_id, by=user.get_name())
        if closed is None:
            raise HTTPException(status_code=404, detail=f"no alert {alert_id}")
        return {"alert_id": alert_id, "acknowledged": closed, "by": user.get_name()}

    @app.get("/api/verifications")
    def verification_results(backup_id: str | None = None, data_class: str | None = None, cloud: str | None = None,
                             run_id: str | None = None, limit: int = Query(20, ge=1, le=500)) -> list[dict]:
        """Verdicts of backup_verify runs, newest first: per cloud ok, objects read, problems."""
        from wedsync_dr import catalog

        with catalog.connect() as conn:
            return catalog.verifications(conn, backup_id=backup_id, data_class=data_class, cloud=cloud,
                                         run_id=run_id, limit=limit)

    return app


class WedsyncDrPlugin(AirflowPlugin):
    name = "wedsync_dr"
    fastapi_apps = [{"app": _status_app(), "url_prefix": "/wedsync-dr", "name": "wedsync-dr status"}]
    external_views = [{"name": "Backup status", "href": "/wedsync-dr/", "destination": "nav",
                       "category": "browse", "url_route": "wedsync-dr-status"}]
    fastapi_root_middlewares = [
        {"middleware": TriggerConfGuard, "args": [], "kwargs": {}, "name": "wedsync-dr trigger conf guard"},
    ]
