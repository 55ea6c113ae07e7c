"""Airflow wiring of the backup pipeline: the per-class DAG factory and the reusable task chain.

Imported by the DAG files and tests only (the rest of the library works without Airflow). Task bodies
are a few lines that call `wedsync_dr.backup`; everything they need from the policy is captured when
the DAG is built, so a DAG built from a modified policy (tests) runs with it. Nothing here touches a
connection, a Variable or a cloud at parse time.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pendulum
from airflow.sdk import Asset, TaskGroup, TriggerRule, dag, get_current_context, task

from wedsync_dr.policy import DataClass, Policy
from wedsync_dr.tags import Tag, class_tag

log = logging.getLogger(__name__)

OWNER = "wedsync-sre"
START_DATE = pendulum.datetime(2026, 1, 1, tz="UTC")


def default_args() -> dict[str, Any]:
    from wedsync_dr.alerts import on_task_failure

    return {
        "owner": OWNER,
        "retries": 2,
        "retry_delay": dt.timedelta(minutes=1),
        "retry_exponential_backoff": True,
        "max_retry_delay": dt.timedelta(minutes=30),
        "on_failure_callback": on_task_failure,
    }


def backup_asset(data_class: str) -> Asset:
    """Emitted when a backup of the class commits; drills and downstream consumers schedule on it."""
    return Asset(f"wedsync://backups/{data_class}")


def _skip(reason: str):
    from airflow.sdk.exceptions import AirflowSkipException

    return AirflowSkipException(reason)


def backup_pipeline(policy: Policy, data_class: DataClass, *, request=None, labels: tuple[str, ...] = (),
                    pool: str | None = None, priority_weight: int | None = None, min_retention_days: int | None = None):
    """extract -> encrypt -> upload_to_<cloud> (one task per cloud) -> validate, with a staging teardown.

    `request` (an XComArg of a dict, optional) narrows the run: `classes` it must include this class to run
    (otherwise the chain skips), `wedding_ids`, `reason`, `requested_by`. Returns the validate task's output.
    """
    pool = pool or data_class.pool
    priority = priority_weight or data_class.priority_weight
    name = data_class.name
    common = {"pool": pool, "priority_weight": priority}

    @task(task_id="extract", **common)
    def extract_step(request: dict | None = None) -> dict:
        """Read the class's rows (or files) from one consistent snapshot into compressed staging files."""
        from wedsync_dr import backup, catalog, crypto

        if request is not None and name not in request.get("classes", []):
            raise _skip(f"{name} is not in this run's scope")
        context = get_current_context()
        request = request or {}
        # assets name their blobs by keyed content ids: the key ring's dedup key (fail closed without it)
        key_ring = crypto.KeyRing.from_connection(policy.key_ring_conn_id) if data_class.kind == "assets" else None
        with catalog.connect() as catalog_conn:
            # first, what killed runs of this class left (their plaintext above all); never this run's own
            sweep_abandoned_backups(policy, catalog_conn, data_classes=[name], must_succeed=False)
            return backup.run_extract(
                policy, data_class, connect=catalog.db_connector("wedsync_db"), catalog_conn=catalog_conn,
                key_ring=key_ring,
                wedding_ids=request.get("wedding_ids") if data_class.kind == "wedding_bundles" else None,
                labels=labels, reason=request.get("reason"), requested_by=request.get("requested_by"),
                dag_id=context["dag"].dag_id, run_id=context["run_id"], min_retention_days=min_retention_days or 0)

    @task(task_id="encrypt", **common)
    def encrypt_step(summary: dict) -> dict:
        """Encrypt each staged object with its own data key; plaintext staging files are deleted."""
        from wedsync_dr import backup, crypto

        return backup.run_encrypt(policy, summary, crypto.KeyRing.from_connection(policy.key_ring_conn_id))

    extract_output = extract_step(request)
    encrypt_summary = encrypt_step(extract_output)

    upload_tasks = []
    for cloud in policy.clouds:
        @task(task_id=f"upload_to_{cloud.name}", retries=policy.upload_retries,
              retry_delay=dt.timedelta(seconds=policy.upload_retry_delay_seconds), retry_exponential_backoff=True,
              max_retry_delay=dt.timedelta(seconds=policy.upload_max_retry_delay_seconds), **common)
        def upload_step(summary: dict, cloud_name: str = cloud.name) -> dict:
            """Upload the encrypted objects to one cloud, prove the copy, commit once the quorum's copies are
            proven; retried alone, never blocking the others.

            A cloud the health monitor marked unhealthy is skipped at once rather than retried for minutes:
            the quorum decides whether the backup stands, and backup_repair copies it there on recovery.
            """
            from wedsync_dr import backup, catalog, health

            try:
                with catalog.db_connector("wedsync_catalog")() as conn:  # a read: no schema upkeep
                    unhealthy = health.unhealthy_reason(conn, cloud_name)
            except Exception as err:  # noqa: BLE001 - no health data is no reason to skip a copy
                log.warning("cloud health unknown (%s): uploading to %s anyway", err, cloud_name)
                unhealthy = None
            if unhealthy:
                raise _skip(f"{unhealthy}: not uploading; backup_repair copies this backup there on recovery")
            from wedsync_dr import crypto

            store = backup.stores(policy, [cloud_name])[cloud_name]
            sent = backup.run_upload(policy, cloud_name, summary, store)
            # prove this copy and commit the backup if it completes the quorum: a hung cloud is not waited for
            with catalog.connect() as conn:
                proven = backup.check_and_commit(policy, cloud_name, summary,
                                                 crypto.KeyRing.from_connection(policy.key_ring_conn_id), conn, store)
            return {**sent, **proven}

        upload_tasks.append(upload_step(encrypt_summary))

    @task(task_id="validate", trigger_rule=TriggerRule.ALL_DONE, outlets=[backup_asset(name)], retries=0, **common)
    def validate_step() -> dict:
        """Check every copy; write the manifest last where the copy is whole; enforce the quorum."""
        from wedsync_dr import backup, catalog, crypto

        ti = get_current_context()["ti"]
        summary = ti.xcom_pull(task_ids=_sibling("encrypt"))
        if summary is None:
            if ti.xcom_pull(task_ids=_sibling("extract")) is None:
                raise _skip("nothing was extracted in this run")
            raise RuntimeError("encrypt did not finish: nothing was uploaded, there is nothing to validate")
        results = {c.name: ti.xcom_pull(task_ids=_sibling(f"upload_to_{c.name}")) for c in policy.clouds}
        with catalog.connect() as catalog_conn:  # the summary carries the backup's lock and keep dates
            result = backup.run_validate(policy, summary, results,
                                         crypto.KeyRing.from_connection(policy.key_ring_conn_id), catalog_conn)
        log.info("backup %s: %s in %s", result["backup_id"], result["status"].upper(), ", ".join(result["clouds_ok"]))
        return result

    @task(task_id="cleanup_staging", trigger_rule=TriggerRule.ALL_DONE)
    def cleanup_step() -> None:
        """Remove the run's staging files, whatever happened (teardown)."""
        from wedsync_dr import backup

        extracted = get_current_context()["ti"].xcom_pull(task_ids=_sibling("extract"))
        if extracted:
            backup.cleanup(policy, extracted["backup_id"])

    validated = validate_step()
    upload_tasks >> validated
    cleanup = cleanup_step().as_teardown(setups=extract_output)
    validated >> cleanup
    return validated


