"""One step of a backup (client_data unless ARG names `data_class`), or its restore, in its own process, as its
Airflow task runs it (used by bench_staging.py, bench_dedup.py and bench_bundles.py through `common.task_step`, which
forks it from a process with Airflow loaded, as Airflow 3's supervisor forks a task; run by hand, it imports that).

    python bench/task_step.py STEP 'ARG as JSON'

STEP: extract, encrypt, upload, validate, restore or cleanup. ARG holds what the step needs (`summary`,
`cloud`, `uploads`, `backup_id`, `started_at` for extract) and may change the policy: `data_class`, `prefix`,
`chunk_kib` (the class's `dedup_chunk_kib`) and `dedup_bundles`; a restore may name its `source_cloud` and one
`wedding_id`. Prints one JSON line: the step's output, its seconds, its peak RSS (VmHWM), its CPU seconds (user +
system).
"""

import dataclasses
import datetime as dt
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "include"))

# An Airflow task process has Airflow loaded before its body runs: imports stay out of the timing
import airflow.providers.postgres.hooks.postgres  # noqa: F401
import airflow.sdk  # noqa: F401

from wedsync_dr import backup, catalog, crypto, restore
from wedsync_dr.policy import load_policy
from wedsync_dr.requests import check_request


def main(step: str, arg: dict) -> None:
    policy = load_policy()
    data_class = policy.data_classes[arg.get("data_class", "client_data")]
    changes = {field: arg[key] for key, field in (("chunk_kib", "dedup_chunk_kib"), ("dedup_bundles", "dedup_bundles"))
               if key in arg}
    if changes:
        data_class = dataclasses.replace(data_class, **changes)
        policy = policy.with_overrides(data_classes={**policy.data_classes, data_class.name: data_class})
    if "prefix" in arg:
        policy = policy.with_overrides(prefix=arg["prefix"])
    key_ring = crypto.KeyRing.from_connection(policy.key_ring_conn_id)
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    if step == "extract":
        started = dt.datetime.fromisoformat(arg["started_at"]) if arg.get("started_at") else None
        with catalog.connect() as conn:
            out = backup.run_extract(policy, data_class, connect=catalog.db_connector("wedsync_db"),
                                     catalog_conn=conn, key_ring=key_ring, started_at=started)
    elif step == "encrypt":
        out = backup.run_encrypt(policy, arg["summary"], key_ring)
    elif step == "upload":  # as the upload task: send, then prove this copy and commit once the quorum's are
        store = backup.stores(policy, [arg["cloud"]])[arg["cloud"]]
        out = backup.run_upload(policy, arg["cloud"], arg["summary"], store)
        out["rss_sent_mb"] = _peak_rss_mb()  # before the proof and the commit (which may write manifests elsewhere)
        with catalog.connect() as conn:
            before = catalog.is_committed(conn, arg["summary"]["backup_id"])
            out |= backup.check_and_commit(policy, arg["cloud"], arg["summary"], key_ring, conn, store)
            out["committed_now"] = out["committed"] and not before
    elif step == "validate":
        with catalog.connect() as conn:
            out = backup.run_validate(policy, arg["summary"], arg["uploads"], key_ring, conn)
    elif step == "restore":
        report = restore.run_restore(policy, check_request(policy, {"data_class": data_class.name,
                                                                    "backup_id": arg["backup_id"],
                                                                    **{k: arg[k] for k in ("source_cloud",
                                                                                           "wedding_id")
                                                                       if k in arg}}),
                                     stores=backup.stores(policy), key_ring=key_ring,
                                     db_connect=catalog.db_connector("wedsync_db_owner"))
        out = {"target": report.target, "sources": report.sources, "rows": sum(report.rows.values())}
    else:
        out = backup.cleanup(policy, arg["summary"]["backup_id"])
    seconds = time.perf_counter() - t0
    print(json.dumps({"out": out, "seconds": seconds, "rss_mb": _peak_rss_mb(),
                      "cpu_seconds": round(_cpu_seconds() - cpu0, 2)}, default=str))


def _cpu_seconds() -> float:
    """This process's user + system CPU: on 2 cores, what its step takes from the database's share."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
