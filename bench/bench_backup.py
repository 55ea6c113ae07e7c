"""Benchmark: the backup pipeline against named anchors, in one run, printed as ratios (not a test).

    .venv/bin/python bench/bench_backup.py [--gb 1] [--rss-gb 4] [--skip-load] [--repeat 3]

Uses the local stack of `make run` (started if needed) with demo data sized so that `client_data` holds
about `--gb` GB of table text (40,000 weddings per GB). Measures, on the same database:
1. `backup_client_data`'s extract + compress + encrypt (the library steps its tasks run, each in its own
   process, timed inside it) vs `pg_dump -Fc` and vs `pg_dump -Fp | zstd -3` of the same tables
   (goal: >= 1.2x the latter's throughput; medians of --repeat turns each, taken alternately);
2. the three uploads (one process per cloud, concurrently, as the DAG's three tasks run; timed until the
   last one is done) vs one raw SDK upload of the same objects to the slowest emulator -- the one whose
   raw upload takes longest (goal: <= 1.2x); and, for reference, the raw SDK uploading to all three at
   once the same way: what concurrency costs on this machine whoever the client is;
3. the peak RSS (VmHWM) of each step's process, at `--gb` and again at `--rss-gb` (goal: <= 200 MB at both).
Shared cores make figures swing by about +-25%: compare the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, WEDDINGS_PER_GB, load, local_stack, stack_with_data

STEP_SCRIPT = """
import json, os, resource, sys, time
sys.path.insert(0, {include!r})
from wedsync_dr import backup, catalog, crypto
from wedsync_dr.policy import load_policy
policy = load_policy()
step, arg = sys.argv[1], json.loads(sys.argv[2])
if step in ("extract", "encrypt") and arg.get("zstd_level"):  # the policy's knob, for the trade-off line
    policy = policy.with_overrides(zstd_level=arg["zstd_level"])
# An Airflow task process has Airflow loaded before the task body runs; module imports are per process,
# not per byte, so they stay out of the timed region (the raw anchor's SDK is imported before it too).
import airflow.sdk
import airflow.providers.postgres.hooks.postgres
if step == "upload":
    backup.stores(policy, [arg["cloud"]])[arg["cloud"]].head("bench/warm-up")  # imports the cloud's SDK
    print("ready", flush=True)
    sys.stdin.readline()  # the three uploads start together
t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
if step == "extract":
    with catalog.connect() as conn:
        out = backup.run_extract(policy, policy.data_classes["client_data"], connect=catalog.db_connector("wedsync_db"),
                                 catalog_conn=conn)
elif step == "encrypt":
    out = backup.run_encrypt(policy, arg["summary"], crypto.KeyRing.from_connection(policy.key_ring_conn_id))
elif step == "upload":
    out = backup.run_upload(policy, arg["cloud"], arg["summary"])
seconds = time.perf_counter() - t0
finished_at = time.time()  # the uploads' common clock: when the last of the three was done
r1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({{"out": out, "seconds": seconds, "finished_at": finished_at, "cpu_seconds": cpu,
                  "rss_mb": hwm / 1024}}, default=str))