def airflow_is_running(ti):
    """`(dag_id, run_id) -> bool`: whether Airflow has that run queued or running, asked through the Task SDK
    (works under `dag.test()` too). When Airflow cannot say, the run counts as running: the sweep then goes by
    the run-timeout horizon alone."""
    def is_running(dag_id: str | None, run_id: str | None) -> bool:
        if not dag_id or not run_id:
            return True
        try:
            return ti.get_dr_count(dag_id=dag_id, run_ids=[run_id], states=["queued", "running"]) > 0
        except Exception as err:  # noqa: BLE001 - no answer is no licence to delete
            log.warning("cannot ask Airflow whether %s/%s is running (%s): assuming it is", dag_id, run_id, err)
            return True

    return is_running


def sweep_abandoned_backups(policy: Policy, catalog_conn, *, data_classes: list[str] | None = None,
                            must_succeed: bool = True) -> dict | None:
    """Inside a task: remove what killed backup runs left (wedsync_dr.abandoned), never the current run's.

    With `must_succeed` (the ops DAGs' task), a backup that could not be cleaned up yet fails the task; the
    backups' own call (before extract) only logs: housekeeping must never cost a backup.
    """
    from wedsync_dr import abandoned, backup

    context = get_current_context()
    try:
        report = abandoned.sweep(policy, catalog_conn, backup.stores(policy), is_running=airflow_is_running(
            context["ti"]), data_classes=data_classes, current_run=(context["dag"].dag_id, context["run_id"]))
    except Exception:
        if must_succeed:
            raise
        log.exception("the abandoned-backup sweep failed: backing up anyway (backup_repair sweeps again)")
        return None
    if not report.ok:
        message = f"abandoned backups not cleaned up yet (the next sweep retries): {report.pending}"
        if must_succeed:
            raise RuntimeError(message)
        log.warning(message)
    return report.to_json()


