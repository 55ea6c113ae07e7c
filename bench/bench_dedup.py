"""Benchmark: deduplicated `client_data` backups (format 5: chunks in packs) over three days against restic, in one
run, as ratios (not a test).

    .venv/bin/python bench/bench_dedup.py [--gb 1] [--chunk-kib 1024 | --chunk-kib 256,512,1024,2048] [--skip-load]
    .venv/bin/python bench/bench_dedup.py --extract-turns 3 [--skip-load]   (day-1 extract + encrypt only)

Uses the local stack of `make run` (started if needed) with demo data sized so that `client_data` holds about
`--gb` GB (40,000 weddings per GB); it CHANGES that database (day 2's changes stay: `make run` reloads the demo).
Day 1: a full backup. Day 2: 2 % of the weddings see activity -- every row of 1 % of them updated, the guests and
tasks of 0.5 % deleted, new guests for 0.5 % inserted -- then VACUUM, as a live day would; backed up again.
Day 3: no change. Every timed side (ours, restic, the anchors) starts on an idle machine (`common.settle`:
what the last step left running -- an emulator persisting an upload, the checkpointer -- is not charged to the
next). Each step of a backup runs in its own process, as its Airflow task does: forked from one that
has Airflow loaded, as Airflow 3's supervisor forks a task (`common.task_step`; peak RSS = VmHWM).
restic (Debian's package) backs up `pg_dump -Fp` of the same tables on the same days with `--stdin` into a local
repository. What a day uploads per cloud counts its manifest too (format 5 lists every chunk: ~50,000 at 16 KiB).
Goals (issue #16): day 2 <= 10 % of day 1 uploaded per cloud and <= 1.2x what restic added, day 3
<= 1 %; day-1 extract+encrypt >= 1.0x `pg_dump -Fp | zstd -3`; day-2 backup <= restic's day 2; restore of day 2
<= 1.0x `pg_restore -j1`, byte-identical; peak RSS <= 200 MB per step.
restic 0.14 creates a version-2 repository, which compresses; its `data_added` is the size BEFORE compression
(checked: 124.6 MB of COPY-like text -> data_added 124.6 MB, 6.8 MB on disk), so what restic stored is measured as
the growth of its repository on disk, and `data_added` is printed beside it.
`--chunk-kib` takes a list (e.g. 256,512,1024,2048): every size backs up day 1 and day 2 of the same database
states, each under its own key prefix (`wedsync-dr-bench-dedup-<kib>`), and a table of the day-2 ratio and object
counts per size is printed; day 3, the restore and the full table are of the first size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, WEDDINGS_PER_GB, clean_slate, local_stack, settle, stack_with_data, task_step

PREFIX = "wedsync-dr-bench-dedup"  # + "-<chunk KiB>"
def step(name: str, arg: dict, env: dict[str, str]) -> dict:
    """A step of the `chunk_kib` policy variant, under that size's own prefix."""
    return task_step(name, {**arg, "prefix": f"{PREFIX}-{arg['chunk_kib']}"}, env)


def backup_once(env: dict[str, str], chunk_kib: int, day: int) -> dict:
    started = f"2026-01-0{day + 1}T02:00:00+00:00"
    rss: dict[str, float] = {}
    settle()
    t0 = time.perf_counter()
    extracted = step("extract", {"chunk_kib": chunk_kib, "started_at": started}, env)
    encrypted = step("encrypt", {"chunk_kib": chunk_kib, "summary": extracted["out"]}, env)
    clouds = ("aws", "azure", "gcp")
    with ThreadPoolExecutor(3) as pool:  # the three upload tasks run at once
        uploads = dict(zip(clouds, pool.map(lambda c: step("upload", {"chunk_kib": chunk_kib, "cloud": c,
                                                                      "summary": encrypted["out"]}, env), clouds),
                           strict=True))
    validated = step("validate", {"chunk_kib": chunk_kib, "summary": encrypted["out"],
                                  "uploads": {c: u["out"] for c, u in uploads.items()}}, env)
    seconds = time.perf_counter() - t0
    step("cleanup", {"chunk_kib": chunk_kib, "summary": encrypted["out"]}, env)
    manifest = _manifest_bytes(extracted["out"]["prefix"])
    assert validated["out"]["status"] == "validated", validated["out"]
    steps = {"extract": extracted["seconds"], "encrypt": encrypted["seconds"],
             **{f"upload_to_{c}": u["seconds"] for c, u in uploads.items()}, "validate": validated["seconds"]}
    rss = {"extract": extracted["rss_mb"], "encrypt": encrypted["rss_mb"],
           **{f"upload_to_{c}": u["rss_mb"] for c, u in uploads.items()}, "validate": validated["rss_mb"]}
    return {"seconds": seconds, "extract_encrypt": extracted["seconds"] + encrypted["seconds"], "rss": rss,
            "steps": steps,
            "clouds_asked": extracted["out"]["notes"].get("clouds_asked_seconds", 0),
            "backup_id": extracted["out"]["backup_id"], "totals": validated["out"]["totals"],
            "uploaded": {c: u["out"]["bytes"] + manifest for c, u in uploads.items()}, "manifest_bytes": manifest,
            "objects": {c: u["out"]["objects"] for c, u in uploads.items()}}


