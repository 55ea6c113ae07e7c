"""
### Restore drills

**What it does:** for each data class, restores a recent backup (rotating through the newest five) from a
cloud chosen in rotation into a scratch schema, verifies row counts and checksums against the manifest,
and drops the scratch copy. Critical weddings restore a sample of bundles; assets read back a sample of
their objects. Each drill is recorded in `backup_catalog.drills` and shown on the status page.

**When it runs:** daily at 04:30 UTC, and after each committed backup (asset-triggered).

**Runbook:**
- *drill_<class> failed:* a backup could not be restored from one cloud. Read the task log for the object and
  the reason; run `wedsync-dr verify --class <class> --backup-id <id>`; `backup_repair` re-copies bad copies.
"""

from wedsync_dr.policy import load_policy
from wedsync_dr.wiring.ops import build_drill_dag

# The backup_restore_drill Airflow DAG.
backup_restore_drill = build_drill_dag(load_policy(), doc_md=__doc__)
