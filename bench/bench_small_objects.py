"""Benchmark: many small objects -- critical-wedding bundles -- sent one by one vs `upload.concurrency` at a time.

    .venv/bin/python bench/bench_small_objects.py [--weddings 40000] [--skip-load] [--objects 1000]

Backs up `critical_weddings` (the library steps its tasks run) from the demo data, keeps the first
`--objects` bundles (the issue's "1,000 critical weddings in one run"), then, for each cloud alone, times
`backup.run_upload` with `upload.concurrency` 1 (the anchor: one request at a time, as before) and with the
policy's value, after an untimed upload of the same objects, and the HEAD of every copy (validate's
request pattern) the same two ways.
Prints the ratios. Not a test. The emulators are CPU-bound servers on this machine's cores, and
gcp-storage-emulator serves one request at a time and rewrites an index of every object on each write:
against real clouds, where a request is mostly latency, concurrency gains more than here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import stack_with_data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weddings", type=int, default=40_000, help="demo weddings to load (about 10 %% critical)")
    parser.add_argument("--skip-load", action="store_true", help="reuse the demo data already loaded")
    parser.add_argument("--objects", type=int, default=1000, help="bundles to send per turn")
    args = parser.parse_args()

    stack_with_data(None if args.skip_load else args.weddings)
    from wedsync_dr import backup, catalog, crypto
    from wedsync_dr.parallel import in_parallel
    from wedsync_dr.policy import load_policy

    policy = load_policy()
    key_ring = crypto.KeyRing.from_connection(policy.key_ring_conn_id)
    with catalog.connect() as conn:
        t0 = time.perf_counter()
        summary = backup.run_extract(policy, policy.data_classes["critical_weddings"],
                                     connect=catalog.db_connector("wedsync_db"), catalog_conn=conn)
        t1 = time.perf_counter()
        summary = backup.run_encrypt(policy, summary, key_ring)
        t2 = time.perf_counter()
    staging = Path(summary["staging_dir"])
    encrypted = json.loads((staging / "encrypt.json").read_text())
    print(f"critical_weddings: {len(encrypted)} bundles, extract {t1 - t0:.1f} s, encrypt {t2 - t1:.1f} s")
    kept = encrypted[:args.objects]
    if len(kept) < args.objects:
        print(f"only {len(kept)} critical weddings in the demo data: load more with --weddings")
    (staging / "encrypt.json").write_text(json.dumps(kept))  # the upload step reads its objects from here
    summary = {**summary, "lock_until": None}  # turns overwrite the same keys: no write-once lock
    kib = sum(o["ciphertext_size"] for o in kept) / len(kept) / 1024
    print(f"{len(kept)} bundles per turn, {kib:.1f} KiB each on average; each cloud alone")

    concurrency = policy.upload_concurrency
    stores = backup.stores(policy)
    try:
        for cloud, store in stores.items():
            timings: dict[str, dict[int, float]] = {"upload": {}, "check": {}}
            # Untimed first: both timed turns then overwrite the same objects in a bucket of the same size
            # (gcp-storage-emulator's cost per write grows with the number of objects in the bucket).
            backup.run_upload(policy, cloud, summary, store=store)
            for turn in (1, concurrency):
                turn_policy = policy.with_overrides(upload_concurrency=turn)
                started = time.perf_counter()
                backup.run_upload(turn_policy, cloud, summary, store=store)
                timings["upload"][turn] = time.perf_counter() - started
                started = time.perf_counter()
                in_parallel(lambda obj, store=store: store.head(obj["key"]), kept, turn, "bench-check")
                timings["check"][turn] = time.perf_counter() - started
            for step, by_turn in timings.items():
                one, many = by_turn[1], by_turn[concurrency]
                print(f"{cloud:6s} {step:7s} one at a time {one:6.1f} s   {concurrency} at a time {many:6.1f} s   "
                      f"speed-up {one / many:.2f}x   ({len(kept) / many:.0f} objects/s)")
    finally:
        for store in stores.values():  # keep the emulators' buckets small for later runs
            store.delete_prefix(summary["prefix"] + "/")
        backup.cleanup(policy, summary["backup_id"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