def _manifest_bytes(backup_prefix: str) -> int:
    """The size of a backup's manifest as stored (it is uploaded too: counted in what a day costs)."""
    from wedsync_dr import backup
    from wedsync_dr.policy import load_policy

    prefix = backup_prefix.split("/", 1)[0]
    return backup.stores(load_policy().with_overrides(prefix=prefix))["aws"].head(f"{backup_prefix}/manifest.json").size


def tables() -> list[str]:
    sys.path.insert(0, str(REPO / "include"))
    from wedsync_dr.policy import load_policy

    return list(load_policy().data_classes["client_data"].tables)


def pg_args(state) -> list[str]:
    return ["-d", state.admin_url(local_stack.SOURCE_DB), *[a for t in tables() for a in ("-t", f"wedsync.{t}")]]


def pg_dump_zstd_seconds(state) -> float:
    settle()
    t0 = time.perf_counter()
    subprocess.run(f"pg_dump -Fp {' '.join(pg_args(state))} | zstd -3 -q > /dev/null", shell=True, check=True)
    return time.perf_counter() - t0


def _tree_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def restic_backup(state, repo: Path, env: dict[str, str]) -> tuple[float, int, int]:
    """`pg_dump -Fp | restic backup --stdin`: (seconds, bytes the repository grew on disk -- compressed and
    encrypted, what restic would upload --, `data_added` -- new data before compression)."""
    before = _tree_bytes(repo)
    settle()
    t0 = time.perf_counter()
    dump = subprocess.Popen(["pg_dump", "-Fp", *pg_args(state)], stdout=subprocess.PIPE)
    out = subprocess.run(["restic", "-r", str(repo), "backup", "--stdin", "--stdin-filename", "client_data.sql",
                          "--json", "-q"], stdin=dump.stdout, env=env, capture_output=True, text=True, check=True)
    dump.wait()
    seconds = time.perf_counter() - t0
    summary = next(json.loads(line) for line in out.stdout.splitlines() if '"message_type":"summary"' in line)
    return seconds, _tree_bytes(repo) - before, summary["data_added"]


def change_two_percent(state) -> None:
    import psycopg

    with psycopg.connect(state.admin_url(local_stack.SOURCE_DB), autocommit=True) as conn:
        conn.execute("SELECT setseed(0.16)")
        ids = [r[0] for r in conn.execute(
            "SELECT wedding_id FROM wedsync.weddings ORDER BY random() LIMIT (SELECT count(*) / 50 FROM "
            "wedsync.weddings)").fetchall()]
        updated, deleted, added = ids[: len(ids) // 2], ids[len(ids) // 2: 3 * len(ids) // 4], ids[3 * len(ids) // 4:]
        for table in tables():
            columns = {r[0] for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'wedsync' "
                "AND table_name = %s", (table,)).fetchall()}
            if "wedding_id" in columns and "updated_at" in columns:
                conn.execute(f"UPDATE wedsync.{table} SET updated_at = now() WHERE wedding_id = ANY(%s)", (updated,))
        for table in ("guests", "tasks"):
            conn.execute(f"DELETE FROM wedsync.{table} WHERE wedding_id = ANY(%s)", (deleted,))
        conn.execute("INSERT INTO wedsync.guests (wedding_id, first_name, last_name, side, rsvp_status) "
                     "SELECT w, 'New', 'Guest ' || g, 'both', 'pending' FROM unnest(%s::bigint[]) w, "
                     "generate_series(1, 20) g", (added,))
        conn.execute("VACUUM (ANALYZE)")
        conn.execute("CHECKPOINT")


