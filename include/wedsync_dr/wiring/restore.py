"""The on-demand restore DAG and its trigger form (restore_params, also used by the trigger guard)."""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import dag, get_current_context, task

from wedsync_dr.policy import Policy
from wedsync_dr.tags import Tag
from wedsync_dr.wiring.common import START_DATE, default_args

log = logging.getLogger(__name__)


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
        @task(multiple_outputs=True, retries=0)
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

        @task(multiple_outputs=True, retries=2, pool=policy.emergency_pool,
              priority_weight=policy.emergency_priority_weight)
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
            log.info("%s", report.render())
            try:
                with catalog.connect() as conn:
                    catalog.record_restore(conn, report.to_json(), run_id=get_current_context()["run_id"])
            except Exception as err:  # noqa: BLE001 - the restore happened; the report is in the log
                log.warning("restore report not recorded in the catalog: %s", err)
            return report.to_json()

        restore(check_request())

    return restore_dag()
