"""Benchmark: `backup_client_data` through the staging bucket vs through the local staging directory, in one
run, as a ratio (not a test).

    .venv/bin/python bench/bench_staging.py [--gb 1] [--skip-load] [--repeat 2]

Uses the local stack of `make run` (started if needed) with demo data sized so that `client_data` holds about
`--gb` GB (40,000 weddings per GB). Each step of the backup runs in its own process, as its Airflow task does:
extract, encrypt, the three uploads at once, validate, teardown. Local: every step shares one staging directory
(LocalExecutor, one host). Remote: `$WEDSYNC_STAGING_URL` points at the staging bucket in the S3 emulator and
every step has its own scratch directory, as on its own host (extract seals; encrypt proves; each upload fetches
the ciphertext). Goal: remote <= 1.5x the local time; peak RSS (VmHWM) <= 200 MB for every step.
The emulators share this machine's 2 cores with the pipeline: compare the ratio, not absolute seconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import WEDDINGS_PER_GB, local_stack, stack_with_data, task_step


def step(name: str, arg: dict, env: dict[str, str], scratch: Path) -> dict:
    return task_step(name, arg, {**env, "WEDSYNC_STAGING_DIR": str(scratch)})


def backup_once(env: dict[str, str], remote: bool, root: Path) -> dict:
    """One backup, step by step; returns its seconds (the chain's critical path) and each step's RSS."""
    env = dict(env)
    env.pop("WEDSYNC_STAGING_URL", None)
    if remote:
        env["WEDSYNC_STAGING_URL"] = local_stack.staging_url(local_stack.StackState.load(
            local_stack.DEFAULT_STACK_DIR.resolve()))

    def scratch(name: str) -> Path:  # remote: every step on its own "host"; local: the one shared directory
        return root / (name if remote else "shared")

    rss: dict[str, float] = {}
    t0 = time.perf_counter()
    extracted = step("extract", {}, env, scratch("extract"))
    rss["extract"] = extracted["rss_mb"]
    encrypted = step("encrypt", {"summary": extracted["out"]}, env, scratch("encrypt"))
    rss["encrypt"] = encrypted["rss_mb"]
    clouds = ("aws", "azure", "gcp")
    with ThreadPoolExecutor(3) as pool:  # the three upload tasks run at once
        uploads = dict(zip(clouds, pool.map(lambda c: step("upload", {"cloud": c, "summary": encrypted["out"]}, env,
                                                           scratch(f"upload-{c}")), clouds), strict=True))
    rss |= {f"upload_to_{c}": u["rss_mb"] for c, u in uploads.items()}
    committer = next((c for c, u in uploads.items() if u["out"].get("committed_now")), "none")
    print("  uploads: " + ", ".join(f"{c} {u['out']['rss_sent_mb']:.0f} MB once sent" for c, u in uploads.items())
          + f"; committed by {committer}", flush=True)
    validated = step("validate", {"summary": encrypted["out"], "uploads": {c: u["out"] for c, u in uploads.items()}},
                     env, scratch("validate"))
    rss["validate"] = validated["rss_mb"]
    seconds = time.perf_counter() - t0
    step("cleanup", {"summary": encrypted["out"]}, env, scratch("cleanup"))
    assert validated["out"]["status"] == "validated", validated["out"]
    return {"seconds": seconds, "rss": rss, "ciphertext_mb": encrypted["out"]["ciphertext_bytes"] / 1e6,
            "steps": {"extract": extracted["seconds"], "encrypt": encrypted["seconds"],
                      "uploads": max(u["seconds"] for u in uploads.values()), "validate": validated["seconds"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--repeat", type=int, default=2, help="turns of each, taken alternately (medians)")
    args = parser.parse_args()
    _state, env = stack_with_data(None if args.skip_load else int(args.gb * WEDDINGS_PER_GB))
    results: dict[str, list[dict]] = {"local": [], "remote": []}
    with tempfile.TemporaryDirectory(prefix="bench-staging-") as tmp:
        for turn in range(args.repeat):
            for kind in ("local", "remote") if turn % 2 == 0 else ("remote", "local"):
                result = backup_once(env, kind == "remote", Path(tmp) / f"{kind}-{turn}")
                results[kind].append(result)
                print(f"{kind:6} turn {turn}: {result['seconds']:.1f} s ({result['ciphertext_mb']:.0f} MB "
                      f"ciphertext), steps " + ", ".join(f"{k} {v:.1f}" for k, v in result["steps"].items()),
                      flush=True)

    local, remote = (statistics.median(r["seconds"] for r in results[kind]) for kind in ("local", "remote"))
    print(f"\nbackup_client_data, {args.gb:g} GB: local staging {local:.1f} s, staging bucket {remote:.1f} s: "
          f"remote / local = {remote / local:.2f}x (goal <= 1.5x)")
    for kind in ("local", "remote"):
        peak = {k: max(r["rss"][k] for r in results[kind]) for k in results[kind][0]["rss"]}
        print(f"peak RSS {kind:6}: " + ", ".join(f"{k} {v:.0f} MB" for k, v in peak.items())
              + f"  (max {max(peak.values()):.0f} MB, goal <= 200)")
    os.environ.pop("WEDSYNC_STAGING_URL", None)


if __name__ == "__main__":
    main()