def _sibling(task_id: str) -> str:
    """The id of a task of the same pipeline (pipelines may sit in a TaskGroup)."""
    ti = get_current_context()["ti"]
    return ti.task_id.rsplit(".", 1)[0] + "." + task_id if "." in ti.task_id else task_id


def class_pipeline_group(policy: Policy, data_class: DataClass, **kwargs):
    """The pipeline inside a TaskGroup named after the class (several classes in one DAG: emergency)."""
    with TaskGroup(group_id=data_class.name) as group:
        backup_pipeline(policy, data_class, **kwargs)
    return group


def build_backup_dag(policy: Policy, data_class: DataClass, doc_md: str):
    """One scheduled DAG per data class of the policy."""
    tags = [Tag.KIND_BACKUP, class_tag(data_class.name)]
    if data_class.kind == "wedding_bundles":
        tags.append(Tag.TIER_CRITICAL)

    @dag(
        dag_id=f"backup_{data_class.name}",
        description=data_class.description,
        schedule=data_class.schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        default_args=default_args(),
        tags=sorted(str(t) for t in tags),
        doc_md=doc_md.replace("{data_class}", data_class.name).replace("{description}", data_class.description),
        dagrun_timeout=dt.timedelta(hours=6),
    )
    def backup_dag():
        backup_pipeline(policy, data_class)

    return backup_dag()


def restore_params(policy: Policy) -> dict[str, Any]:
    """The restore DAG's trigger form: each Param is typed, titled and described."""
    from airflow.sdk import Param

    from wedsync_dr.requests import TARGET_PATTERN, classes_by_priority

    classes = classes_by_priority(policy)
    return {
        "data_class": Param(classes[0], type="string", enum=classes, title="Data class",
                            description="Which class of data to restore."),
        "backup_id": Param("latest", type="string", pattern=r"^(latest|[a-z_]+-\d{8}T\d{6}Z-[0-9a-f]+)$",
                           title="Backup id", description="`latest`, or an id from the catalog / `wedsync-dr list`."),
        "point_in_time": Param(None, type=["null", "string"], format="date-time", title="Point in time",
                               description="ISO 8601 (e.g. 2026-11-20T18:00:00Z): restore the newest backup taken "
                                           "at or before it. Leave empty for `backup_id`."),
        "wedding_id": Param(None, type=["null", "integer"], minimum=1, title="Wedding id",
                            description="Restore only this wedding (its bundle in critical_weddings, or its rows "
                                        "of the other classes)."),
        # Nullable, default None: the form makes a Param whose type excludes null required (Trigger stays off).
        "target": Param(None, type=["null", "string"], pattern=TARGET_PATTERN, title="Target",
                        description="Empty: a new schema restore_<class>_<timestamp>_<4 hex> (assets: a new "
                                    "directory). `in_place`: replace live tables (needs confirm). Or a schema "
                                    "name; for assets, an absolute directory (e.g. /srv/restores/assets)."),
        "confirm": Param(None, type=["null", "string"], title="Confirm in-place restore",
                         description="For in_place only: type exactly `RESTORE <data_class>`."),
        "source_cloud": Param("auto", type="string", enum=["auto", *policy.cloud_names], title="Source cloud",
                              description="Preferred cloud; others are tried when it fails."),
        "dry_run": Param(False, type="boolean", title="Dry run",
                         description="Resolve, download, verify and decrypt everything; write nothing."),
    }


