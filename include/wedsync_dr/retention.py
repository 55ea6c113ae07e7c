"""Retention: grandfather-father-son per class, emergency backups kept >= 90 days, immutability respected.

Rules, per data class, evaluated on the committed backups (validated or degraded):
- keep every backup younger than `hourly_hours`;
- keep the newest backup of each of the last `daily_days` days, `weekly_weeks` ISO weeks and
  `monthly_months` months (each backup counts in every bucket it is the newest of);
- keep emergency backups younger than the emergency minimum (90 days) and anything whose
  `retain_until` (object lock / immutability) is in the future;
- never delete the newest good backup of a class, whatever its age.
Failed backups (no manifest) are cleaned up once they are older than a day.

Deletion order makes a half-deleted backup impossible to mistake for a valid one: the manifest goes
first (in every cloud), then the objects; the catalog row is marked `deleted` last.
Asset blobs and table chunks are shared (mark and sweep): one is deleted only when no kept backup's manifest
references it, it is older than a day (a running backup may have just stored it) and its write-once lock has
expired. Manifests go before the blobs they name, so a sweep stopped at any point leaves every kept backup
whole: the marks come from the kept manifests, never from what was deleted.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from wedsync_dr import format
from wedsync_dr.policy import Policy
from wedsync_dr.storage import ObjectStore, StorageError

log = logging.getLogger(__name__)

FAILED_GRACE = dt.timedelta(days=1)
RUNNING_HORIZON = dt.timedelta(hours=6)  # a backup DAG run's timeout: a "running" row older than that is dead


@dataclass
class Plan:
    keep: dict[str, list[str]] = field(default_factory=dict)  # backup id -> reasons
    delete: list[str] = field(default_factory=list)


def plan(policy: Policy, backups: list[dict[str, Any]], now: dt.datetime) -> Plan:
    """Decide which backups to keep (with the reasons) and which to delete. Pure: no I/O."""
    result = Plan()
    by_class: dict[str, list[dict[str, Any]]] = {}
    for b in backups:
        by_class.setdefault(b["data_class"], []).append(b)
    for name, items in by_class.items():
        rules = policy.data_classes[name].retention if name in policy.data_classes else {}
        good = sorted((b for b in items if b["status"] in ("validated", "degraded")),
                      key=lambda b: b["started_at"], reverse=True)
        reasons: dict[str, list[str]] = {b["backup_id"]: [] for b in good}
        if good:
            reasons[good[0]["backup_id"]].append("newest good backup")
        for b in good:
            age = now - b["started_at"]
            if age <= dt.timedelta(hours=rules.get("hourly_hours", 0)):
                reasons[b["backup_id"]].append("hourly")
            if "emergency" in (b.get("labels") or []) and age <= dt.timedelta(days=policy.emergency_min_retention_days):
                reasons[b["backup_id"]].append("emergency")
            if b.get("retain_until") and b["retain_until"] > now:
                reasons[b["backup_id"]].append("immutable until " + b["retain_until"].isoformat())
        for bucket, horizon in (("daily", dt.timedelta(days=rules.get("daily_days", 0))),
                                ("weekly", dt.timedelta(weeks=rules.get("weekly_weeks", 0))),
                                ("monthly", dt.timedelta(days=31 * rules.get("monthly_months", 0)))):
            seen = set()
            for b in good:  # newest first: the first backup met in a period is that period's keeper
                if now - b["started_at"] > horizon:
                    continue
                period = _period(b["started_at"], bucket)
                if period not in seen:
                    seen.add(period)
                    reasons[b["backup_id"]].append(bucket)
        for backup_id, why in reasons.items():
            if why:
                result.keep[backup_id] = why
            else:
                result.delete.append(backup_id)
        for b in items:
            if b["status"] == "failed" and now - b["started_at"] > FAILED_GRACE:
                result.delete.append(b["backup_id"])
    return result


def _period(when: dt.datetime, bucket: str) -> tuple:
    if bucket == "daily":
        return when.date().isoformat(),
    if bucket == "weekly":
        return tuple(when.isocalendar()[:2])
    return when.year, when.month


def delete_backup(stores: dict[str, ObjectStore], prefix: str) -> dict[str, str]:
    """Manifest first, then the objects, in every cloud; returns per-cloud problems (empty = all gone)."""
    problems = {}
    for cloud, store in stores.items():
        try:
            store.delete(format.manifest_key(prefix))
        except StorageError as err:
            problems[cloud] = f"manifest not deleted: {err}"
            continue  # objects without their manifest are harmless; a manifest without objects is not
        try:
            store.delete_prefix(f"{prefix}/")
        except StorageError as err:
            problems[cloud] = f"objects not deleted: {err}"
    return problems


def collect_garbage_blobs(policy: Policy, stores: dict[str, ObjectStore], referenced: set[str],
                          now: dt.datetime, grace: dt.timedelta = dt.timedelta(days=1)) -> dict[str, int]:
    """Delete asset blobs and table chunks whose keys no kept backup references (older than `grace`, so a running
    backup's new blobs are never taken, and no longer locked); returns how many were deleted per cloud."""
    deleted = {}
    for cloud, store in stores.items():
        count = 0
        listed = (info for prefix in format.shared_prefixes(policy.prefix) for info in store.list(prefix))
        for info in listed:
            if info.key in referenced:
                continue
            if info.updated is not None and now - info.updated < grace:
                continue
            # Listings do not carry the lock (S3, Azure): ask for it. A delete on a locked S3 object would
            # "succeed" as a delete marker and hide a version some backup still needs.
            head = info if info.retain_until is not None else store.head(info.key)
            if head is not None and head.retain_until is not None and head.retain_until > now:
                continue
            try:
                store.delete(info.key)
                count += 1
            except StorageError as err:
                log.warning("blob %s not deleted from %s: %s", info.key, cloud, err)
        deleted[cloud] = count
    return deleted


def run(policy: Policy, catalog_conn, stores: dict[str, ObjectStore], now: dt.datetime | None = None,
        dry_run: bool = False) -> dict[str, Any]:
    """Apply the plan to the clouds and the catalog."""
    from wedsync_dr import catalog

    now = now or dt.datetime.now(dt.UTC)
    # Only this policy's backups (its key prefix): a catalog may serve more than one, each with its own rules.
    backups = catalog.retention_candidates(catalog_conn, policy.prefix)
    decided = plan(policy, backups, now)
    by_id = {b["backup_id"]: b for b in backups}
    deleted, failed = [], {}
    for backup_id in decided.delete:
        if dry_run:
            continue
        problems = delete_backup(stores, by_id[backup_id]["prefix"])
        if problems:
            failed[backup_id] = problems
            continue
        catalog.mark_deleted(catalog_conn, backup_id)
        deleted.append(backup_id)
    referenced = {key for b in backups if b["backup_id"] in decided.keep and b["manifest"]
                  for key in b["manifest"].referenced_blob_keys(policy.prefix)}
    # A running assets or deduplicated backup may reference blobs no kept manifest names yet (it took them from
    # the catalog, or adopted them): no blob is swept while one runs; the next daily run sweeps.
    running_assets = catalog.running_backup_ids(
        catalog_conn, policy.prefix,
        [n for n, dc in policy.data_classes.items() if dc.kind == "assets" or dc.deduplicated],
        now - RUNNING_HORIZON)
    if running_assets:
        log.info("blob sweep deferred: backup %s is running", ", ".join(running_assets))
    blobs = {} if dry_run or running_assets else collect_garbage_blobs(policy, stores, referenced, now)
    if not dry_run and not running_assets:
        catalog.forget_unreferenced_blobs(catalog_conn, policy.prefix, referenced, now - dt.timedelta(days=1))
    return {"kept": decided.keep, "deleted": deleted, "failed": failed, "blobs_deleted": blobs,
            "planned_deletions": decided.delete}
