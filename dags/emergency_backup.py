"""
### Emergency backup

Backs up **now**, ahead of every routine backup, when something is going wrong: a vendor's system failing
days before a wedding, a suspected breach, a cloud region going dark.

**What it does:** `check_request` applies the rules that span fields, checks the weddings exist (naming the
ones that do not), and coalesces with an emergency run already covering the scope. Then, per data class in
scope, the same pipeline as the routine backups (`extract → encrypt → upload_to_<cloud> → validate`), in the
emergency pool at the highest priority, retrying a down cloud only once (quorum still applies). Its backups
carry the `emergency` label and the reason, and are kept at least 90 days. `finish` records the outcome.

**When it runs:** triggered from the UI form, from `POST /api/v2/dags/emergency_backup/dagRuns` (see the
README), by `wedsync-dr emergency --reason ...`, or automatically by `backup_health` when a critical
wedding's last good backup is older than its RPO.

**Runbook:**
- *HTTP 400 on trigger:* the conf broke a rule (missing reason, unknown class, scope/list mismatch): the
  response says which. No run was created.
- *check_request failed "unknown wedding ids":* fix the ids; nothing was backed up.
- *Skipped "coalesced into":* an emergency run for the same scope was already running; your reason was
  recorded against it.
- *A class failed:* see its `validate` log (quorum) and the failed upload tasks.
"""

from wedsync_dr.policy import load_policy
from wedsync_dr.wiring.emergency import build_emergency_dag

# The emergency Airflow DAG (schedule None).
emergency_backup = build_emergency_dag(load_policy(), doc_md=__doc__)
