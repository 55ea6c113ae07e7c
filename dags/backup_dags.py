"""
### Backup of `{data_class}`

{description}

**What it does:** `extract` reads the data from one consistent PostgreSQL snapshot (or the asset store)
into compressed staging files; `encrypt` seals each object with its own data key (Tink AES-GCM-HKDF
streaming format, key wrapped by the key ring's primary KEK) and deletes the plaintext; `upload_to_<cloud>`
sends the ciphertext to each cloud in its own task (retried alone with exponential backoff); `validate`
checks size and checksums of every copy, decrypts one object, writes the manifest **last** to every cloud
whose copy is whole, and records the run in `backup_catalog`. `cleanup_staging` always removes staging files;
a run killed outright skips it, so `extract` first removes what dead runs of the class left (staging,
objects without a manifest) and marks them `abandoned`.

**When it runs:** on the policy's schedule (`include/config/backup_policy.yaml`), one run at a time.

**Runbook:**
- *One upload failed, run green, backup DEGRADED:* a cloud is down or refusing writes. Check the failed
  `upload_to_<cloud>` log and the cloud's status; the `backup_repair` run copies the backup there once it is back.
- *validate failed with "quorum":* fewer than `quorum` clouds hold a valid copy. No manifest was written and
  the partial objects were removed, so the backup does not exist: fix the clouds, then clear the run.
- *encrypt failed with KeyUnavailableError:* the key ring connection `wedsync_backup_keys` is missing or has no
  primary key. Nothing was uploaded (fail closed). Restore the connection from the secrets backend.
- *extract failed:* check the `wedsync_db` connection and that the backup role can read the tables.
"""

from wedsync_dr.policy import load_policy
from wedsync_dr.wiring.backup_chain import build_backup_dag

# One Airflow DAG per data class of the policy (DAG files must name "airflow" and "dag" to be parsed).
_policy = load_policy()

for _name, _data_class in sorted(_policy.data_classes.items()):
    globals()[f"backup_{_name}"] = build_backup_dag(_policy, _data_class, doc_md=__doc__)