def build_restore_dag(policy: Policy, doc_md: str):
    @dag(dag_id="restore", schedule=None, start_date=START_DATE, catchup=False, default_args=default_args(),
         params=restore_params(policy), tags=[str(Tag.KIND_RESTORE), str(Tag.PROJECT)], doc_md=doc_md,
         max_active_runs=4, render_template_as_native_obj=True)
    def restore_dag():
        @task(retries=0)
        def check_request() -> dict:
            """Reject impossible parameter combinations before anything is read or written.

            The API server's trigger guard ran the same check before the run existed; this is for runs
            created another way (`dags test`, a policy changed since).
            """
            from dataclasses import asdict

            from wedsync_dr.requests import check_request as check

            request = asdict(check(policy, dict(get_current_context()["params"])))
            request["point_in_time"] = request["point_in_time"] and request["point_in_time"].isoformat()
            return request

        @task(retries=2, pool=policy.emergency_pool, priority_weight=policy.emergency_priority_weight)
        def restore(request: dict) -> dict:
            """Resolve, stream, verify, load; swap in place only after verification."""
            from wedsync_dr import backup, catalog, crypto, health
            from wedsync_dr.requests import check_request as check
            from wedsync_dr.restore import run_restore

            checked = check(policy, request)
            report = run_restore(policy, checked, stores=backup.stores(policy),
                                 key_ring=crypto.KeyRing.from_connection(policy.key_ring_conn_id),
                                 db_connect=catalog.db_connector("wedsync_db_owner"),
                                 catalog_connect=lambda: catalog.connect(),
                                 healthy=health.healthy_clouds_if_known(
                                     policy, catalog.db_connector("wedsync_catalog")))
            try:
                with catalog.connect() as conn:
                    catalog.record_restore(conn, report.to_json(), run_id=get_current_context()["run_id"])
            except Exception as err:  # noqa: BLE001 - the restore happened; the report is in the log
                log.warning("restore report not recorded in the catalog: %s", err)
            return report.to_json()

        restore(check_request())

    return restore_dag()


def emergency_params(policy: Policy) -> dict[str, Any]:
    from airflow.sdk import Param

    from wedsync_dr.emergency import field_schemas

    schemas = field_schemas(policy)
    defaults = {"scope": "all", "wedding_ids": None, "data_classes": None, "requested_by": None}
    params = {}
    for name, schema in schemas.items():
        schema = dict(schema)
        title, description = schema.pop("title"), schema.pop("description")
        if name in defaults:
            params[name] = Param(defaults[name], title=title, description=description, **schema)
        else:  # no default: the form and the API insist on a value
            params[name] = Param(title=title, description=description, **schema)
    return params


