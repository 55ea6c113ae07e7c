"""
### Restore a WedSync backup

Restores a whole data class, one wedding, a backup by id or the newest at a point in time — from the
cloud you choose or the best available, failing over object by object when a copy is missing or bad.

**What it does:** `check_request` rejects impossible combinations before anything is read;
`restore` resolves the backup (catalog, or the manifests in the clouds when the catalog is gone), streams
each object (download → verify checksum → decrypt → decompress → `COPY FROM`) into a fresh schema
`restore_<class>_<timestamp>_<4 hex>` (default), verifies row counts and checksums against the manifest, and only
for `in_place` (with `confirm` = `RESTORE <class>`) swaps the verified rows into the live tables in one
transaction. Assets restore into a directory; paths can never escape it. `dry_run` reads, verifies and
decrypts everything but writes nothing.

**When it runs:** only when triggered (UI form, REST API, `wedsync-dr restore` does the same without Airflow).

**Runbook:**
- *"no cloud delivered a valid copy":* every copy of an object failed verification; the log lists each cloud's
  reason. Try an older backup (`point_in_time`) and run `backup_repair`.
- *Catalog unreachable:* the restore resolves from the clouds by itself; `wedsync-dr rebuild-catalog` refills it.
- *Airflow itself is down:* use the break-glass CLI `wedsync-dr restore` with the same options.
"""

from wedsync_dr.policy import load_policy
from wedsync_dr.wiring.restore import build_restore_dag

# The restore Airflow DAG: schedule None, typed Params render its trigger form.
restore = build_restore_dag(load_policy(), doc_md=__doc__)
