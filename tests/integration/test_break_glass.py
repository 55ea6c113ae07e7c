"""Break-glass verbs against the real stack with clouds hung (issue #18, items 4, 6 and 8).

A hung cloud is an emulator stopped with SIGSTOP: connections still open (the kernel accepts them), nothing
ever answers, so a client waits for its SDK's read timeout. A verb told `--from-cloud gcp` must finish
without waiting on aws or azure, and a catalog rebuilt from one cloud must hold what retention needs.
The seconds each CLI call took with two clouds hung go to test-artifacts/break-glass-timings.json.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from tests.helpers import run_backup_steps, run_dag, run_in_terminal
from wedsync_dr import backup, catalog, crypto, retention
from wedsync_dr.policy import load_policy
from wedsync_dr.restore import list_manifest_keys
from wedsync_dr.wiring.backup_chain import build_backup_dag
from wedsync_dr_dev import local_stack

POLICY = load_policy()
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
EMULATORS = {"aws": "s3", "azure": "azure", "gcp": "gcs"}  # cloud -> the stack's service
CLI_TIMEOUT = 120  # a verb that touched a hung cloud waits far longer, on the SDKs' own timeouts
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def emulators_left_running(stack):
    """Whatever happens here, every emulator answers again when the module ends."""
    yield
    for cloud, name in EMULATORS.items():
        assert _process_state(stack.services[name].pid) != "T", f"{name} is still stopped"
        assert backup.stores(POLICY, [cloud])[cloud].head(f"{POLICY.prefix}/break-glass-probe") is None
    if TIMINGS:
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "break-glass-timings.json").write_text(json.dumps(TIMINGS, indent=2) + "\n")
        print("\nbreak-glass CLI seconds:", json.dumps(TIMINGS, indent=2))


@pytest.fixture(scope="module")
def backed_up(stack, demo_data, airflow_db):
    """Fresh critical_weddings and vendor_data backups in all three clouds; yields {class: catalog record}."""
    records = {}
    for name in ("critical_weddings", "vendor_data"):
        dag = build_backup_dag(POLICY, POLICY.data_classes[name], doc_md="test")
        run = run_dag(dag)
        assert run.state == "success", name
        with catalog.connect() as conn:
            records[name] = catalog.backup_for_run(conn, dag.dag_id, run.run_id)
        assert records[name]["status"] == "validated", records[name]
    return records


def _process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@contextlib.contextmanager
def _hung(stack, *clouds: str):
    """SIGSTOP the clouds' emulators (their whole process group); SIGCONT them again whatever happens."""
    stopped = []
    try:
        for cloud in clouds:
            service = stack.services[EMULATORS[cloud]]
            assert service.is_running(), cloud
            os.killpg(service.pid, signal.SIGSTOP)
            stopped.append(service)
            deadline = time.monotonic() + 5
            while _process_state(service.pid) != "T":
                assert time.monotonic() < deadline, f"{cloud} did not stop"
                time.sleep(0.05)
        yield
    finally:
        for service in stopped:
            os.killpg(service.pid, signal.SIGCONT)


def _cli(stack, label: str, *argv: str, timeout: float = CLI_TIMEOUT, **env_changes: str):
    """Run `wedsync-dr argv` as an operator would; returns the finished process (fails if it did not finish)."""
    env = {**os.environ, **local_stack.environment(stack), **env_changes}
    started = time.monotonic()
    try:
        result = subprocess.run([sys.executable, "-m", "wedsync_dr.cli", *argv], env=env, capture_output=True,
                                text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`wedsync-dr {' '.join(argv)}` did not finish in {timeout}s: it waited on a hung cloud")
    TIMINGS[label] = round(time.monotonic() - started, 2)
    return result


def _printed(result, first: str) -> list[str]:
    """What the verb printed, from its last line starting with `first` on (Airflow's structlog lines go to
    stdout too, before it)."""
    lines = result.stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(first)]
    assert starts, (first, result.stdout)
    return lines[starts[-1]:]


def _mentions_another_cloud(result, used: str) -> list[str]:
    """Lines of the verb's output or logs that name a cloud it was told not to use (a failover, a listing
    warning, a hook that logs its connection: "AWS Connection (conn_id='backup_s3' ...")."""
    others = [c for c in POLICY.cloud_names if c != used]
    return [line for line in (result.stdout + result.stderr).splitlines()
            if any(re.search(rf"\b{c}\b", line, re.IGNORECASE) for c in others)]


