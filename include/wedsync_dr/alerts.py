"""Alerts: the local default logs them and records them in the catalog, so tests (and the status page)
can see them. Configured notifiers (SMTP, Slack, webhook) come on top of this default.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("wedsync_dr.alerts")


def alert(*, severity: str, kind: str, message: str, subject: str | None = None, backup_id: str | None = None,
          details: dict | None = None, catalog_conn=None) -> None:
    """Log and record an alert; recording problems never hide the alert itself (it is logged first)."""
    log.log(logging.CRITICAL if severity == "critical" else logging.WARNING, "ALERT [%s] %s: %s", severity, kind,
            message)
    from wedsync_dr import catalog

    try:
        if catalog_conn is not None:
            catalog.raise_alert(catalog_conn, severity=severity, kind=kind, message=message, subject=subject,
                                backup_id=backup_id, details=details)
        else:
            with catalog.connect() as conn:
                catalog.raise_alert(conn, severity=severity, kind=kind, message=message, subject=subject,
                                    backup_id=backup_id, details=details)
    except Exception:  # noqa: BLE001 - the alert is already in the log; a catalog outage must not mask the failure
        log.exception("could not record the alert in the catalog")


def on_task_failure(context: dict[str, Any]) -> None:
    """Airflow failure callback: a task of a wedsync-dr DAG failed after its retries."""
    ti = context.get("ti") or context.get("task_instance")
    exception = context.get("exception")
    where = f"{ti.dag_id}.{ti.task_id}" if ti else "unknown task"
    alert(severity="critical", kind="task_failed", subject=where,
          message=f"{where} failed in run {context.get('run_id')}: {type(exception).__name__}: {exception}")