"""


def run_step(step: str, arg, env) -> dict:
    proc = subprocess.run([sys.executable, "-c", STEP_SCRIPT.format(include=str(REPO / "include")), step,
                           json.dumps(arg, default=str)], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{step} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def timed_shell(command: str, env) -> float:
    """Seconds of a shell pipeline."""
    t0 = time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", command], env=env, check=True)
    return time.perf_counter() - t0


def raw_sdk_upload(stack, cloud: str, paths: list[Path], prefix: str, before_start=None) -> float:
    """Seconds to upload `paths`, one after another, with the cloud's SDK defaults: the anchor for our
    upload tasks. One client per cloud, made (and `before_start` called) before the clock starts."""
    if cloud == "aws":
        s3 = local_stack.sdk_s3(stack)

        def put(path: Path, key: str) -> None:
            s3.upload_file(str(path), local_stack.BUCKET, key)
    elif cloud == "azure":
        container = local_stack.sdk_azure_container(stack)

        def put(path: Path, key: str) -> None:
            with open(path, "rb") as f:
                container.get_blob_client(key).upload_blob(f, overwrite=True)
    else:
        bucket = local_stack.sdk_gcs_bucket(stack)

        def put(path: Path, key: str) -> None:
            bucket.blob(key).upload_from_filename(str(path))
    if before_start:
        before_start()
    t0 = time.perf_counter()
    for path in paths:
        put(path, f"{prefix}/{path.name}")
    return time.perf_counter() - t0


# The raw SDK uploads to all three emulators at once, one process per cloud like our upload tasks.
RAW_SCRIPT = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {bench!r})
import bench_backup
from common import local_stack
state = local_stack.StackState.load(local_stack.DEFAULT_STACK_DIR.resolve())
cloud, paths = sys.argv[1], [Path(p) for p in json.loads(sys.argv[2])]
seconds = bench_backup.raw_sdk_upload(state, cloud, paths, "bench/raw3",
                                      before_start=lambda: (print("ready", flush=True), sys.stdin.readline()))
print(json.dumps({{"seconds": seconds, "finished_at": time.time()}}))
"""


def extract_and_encrypt(env, zstd_level: int | None = None) -> tuple[dict, dict]:
    extracted = run_step("extract", {"zstd_level": zstd_level}, env)
    return extracted, run_step("encrypt", {"summary": extracted["out"], "zstd_level": zstd_level}, env)


EMULATOR = {"s3": "s3", "azure_blob": "azure", "gcs": "gcs"}  # cloud kind -> local_stack service


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def emulator_cpu(state, policy) -> dict[str, float]:
    return {c.name: process_cpu_seconds(state.services[EMULATOR[c.kind]].pid) for c in policy.clouds}


def start_together(commands: dict[str, list[str]], env, state, policy) -> tuple[dict, float, dict]:
    """Run one process per cloud; each prints "ready" once its SDK and client are set up, then all are
    told to go at once. Returns (each one's JSON result, wall seconds until the last one was done, each
    emulator's CPU seconds meanwhile)."""
    procs = {cloud: subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for cloud, argv in commands.items()}
    for cloud, proc in procs.items():
        while (line := proc.stdout.readline()).strip() != "ready":  # (log lines may come first)
            if not line:
                raise SystemExit(f"upload to {cloud} failed before it started")
    cpu_before = emulator_cpu(state, policy)
    started = time.time()
    for proc in procs.values():
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = {cloud: json.loads(p.communicate()[0].strip().splitlines()[-1]) for cloud, p in procs.items()}
    # until the last upload was done, not until its process had exited (interpreter teardown is no upload)
    wall = max(r["finished_at"] for r in results.values()) - started
    return results, wall, {c: s - cpu_before[c] for c, s in emulator_cpu(state, policy).items()}


def pipeline(policy, env, state) -> tuple[dict, dict, dict, float, dict]:
    """extract, encrypt, then the three uploads at once:
    (extract, encrypt, uploads, uploads' wall seconds, each emulator's CPU seconds during the uploads)."""
    extracted, encrypted = extract_and_encrypt(env)
    step = STEP_SCRIPT.format(include=str(REPO / "include"))
    uploads, wall, servers = start_together(
        {cloud: [sys.executable, "-c", step, "upload", json.dumps({"cloud": cloud, "summary": encrypted["out"]})]
         for cloud in policy.cloud_names}, env, state, policy)
    return extracted, encrypted, uploads, wall, servers


def rss_line(extracted: dict, encrypted: dict, uploads: dict) -> str:
    return ", ".join([f"extract {extracted['rss_mb']:.0f}", f"encrypt {encrypted['rss_mb']:.0f}",
                      *[f"upload_to_{c} {u['rss_mb']:.0f}" for c, u in uploads.items()]])


