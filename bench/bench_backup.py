"""Benchmark: the backup pipeline against named anchors, in one run, printed as ratios (not a test).

    .venv/bin/python bench/bench_backup.py [--weddings 20000] [--skip-load]

Uses the local stack of `make run` (started if needed) with demo data at the given scale (20,000 weddings
is about 1 GB of table data). Measures, on the same database:
1. `backup_client_data`'s extract + compress + encrypt (the library steps its tasks run) vs
   `pg_dump -Fc` and vs `pg_dump -Fp | zstd -3` of the same tables (goal: >= 1.2x the latter);
2. the three uploads (one per cloud, concurrently, as the DAG's three tasks run) vs one raw SDK upload of
   the same object to the slowest emulator (goal: <= 1.2x);
3. the peak RSS of each step, each run in its own process (goal: <= 200 MB at 1 GB and at 4 GB).
Shared cores make figures swing by about +-25%: compare the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "include"))

from wedsync_dr import local_stack  # noqa: E402

STEP_SCRIPT = """
import json, os, sys, time
sys.path.insert(0, {include!r})
from wedsync_dr import backup, catalog, crypto
from wedsync_dr.policy import load_policy
policy = load_policy()
step, arg = sys.argv[1], json.loads(sys.argv[2])
t0 = time.perf_counter()
if step == "extract":
    with catalog.connect() as conn:
        out = backup.run_extract(policy, policy.data_classes["client_data"], connect=catalog.db_connector("wedsync_db"),
                                 catalog_conn=conn)
elif step == "encrypt":
    out = backup.run_encrypt(policy, arg, crypto.KeyRing.from_connection(policy.key_ring_conn_id))
elif step == "upload":
    out = backup.run_upload(policy, arg["cloud"], arg["summary"])
seconds = time.perf_counter() - t0
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({{"out": out, "seconds": seconds, "rss_mb": hwm / 1024}}, default=str))
"""


def run_step(step: str, arg, env) -> dict:
    proc = subprocess.run([sys.executable, "-c", STEP_SCRIPT.format(include=str(REPO / "include")), step,
                           json.dumps(arg, default=str)], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{step} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def timed_shell(command: str, env) -> tuple[float, float]:
    """Seconds and peak RSS (MB, largest child) of a shell pipeline."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", command], env=env, check=True)
    seconds = time.perf_counter() - t0
    return seconds, max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


def raw_sdk_upload(stack, cloud: str, path: Path, key: str) -> float:
    """One upload of `path` with the cloud's SDK defaults: the anchor for our upload tasks."""
    t0 = time.perf_counter()
    if cloud == "aws":
        import boto3

        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{stack.port('s3')}", region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing").upload_file(
            str(path), local_stack.BUCKET, key)
    elif cloud == "azure":
        from azure.storage.blob import BlobServiceClient

        client = BlobServiceClient.from_connection_string(local_stack.azure_connection_string(stack.port("azure")))
        with open(path, "rb") as f:
            client.get_blob_client(local_stack.BUCKET, key).upload_blob(f, overwrite=True)
    else:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        client = storage.Client(project=local_stack.GCP_PROJECT, credentials=AnonymousCredentials())
        client.bucket(local_stack.BUCKET).blob(key).upload_from_filename(str(path))
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weddings", type=int, default=20000)
    parser.add_argument("--skip-load", action="store_true", help="reuse the demo data already loaded")
    args = parser.parse_args()

    state = local_stack.start()
    env = {**os.environ, **local_stack.environment(state)}
    os.environ.update(env)
    if not args.skip_load:
        subprocess.run([str(Path(sys.executable).parent / "wedsync-dr"), "demo-data", "--weddings",
                        str(args.weddings), "--photos", "0", "--documents", "0"], env=env, check=True)
    from wedsync_dr.policy import load_policy

    policy = load_policy()
    tables = policy.data_classes["client_data"].tables
    table_flags = " ".join(f"-t wedsync.{t}" for t in tables)
    reader = local_stack.READER_ROLE
    pg_env = {**env, "PGPASSWORD": state.passwords[reader]}
    port = state.port("postgres") if "postgres" in state.services else 5432
    dump = f"pg_dump -h 127.0.0.1 -p {port} -U {reader} -d {local_stack.SOURCE_DB} {table_flags}"

    print(f"== client_data at {args.weddings:,} weddings ==")
    ours_extract = run_step("extract", None, env)
    summary = ours_extract["out"]
    ours_encrypt = run_step("encrypt", summary, env)
    summary = ours_encrypt["out"]
    raw_mb = summary["plaintext_bytes"] / 1e6
    ours_s = ours_extract["seconds"] + ours_encrypt["seconds"]
    fc_s, fc_rss = timed_shell(f"{dump} -Fc > /dev/null", pg_env)
    zstd_s, zstd_rss = timed_shell(f"{dump} -Fp | zstd -3 -q > /dev/null", pg_env)
    print(f"raw table data {raw_mb:,.0f} MB -> {summary['compressed_bytes'] / 1e6:,.0f} MB zstd -> "
          f"{summary['ciphertext_bytes'] / 1e6:,.0f} MB encrypted")
    print(f"extract+compress+encrypt  {ours_s:6.1f} s  {raw_mb / ours_s:6.1f} MB/s")
    print(f"pg_dump -Fc               {fc_s:6.1f} s  {raw_mb / fc_s:6.1f} MB/s   ratio ours/this: {fc_s / ours_s:.2f}x")
    print(f"pg_dump -Fp | zstd -3     {zstd_s:6.1f} s  {raw_mb / zstd_s:6.1f} MB/s   ratio ours/this: "
          f"{zstd_s / ours_s:.2f}x  (goal >= 1.2x)")

    # Uploads: three concurrent processes, as three Airflow tasks on LocalExecutor.
    started = time.perf_counter()
    procs = {cloud: subprocess.Popen(
        [sys.executable, "-c", STEP_SCRIPT.format(include=str(REPO / "include")), "upload",
         json.dumps({"cloud": cloud, "summary": summary})], env=env, stdout=subprocess.PIPE, text=True)
        for cloud in policy.cloud_names}
    uploads = {cloud: json.loads(p.communicate()[0].strip().splitlines()[-1]) for cloud, p in procs.items()}
    three_s = time.perf_counter() - started
    encrypted = json.loads((Path(summary["staging_dir"]) / "encrypt.json").read_text())
    biggest = max(encrypted, key=lambda o: o["ciphertext_size"])
    slowest = max(uploads, key=lambda c: uploads[c]["seconds"])
    raw_s = sum(raw_sdk_upload(state, slowest, Path(o["path"]), f"bench/raw/{o['name']}") for o in encrypted)
    print(f"three uploads (concurrent) {three_s:6.1f} s; per cloud: "
          + ", ".join(f"{c} {u['seconds']:.1f}s" for c, u in uploads.items()))
    print(f"raw SDK upload to {slowest:6} {raw_s:6.1f} s   ratio three/raw: {three_s / raw_s:.2f}x  (goal <= 1.2x)"
          f"   largest object {biggest['ciphertext_size'] / 1e6:.0f} MB")
    rss = [f"extract {ours_extract['rss_mb']:.0f}", f"encrypt {ours_encrypt['rss_mb']:.0f}",
           *[f"upload_to_{c} {u['rss_mb']:.0f}" for c, u in uploads.items()], f"pg_dump|zstd {zstd_rss:.0f}"]
    print("peak RSS (MB): " + ", ".join(rss) + "  (goal <= 200)")
    shutil.rmtree(summary["staging_dir"], ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