def build_emergency_dag(policy: Policy, doc_md: str):
    """Backs up the requested scope now, ahead of routine work, to every cloud that is up."""
    from wedsync_dr.emergency import DAG_ID

    # Do not wait on a cloud that is down: one quick retry, then quorum decides.
    urgent = policy.with_overrides(upload_retries=1, upload_retry_delay_seconds=5, upload_max_retry_delay_seconds=5)
    common = {"pool": policy.emergency_pool, "priority_weight": policy.emergency_priority_weight}

    @dag(dag_id=DAG_ID, schedule=None, start_date=START_DATE, catchup=False, default_args=default_args(),
         params=emergency_params(policy), tags=sorted([str(Tag.KIND_EMERGENCY), str(Tag.TIER_CRITICAL)]),
         doc_md=doc_md, max_active_runs=8)
    def emergency_backup():
        @task(retries=0, **common)
        def check_request() -> dict:
            """Cross-field rules, wedding existence, and coalescing with a running emergency run."""
            from wedsync_dr import catalog, emergency

            context = get_current_context()
            request = emergency.validate_conf(policy, dict(context["params"]))
            if request["scope"] == "weddings":
                with catalog.db_connector("wedsync_db")() as conn:
                    found = {r[0] for r in conn.execute(
                        f"SELECT wedding_id FROM {policy.source_schema}.weddings WHERE wedding_id = ANY(%s)",
                        (request["wedding_ids"],))}
                missing = sorted(set(request["wedding_ids"]) - found)
                if missing:  # the requester's to fix: a warning, not a page (alerts.on_task_failure)
                    raise emergency.EmergencyRequestError(
                        f"unknown wedding ids: {', '.join(map(str, missing))}; nothing was backed up")
            classes = emergency.classes_in_scope(policy, request)
            run_id = context["run_id"]
            with catalog.connect() as conn:
                holder = emergency.claim_scope(conn, emergency.scope_key(request), run_id, request["reason"])
                catalog.record_emergency_run(conn, run_id, request, classes,
                                             status="coalesced" if holder else "running", coalesced_into=holder)
            if holder:
                raise _skip(f"coalesced into emergency run {holder}, which already covers this scope")
            log.info("EMERGENCY backup of %s requested by %s: %s", ", ".join(classes),
                     request["requested_by"] or "unknown", request["reason"])
            return {**request, "classes": classes}

        request = check_request()
        validations = []
        for name in sorted(policy.data_classes):
            with TaskGroup(group_id=name):
                validations.append(backup_pipeline(
                    urgent, policy.data_classes[name], request=request, labels=("emergency",),
                    pool=policy.emergency_pool, priority_weight=policy.emergency_priority_weight,
                    min_retention_days=policy.emergency_min_retention_days))

        @task(trigger_rule=TriggerRule.ALL_DONE, retries=0, **common)
        def finish() -> dict:
            """Record the outcome in the catalog and release the scope; red if any class failed."""
            from wedsync_dr import catalog, emergency

            context = get_current_context()
            ti = context["ti"]
            asked = ti.xcom_pull(task_ids="check_request")
            if asked is None:  # coalesced (recorded as such), or the request was refused: the run must be red
                with catalog.connect() as conn:
                    row = conn.execute("SELECT coalesced_into FROM backup_catalog.emergency_runs WHERE run_id = %s "
                                       "AND status = 'coalesced'", (context["run_id"],)).fetchone()
                if row:
                    return {"status": "coalesced", "into": row[0]}
                # check_request's own failure has alerted with the severity its cause deserves (a user error:
                # a warning); this red run must not page a second time
                raise emergency.EmergencyRequestError("check_request did not accept or could not check the request: "
                                                      "nothing was backed up (its log says why)")
            results = {name: ti.xcom_pull(task_ids=f"{name}.validate") for name in asked["classes"]}
            failed = sorted(name for name, result in results.items() if result is None)
            clouds = sorted({c for r in results.values() if r for c in r["clouds_ok"]})
            with catalog.connect() as conn:
                catalog.finish_emergency_run(conn, context["run_id"], "failed" if failed else "succeeded", clouds,
                                             [r["backup_id"] for r in results.values() if r])
                emergency.release_scope(conn, context["run_id"])
            if failed:
                raise RuntimeError(f"emergency backup failed for: {', '.join(failed)}")
            return {"status": "succeeded", "clouds": clouds}

        validations >> finish()

    return emergency_backup()


