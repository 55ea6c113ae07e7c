"""
### Cross-cloud repair

**What it does:** finds copies of kept backups that are missing or fail their checksum in any cloud and
re-copies them from a cloud whose copy is good (the ciphertext as it is, never re-encrypted), checks them
again, writes the manifest where the copy is whole, and updates the catalog: a degraded backup becomes
validated. Beside it, `sweep_abandoned_backups` removes what killed backup runs left (staging plaintext,
objects without a manifest) and marks them `abandoned`.

**When it runs:** daily at 03:45 UTC (every kept backup), and after each committed backup (degraded ones only).

**Runbook:**
- *sweep_abandoned_backups failed, "not cleaned up yet":* a cloud did not answer while a dead backup's
  objects were being looked at or deleted; the backup stays `running` and the next sweep retries. Nothing
  is deleted while any cloud cannot say whether it holds the backup's manifest.
- *"could not be repaired":* no cloud holds a good copy of an object, or the target cloud is down. If no good
  copy exists anywhere, that backup is lost: check the next older one with `wedsync-dr verify`.
"""

from wedsync_dr.policy import load_policy
from wedsync_dr.wiring.ops import build_repair_dag

# The backup_repair Airflow DAG.
backup_repair = build_repair_dag(load_policy(), doc_md=__doc__)
