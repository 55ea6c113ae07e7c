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
    from wedsync_dr import catalog

    states = {}
    with conn.transaction():
        for r in results:
            catalog.record_health_check(conn, r.cloud, r.ok, r.latency_ms, r.error or None)
            recent = catalog.recent_check_results(conn, r.cloud, UNHEALTHY_AFTER)
            failures = 0
            for ok in recent:
                if ok:
                    break
                failures += 1
            healthy = failures < UNHEALTHY_AFTER
            previous = catalog.recorded_health(conn, r.cloud)
            changed = previous is not None and previous != healthy
            catalog.record_cloud_health(conn, r.cloud, healthy, failures, r.latency_ms, r.error or None)
            states[r.cloud] = {"healthy": healthy, "changed": changed, "failures_in_a_row": failures,
                               "latency_ms": round(r.latency_ms, 1), "error": r.error}
    return states


def healthy_clouds(conn, policy: Policy) -> list[str]:
    """Clouds not known to be unhealthy, in policy order (a cloud never checked counts as healthy)."""
    from wedsync_dr import catalog

    unhealthy = catalog.unhealthy_clouds(conn)
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
    from wedsync_dr import catalog

    row = catalog.unhealthy_state(conn, cloud)
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
    from wedsync_dr import catalog

    now = now or dt.datetime.now(dt.UTC)
    breaches = []
    for name, data_class in policy.data_classes.items():
        started = catalog.last_good_backup_started(catalog_conn, name)
        age = (now - started).total_seconds() / 60 if started else None
        if age is None or age > data_class.rpo_minutes:
            breaches.append(RpoBreach(name, age, data_class.rpo_minutes))
        if data_class.kind != "wedding_bundles":
            continue
        critical = [wid for (wid,) in source_conn.execute(
            f"SELECT wedding_id FROM {policy.source_schema}.weddings WHERE wedding_date BETWEEN "
            "(now() AT TIME ZONE 'UTC')::date AND (now() AT TIME ZONE 'UTC')::date + %s AND status <> 'cancelled'",
            (data_class.window_days,))]
        last = catalog.weddings_last_good_backup(catalog_conn, critical)
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