def restore_comparison(state, env: dict[str, str], chunk_kib: int, backup_id: str) -> dict:
    import psycopg

    settle()
    restored = step("restore", {"chunk_kib": chunk_kib, "backup_id": backup_id}, env)
    with tempfile.TemporaryDirectory(prefix="bench-dedup-dump-") as tmp:
        dump = Path(tmp) / "client_data.dump"
        subprocess.run(["pg_dump", "-Fc", "-Z0", "-f", str(dump), *pg_args(state)], check=True)
        with psycopg.connect(state.admin_url("postgres"), autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS bench_dedup_restore")
            conn.execute("CREATE DATABASE bench_dedup_restore")
        with psycopg.connect(state.admin_url("bench_dedup_restore"), autocommit=True) as conn:
            conn.execute("CREATE SCHEMA wedsync")  # `pg_dump -t` dumps the tables, not their schema
        settle()
        t0 = time.perf_counter()
        subprocess.run(["pg_restore", "-j1", "--no-owner", "-d", state.admin_url("bench_dedup_restore"), str(dump)],
                       check=False, capture_output=True)  # FKs to other classes' tables fail by design
        pg_restore = time.perf_counter() - t0
        with psycopg.connect(state.admin_url("bench_dedup_restore")) as conn:
            restored_rows = conn.execute("SELECT count(*) FROM wedsync.guests").fetchone()[0]
        assert restored_rows > 0, "pg_restore restored nothing: its timing would mean nothing"
    with psycopg.connect(state.admin_url(local_stack.SOURCE_DB), autocommit=True) as conn:
        identical = all(_sorted_copy(conn, "wedsync", t) == _sorted_copy(conn, restored["out"]["target"], t)
                        for t in tables())
        conn.execute(f'DROP SCHEMA "{restored["out"]["target"]}" CASCADE')
    with psycopg.connect(state.admin_url("postgres"), autocommit=True) as conn:
        conn.execute("DROP DATABASE bench_dedup_restore")
    return {"seconds": restored["seconds"], "rss": restored["rss_mb"], "pg_restore": pg_restore,
            "identical": identical}


def _sorted_copy(conn, schema: str, table: str) -> list[bytes]:
    import hashlib

    digests = []
    with conn.cursor() as cur, cur.copy(f'COPY "{schema}".{table} TO STDOUT') as copy:
        tail = b""
        for block in copy:
            lines = (tail + bytes(block)).split(b"\n")
            tail = lines.pop()
            digests += [hashlib.sha1(line).digest() for line in lines]
    return sorted(digests)


def _chunk_sizes(text: str | None) -> list[int]:
    if text:
        return [int(k) for k in text.split(",")]
    sys.path.insert(0, str(REPO / "include"))
    from wedsync_dr.policy import load_policy

    return [load_policy().data_classes["client_data"].dedup_chunk_kib or 1024]


def _chunk_objects(prefix: str) -> int:
    from wedsync_dr import backup
    from wedsync_dr.policy import load_policy

    return sum(1 for _ in backup.stores(load_policy().with_overrides(prefix=prefix))["aws"].list(f"{prefix}/chunks/"))


def extract_turns(state, env: dict[str, str], chunk_kib: int, turns: int) -> None:
    """Day-1 extract + encrypt only, `turns` times, alternating with `pg_dump -Fp | zstd -3` and the full-copy
    path. Nothing is uploaded or committed, so every turn is a day 1 (every chunk new, the clouds asked)."""
    prefix = f"{PREFIX}-extract-{chunk_kib}"
    rows = []
    for turn in range(turns):
        zstd = pg_dump_zstd_seconds(state)
        steps = {}
        for label, arg in (("chunked", {"chunk_kib": chunk_kib, "prefix": prefix}),
                           ("full copy", {"chunk_kib": 0, "prefix": f"{prefix}-full"})):
            extracted = task_step("extract", arg, env)
            encrypted = task_step("encrypt", {**arg, "summary": extracted["out"]}, env)
            task_step("cleanup", {**arg, "summary": encrypted["out"]}, env)
            steps[label] = (extracted["seconds"] + encrypted["seconds"], extracted["rss_mb"],
                            extracted["out"]["notes"].get("clouds_asked_seconds", 0))
        rows.append((zstd, steps))
        print(f"turn {turn + 1}: pg_dump|zstd {zstd:.1f} s, chunked {steps['chunked'][0]:.1f} s, "
              f"full copy {steps['full copy'][0]:.1f} s", flush=True)
    print(f"\nday-1 extract + encrypt of client_data, {chunk_kib} KiB chunks, vs `pg_dump -Fp | zstd -3`")
    print("| turn | pg_dump \\| zstd -3 | chunked (ratio, extract RSS) | of which asking the clouds (ratio without) | "
          "full copy (ratio) |\n|---|---|---|---|---|")
    for i, (zstd, steps) in enumerate(rows, 1):
        (chunked, rss, asked), (full, _, _) = steps["chunked"], steps["full copy"]
        print(f"| {i} | {zstd:.1f} s | {chunked:.1f} s = {zstd / chunked:.2f}x, {rss:.0f} MB | "
              f"{asked:.1f} s ({zstd / (chunked - asked):.2f}x) | {full:.1f} s = {zstd / full:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--extract-turns", type=int, metavar="N",
                        help="only day-1 extract + encrypt, N turns against pg_dump | zstd -3 (no upload, no change)")
    parser.add_argument("--chunk-kib", help="average chunk size, or a comma-separated list to sweep (default: the "
                                            "policy's dedup_chunk_kib, or 1024 when it is 0)")
    parser.add_argument("--skip-load", action="store_true")
    args = parser.parse_args()
    sizes = _chunk_sizes(args.chunk_kib)
    if not shutil.which("restic") and not args.extract_turns:
        raise SystemExit("restic is not installed: `apt-get install -y restic` (Debian's package, 0.14); "
                         "the comparison needs it")
    state, env = stack_with_data(None if args.skip_load else int(args.gb * WEDDINGS_PER_GB))
    sys.path.insert(0, str(REPO / "include"))
    if args.extract_turns:
        extract_turns(state, env, sizes[0], args.extract_turns)
        return
    for kib in sizes:  # a clean slate under each size's prefix
        clean_slate(f"{PREFIX}-{kib}")
    first = sizes[0]
    days: dict[int, list[dict]] = {kib: [] for kib in sizes}
    restic = []
    with tempfile.TemporaryDirectory(prefix="bench-dedup-restic-") as tmp:  # the repository and its cache
        repo = f"{tmp}/repo"
        restic_env = {**os.environ, "RESTIC_PASSWORD": "bench", "RESTIC_CACHE_DIR": f"{tmp}/cache"}
        subprocess.run(["restic", "-r", repo, "init", "-q"], env=restic_env, check=True, capture_output=True)
        zstd_seconds = pg_dump_zstd_seconds(state)
        for day in range(3):
            if day == 1:
                change_two_percent(state)
            for kib in sizes if day < 2 else [first]:  # every size on the same database states
                days[kib].append(backup_once(env, kib, day))
                d = days[kib][-1]
                print(f"day {day + 1}, {kib} KiB: ours {d['seconds']:.1f} s, uploaded per cloud "
                      f"{d['uploaded']['aws'] / 1e6:.1f} MB (manifest {d['manifest_bytes'] / 1e6:.2f} MB) in "
                      f"{d['objects']['aws']} objects (chunks "
                      f"{d['totals']['chunks']}, stored {d['totals']['chunks_stored']}); steps "
                      + ", ".join(f"{k} {v:.1f}" for k, v in d["steps"].items()) + " s", flush=True)
            restic.append(restic_backup(state, Path(repo), restic_env))
            print(f"day {day + 1}, restic: {restic[-1][0]:.1f} s, repository grew {restic[-1][1] / 1e6:.1f} MB "
                  f"(data_added {restic[-1][2] / 1e6:.1f} MB before compression)", flush=True)
        restored = restore_comparison(state, env, first, days[first][1]["backup_id"])
    d1, d2, d3 = days[first]
    r1, r2, r3 = restic
    peak = {k: max(d["rss"][k] for d in days[first]) for k in d1["rss"]} | {"restore": restored["rss"]}
    rows = [
        ("uploaded per cloud, day 2 / day 1", f"{d2['uploaded']['aws'] / 1e6:.1f} / {d1['uploaded']['aws'] / 1e6:.1f}"
         f" MB = {d2['uploaded']['aws'] / d1['uploaded']['aws']:.1%}", "<= 10 %"),
        ("uploaded per cloud, day 3 / day 1", f"{d3['uploaded']['aws'] / 1e6:.2f} MB = "
         f"{d3['uploaded']['aws'] / d1['uploaded']['aws']:.2%}", "<= 1 %"),
        ("restic repository growth, day 1 / 2 / 3 (data_added before compression)",
         " / ".join(f"{r[1] / 1e6:.1f}" for r in restic) + " MB (" + " / ".join(f"{r[2] / 1e6:.1f}" for r in restic)
         + f" MB); day 2 / day 1 = {r2[1] / r1[1]:.1%}", ""),
        ("day 2 uploaded per cloud vs restic's day-2 repository growth", f"{d2['uploaded']['aws'] / 1e6:.1f} vs "
         f"{r2[1] / 1e6:.1f} MB = {d2['uploaded']['aws'] / max(r2[1], 1):.2f}x", "<= 1.2x"),
        ("day-1 extract+encrypt vs pg_dump -Fp \\| zstd -3", f"{d1['extract_encrypt']:.1f} vs {zstd_seconds:.1f} s = "
         f"{zstd_seconds / d1['extract_encrypt']:.2f}x throughput; without asking the clouds for the new chunks "
         f"({d1['clouds_asked']:.1f} s) {zstd_seconds / (d1['extract_encrypt'] - d1['clouds_asked']):.2f}x", ">= 1.0x"),
        ("day-2 backup vs restic day 2", f"{d2['seconds']:.1f} vs {r2[0]:.1f} s = {d2['seconds'] / r2[0]:.2f}x",
         "<= 1.0x"),
        ("restore of day 2 vs pg_restore -j1", f"{restored['seconds']:.1f} vs {restored['pg_restore']:.1f} s = "
         f"{restored['seconds'] / restored['pg_restore']:.2f}x, identical: {restored['identical']}", "<= 1.0x"),
        ("objects per cloud per backup (day 1 / 2 / 3)", " / ".join(str(d["objects"]["aws"]) for d in days[first])
         + f"; chunk objects in the bucket: {_chunk_objects(f'{PREFIX}-{first}')}", ""),
        ("peak RSS per step over the three days, MB", ", ".join(f"{k} {v:.0f}" for k, v in peak.items()), "<= 200"),
    ]
    print(f"\nclient_data at --gb {args.gb:g}, chunks of {first} KiB on average")
    print("| measure | figure | goal |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if len(sizes) > 1:
        print("\n| chunk KiB | day 1 MB / objects per cloud | day 2 MB / objects | day 2 / day 1 | "
              "vs restic day 2 | day-2 backup s | chunk objects in the bucket |\n|---|---|---|---|---|---|---|")
        for kib in sizes:
            a, b = days[kib][:2]
            print(f"| {kib} | {a['uploaded']['aws'] / 1e6:.1f} / {a['objects']['aws']} | "
                  f"{b['uploaded']['aws'] / 1e6:.1f} / {b['objects']['aws']} | "
                  f"{b['uploaded']['aws'] / a['uploaded']['aws']:.1%} | {b['uploaded']['aws'] / max(r2[1], 1):.2f}x | "
                  f"{b['seconds']:.1f} | {_chunk_objects(f'{PREFIX}-{kib}')} |")


if __name__ == "__main__":
    main()
