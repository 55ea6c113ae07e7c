"""The ops DAGs (backup_health, backup_restore_drill, backup_retention, backup_repair, backup_verify), their
trigger forms, and the abandoned-backup sweep that the backup chain's extract runs too.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from airflow.sdk import TriggerRule, dag, get_current_context, task

from wedsync_dr.policy import Policy
from wedsync_dr.tags import Tag
from wedsync_dr.wiring.common import (
    START_DATE,
    _daily_or_after_backups,
    _ops_dag,
    _skip,
    airflow_metrics,
    default_args,
)

log = logging.getLogger(__name__)


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


def build_health_dag(policy: Policy, doc_md: str):
    """Cloud canaries and the RPO watch; asks for an emergency backup when critical weddings are at risk."""
    from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator

    from wedsync_dr.emergency import DAG_ID as EMERGENCY_DAG_ID

    @dag(dag_id="backup_health", schedule="*/5 * * * *", start_date=START_DATE, catchup=False, max_active_runs=1,
         default_args={**default_args(), "retries": 2, "retry_delay": dt.timedelta(seconds=20)},
         tags=sorted([str(Tag.KIND_OPS), str(Tag.PROJECT)]), doc_md=doc_md, render_template_as_native_obj=True,
         dagrun_timeout=dt.timedelta(minutes=4))
    def backup_health():
        @task(multiple_outputs=True, pool=policy.emergency_pool, priority_weight=policy.emergency_priority_weight)
        def check_clouds() -> dict:
            """Write, read back and delete a canary object in every cloud; flip health after repeated failures."""
            from wedsync_dr import alerts, backup, catalog, health

            results = [health.canary(store, policy) for store in backup.stores(policy).values()]
            with catalog.connect() as conn:
                states = health.record_checks(conn, results)
                emitter = airflow_metrics()
                for result in results:
                    emitter.canary(result.cloud, ok=result.ok, latency_ms=result.latency_ms,
                                   healthy=states[result.cloud]["healthy"])
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
                emitter, now = airflow_metrics(), dt.datetime.now(dt.UTC)
                for name, data_class in sorted(policy.data_classes.items()):
                    started = catalog.last_good_backup_started(conn, name)
                    emitter.backup_age(name, (now - started).total_seconds() if started else None,
                                       data_class.rpo_minutes * 60)
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
        trigger_emergency_backup = TriggerDagRunOperator(
            task_id="trigger_emergency_backup", trigger_dag_id=EMERGENCY_DAG_ID,
            conf=emergency_conf, wait_for_completion=False,
            pool=policy.emergency_pool, priority_weight=policy.emergency_priority_weight)
        emergency_needed(emergency_conf) >> trigger_emergency_backup

    return backup_health()


def build_drill_dag(policy: Policy, doc_md: str):
    @_ops_dag("backup_restore_drill", _daily_or_after_backups(policy, "30 4 * * *"), doc_md)
    def backup_restore_drill():
        for name in sorted(policy.data_classes):
            @task(multiple_outputs=True, task_id=f"drill_{name}", retries=0)
            def drill(data_class: str = name) -> dict:
                """Restore a recent backup of the class from a cloud in rotation; verify; drop the copy."""
                from wedsync_dr import backup, catalog, crypto
                from wedsync_dr.drill import drill_class

                with catalog.connect() as conn:
                    result = drill_class(policy, data_class, conn, backup.stores(policy),
                                         crypto.KeyRing.from_connection(policy.key_ring_conn_id),
                                         catalog.db_connector("wedsync_db_owner"))
                airflow_metrics().drill(result)
                if result["ok"] is False:
                    raise RuntimeError(f"restore drill failed: {result['detail']}")
                return result

            drill()

    return backup_restore_drill()


def _sweep_abandoned_task(policy: Policy):
    @task(multiple_outputs=True, task_id="sweep_abandoned_backups")
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
        @task(multiple_outputs=True, trigger_rule=TriggerRule.ALL_DONE)
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
        @task(multiple_outputs=True, pool=policy.data_classes[sorted(policy.data_classes)[0]].pool)
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
        @task(multiple_outputs=True, retries=0)
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
            @task(multiple_outputs=True, task_id=f"verify_in_{cloud.name}", retries=0)
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
