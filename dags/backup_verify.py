"""
### Verify a backup

Answers "could we restore this backup from that cloud?" without restoring it.

**What it does:** `check_request` resolves the backup in the catalog (`latest`: the newest good backup of the
class). Then one task per cloud (`verify_in_<cloud>`, skipped for clouds not asked for) downloads the chosen
fraction of the backup's objects from that cloud alone, checks each ciphertext checksum, decrypts and
decompresses it and checks the plaintext checksum against the manifest — nothing is written anywhere. Each
cloud's verdict (objects read, problems, sample and seed) is recorded in `backup_catalog.verifications`, shown
on the status page and answered by `GET /wedsync-dr/api/verifications?run_id=<run id>`.

**When it runs:** only when triggered (UI form, REST API); `wedsync-dr verify` does the same without Airflow.

**Runbook:**
- *verify_in_<cloud> failed:* that cloud's copy has missing or corrupt objects (listed in the task log and the
  `verify_failed` alert). Trigger `backup_repair`, which re-copies them from a good cloud, then verify again
  (same `seed` to re-read the same sample); the alert clears when the copy verifies.
- *check_request failed:* the backup id is unknown, of another class, or never committed: `wedsync-dr list`.
"""

from wedsync_dr.policy import load_policy
from wedsync_dr.wiring.ops import build_verify_dag

# The backup_verify Airflow DAG: schedule None, typed Params render its trigger form.
backup_verify = build_verify_dag(load_policy(), doc_md=__doc__)