def _owner(stack) -> psycopg.Connection:
    return psycopg.connect(stack.role_url(local_stack.OWNER_ROLE, local_stack.SOURCE_DB), autocommit=True)


def _rows(conn, schema: str, table: str) -> list[bytes]:
    buffer = io.BytesIO()
    with conn.cursor() as cur, cur.copy(f"COPY {schema}.{table} TO STDOUT") as copy:
        for chunk in copy:
            buffer.write(chunk)
    return sorted(buffer.getvalue().splitlines())


UNREACHABLE_CATALOG = json.dumps({"conn_type": "postgres", "host": "127.0.0.1", "port": local_stack.free_port(),
                                  "login": "nobody", "password": "x", "schema": "nothing"})


# ----------------------------------------------------------------------------- item 4 / 8: --from-cloud only


def test_restore_verify_and_list_from_gcp_finish_with_aws_and_azure_hung(stack, backed_up):
    critical = backed_up["critical_weddings"]["manifest"]
    soonest = next(o["wedding_id"] for o in critical["objects"] if o.get("wedding_id"))
    vendor_id = backed_up["vendor_data"]["backup_id"]
    with _hung(stack, "aws", "azure"):
        restored = _cli(stack, "restore critical_weddings --wedding-id soonest (aws, azure hung)",
                        "restore", "--class", "critical_weddings", "--wedding-id", "soonest", "--from-cloud", "gcp",
                        "--source-cloud", "gcp")
        verified = _cli(stack, "verify vendor_data (aws, azure hung)",
                        "verify", "--class", "vendor_data", "--from-cloud", "gcp")
        listed = _cli(stack, "list vendor_data (aws, azure hung)",
                      "list", "--from-cloud", "gcp", "--class", "vendor_data")

    assert restored.returncode == 0, restored.stderr
    report = _printed(restored, "restore of ")
    first = report[0]
    assert first.startswith(f"restore of critical_weddings backup {critical['backup_id']}, wedding {soonest} into ")
    assert (restored.stdout + restored.stderr).count(first) == 1  # printed once: not logged as well
    assert "  served by: gcp (1)" in report and not [line for line in report if "failover" in line], report
    assert not _mentions_another_cloud(restored, "gcp"), restored.stdout + restored.stderr
    schema = first.rsplit(" into ", 1)[1]
    try:
        with _owner(stack) as conn:
            assert conn.execute(f"SELECT wedding_id FROM {schema}.weddings").fetchall() == [(soonest,)]
    finally:
        with _owner(stack) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

    assert verified.returncode == 0, verified.stderr
    assert _printed(verified, f"{vendor_id} in ") == [f"{vendor_id} in gcp: OK"], verified.stdout
    assert not _mentions_another_cloud(verified, "gcp"), verified.stdout + verified.stderr

    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in _printed(listed, "class ")[2:]]
    assert [vendor_id, "committed", "gcp"] in [row[1:] for row in rows], listed.stdout
    assert rows and all(row[0] == "vendor_data" and row[-1] == "gcp" for row in rows), listed.stdout
    assert not _mentions_another_cloud(listed, "gcp"), listed.stdout + listed.stderr


def test_in_a_terminal_restore_shows_its_progress_and_report_once_and_logs_to_a_file(stack, backed_up, tmp_path):
    vendor_id = backed_up["vendor_data"]["backup_id"]
    objects = backed_up["vendor_data"]["manifest"]["objects"]
    env = {**os.environ, **local_stack.environment(stack), "WEDSYNC_LOG_DIR": str(tmp_path)}
    try:
        returncode, shown = run_in_terminal([sys.executable, "-m", "wedsync_dr.cli", "restore", "--class",
                                             "vendor_data", "--target", "terminal_vendor"], env, timeout=CLI_TIMEOUT)
        assert returncode == 0, shown
        (log_file,) = tmp_path.glob("restore-*.log")
        logged = log_file.read_text()
        first = f"restore of vendor_data backup {vendor_id} into terminal_vendor"
        assert shown.index(f"logs: {log_file}") < shown.index("restore vendor_data") < shown.index(first)
        assert shown.count(first) == 1 and first not in logged  # the report: printed once, on the terminal
        rows = sum(o["rows"] for o in objects)
        assert f"done  {len(objects)} objects, {rows:,} rows into terminal_vendor" in shown
        # the library's and Airflow's log records are in the file, not on the terminal
        for record in ("restoring vendor_data backup", "key ring from connection wedsync_backup_keys"):
            assert record in logged and record not in shown
    finally:
        with _owner(stack) as conn:
            conn.execute("DROP SCHEMA IF EXISTS terminal_vendor CASCADE")


