"""
### Backup health: cloud canaries and the RPO watch

**What it does:** every 5 minutes, `check_clouds` writes, reads back and deletes a small canary object in
each cloud through the same storage interface the backups use, and records latency and result in
`backup_catalog`; a cloud failing 3 checks in a row is *unhealthy* (emergency uploads and restores consult
this) and one success makes it healthy again — each change alerts. `rpo_watch` compares the age of the last
good backup of every class, and of every critical wedding, with its RPO; a breach alerts, and critical
weddings past their RPO (or a cloud that just went down) trigger `emergency_backup` automatically.

**When it runs:** every 5 minutes, one run at a time.

**Runbook:**
- *Cloud UNHEALTHY alert:* check the cloud's status page and credentials (`backup_<cloud>` connection).
  Backups continue on the other clouds (quorum 2 of 3); `backup_repair` fills the gap once it is back.
- *RPO breach for a class:* its backup DAG is failing or paused — open it.
- *Automatic emergency run:* see `emergency_backup`; its reason names the weddings.
"""

from wedsync_dr.policy import load_policy
from wedsync_dr.wiring.ops import build_health_dag

# The backup_health Airflow DAG.
backup_health = build_health_dag(load_policy(), doc_md=__doc__)
