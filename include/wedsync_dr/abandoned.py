"""Abandoned backups: what a killed backup run left behind, found and removed.

A backup whose process is killed (SIGKILL, the OOM killer, a lost worker) skips its `cleanup_staging`
teardown and never reaches `validate`: its compressed plaintext stays in staging, its catalog row stays
`running`, and whatever its uploads sent stays in the clouds without a manifest. `sweep` finds such
backups and, for each one:

1. removes its staging directory (the plaintext first: that guarantee matters most);
2. looks for its manifest in every cloud. One there means that cloud's copy was proven whole (its upload task
   writes it then): the backup committed and only the catalog update was lost, or its run died before the
   quorum's copies were in. Either way it is restorable from there: it is recorded from the manifest
   (degraded, until repair has checked every cloud and copied it where it is missing) and nothing is deleted;
3. otherwise (no manifest: not a backup) deletes every object under its prefix in every cloud -- never a
   shared asset blob, which other backups need and retention's mark-and-sweep owns -- and marks the row
   `abandoned`. Nothing is deleted before every cloud has answered that it holds no manifest; a cloud that
   errors is reported, and the row stays `running` so that the next sweep tries again.

A `running` backup is abandoned when Airflow says its run is neither queued nor running, or when it started
longer ago than a backup run's timeout (`HORIZON`), whatever Airflow says and whether or not it names a run.
Staging directories that belong to no running backup go too: those of finished backups (a skipped
teardown), and those with no catalog row at all once older than the horizon (a run killed between creating
its directory and recording its start).

It runs at the start of every backup's `extract` (its own class only, never the current run), and as a task
of `backup_repair` and `backup_retention` (every class).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from wedsync_dr import catalog, format, staging
from wedsync_dr.policy import Policy
from wedsync_dr.retention import RUNNING_HORIZON
from wedsync_dr.storage import ObjectStore, StorageError

log = logging.getLogger(__name__)

HORIZON = RUNNING_HORIZON  # a backup DAG run's timeout: nothing still running started before it
BACKUP_ID = re.compile(r"^(?P<data_class>[a-z0-9_]+)-\d{8}T\d{6}Z-[0-9a-f]+$")  # backup.new_backup_id's names

IsRunning = Callable[[str | None, str | None], bool]  # (dag_id, run_id) -> whether Airflow has it queued/running


@dataclass
class SweepReport:
    abandoned: list[str] = field(default_factory=list)  # marked abandoned: staging and objects removed
    recorded: list[str] = field(default_factory=list)  # had committed after all: recorded from its manifest
    pending: dict[str, dict[str, str]] = field(default_factory=dict)  # still running, retried next: cloud -> why
    objects_deleted: dict[str, int] = field(default_factory=dict)  # per cloud
    staging_removed: list[str] = field(default_factory=list)  # staging directories (backup ids) removed

    @property
    def ok(self) -> bool:
        return not self.pending

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def is_abandoned(row: Mapping[str, Any], now: dt.datetime, is_running: IsRunning) -> bool:
    """Whether a `running` backup row is dead. Pure: Airflow is asked through `is_running` only."""
    if now - row["started_at"] > HORIZON:
        return True
    if row.get("dag_id") and row.get("run_id"):
        return not is_running(row["dag_id"], row["run_id"])
    return False  # run by hand (CLI, tests): only the horizon tells


def staging_is_orphaned(status: str | None, age: dt.timedelta) -> bool:
    """Whether a staging directory may go: its backup finished (any status but `running`), or it has no
    catalog row and is older than the horizon (a younger one may belong to a backup starting right now).
    Directories of running backups are never orphaned here (abandoned ones are removed with their row)."""
    if status is None:
        return age > HORIZON
    return status != "running"


def sweep(policy: Policy, catalog_conn, stores: Mapping[str, ObjectStore], *, is_running: IsRunning,
          now: dt.datetime | None = None, data_classes: Iterable[str] | None = None,
          current_run: tuple[str, str] | None = None) -> SweepReport:
    """Find the abandoned backups of the policy (of `data_classes` only, when given; never those of
    `current_run`, a (dag_id, run_id)) and remove what they left; then the orphaned staging directories.

    `stores` must hold every cloud of the policy: a backup's objects are gone only once each cloud says so.
    """
    now = now or dt.datetime.now(dt.UTC)
    classes = sorted(data_classes) if data_classes is not None else None
    report = SweepReport()
    for row in catalog.running_backups(catalog_conn, policy.prefix, classes):
        if current_run is not None and (row["dag_id"], row["run_id"]) == tuple(current_run):
            continue
        if not is_abandoned(row, now, is_running):
            continue
        log.warning("backup %s (started %s, run %s/%s) is %s: removing what it left", row["backup_id"],
                    row["started_at"].isoformat(), row["dag_id"], row["run_id"],
                    "past the run timeout" if now - row["started_at"] > HORIZON else "not running in Airflow")
        _remove_staging(policy, row["backup_id"], report)
        _settle(policy, catalog_conn, stores, row, report)
    _remove_orphaned_staging(policy, catalog_conn, classes, now, report)
    if report.abandoned or report.recorded or report.pending or report.staging_removed:
        log.info("abandoned-backup sweep: %d abandoned, %d recorded from their manifest, %d to retry, staging of "
                 "%d removed, objects deleted %s", len(report.abandoned), len(report.recorded),
                 len(report.pending), len(report.staging_removed), report.objects_deleted)
    return report


def _remove_staging(policy: Policy, backup_id: str, report: SweepReport) -> None:
    """What the backup staged, wherever staging is (this host's directory, or the staging bucket)."""
    try:
        removed = staging.for_policy(policy).remove(backup_id)
    except (StorageError, OSError) as err:
        report.pending.setdefault(backup_id, {})["staging"] = f"staging not removed: {err}"
        log.error("staging of backup %s could not be removed: %s", backup_id, err)
        return
    if removed:
        report.staging_removed.append(backup_id)


def _remove_orphaned_staging(policy: Policy, catalog_conn, classes: list[str] | None, now: dt.datetime,
                             report: SweepReport) -> None:
    try:
        staged = staging.for_policy(policy).staged_backups()
    except StorageError as err:
        log.warning("staging not swept: %s", err)
        return
    candidates = {}
    for backup_id, changed in staged.items():
        found = BACKUP_ID.match(backup_id)
        if found and backup_id not in report.staging_removed and (classes is None or found["data_class"] in classes):
            candidates[backup_id] = changed
    statuses = catalog.backup_statuses(catalog_conn, list(candidates))
    for backup_id, changed in sorted(candidates.items()):
        if staging_is_orphaned(statuses.get(backup_id), now - changed):
            log.warning("staging of %s (%s) left behind: removed", backup_id,
                        statuses.get(backup_id) or "no catalog row")
            _remove_staging(policy, backup_id, report)


def _settle(policy: Policy, catalog_conn, stores: Mapping[str, ObjectStore], row: Mapping[str, Any],
            report: SweepReport) -> None:
    """Record the backup from its manifest if one exists anywhere; otherwise delete its objects everywhere
    and mark it abandoned. Any cloud that cannot answer leaves the row running."""
    backup_id, prefix = row["backup_id"], row["prefix"]
    if not prefix.startswith(f"{policy.prefix}/") or prefix.rsplit("/", 1)[-1] != backup_id:
        report.pending.setdefault(backup_id, {})["catalog"] = f"prefix {prefix!r} is not the backup's own: " \
                                                              "nothing deleted"
        return
    problems: dict[str, str] = {}
    manifests: dict[str, bytes] = {}
    key = format.manifest_key(prefix)
    for cloud, store in stores.items():
        try:
            if store.head(key) is not None:
                manifests[cloud] = store.read_bytes(key)
        except StorageError as err:
            problems[cloud] = f"manifest not checked: {err}"
    for cloud, body in sorted(manifests.items()):
        try:
            manifest = format.Manifest.from_json(json.loads(body))
            if manifest.backup_id != backup_id:
                raise format.FormatError(f"manifest names backup {manifest.backup_id!r}")
        except ValueError as err:  # JSONDecodeError and FormatError alike: a manifest, though: keep everything
            problems[cloud] = f"manifest unreadable: {err}"
            continue
        catalog.upsert_from_manifest(catalog_conn, manifest, cloud)
        log.warning("backup %s committed (manifest in %s) but its catalog row was never updated: recorded from "
                    "the manifest as degraded, for repair to check every cloud", backup_id, ", ".join(manifests))
        report.recorded.append(backup_id)
        return
    if problems:  # a cloud that did not answer may hold a manifest: delete nothing anywhere yet
        report.pending.setdefault(backup_id, {}).update(problems)
        return
    for cloud, store in stores.items():
        try:
            deleted = _delete_own_objects(policy, store, prefix)
            report.objects_deleted[cloud] = report.objects_deleted.get(cloud, 0) + deleted
        except StorageError as err:
            problems[cloud] = f"objects not deleted: {err}"
    if problems:
        report.pending.setdefault(backup_id, {}).update(problems)
        return
    # (a staging directory that could not be removed is retried by the orphaned-staging pass: not running)
    if catalog.mark_abandoned(catalog_conn, backup_id, "abandoned: its run ended without committing (killed?); "
                                                       "its staging and its objects in every cloud were removed"):
        report.abandoned.append(backup_id)


def _delete_own_objects(policy: Policy, store: ObjectStore, prefix: str) -> int:
    """Delete what the backup stored under its prefix in one cloud, never a shared asset blob."""
    own, blobs = f"{prefix}/", format.blobs_prefix(policy.prefix)
    if not (own.startswith(blobs) or blobs.startswith(own)):
        return store.delete_prefix(own)
    keys = [info.key for info in store.list(own) if not info.key.startswith(blobs)]
    for key in keys:
        store.delete(key)
    return len(keys)