def test_from_cloud_verbs_need_neither_the_catalog_nor_the_other_clouds(stack, backed_up):
    """The catalog database unreachable AND aws and azure hung: a whole-class restore, verify and list from gcp."""
    vendor_id = backed_up["vendor_data"]["backup_id"]
    tables = POLICY.data_classes["vendor_data"].tables
    with _owner(stack) as conn:
        conn.execute("DROP SCHEMA IF EXISTS break_glass_vendor CASCADE")
    with _hung(stack, "aws", "azure"):
        restored = _cli(stack, "restore vendor_data, catalog unreachable (aws, azure hung)",
                        "restore", "--class", "vendor_data", "--from-cloud", "gcp", "--target", "break_glass_vendor",
                        AIRFLOW_CONN_WEDSYNC_CATALOG=UNREACHABLE_CATALOG)
        verified = _cli(stack, "verify vendor_data, catalog unreachable (aws, azure hung)",
                        "verify", "--class", "vendor_data", "--from-cloud", "gcp", "--sample", "0.5",
                        AIRFLOW_CONN_WEDSYNC_CATALOG=UNREACHABLE_CATALOG)
        listed = _cli(stack, "list, catalog unreachable (aws, azure hung)", "list", "--from-cloud", "gcp",
                      AIRFLOW_CONN_WEDSYNC_CATALOG=UNREACHABLE_CATALOG)
    try:
        assert restored.returncode == 0, restored.stderr
        report = _printed(restored, "restore of ")
        assert report[0] == f"restore of vendor_data backup {vendor_id} into break_glass_vendor"
        assert f"  served by: gcp ({len(tables)})" in report and not [r for r in report if "failover" in r], report
        assert not _mentions_another_cloud(restored, "gcp"), restored.stdout + restored.stderr
        with _owner(stack) as conn:
            for table in tables:
                assert _rows(conn, "break_glass_vendor", table) == _rows(conn, "wedsync", table), table
    finally:
        with _owner(stack) as conn:
            conn.execute("DROP SCHEMA IF EXISTS break_glass_vendor CASCADE")
    assert verified.returncode == 0, verified.stderr
    assert _printed(verified, f"{vendor_id} in ") == [f"{vendor_id} in gcp: OK"], verified.stdout
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in _printed(listed, "class ")[2:]]
    assert {"critical_weddings", "vendor_data"} <= {row[0] for row in rows}, listed.stdout
    assert all(row[-1] == "gcp" for row in rows), listed.stdout
    assert not _mentions_another_cloud(listed, "gcp"), listed.stdout + listed.stderr


def test_bad_or_contradicting_options_are_refused_before_any_cloud_is_read(stack, backed_up):
    """Every cloud hung: a refusal that does not depend on a backup must not wait for one to be found."""
    cases = [
        (["verify", "--class", "vendor_data", "--from-cloud", "gcp", "--cloud", "aws"],
         "--cloud aws and --from-cloud gcp"),
        (["verify", "--class", "vendor_data", "--from-cloud", "gcp", "--sample", "0"], "--sample 0.0"),
        (["restore", "--class", "vendor_data", "--wedding-id", "3", "--target", "in_place", "--confirm",
          "RESTORE vendor_data", "--from-cloud", "gcp"], "never in place"),
        (["restore", "--class", "client_data", "--target", "in_place"], "RESTORE client_data"),
    ]
    with _hung(stack, "aws", "azure", "gcp"):
        results = [(argv, expected, _cli(stack, f"refused: {' '.join(argv)} (all hung)", *argv, timeout=60))
                   for argv, expected in cases]
    for argv, expected, result in results:
        assert result.returncode == 1, (argv, result.stdout, result.stderr)
        assert result.stderr.strip().count("\n") == 0 and expected in result.stderr, (argv, result.stderr)


# ----------------------------------------------------------------------------- item 6: the rebuilt catalog


def _retention_rows(conn) -> dict[str, dict]:
    """What retention.run reads of each backup."""
    rows = conn.execute(
        "SELECT backup_id, data_class, status, started_at, labels, retain_until, prefix "
        "FROM backup_catalog.backups WHERE status <> 'deleted' AND status <> 'running' AND starts_with(prefix, %s)",
        (f"{POLICY.prefix}/",)).fetchall()
    keys = ("backup_id", "data_class", "status", "started_at", "labels", "retain_until", "prefix")
    return {r[0]: dict(zip(keys, r, strict=True)) for r in rows}