def build_health_dag(policy: Policy, doc_md: str, schedule: str = "*/5 * * * *"):
    """Cloud canaries and the RPO watch; asks for an emergency backup when critical weddings are at risk."""
    from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator

    from wedsync_dr.emergency import DAG_ID as EMERGENCY_DAG_ID

    @dag(dag_id="backup_health", schedule=schedule, start_date=START_DATE, catchup=False, max_active_runs=1,
         default_args={**default_args(), "retries": 2, "retry_delay": dt.timedelta(seconds=20)},
         tags=sorted([str(Tag.KIND_OPS), str(Tag.PROJECT)]), doc_md=doc_md, render_template_as_native_obj=True,
         dagrun_timeout=dt.timedelta(minutes=4))
    def backup_health():
        @task(pool=policy.emergency_pool, priority_weight=policy.emergency_priority_weight)
        def check_clouds() -> dict:
            """Write, read back and delete a canary object in every cloud; flip health after repeated failures."""
            from wedsync_dr import alerts, backup, catalog, health

            results = [health.canary(store, policy) for store in backup.stores(policy).values()]
            with catalog.connect() as conn:
                states = health.record_checks(conn, results)
                for cloud, state in states.items():
                    log.info("%s: %s (%.0f ms) %s", cloud, "healthy" if state["healthy"] else "UNHEALTHY",
                             state["latency_ms"], state["error"])
                    if state["changed"]:
                        alerts.alert(severity="info" if state["healthy"] else "critical", kind="cloud_health",
                                     subject=cloud, catalog_conn=conn,
                                     message=f"cloud {cloud} is now {'healthy' if state['healthy'] else 'UNHEALTHY'}"
                                             + (f": {state['error']}" if state["error"] else ""))
            return states

        @task(pool=policy.emergency_pool, priority_weight=policy.emergency_priority_weight)
        def rpo_watch(states: dict) -> dict | None:
            """Age of the last good backup per class and per critical wedding against the RPO."""
            from wedsync_dr import alerts, catalog, health

            with catalog.connect() as conn, catalog.db_connector("wedsync_db")() as source:
                breaches = health.rpo_breaches(conn, source, policy)
                for breach in breaches:
                    alerts.alert(severity="critical" if breach.wedding_id else "warning", kind="rpo_breach",
                                 subject=breach.subject, message=breach.describe(), catalog_conn=conn)
            request = health.emergency_conf_for(policy, breaches, states)
            log.info("%d RPO breaches; emergency: %s", len(breaches), request["reason"] if request else "not needed")
            return request

        @task.short_circuit(ignore_downstream_trigger_rules=False)
        def emergency_needed(request: dict | None, ti=None) -> bool:
            """Go on to the trigger only when the watch asked for an emergency backup and none is in flight.

            One automatic request at a time: while an emergency run is queued or running, the monitor does
            not pile another on top; five minutes later it looks again, and what is still at risk then is
            asked for anew.
            """
            if request is None:
                return False
            in_flight = ti.get_dr_count(dag_id=EMERGENCY_DAG_ID, states=["queued", "running"])
            if in_flight:
                log.info("%d emergency run(s) already queued or running: not triggering another now", in_flight)
                return False
            return True

        emergency_conf = rpo_watch(check_clouds())
        trigger = TriggerDagRunOperator(
            task_id="trigger_emergency_backup", trigger_dag_id=EMERGENCY_DAG_ID,
            conf="{{ ti.xcom_pull(task_ids='rpo_watch') }}", wait_for_completion=False,
            pool=policy.emergency_pool, priority_weight=policy.emergency_priority_weight)
        emergency_needed(emergency_conf) >> trigger

    return backup_health()


def _ops_dag(dag_id: str, schedule, doc_md: str, **kwargs):
    return dag(dag_id=dag_id, schedule=schedule, start_date=START_DATE, catchup=False, max_active_runs=1,
               default_args=default_args(), tags=sorted([str(Tag.KIND_OPS), str(Tag.PROJECT)]), doc_md=doc_md,
               **kwargs)


def _daily_or_after_backups(policy: Policy, cron: str):
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable

    assets = [backup_asset(name) for name in sorted(policy.data_classes)]
    condition = assets[0]
    for asset in assets[1:]:
        condition = condition | asset
    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(cron, timezone="UTC"), assets=condition)


