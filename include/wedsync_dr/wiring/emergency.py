"""The emergency backup DAG (every class's backup chain in its own TaskGroup, ahead of routine work) and
its trigger form (emergency_params, also used by the trigger guard)."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from airflow.sdk import TaskGroup, TriggerRule, dag, get_current_context, task

from wedsync_dr.policy import Policy
from wedsync_dr.tags import Tag
from wedsync_dr.wiring.backup_chain import backup_pipeline
from wedsync_dr.wiring.common import START_DATE, _skip, default_args

log = logging.getLogger(__name__)


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
    # A failed step (a database blip; a worker lost, once its heartbeat timeout has noticed) is retried after
    # seconds, not a minute: the backup is wanted now (the routine DAGs keep the minute, with its backoff).
    retried_soon = {**default_args(), "retry_delay": dt.timedelta(seconds=10)}

    @dag(dag_id=DAG_ID, schedule=None, start_date=START_DATE, catchup=False, default_args=retried_soon,
         params=emergency_params(policy), tags=sorted([str(Tag.KIND_EMERGENCY), str(Tag.TIER_CRITICAL)]),
         doc_md=doc_md, max_active_runs=8)
    def emergency_backup():
        @task(multiple_outputs=True, retries=0, **common)
        def check_request() -> dict:
            """Cross-field rules, wedding existence, and coalescing with a running emergency run."""
            from wedsync_dr import catalog, emergency

            context = get_current_context()
            request = emergency.validate_conf(policy, dict(context["params"]))
            if request["scope"] == "weddings":
                with catalog.db_connector("wedsync_db")() as conn:
                    found = catalog.existing_wedding_ids(conn, policy.source_schema, request["wedding_ids"])
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

        @task(multiple_outputs=True, trigger_rule=TriggerRule.ALL_DONE, retries=0, **common)
        def finish() -> dict:
            """Record the outcome in the catalog and release the scope; red if any class failed."""
            from wedsync_dr import catalog, emergency

            context = get_current_context()
            ti = context["ti"]
            asked = ti.xcom_pull(task_ids="check_request")
            if asked is None:  # coalesced (recorded as such), or the request was refused: the run must be red
                with catalog.connect() as conn:
                    coalesced = catalog.coalesced_emergency_run(conn, context["run_id"])
                if coalesced:
                    return {"status": "coalesced", **coalesced}
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