def _catalog_admin(stack) -> psycopg.Connection:
    return psycopg.connect(stack.role_url(local_stack.CATALOG_ROLE, local_stack.CATALOG_DB), autocommit=True)


def test_a_catalog_rebuilt_from_azure_holds_what_retention_needs(stack, backed_up):
    """A normal and an emergency backup, the catalog dropped, rebuilt from azure (aws and gcp hung): every
    backup keeps its retain_until, labels and start, and a retention plan keeps exactly what it kept before."""
    key_ring = crypto.KeyRing.from_connection(POLICY.key_ring_conn_id)
    vendor = POLICY.data_classes["vendor_data"]
    with catalog.connect() as conn:
        normal = run_backup_steps(POLICY, vendor, catalog_conn=conn, key_ring=key_ring)["backup_id"]
        emergency = run_backup_steps(POLICY, vendor, catalog_conn=conn, key_ring=key_ring, labels=("emergency",),
                                     min_retention_days=POLICY.emergency_min_retention_days)["backup_id"]
        original = _retention_rows(conn)
    ours = {normal, emergency, backed_up["vendor_data"]["backup_id"], backed_up["critical_weddings"]["backup_id"]}
    assert ours <= original.keys()
    lock = dt.timedelta(days=POLICY.lock_days(vendor))
    assert original[normal]["retain_until"] == original[normal]["started_at"] + lock
    assert original[emergency]["labels"] == ["emergency"]
    assert original[emergency]["retain_until"] >= (original[emergency]["started_at"]
                                                   + dt.timedelta(days=POLICY.emergency_min_retention_days))

    with _catalog_admin(stack) as conn:  # "dropped": the CLI finds no schema; the original is kept aside
        conn.execute("ALTER SCHEMA backup_catalog RENAME TO backup_catalog_before_rebuild")
    try:
        with _hung(stack, "aws", "gcp"):
            rebuilt_run = _cli(stack, "rebuild-catalog from azure (aws, gcp hung)",
                               "rebuild-catalog", "--from-cloud", "azure")
        assert rebuilt_run.returncode == 0, rebuilt_run.stderr
        assert not _mentions_another_cloud(rebuilt_run, "azure"), rebuilt_run.stdout + rebuilt_run.stderr
        with catalog.connect() as conn:
            rebuilt = _retention_rows(conn)
    finally:
        with _catalog_admin(stack) as conn:
            conn.execute("DROP SCHEMA IF EXISTS backup_catalog CASCADE")
            conn.execute("ALTER SCHEMA backup_catalog_before_rebuild RENAME TO backup_catalog")

    azure = backup.stores(POLICY, ["azure"])["azure"]
    in_azure = {key.rsplit("/", 2)[-2] for name in POLICY.data_classes
                for key in list_manifest_keys(azure, POLICY, name)}
    assert _printed(rebuilt_run, "catalog rebuilt") == [f"catalog rebuilt from azure: {len(in_azure)} backups"]
    assert rebuilt.keys() == in_azure and ours <= in_azure
    # (other modules of a session may leave rows no cloud manifest backs: compare what both know)
    common = rebuilt.keys() & original.keys()
    assert ours <= common
    before = {b: original[b] for b in common}
    rebuilt = {b: rebuilt[b] for b in common}
    for backup_id, row in rebuilt.items():
        was = before[backup_id]
        assert row["status"] == "degraded" and was["status"] in catalog.GOOD_STATUSES, backup_id
        for field in ("data_class", "started_at", "labels", "retain_until", "prefix"):
            assert row[field] == was[field], (backup_id, field, row[field], was[field])

    now = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)  # inside every lock, past no emergency minimum
    planned_before = retention.plan(POLICY, list(before.values()), now)
    planned_after = retention.plan(POLICY, list(rebuilt.values()), now)
    assert planned_after.keep == planned_before.keep
    assert sorted(planned_after.delete) == sorted(planned_before.delete)
    # the plan depends on the holds: at least one of our backups is kept for its lock alone, and the
    # emergency one for its label and its hold
    only_locked = [b for b in ours if [r.split(" ", 1)[0] for r in planned_after.keep.get(b, [])] == ["immutable"]]
    assert only_locked, {b: planned_after.keep.get(b) for b in ours}
    assert "emergency" in planned_after.keep[emergency]
    assert any(r.startswith("immutable until") for r in planned_after.keep[emergency])