def build_drill_dag(policy: Policy, doc_md: str):
    @_ops_dag("backup_restore_drill", _daily_or_after_backups(policy, "30 4 * * *"), doc_md)
    def backup_restore_drill():
        for name in sorted(policy.data_classes):
            @task(task_id=f"drill_{name}", retries=0)
            def drill(data_class: str = name) -> dict:
                """Restore a recent backup of the class from a cloud in rotation; verify; drop the copy."""
                from wedsync_dr import backup, catalog, crypto
                from wedsync_dr.drill import drill_class

                with catalog.connect() as conn:
                    result = drill_class(policy, data_class, conn, backup.stores(policy),
                                         crypto.KeyRing.from_connection(policy.key_ring_conn_id),
                                         catalog.db_connector("wedsync_db_owner"))
                if result["ok"] is False:
                    raise RuntimeError(f"restore drill failed: {result['detail']}")
                return result

            drill()

    return backup_restore_drill()


def _sweep_abandoned_task(policy: Policy):
    @task(task_id="sweep_abandoned_backups")
    def sweep_abandoned() -> dict:
        """Remove what killed backup runs left: staging (plaintext), objects without a manifest in every cloud;
        mark them abandoned. A backup that did commit (manifest found) is recorded from its manifest instead."""
        from wedsync_dr import catalog

        with catalog.connect() as conn:
            return sweep_abandoned_backups(policy, conn)

    return sweep_abandoned


def build_retention_dag(policy: Policy, doc_md: str):
    @_ops_dag("backup_retention", "15 3 * * *", doc_md)
    def backup_retention():
        sweep_abandoned_task = _sweep_abandoned_task(policy)

        # after the sweep, whatever it found: a dead assets run no longer holds the blob sweep back
        @task(trigger_rule=TriggerRule.ALL_DONE)
        def apply_retention() -> dict:
            """Grandfather-father-son per class; manifest first, then objects; unreferenced blobs last."""
            from wedsync_dr import backup, catalog, retention

            with catalog.connect() as conn:
                result = retention.run(policy, conn, backup.stores(policy))
            log.info("kept %d backups, deleted %d, blobs deleted %s", len(result["kept"]), len(result["deleted"]),
                     result["blobs_deleted"])
            if result["failed"]:
                raise RuntimeError(f"some backups could not be deleted: {result['failed']}")
            return {k: v for k, v in result.items() if k != "kept"} | {"kept": len(result["kept"])}

        sweep_abandoned_task() >> apply_retention()

    return backup_retention()


def repair_params() -> dict[str, Any]:
    from airflow.sdk import Param

    return {"backup_id": Param(None, type=["null", "string"], pattern=r"^[a-z_]+-\d{8}T\d{6}Z-[0-9a-f]+$",
                               title="Backup id",
                               description="Repair this backup whatever its status (empty: every kept backup).")}


def build_repair_dag(policy: Policy, doc_md: str):
    @_ops_dag("backup_repair", _daily_or_after_backups(policy, "45 3 * * *"), doc_md, params=repair_params())
    def backup_repair():
        @task(pool=policy.data_classes[sorted(policy.data_classes)[0]].pool)
        def repair() -> dict:
            """Re-copy missing or bad copies from a good cloud (ciphertext as is), re-check, update the catalog."""
            from wedsync_dr import backup, catalog
            from wedsync_dr import repair as repairing

            context = get_current_context()
            # runs after a backup (or a recovery) check only the degraded ones; the daily and manual runs sweep
            # every kept backup, and what verifications found damaged; a manual run may name one backup
            after_backup = bool(context.get("triggering_asset_events"))
            named = context["params"].get("backup_id")
            with catalog.connect() as conn:
                results = repairing.run(policy, conn, backup.stores(policy), only_degraded=after_backup,
                                        backup_ids=[named] if named else None)
            if named and not results:
                from wedsync_dr.requests import InvalidRequest

                raise InvalidRequest(f"backup {named} is not a committed backup in the catalog")
            copied = sum(len(r.copied) for r in results)
            broken = [u for r in results for u in r.unrepairable]
            log.info("checked %d backups, re-copied %d objects, %d unrepairable", len(results), copied, len(broken))
            if broken:
                raise RuntimeError(f"{len(broken)} copies could not be repaired, e.g. {broken[0]}")
            return {"backups": len(results), "copied": copied}

        repair()
        _sweep_abandoned_task(policy)()  # beside repair, not before it: a failed sweep never holds repair back

    return backup_repair()


