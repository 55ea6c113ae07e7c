"""Cloud health and RPO watch: notice trouble before a restore is needed.

- Canary: per cloud, write / read back / delete a small object through the same storage interface the
  backups use; latency and result go to the catalog. A cloud failing `UNHEALTHY_AFTER` checks in a row is
  *unhealthy* (uploads and restores consult this); one success makes it healthy again. Changes of state alert.
- RPO: the age of each class's last good backup (validated or degraded) against its RPO, and the same for
  every critical wedding (the newest good backup holding its bundle). A breach alerts; a critical-wedding
  breach asks for an emergency backup of exactly those weddings.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

from wedsync_dr.policy import Policy
from wedsync_dr.storage import ObjectStore, StorageError

log = logging.getLogger(__name__)

UNHEALTHY_AFTER = 3


@dataclass
class CanaryResult:
    cloud: str
    ok: bool
    latency_ms: float
    error: str = ""


def canary(store: ObjectStore, policy: Policy) -> CanaryResult:
    key = f"{policy.prefix}/_health/{store.cloud}-{secrets.token_hex(6)}"
    payload = os.urandom(1024)
    started = time.perf_counter()
    try:
        store.put_bytes(key, payload)
        if store.read_bytes(key) != payload:
            raise StorageError(store.cloud, key, "canary read back different bytes")
        store.delete(key)
        return CanaryResult(store.cloud, True, (time.perf_counter() - started) * 1000)
    except StorageError as err:
        return CanaryResult(store.cloud, False, (time.perf_counter() - started) * 1000, str(err))


def record_checks(conn, results: list[CanaryResult]) -> dict[str, dict[str, Any]]:
    """Store the results; returns per cloud {healthy, changed, failures_in_a_row}."""
    states = {}
    with conn.transaction():
        for r in results:
            conn.execute("INSERT INTO backup_catalog.cloud_health_checks (cloud, ok, latency_ms, error) "
                         "VALUES (%s, %s, %s, %s)", (r.cloud, r.ok, r.latency_ms, r.error or None))
            recent = [ok for (ok,) in conn.execute(
                "SELECT ok FROM backup_catalog.cloud_health_checks WHERE cloud = %s ORDER BY check_id DESC LIMIT %s",
                (r.cloud, UNHEALTHY_AFTER)).fetchall()]
            failures = 0
            for ok in recent:
                if ok:
                    break
                failures += 1
            healthy = failures < UNHEALTHY_AFTER
            previous = conn.execute("SELECT healthy FROM backup_catalog.cloud_health WHERE cloud = %s",
                                    (r.cloud,)).fetchone()
            changed = previous is not None and previous[0] != healthy
            conn.execute(
                "INSERT INTO backup_catalog.cloud_health (cloud, healthy, failures_in_a_row, last_latency_ms, "
                "last_error, changed_at, checked_at) VALUES (%s, %s, %s, %s, %s, now(), now()) "
                "ON CONFLICT (cloud) DO UPDATE SET healthy = EXCLUDED.healthy, failures_in_a_row = "
                "EXCLUDED.failures_in_a_row, last_latency_ms = EXCLUDED.last_latency_ms, last_error = "
                "EXCLUDED.last_error, checked_at = now(), changed_at = CASE WHEN backup_catalog.cloud_health.healthy "
                "<> EXCLUDED.healthy THEN now() ELSE backup_catalog.cloud_health.changed_at END",
                (r.cloud, healthy, failures, r.latency_ms, r.error or None))
            states[r.cloud] = {"healthy": healthy, "changed": changed, "failures_in_a_row": failures,
                               "latency_ms": round(r.latency_ms, 1), "error": r.error}
    return states


def healthy_clouds(conn, policy: Policy) -> list[str]:
    """Clouds not known to be unhealthy, in policy order (a cloud never checked counts as healthy)."""
    unhealthy = {c for (c,) in conn.execute("SELECT cloud FROM backup_catalog.cloud_health WHERE NOT healthy")}
    return [c for c in policy.cloud_names if c not in unhealthy]


def healthy_clouds_if_known(policy: Policy, connect) -> list[str]:
    """`healthy_clouds` for a restore's cloud order (preferred, then healthy, then any), read through
    `connect`; every cloud when the catalog cannot be read -- no health data is no reason not to restore."""
    try:
        with connect() as conn:
            return healthy_clouds(conn, policy)
    except Exception as err:  # noqa: BLE001 - any catalog failure: fall back to the policy's order
        log.warning("cloud health unknown (%s: %s): trying the clouds in policy order", type(err).__name__, err)
        return list(policy.cloud_names)


def unhealthy_reason(conn, cloud: str) -> str | None:
    """Why uploads should not wait on this cloud now, or None when it is healthy (or never checked)."""
    row = conn.execute("SELECT failures_in_a_row, changed_at, last_error FROM backup_catalog.cloud_health "
                       "WHERE cloud = %s AND NOT healthy", (cloud,)).fetchone()
    if row is None:
        return None
    failures, since, error = row
    return (f"cloud {cloud} is unhealthy since {since:%Y-%m-%d %H:%M:%S} UTC ({failures} failed checks in a row"
            + (f"; last: {error}" if error else "") + ")")


@dataclass
class RpoBreach:
    subject: str  # a class name, or wedding:<id>
    age_minutes: float | None  # None: never backed up
    rpo_minutes: int
    wedding_id: int | None = None

    def describe(self) -> str:
        age = "never backed up" if self.age_minutes is None else f"last good backup {self.age_minutes:.0f} min ago"
        return f"{self.subject}: {age}, RPO {self.rpo_minutes} min"


def rpo_breaches(catalog_conn, source_conn, policy: Policy, now: dt.datetime | None = None) -> list[RpoBreach]:
    now = now or dt.datetime.now(dt.UTC)
    breaches = []
    for name, data_class in policy.data_classes.items():
        row = catalog_conn.execute(
            "SELECT max(started_at) FROM backup_catalog.backups WHERE data_class = %s "
            "AND status IN ('validated', 'degraded')", (name,)).fetchone()
        age = (now - row[0]).total_seconds() / 60 if row and row[0] else None
        if age is None or age > data_class.rpo_minutes:
            breaches.append(RpoBreach(name, age, data_class.rpo_minutes))
        if data_class.kind != "wedding_bundles":
            continue
        critical = [wid for (wid,) in source_conn.execute(
            f"SELECT wedding_id FROM {policy.source_schema}.weddings WHERE wedding_date BETWEEN "
            "(now() AT TIME ZONE 'UTC')::date AND (now() AT TIME ZONE 'UTC')::date + %s AND status <> 'cancelled'",
            (data_class.window_days,))]
        last = dict(catalog_conn.execute(
            "SELECT o.wedding_id, max(b.started_at) FROM backup_catalog.backup_objects o JOIN backup_catalog.backups b "
            "USING (backup_id) WHERE b.status IN ('validated', 'degraded') AND o.wedding_id = ANY(%s) "
            "GROUP BY o.wedding_id", (critical,)).fetchall())
        for wid in critical:
            age = (now - last[wid]).total_seconds() / 60 if wid in last else None
            if age is None or age > data_class.rpo_minutes:
                breaches.append(RpoBreach(f"wedding:{wid}", age, data_class.rpo_minutes, wedding_id=wid))
    return breaches


def emergency_conf_for(policy: Policy, breaches: list[RpoBreach],
                       cloud_states: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The emergency request a monitor makes, or None when nothing calls for one.

    Critical weddings past their RPO -> those weddings now. A cloud that just became unhealthy -> every
    critical wedding now, to the clouds that remain (their protection just dropped by a third).
    """
    weddings = sorted(b.wedding_id for b in breaches if b.wedding_id is not None)
    if weddings:
        shown = ", ".join(map(str, weddings[:20])) + (" ..." if len(weddings) > 20 else "")
        return {"reason": f"automatic: {len(weddings)} critical weddings past their RPO ({shown})",
                "scope": "weddings", "wedding_ids": weddings, "requested_by": "backup_health"}
    down = sorted(c for c, s in cloud_states.items() if s["changed"] and not s["healthy"])
    if down:
        critical = sorted(n for n, dc in policy.data_classes.items() if dc.kind == "wedding_bundles")
        return {"reason": f"automatic: cloud {', '.join(down)} became unhealthy; protecting critical weddings",
                "scope": "classes", "data_classes": critical, "requested_by": "backup_health"}
    return None
