"""Verification of a backup on demand (the backup_verify DAG): is this copy, in this cloud, restorable?

The reading is `wedsync_dr.restore.verify_backup` (download, checksum, decrypt: all objects or a sample).
This module picks the backup, records each cloud's verdict in `backup_catalog.verifications` (read by the
status page and `GET /wedsync-dr/api/verifications`), and raises a critical `verify_failed` alert for a
copy with problems; a later passing verification of the same copy clears it (wedsync_dr.status).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from wedsync_dr.format import Manifest
from wedsync_dr.requests import InvalidRequest

log = logging.getLogger(__name__)

PROBLEMS_KEPT = 100  # a copy that is gone yields one problem per object: the count says how many


class VerificationError(InvalidRequest):
    """The requested backup cannot be verified (unknown, of another class, never committed): the requester's
    to fix, so its failure alerts as a warning, never a page."""


def resolve_backup(conn, data_class: str, backup_id: str = "latest") -> dict[str, Any]:
    """The catalog record (with its manifest) of the backup to verify: an id, or the class's newest good one."""
    from wedsync_dr import catalog

    if backup_id == "latest":
        latest = catalog.latest_good_committed_backup_id(conn, data_class)
        if latest is None:
            raise VerificationError(f"no committed {data_class} backup in the catalog")
        backup_id = latest
    record = catalog.backup(conn, backup_id)
    if record is None:
        raise VerificationError(f"backup {backup_id} is not in the catalog (see `wedsync-dr list`)")
    if record["data_class"] != data_class:
        raise VerificationError(f"backup {backup_id} is a {record['data_class']} backup, not {data_class}")
    if not record["manifest"]:
        raise VerificationError(f"backup {backup_id} has no manifest (status {record['status']}): nothing to verify")
    return record


def objects_read(total: int, sample: float) -> int:
    """How many objects `verify_backup` reads for a sample fraction (at least one)."""
    return total if sample >= 1.0 or not total else max(1, round(total * sample))


def verify_copy(record: dict[str, Any], cloud: str, stores, key_ring, catalog_conn, *, sample: float, seed: int,
                dag_id: str | None = None, run_id: str | None = None) -> dict[str, Any]:
    """Verify the backup's copy in one cloud; record the verdict; alert when the copy has problems."""
    from wedsync_dr import alerts, catalog
    from wedsync_dr.restore import verify_backup

    manifest = Manifest.from_json(record["manifest"])
    started = time.monotonic()
    problems = verify_backup(manifest, stores, key_ring, [cloud], sample=sample, seed=seed)[cloud]
    total = len(manifest.entries)  # data objects and (format 3) every blob, as verify_backup reads
    result = {"backup_id": record["backup_id"], "data_class": record["data_class"], "cloud": cloud,
              "ok": not problems, "sample": sample, "seed": seed, "objects_read": objects_read(total, sample),
              "objects_total": total, "problem_count": len(problems), "problems": problems[:PROBLEMS_KEPT],
              "seconds": round(time.monotonic() - started, 2), "dag_id": dag_id, "run_id": run_id}
    result["verification_id"] = catalog.record_verification(catalog_conn, result)
    if problems:
        alerts.alert(severity="critical", kind="verify_failed", subject=f"{cloud}:{record['backup_id']}",
                     backup_id=record["backup_id"], details={"cloud": cloud, "problem_count": len(problems)},
                     message=f"verification of {record['backup_id']} in {cloud} FAILED: {len(problems)} of "
                             f"{result['objects_read']} objects read have problems, e.g. {problems[0]}",
                     catalog_conn=catalog_conn)
    log.info("verification of %s in %s: %s (%d of %d objects read, %.1fs)", record["backup_id"], cloud,
             "OK" if not problems else f"{len(problems)} PROBLEMS", result["objects_read"], total, result["seconds"])
    return result
