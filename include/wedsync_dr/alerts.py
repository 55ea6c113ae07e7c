"""Alerts: the local default logs them and records them in the catalog, so tests (and the status page)
can see them. On top of that, the notifiers listed under `alerts` in the policy file — Airflow's own
SmtpNotifier, SlackWebhookNotifier and HttpNotifier (a webhook) — each send it, if its Airflow connection
exists: adding the connection is what turns a notifier on, and a machine without it (the local stack)
sends nothing. A notifier that fails is logged; it never hides the alert or fails the task that raised it.
"""

from __future__ import annotations

import html
import logging
from typing import Any

log = logging.getLogger("wedsync_dr.alerts")

SEVERITIES = ("info", "warning", "critical")
_absent_connections: set[str] = set()  # logged once per process, not on every alert


def alert(*, severity: str, kind: str, message: str, subject: str | None = None, backup_id: str | None = None,
          details: dict | None = None, catalog_conn=None, policy=None) -> list[str]:
    """Log, record and send an alert; returns the notifiers that sent it (`kind:conn_id`).

    Recording problems never hide the alert itself (it is logged first).
    """
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
    except Exception:
        log.exception("could not record the alert in the catalog")
    return notify(severity=severity, kind=kind, message=message, subject=subject, backup_id=backup_id,
                  policy=policy)


def notify(*, severity: str, kind: str, message: str, subject: str | None = None, backup_id: str | None = None,
           policy=None) -> list[str]:
    """Send through every configured notifier whose connection exists and whose threshold is met."""
    if policy is None:
        from wedsync_dr.policy import load_policy

        policy = load_policy()
    sent = []
    for spec in policy.notifiers:
        name = f"{spec['kind']}:{spec['conn_id']}"
        if SEVERITIES.index(severity) < SEVERITIES.index(spec.get("min_severity", "warning")):
            continue
        if not _connection_exists(spec["conn_id"]):
            continue
        try:
            build_notifier(spec, severity=severity, kind=kind, message=message, subject=subject,
                           backup_id=backup_id).notify({})
            sent.append(name)
        except Exception:
            log.exception("notifier %s could not send the alert", name)
    return sent


def build_notifier(spec: dict[str, Any], *, severity: str, kind: str, message: str, subject: str | None,
                   backup_id: str | None):
    """The provider's notifier for one `alerts.notifiers` entry, holding this alert's text."""
    title = f"[wedsync-dr {severity.upper()}] {kind}" + (f": {subject}" if subject else "")
    if spec["kind"] == "slack":
        from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

        return SlackWebhookNotifier(slack_webhook_conn_id=spec["conn_id"], text=f"*{title}*\n{message}")
    if spec["kind"] == "smtp":
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        return SmtpNotifier(smtp_conn_id=spec["conn_id"], to=list(spec["to"]), subject=title,
                            from_email=spec.get("from_email", "wedsync-dr@localhost"),
                            html_content=f"<p>{html.escape(message)}</p>"
                                         + (f"<p>backup: {html.escape(backup_id)}</p>" if backup_id else ""))
    if spec["kind"] == "webhook":
        from airflow.providers.http.notifications.http import HttpNotifier

        return HttpNotifier(http_conn_id=spec["conn_id"], endpoint=spec.get("endpoint", ""),
                            json={"source": "wedsync-dr", "severity": severity, "kind": kind, "subject": subject,
                                  "backup_id": backup_id, "message": message, "title": title},
                            headers={"Content-Type": "application/json"})
    raise ValueError(f"unknown notifier kind {spec['kind']!r}")  # the policy schema makes this unreachable


def _connection_exists(conn_id: str) -> bool:
    from airflow.sdk import BaseHook

    try:
        BaseHook.get_connection(conn_id)
        return True
    except Exception:  # noqa: BLE001 - not found (the usual case) or no way to look: either way, not configured
        if conn_id not in _absent_connections:
            _absent_connections.add(conn_id)
            log.info("notifier connection %r is not defined: that notifier is off", conn_id)
        return False


def on_task_failure(context: dict[str, Any]) -> None:
    """Airflow failure callback: a task of a wedsync-dr DAG failed after its retries.

    Critical, except when the task refused what a user asked for (an InvalidRequest: a typo in a restore or
    emergency request, unknown wedding ids): that is the requester's to fix, so a warning -- it never pages.
    """
    from wedsync_dr.requests import InvalidRequest

    ti = context.get("ti") or context.get("task_instance")
    exception = context.get("exception")
    where = f"{ti.dag_id}.{ti.task_id}" if ti else "unknown task"
    alert(severity="warning" if isinstance(exception, InvalidRequest) else "critical", kind="task_failed",
          subject=where,
          message=f"{where} failed in run {context.get('run_id')}: {type(exception).__name__}: {exception}")
