"""
### Backup retention

**What it does:** applies the policy's grandfather-father-son rules per class (e.g. hourly 48 h, daily 35 d,
weekly 12 w, monthly 12 m), keeps emergency backups at least 90 days and anything under an immutability
hold, and never deletes the last good backup of a class. A backup is deleted manifest first, then its
objects, so a half-deleted backup never looks valid; asset blobs go only when no kept backup references them.
First, `sweep_abandoned_backups` removes what killed backup runs left and marks them `abandoned`
(see `backup_repair`).

**When it runs:** daily at 03:15 UTC.

**Runbook:**
- *"could not be deleted":* a cloud refused (down, or an object lock still holds): the run retries tomorrow.
"""

from wedsync_dr.policy import load_policy
from wedsync_dr.wiring.ops import build_retention_dag

# The backup_retention Airflow DAG.
backup_retention = build_retention_dag(load_policy(), doc_md=__doc__)