def forget_uploads(policy, prefixes: list[str]) -> None:
    """Delete what a measurement uploaded: gcp-storage-emulator rewrites one metadata file listing every
    object on each write, so objects left behind would slow every later run down."""
    from wedsync_dr import backup

    for store in backup.stores(policy).values():
        for prefix in prefixes:
            store.delete_prefix(prefix)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0, help="client_data size for the ratios")
    parser.add_argument("--rss-gb", type=float, default=4.0, help="second size, for peak RSS only (0: skip)")
    parser.add_argument("--skip-load", action="store_true", help="reuse the demo data already loaded")
    parser.add_argument("--repeat", type=int, default=3, help="turns of ours and of pg_dump | zstd -3 (medians)")
    args = parser.parse_args()

    weddings = round(args.gb * WEDDINGS_PER_GB)
    state, env = stack_with_data(None if args.skip_load else weddings)
    from wedsync_dr.policy import load_policy

    policy = load_policy()
    tables = policy.data_classes["client_data"].tables
    table_flags = " ".join(f"-t wedsync.{t}" for t in tables)
    reader = local_stack.READER_ROLE
    pg_env = {**env, "PGPASSWORD": state.passwords[reader]}
    port = state.port("postgres") if "postgres" in state.services else 5432
    dump = f"pg_dump -h 127.0.0.1 -p {port} -U {reader} -d {local_stack.SOURCE_DB} {table_flags}"

    print(f"== client_data at {weddings:,} weddings ==")
    extracted, encrypted, uploads, three_s, servers = pipeline(policy, env, state)
    summary = encrypted["out"]
    raw_mb = summary["plaintext_bytes"] / 1e6
    fc_s = timed_shell(f"{dump} -Fc > /dev/null", pg_env)
    # Ours and the zstd anchor take turns, --repeat times each; the ratio is of the medians. A single pair
    # swung between 1.14x and 1.33x on this machine, mostly through the anchor (7.3-8.2 s).
    ours_runs = [extracted["seconds"] + encrypted["seconds"]]
    zstd_runs = [timed_shell(f"{dump} -Fp | zstd -3 -q > /dev/null", pg_env)]
    for _ in range(args.repeat - 1):
        again_x, again_e = extract_and_encrypt(env)
        ours_runs.append(again_x["seconds"] + again_e["seconds"])
        shutil.rmtree(again_e["out"]["staging_dir"], ignore_errors=True)
        zstd_runs.append(timed_shell(f"{dump} -Fp | zstd -3 -q > /dev/null", pg_env))
    ours_s, zstd_s = statistics.median(ours_runs), statistics.median(zstd_runs)
    print(f"table data {raw_mb:,.0f} MB as binary COPY in {summary['objects']} objects -> "
          f"{summary['compressed_bytes'] / 1e6:,.0f} MB zstd -{policy.zstd_level} -> "
          f"{summary['ciphertext_bytes'] / 1e6:,.0f} MB encrypted")
    print(f"extract+compress+encrypt  {ours_s:6.1f} s  {raw_mb / ours_s:6.1f} MB/s  "
          f"(first run: extract {extracted['seconds']:.1f} s, encrypt {encrypted['seconds']:.1f} s)")
    print(f"pg_dump -Fc               {fc_s:6.1f} s   ratio ours/this: {fc_s / ours_s:.2f}x")
    print(f"pg_dump -Fp | zstd -3     {zstd_s:6.1f} s   ratio ours/this: {zstd_s / ours_s:.2f}x  (goal >= 1.2x)")
    if len(ours_runs) > 1:
        print(f"  medians of {len(ours_runs)} turns each -- ours " + " / ".join(f"{t:.1f}" for t in ours_runs)
              + " s, pg_dump | zstd -3 " + " / ".join(f"{t:.1f}" for t in zstd_runs) + " s; pairwise ratios "
              + " / ".join(f"{z / o:.2f}" for o, z in zip(ours_runs, zstd_runs, strict=True)))
    if policy.zstd_level > 1:  # the trade-off the policy's compression level makes
        level = policy.zstd_level - 1
        lower_x, lower_e = extract_and_encrypt(env, level)
        lower_s = lower_x["seconds"] + lower_e["seconds"]
        print(f"  same at zstd -{level}: {lower_s:.1f} s, {lower_e['out']['compressed_bytes'] / 1e6:,.0f} MB zstd; "
              f"ratio vs pg_dump | zstd -3: {zstd_s / lower_s:.2f}x")
        shutil.rmtree(lower_e["out"]["staging_dir"], ignore_errors=True)

    objects = json.loads((Path(summary["staging_dir"]) / "encrypt.json").read_text())
    paths = [Path(o["path"]) for o in objects]
    raw = {cloud: raw_sdk_upload(state, cloud, paths, "bench/raw") for cloud in policy.cloud_names}
    slowest = max(raw, key=raw.get)
    raw_three, raw_three_s, raw_servers = start_together(
        {cloud: [sys.executable, "-c", RAW_SCRIPT.format(bench=str(Path(__file__).resolve().parent)), cloud,
                 json.dumps([str(p) for p in paths])] for cloud in policy.cloud_names}, env, state, policy)
    print(f"three uploads (concurrent) {three_s:6.1f} s; per cloud: "
          + ", ".join(f"{c} {u['seconds']:.1f}s" for c, u in uploads.items()))
    cpu_total = sum(servers.values()) + sum(u["cpu_seconds"] for u in uploads.values())
    print("CPU seconds during them: emulators " + ", ".join(f"{c} {s:.1f}" for c, s in servers.items())
          + ", our three tasks " + ", ".join(f"{c} {u['cpu_seconds']:.1f}" for c, u in uploads.items())
          + f"; {cpu_total:.1f} in all = at least {cpu_total / os.cpu_count():.1f} s on {os.cpu_count()} cores")
    print("raw SDK upload, one cloud at a time: " + ", ".join(f"{c} {s:.1f}s" for c, s in raw.items()))
    print(f"slowest raw upload ({slowest}) {raw[slowest]:6.1f} s   ratio three/raw: {three_s / raw[slowest]:.2f}x  "
          f"(goal <= 1.2x)   largest object {max(o['ciphertext_size'] for o in objects) / 1e6:.0f} MB")
    print(f"raw SDK to all three at once {raw_three_s:6.1f} s = {raw_three_s / raw[slowest]:.2f}x the slowest alone "
          f"(what concurrency costs here, whoever uploads); ours/this: {three_s / raw_three_s:.2f}x; emulator CPU "
          + ", ".join(f"{c} {s:.1f}" for c, s in raw_servers.items()) + f" = {sum(raw_servers.values()):.1f} CPU-s")
    print(f"peak RSS (MB) at {args.gb:g} GB: {rss_line(extracted, encrypted, uploads)}  (goal <= 200)")
    shutil.rmtree(summary["staging_dir"], ignore_errors=True)
    forget_uploads(policy, [summary["prefix"] + "/", "bench/raw/", "bench/raw3/"])

    if args.rss_gb:
        big = round(args.rss_gb * WEDDINGS_PER_GB)
        print(f"== client_data at {big:,} weddings (peak RSS) ==")
        load(env, big)
        extracted, encrypted, uploads, three_s, _ = pipeline(policy, env, state)
        summary = encrypted["out"]
        print(f"raw table data {summary['plaintext_bytes'] / 1e6:,.0f} MB in {summary['objects']} objects; "
              f"extract+encrypt {extracted['seconds'] + encrypted['seconds']:.1f} s, three uploads {three_s:.1f} s")
        print(f"peak RSS (MB) at {args.rss_gb:g} GB: {rss_line(extracted, encrypted, uploads)}  (goal <= 200)")
        shutil.rmtree(summary["staging_dir"], ignore_errors=True)
        forget_uploads(policy, [summary["prefix"] + "/"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
