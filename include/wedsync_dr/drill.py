"""Restore drills: prove, every day, that backups restore -- like AWS Backup restore testing.

Per data class a recent backup is chosen (rotating through the newest few) and restored from a cloud chosen
in rotation, into scratch space that is dropped afterwards: a table class restores whole into a scratch
schema; critical weddings restore a sample of bundles (weighted: they are what must never fail); assets read
back a sample of their objects (`restic check --read-data-subset`). The restore verifies row counts and
checksums against the manifest. Every drill is recorded; a failed one alerts.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
from typing import Any

from wedsync_dr import crypto, memory
from wedsync_dr.format import Manifest
from wedsync_dr.policy import Policy
from wedsync_dr.storage import ObjectStore

log = logging.getLogger(__name__)

RECENT = 5  # drills rotate through the newest backups of a class
WEDDING_SAMPLE = 5
ASSET_SAMPLE = 0.2


def choose(catalog_conn, policy: Policy, data_class: str) -> tuple[Manifest | None, str]:
    """(the backup to drill, the cloud to read it from), rotating by how many drills the class has had."""
    from wedsync_dr import catalog

    count = catalog.drill_count(catalog_conn, data_class)
    rows = catalog.recent_good_manifests(catalog_conn, data_class, RECENT)
    if not rows:
        return None, ""
    manifest, clouds_ok = rows[count % len(rows)]
    candidates = [c for c in policy.cloud_names if c in clouds_ok] or list(policy.cloud_names)
    return manifest, candidates[count % len(candidates)]


def drill_class(policy: Policy, data_class: str, catalog_conn, stores: dict[str, ObjectStore],
                key_ring: crypto.KeyRing, db_connect, seed: int | None = None) -> dict[str, Any]:
    from wedsync_dr import alerts, catalog
    from wedsync_dr.requests import RestoreError
    from wedsync_dr.restore import restore_tables, verify_backup

    memory.bound_heap()
    manifest, cloud = choose(catalog_conn, policy, data_class)
    if manifest is None:
        return {"data_class": data_class, "ok": None, "detail": "no backup to drill yet"}
    kind = policy.data_classes[data_class].kind
    started = time.monotonic()
    rows = 0
    rng = random.Random(seed if seed is not None else time.time_ns())
    try:
        if kind == "assets":
            problems = verify_backup(manifest, stores, key_ring, [cloud], sample=ASSET_SAMPLE, seed=rng.random())
            if problems[cloud]:
                raise RestoreError("; ".join(problems[cloud]))
            detail = f"read back {ASSET_SAMPLE:.0%} of the objects"
        else:
            weddings = [None]
            if kind == "wedding_bundles":
                ids = manifest.wedding_ids
                weddings = rng.sample(ids, min(WEDDING_SAMPLE, len(ids)))
            for wedding_id in weddings:
                scratch = f"drill_{data_class}_{dt.datetime.now(dt.UTC):%Y%m%d%H%M%S}_{rng.randrange(10**6)}"
                with db_connect() as conn:
                    try:
                        report = restore_tables(conn, manifest, stores, key_ring, order=[cloud], target_schema=scratch,
                                                wedding_id=wedding_id)
                        rows += sum(report.rows.values())
                    finally:
                        conn.execute(f'DROP SCHEMA IF EXISTS "{scratch}" CASCADE')
                        conn.commit()
            detail = f"restored {len(weddings)} wedding bundles" if kind == "wedding_bundles" else "restored whole"
        ok = True
    except Exception as err:  # noqa: BLE001 - a failed drill is a result to record and alert on
        ok, detail = False, f"{type(err).__name__}: {err}"
    seconds = time.monotonic() - started
    catalog.record_drill(catalog_conn, data_class, manifest.backup_id, cloud, ok, seconds, rows, detail)
    if not ok:
        alerts.alert(severity="critical", kind="drill_failed", subject=data_class, backup_id=manifest.backup_id,
                     message=f"restore drill of {manifest.backup_id} from {cloud} FAILED: {detail}",
                     catalog_conn=catalog_conn)
    log.info("drill %s %s from %s: %s (%.1fs) %s", data_class, manifest.backup_id, cloud,
             "passed" if ok else "FAILED", seconds, detail)
    return {"data_class": data_class, "backup_id": manifest.backup_id, "cloud": cloud, "ok": ok,
            "seconds": round(seconds, 2), "rows": rows, "detail": detail}
