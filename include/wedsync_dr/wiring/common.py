"""What every DAG family shares: the owner, the start date, default task arguments, the backup Asset
per class, the skip helper, the sibling-task lookup, the ops DAGs' decorator and schedule, and the tasks' way
to Airflow's metrics.

Nothing here touches a connection, a Variable or a cloud at parse time.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import pendulum
from airflow.sdk import Asset, dag, get_current_context

from wedsync_dr.policy import Policy
from wedsync_dr.tags import Tag

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


def _sibling(task_id: str) -> str:
    """The id of a task of the same pipeline (pipelines may sit in a TaskGroup)."""
    ti = get_current_context()["ti"]
    return ti.task_id.rsplit(".", 1)[0] + "." + task_id if "." in ti.task_id else task_id


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


def airflow_metrics():
    """wedsync_dr's metrics emitter over Airflow's stats (StatsD, OpenTelemetry or nothing, as `[metrics]` says),
    sending names that carry their labels too when Airflow sends its own that way (`legacy_names_on`)."""
    from airflow.sdk.configuration import conf
    from airflow.sdk.observability import stats

    from wedsync_dr.metrics import AirflowEmitter

    # the same switch Airflow's task runner reads to set up its stats (a bad value stops it there, before us)
    return AirflowEmitter(stats, names_with_labels=conf.getboolean("metrics", "legacy_names_on", fallback=True))


def step_finished(step, catalog_conn=None) -> None:
    """A backup step (`wedsync_dr.metrics.BackupStep`) is done: record it in the catalog (the Prometheus
    endpoint sums these) and send it through Airflow's metrics. Never fails the task: a lost metric is logged."""
    from wedsync_dr import catalog

    try:
        if catalog_conn is not None:
            step.record(catalog_conn)
        else:
            with catalog.connect() as conn:
                step.record(conn)
    except Exception as err:  # noqa: BLE001 - a backup is never lost for a metric
        log.warning("backup step %s of %s not recorded for metrics: %s: %s", step.step, step.backup_id,
                    type(err).__name__, err)
    airflow_metrics().step(step)
