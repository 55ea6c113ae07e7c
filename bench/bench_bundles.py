"""Benchmark: `critical_weddings` with content-addressed bundles in packs (format 5) at scale: a run stores only the
weddings that changed, against the same run re-sending every bundle, in one run, as ratios (not a test).

    .venv/bin/python bench/bench_bundles.py [--weddings 40000] [--changed-percent 2] [--skip-load] [--skip-full]

Uses the local stack of `make run` (started if needed), loaded with `--weddings` demo weddings (about one in ten
is within the 30-day critical window: ~4,000 at 40,000); it CHANGES that database (`make run` reloads the demo).
Run 1 stores every critical wedding's bundle (deduplicated: each bundle a content-addressed chunk, many to a pack). Then
`--changed-percent` of the critical weddings see activity -- a guest's RSVP and a timeline event's notes updated
for half of them, a task added for a quarter, a guest removed for the rest -- VACUUM, as a live database would.
Run 2 (deduplicated) must store exactly the changed weddings' bundles (in a pack or two); run 3, with no change, none;
run 4, after another such change (other weddings), is the steady state of a run every few minutes.
The anchor is the same run 2 with `dedup_bundles: false` (every bundle sealed and sent again, an object each),
under its own prefix. Each step runs in its own process, as its Airflow task does (peak RSS = VmHWM); an upload
task's time is what the task does: send, then prove its cloud's copy (every bundle the manifest references) and
commit at the quorum. Goals (issue #16): only the changed bundles sent; each cloud's upload task <= 10 s here.
`--skip-full` leaves the anchor out: it sends every bundle as an object of its own, which takes gcp-storage-emulator
~10 minutes at 40,000 weddings (each write re-serialises the metadata of every object it holds).
Objects sent per cloud are packs (deduplicated) or bundles (not); bundles stored are the manifest's `chunks_stored`.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import clean_slate, local_stack, stack_with_data, task_step

PREFIX = "wedsync-dr-bench-bundles"  # + "-dedup" | "-full"
CLOUDS = ("aws", "azure", "gcp")


def backup_once(env: dict[str, str], dedup: bool) -> dict:
    """One critical_weddings backup, step by step as its DAG runs it."""
    arg = {"data_class": "critical_weddings", "dedup_bundles": dedup,
           "prefix": f"{PREFIX}-{'dedup' if dedup else 'full'}"}
    t0 = time.perf_counter()
    extracted = task_step("extract", arg, env)
    encrypted = task_step("encrypt", {**arg, "summary": extracted["out"]}, env)
    with ThreadPoolExecutor(len(CLOUDS)) as pool:  # the three upload tasks run at once
        uploads = dict(zip(CLOUDS, pool.map(lambda c: task_step("upload", {**arg, "cloud": c,
                                                                           "summary": encrypted["out"]}, env),
                                            CLOUDS), strict=True))
    validated = task_step("validate", {**arg, "summary": encrypted["out"],
                                       "uploads": {c: u["out"] for c, u in uploads.items()}}, env)
    seconds = time.perf_counter() - t0
    task_step("cleanup", {**arg, "summary": encrypted["out"]}, env)
    assert validated["out"]["status"] == "validated", validated["out"]
    return {"seconds": seconds, "totals": validated["out"]["totals"],
            "steps": {"extract": extracted, "encrypt": encrypted, **{f"upload_to_{c}": u for c, u in uploads.items()},
                      "validate": validated},
            "backup_id": extracted["out"]["backup_id"],
            "sent": {c: u["out"]["objects"] for c, u in uploads.items()},
            "bytes": {c: u["out"]["bytes"] for c, u in uploads.items()},
            "upload_seconds": {c: u["seconds"] for c, u in uploads.items()},
            "send_seconds": {c: u["out"]["seconds"] for c, u in uploads.items()}}


def restore_into_new_schema(state, env: dict[str, str], backup_id: str, wedding_id: int | None = None) -> dict:
    """One wedding of a deduplicated backup into a new schema, as support restores it (its pack is fetched and
    verified whole: a pack holds hundreds of bundles, then its bundle's extent is loaded), or with no
    `wedding_id` every bundle (in pack order: each pack fetched once)."""
    import psycopg

    arg = {"data_class": "critical_weddings", "prefix": f"{PREFIX}-dedup", "backup_id": backup_id,
           **({"wedding_id": wedding_id} if wedding_id is not None else {})}
    restored = task_step("restore", arg, env)
    with psycopg.connect(state.admin_url(local_stack.SOURCE_DB), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{restored["out"]["target"]}" CASCADE')
    assert restored["out"]["rows"] > 0, restored["out"]
    return restored


def critical_wedding_ids(conn) -> list[int]:
    return [r[0] for r in conn.execute(  # the extract's own window (extract._critical_weddings)
        "SELECT wedding_id FROM wedsync.weddings WHERE wedding_date BETWEEN (now() AT TIME ZONE 'UTC')::date "
        "AND (now() AT TIME ZONE 'UTC')::date + 30 AND status <> 'cancelled' ORDER BY wedding_id").fetchall()]


def change_weddings(state, percent: float, seed: float = 0.16) -> tuple[int, list[int]]:
    """Activity on `percent` of the critical weddings, each change to a row only that wedding's bundle holds.
    Returns (critical weddings, the changed ones)."""
    import psycopg

    with psycopg.connect(state.admin_url(local_stack.SOURCE_DB), autocommit=True) as conn:
        critical = critical_wedding_ids(conn)
        conn.execute("SELECT setseed(%s)", (seed,))
        ids = [r[0] for r in conn.execute("SELECT w FROM unnest(%s::bigint[]) w ORDER BY random() LIMIT %s",
                                          (critical, max(1, round(len(critical) * percent / 100)))).fetchall()]
        updated, added, removed = ids[: len(ids) // 2], ids[len(ids) // 2: 3 * len(ids) // 4], ids[3 * len(ids) // 4:]
        conn.execute("UPDATE wedsync.guests SET updated_at = now(), rsvp_status = CASE rsvp_status "
                     "WHEN 'attending' THEN 'declined' ELSE 'attending' END WHERE guest_id IN "
                     "(SELECT min(guest_id) FROM wedsync.guests WHERE wedding_id = ANY(%s) GROUP BY wedding_id)",
                     (updated,))
        conn.execute("UPDATE wedsync.timeline_events SET notes = 'moved 30 minutes later', updated_at = now() "
                     "WHERE event_id IN (SELECT min(event_id) FROM wedsync.timeline_events "
                     "WHERE wedding_id = ANY(%s) GROUP BY wedding_id)", (updated,))
        conn.execute("INSERT INTO wedsync.tasks (wedding_id, title, due_date, status) "
                     "SELECT w, 'Confirm the final headcount', (now() + interval '7 days')::date, 'todo' "
                     "FROM unnest(%s::bigint[]) w", (added,))
        conn.execute("DELETE FROM wedsync.guests WHERE guest_id IN (SELECT max(guest_id) FROM wedsync.guests "
                     "WHERE wedding_id = ANY(%s) GROUP BY wedding_id)", (removed,))
        conn.execute("VACUUM (ANALYZE)")
        conn.execute("CHECKPOINT")
    return len(critical), sorted(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weddings", type=int, default=40_000)
    parser.add_argument("--changed-percent", type=float, default=2.0)
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--skip-full", action="store_true", help="no run without deduplication (the anchor)")
    args = parser.parse_args()
    state, env = stack_with_data(None if args.skip_load else args.weddings)
    for variant in ("dedup", "full"):
        clean_slate(f"{PREFIX}-{variant}")
    runs = {}
    critical, changed = 0, []
    # (the anchor needs no run 1: without deduplication every run seals and sends every bundle)
    # run 4 is the steady state: a change after runs that store a few bundles each (run 2 HEADs, once, every
    # bundle run 1 had just stored in S3, whose locks were recorded too soon after the write to be trusted)
    for label, dedup in (("run 1", True), ("change", None), ("run 2", True), ("run 2, not deduplicated", False),
                         ("run 3 (no change)", True), ("change again", None), ("run 4 (changed again)", True)):
        if dedup is False and args.skip_full:
            continue
        if dedup is None:
            critical, changed_now = change_weddings(state, args.changed_percent, 0.16 if not changed else 0.61)
            changed = changed or changed_now
            print(f"{len(changed_now)} of {critical} critical weddings changed", flush=True)
            continue
        runs[label] = backup_once(env, dedup)
        print(f"{label}: {runs[label]['seconds']:.1f} s, bundles stored {runs[label]['totals']['chunks_stored']}, "
              f"sent per cloud {runs[label]['sent']['aws']} objects", flush=True)
    run2, run3, run4 = runs["run 2"], runs["run 3 (no change)"], runs["run 4 (changed again)"]
    one = restore_into_new_schema(state, env, run4["backup_id"], changed[0])
    whole = restore_into_new_schema(state, env, run4["backup_id"])
    full2 = runs.get("run 2, not deduplicated")
    only_changed = run2["totals"]["chunks_stored"] == len(changed)
    rows = [
        ("critical weddings / changed", f"{critical} / {len(changed)} ({args.changed_percent:g} %)", ""),
        ("bundles stored, run 1 / run 2 / run 3", " / ".join(str(r["totals"]["chunks_stored"])
                                                            for r in (runs["run 1"], run2, run3))
         + f"; only the changed: {only_changed}", "only the changed"),
        ("objects sent per cloud (packs), run 1 / run 2 / run 3", " / ".join(
            ", ".join(f"{c} {r['sent'][c]}" for c in CLOUDS) for r in (runs["run 1"], run2, run3)), ""),
        ("upload task per cloud, run 2 (send + proof + commit)", ", ".join(
            f"{c} {run2['upload_seconds'][c]:.1f} s (send {run2['send_seconds'][c]:.1f})" for c in CLOUDS), "<= 10 s"),
        ("run 2 steps, s", ", ".join(f"{k} {v['seconds']:.1f}" for k, v in run2["steps"].items()), ""),
        ("run 3 (no change): whole run, sent per cloud", f"{run3['seconds']:.1f} s, {run3['sent']['aws']} objects", ""),
        ("upload task per cloud, run 3 (no change, no lock to extend)", ", ".join(
            f"{c} {run3['upload_seconds'][c]:.1f} s" for c in CLOUDS), "<= 10 s"),
        ("upload task per cloud, run 4 (another 2 % changed: the steady state)", ", ".join(
            f"{c} {run4['upload_seconds'][c]:.1f} s (send {run4['send_seconds'][c]:.1f}; {run4['sent'][c]} sent)"
            for c in CLOUDS), "<= 10 s"),
        ("objects per cloud per backup, run 2 (sent + manifest)", f"{run2['sent']['aws'] + 1}"
         + (f" (not deduplicated: {full2['sent']['aws'] + 1})" if full2 else ""), ""),
        ("one changed wedding restored from run 4 (its pack fetched whole)", f"{one['seconds']:.2f} s, "
         f"{one['out']['rows']} rows, {one['rss_mb']:.0f} MB peak RSS", "<= 2 s"),
        ("the whole class restored from run 4 (every bundle, each pack fetched once)", f"{whole['seconds']:.1f} s, "
         f"{whole['out']['rows']:,} rows, {whole['rss_mb']:.0f} MB peak RSS", ""),
        ("peak RSS per step over the runs, MB", ", ".join(
            f"{k} {max(r['steps'][k]['rss_mb'] for r in runs.values()):.0f}" for k in run2["steps"]), "<= 200"),
    ]
    if full2:  # the anchor: the same run 2 with every bundle sealed and sent again
        rows[3:3] = [
            ("MB sent per cloud, run 2 vs not deduplicated", f"{run2['bytes']['aws'] / 1e6:.2f} vs "
             f"{full2['bytes']['aws'] / 1e6:.1f} MB = {run2['bytes']['aws'] / full2['bytes']['aws']:.1%}", ""),
            ("upload task per cloud, run 2 not deduplicated", ", ".join(
                f"{c} {full2['upload_seconds'][c]:.1f} s" for c in CLOUDS), ""),
            ("whole run 2 vs not deduplicated", f"{run2['seconds']:.1f} vs {full2['seconds']:.1f} s = "
             f"{run2['seconds'] / full2['seconds']:.2f}x", ""),
        ]
    print(f"\ncritical_weddings at {args.weddings:,} weddings, run 2 after {args.changed_percent:g} % of the "
          "critical weddings changed")
    print("| measure | figure | goal |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