def verify_params(policy: Policy) -> dict[str, Any]:
    """The backup_verify DAG's trigger form: which backup, in which cloud, how much of it."""
    from airflow.sdk import Param

    return {
        "data_class": Param(sorted(policy.data_classes)[0], type="string", enum=sorted(policy.data_classes),
                            title="Data class", description="The class of the backup to verify."),
        "backup_id": Param("latest", type="string", pattern=r"^(latest|[a-z_]+-\d{8}T\d{6}Z-[0-9a-f]+)$",
                           title="Backup id", description="`latest` (the newest good backup of the class), or an "
                                                          "id from the catalog / `wedsync-dr list`."),
        "cloud": Param("all", type="string", enum=["all", *policy.cloud_names], title="Cloud",
                       description="The copy to verify: one cloud, or `all` (each cloud's copy on its own)."),
        "sample": Param(1.0, type="number", exclusiveMinimum=0, maximum=1, title="Sample",
                        description="Fraction of the objects to download, checksum and decrypt: 1 reads all of "
                                    "them, 0.1 a random tenth (at least one)."),
        "seed": Param(None, type=["null", "integer"], minimum=0, title="Seed",
                      description="Which sample: the same seed reads the same objects again. Empty: a new one "
                                  "(recorded with the result)."),
    }


def build_verify_dag(policy: Policy, doc_md: str):
    """On demand: download, checksum and decrypt a chosen backup in the chosen clouds; record each verdict."""

    @dag(dag_id="backup_verify", schedule=None, start_date=START_DATE, catchup=False, default_args=default_args(),
         params=verify_params(policy), tags=sorted([str(Tag.KIND_OPS), str(Tag.PROJECT)]), doc_md=doc_md,
         max_active_runs=4)
    def backup_verify():
        @task(retries=0)
        def check_request() -> dict:
            """Resolve the backup in the catalog (fails when it is unknown or was never committed)."""
            import secrets

            from wedsync_dr import catalog, verification

            params = get_current_context()["params"]
            with catalog.connect() as conn:
                record = verification.resolve_backup(conn, params["data_class"], params["backup_id"])
            clouds = policy.cloud_names if params["cloud"] == "all" else [params["cloud"]]
            seed = params["seed"] if params["seed"] is not None else secrets.randbelow(2**31)
            log.info("verifying %s in %s, sample %s, seed %d", record["backup_id"], ", ".join(clouds),
                     params["sample"], seed)
            return {"data_class": record["data_class"], "backup_id": record["backup_id"], "clouds": list(clouds),
                    "sample": float(params["sample"]), "seed": seed}

        request = check_request()
        for cloud in policy.clouds:
            @task(task_id=f"verify_in_{cloud.name}", retries=0)
            def verify(request: dict, cloud_name: str = cloud.name) -> dict:
                """Download, checksum and decrypt the copy in one cloud; record the verdict; red on problems."""
                from wedsync_dr import backup, catalog, crypto, verification

                if cloud_name not in request["clouds"]:
                    raise _skip(f"{cloud_name} was not asked for")
                context = get_current_context()
                with catalog.connect() as conn:
                    record = verification.resolve_backup(conn, request["data_class"], request["backup_id"])
                    result = verification.verify_copy(
                        record, cloud_name, backup.stores(policy),
                        crypto.KeyRing.from_connection(policy.key_ring_conn_id), conn, sample=request["sample"],
                        seed=request["seed"], dag_id=context["dag"].dag_id, run_id=context["run_id"])
                if not result["ok"]:
                    raise RuntimeError(f"{result['problem_count']} problems in {cloud_name}: "
                                       + "; ".join(result["problems"][:3]))
                return result

            verify(request)

    return backup_verify()
