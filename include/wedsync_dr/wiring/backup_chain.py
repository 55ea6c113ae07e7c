"""The backup task chain (extract -> encrypt -> upload_to_<cloud> -> validate, with a staging teardown)
and the per-class scheduled backup DAG factory built from it.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

from airflow.sdk import TriggerRule, dag, get_current_context, task

from wedsync_dr.metrics import BackupStep, outcome_of
from wedsync_dr.policy import DataClass, Policy
from wedsync_dr.tags import Tag, class_tag
from wedsync_dr.wiring.common import START_DATE, _sibling, _skip, backup_asset, default_args, step_finished
from wedsync_dr.wiring.ops import sweep_abandoned_backups

log = logging.getLogger(__name__)


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

    @task(multiple_outputs=True, task_id="extract", **common)
    def extract_step(request: dict | None = None) -> dict:
        """Read the class's rows (or files) from one consistent snapshot into compressed staging files."""
        from wedsync_dr import backup, catalog, crypto, staging

        if request is not None and name not in request.get("classes", []):
            raise _skip(f"{name} is not in this run's scope")
        context = get_current_context()
        request = request or {}
        # assets and deduplicated tables name their blobs and chunks by keyed content ids (the key ring's dedup
        # key), and with object-store staging every object is sealed on this worker before it leaves it: fail
        # closed without the key ring
        needs_keys = data_class.kind == "assets" or data_class.deduplicated or staging.for_policy(policy).remote
        key_ring = crypto.KeyRing.from_connection(policy.key_ring_conn_id) if needs_keys else None
        with catalog.connect() as catalog_conn:
            # first, what killed runs of this class left (their plaintext above all); never this run's own
            sweep_abandoned_backups(policy, catalog_conn, data_classes=[name], must_succeed=False)
            summary = backup.run_extract(
                policy, data_class, connect=catalog.db_connector("wedsync_db"), catalog_conn=catalog_conn,
                key_ring=key_ring,
                wedding_ids=request.get("wedding_ids") if data_class.kind == "wedding_bundles" else None,
                labels=labels, reason=request.get("reason"), requested_by=request.get("requested_by"),
                dag_id=context["dag"].dag_id, run_id=context["run_id"], min_retention_days=min_retention_days or 0)
            step_finished(BackupStep(summary["backup_id"], name, "extract", summary["extract_seconds"],
                                     size=summary["compressed_bytes"], objects=summary["objects"]), catalog_conn)
        return summary

    @task(multiple_outputs=True, task_id="encrypt", **common)
    def encrypt_step(summary: dict) -> dict:
        """Encrypt each staged object with its own data key, plaintext staging files deleted (local staging); or
        prove each object extract sealed on its worker before any cloud sees it (object-store staging)."""
        from wedsync_dr import backup, crypto

        encrypted = backup.run_encrypt(policy, summary, crypto.KeyRing.from_connection(policy.key_ring_conn_id))
        step_finished(BackupStep(encrypted["backup_id"], name, "encrypt", encrypted["encrypt_seconds"],
                                 size=encrypted["ciphertext_bytes"], objects=encrypted["objects"]))
        return encrypted

    extract_output = extract_step(request)
    encrypt_summary = encrypt_step(extract_output)

    upload_tasks = []
    for cloud in policy.clouds:
        @task(multiple_outputs=True, task_id=f"upload_to_{cloud.name}", retries=policy.upload_retries,
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
                step_finished(BackupStep(summary["backup_id"], name, "upload", sent["seconds"], cloud=cloud_name,
                                         size=sent["bytes"], objects=sent["objects"]), conn)
                proven = backup.check_and_commit(policy, cloud_name, summary,
                                                 crypto.KeyRing.from_connection(policy.key_ring_conn_id), conn, store)
            return {**sent, **proven}

        upload_tasks.append(upload_step(encrypt_summary))

    @task(multiple_outputs=True, task_id="validate", trigger_rule=TriggerRule.ALL_DONE, outlets=[backup_asset(name)],
          retries=0, **common)
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
        started = time.perf_counter()
        with catalog.connect() as catalog_conn:  # the summary carries the backup's lock and keep dates
            try:
                result = backup.run_validate(policy, summary, results,
                                             crypto.KeyRing.from_connection(policy.key_ring_conn_id), catalog_conn)
            finally:  # failed runs too (below the quorum, or whatever stopped validate): the catalog says how
                step_finished(BackupStep(summary["backup_id"], name, "validate", time.perf_counter() - started,
                                         size=summary["ciphertext_bytes"], objects=summary["objects"],
                                         outcome=outcome_of(catalog_conn, summary["backup_id"])), catalog_conn)
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
