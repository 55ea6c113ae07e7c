"""Backups, restores and an emergency run on a real CeleryExecutor whose two workers share no disk.

Redis (the broker), api-server, scheduler, dag-processor, triggerer and two Celery workers, each with its own
staging (scratch) and working directory, as on two hosts; the tasks of a run hand each other their files through
the staging bucket in the S3 emulator. Every run goes through the scheduler. One worker is also killed mid-run:
its task is retried on the other and the run completes.
"""

from __future__ import annotations

import hashlib
import time

import pytest

from tests.helpers import http_json, latest_backup, sdk_get, wait_for_dags, wait_for_run
from wedsync_dr import catalog
from wedsync_dr_dev import local_stack

pytestmark = pytest.mark.airflow_api
WORKERS = set(local_stack.CELERY_WORKERS)
BACKUP_DAGS = ("backup_critical_weddings", "backup_vendor_data", "backup_client_data", "backup_assets")


@pytest.fixture(scope="module")
def celery(stack, demo_data, airflow_db, shared_airflow):
    if not local_stack.redis_server_available():
        pytest.skip("no redis-server: `make test` installs Debian's redis-server (root + apt); install it elsewhere")
    shared_airflow.stop()  # the LocalExecutor components another module left running
    url = local_stack.start_celery_airflow(stack, port=local_stack.free_port(), dags_paused=True)
    status, body = http_json("POST", f"{url}/auth/token",
                             {"username": "admin", "password": stack.passwords["airflow_admin"]})
    assert status == 201, body
    api = (url, body["access_token"])
    try:
        local_stack.wait_for_celery_workers(stack)
        # the backup DAGs stay paused until their test
        wait_for_dags(*api, {*BACKUP_DAGS, "restore", "emergency_backup"}, unpause={"restore", "emergency_backup"})
        yield api
    finally:
        for name in [*local_stack.AIRFLOW_COMPONENTS, *local_stack.celery_services(stack)]:
            local_stack.stop_service(stack, name)


def _set_paused(api, dag_id: str, paused: bool) -> None:
    url, token = api
    status, body = http_json("PATCH", f"{url}/api/v2/dags/{dag_id}", {"is_paused": paused}, token)
    assert status == 200, body


def _scheduled_run(api, dag_id: str, timeout: float = 120) -> str:
    """The run the scheduler starts for a DAG once it is unpaused (its latest interval)."""
    url, token = api
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = http_json("GET", f"{url}/api/v2/dags/{dag_id}/dagRuns?limit=10", token=token)
        scheduled = [r for r in body.get("dag_runs", []) if r["run_type"] == "scheduled"]
        if scheduled:
            return scheduled[0]["dag_run_id"]
        time.sleep(2)
    pytest.fail(f"the scheduler started no run of {dag_id}")


def _trigger(api, dag_id: str, conf: dict | None = None) -> str:
    url, token = api
    status, body = http_json("POST", f"{url}/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None,
                                                                            "conf": conf or {}}, token)
    assert status == 200, body
    return body["dag_run_id"]


def _wait(api, dag_id: str, run_id: str, timeout: float = 600) -> dict:
    return wait_for_run(*api, dag_id, run_id, timeout)


def _task_instances(api, dag_id: str, run_id: str) -> list[dict]:
    url, token = api
    status, body = http_json("GET", f"{url}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=200",
                             token=token)
    assert status == 200, body
    return body["task_instances"]


def _workers_of(api, dag_id: str, run_id: str) -> set[str]:
    """The workers the run's tasks ran on, over every try (skipped tasks ran nowhere).

    A task instance shows the host of its latest try only: a task retried after its worker was killed names
    the survivor, so the killed worker is found in the task's tries.
    """
    url, token = api
    workers = set()
    for ti in _task_instances(api, dag_id, run_id):
        mapped = f"/{ti['map_index']}" if ti["map_index"] >= 0 else ""
        status, body = http_json("GET", f"{url}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/"
                                        f"{ti['task_id']}{mapped}/tries", token=token)
        assert status == 200, body
        workers |= {t["hostname"] for t in body["task_instances"] if t["hostname"]}
    return workers


def _every_copy_reads_back(stack, record: dict) -> None:
    manifest = record["manifest"]
    for cloud in ("aws", "azure", "gcp"):
        stored = [o for o in manifest["objects"] if "key" in o]  # a chunked object is its blobs (packs, chunks)
        for entry in [*stored, *manifest.get("blobs", [])]:
            assert hashlib.sha256(sdk_get(stack, cloud, entry["key"])).hexdigest() == entry["ciphertext_sha256"]


def _staging_bucket_keys(stack, backup_id: str) -> list[str]:
    s3 = local_stack.sdk_s3(stack)
    listed = s3.list_objects_v2(Bucket=local_stack.STAGING_BUCKET, Prefix=f"runs/{backup_id}/")
    return [o["Key"] for o in listed.get("Contents", [])]


@pytest.mark.timeout(1200)
def test_every_backup_runs_across_both_workers_and_every_copy_reads_back(celery, stack):
    for dag_id in BACKUP_DAGS:  # all at once, as the scheduler runs them: both workers stay busy
        _set_paused(celery, dag_id, False)
    try:
        runs = {dag_id: _scheduled_run(celery, dag_id) for dag_id in BACKUP_DAGS}
        spans = {}
        for dag_id, run_id in runs.items():
            assert _wait(celery, dag_id, run_id, 1000)["state"] == "success", _task_instances(celery, dag_id, run_id)
            spans[dag_id] = _workers_of(celery, dag_id, run_id)
            assert spans[dag_id] <= WORKERS, spans  # every task ran on one of the stack's two workers
    finally:
        for dag_id in BACKUP_DAGS:  # no later interval starts behind the next tests' backs
            _set_paused(celery, dag_id, True)
    assert any(workers == WORKERS for workers in spans.values()), f"no run used both workers: {spans}"
    with catalog.connect() as conn:
        for dag_id in BACKUP_DAGS:
            record = latest_backup(conn, dag_id.removeprefix("backup_"))
            assert record["status"] == "validated", record
            _every_copy_reads_back(stack, record)
            assert _staging_bucket_keys(stack, record["backup_id"]) == []  # the teardown emptied its staging
    for worker in WORKERS:  # nothing was left on either host: scratch is removed by the task that made it
        scratch = stack.directory / "workers" / worker / "staging"
        assert not [p for p in scratch.rglob("*") if p.is_file()], worker


@pytest.mark.timeout(900)
def test_a_restore_of_one_wedding_and_of_a_whole_class_run_on_the_workers(celery, stack):
    with catalog.connect() as conn:
        wedding_id = latest_backup(conn, "critical_weddings")["manifest"]["objects"][0]["wedding_id"]
    one = _trigger(celery, "restore", {"data_class": "critical_weddings", "wedding_id": wedding_id})
    whole = _trigger(celery, "restore", {"data_class": "vendor_data"})
    for run_id in (one, whole):
        assert _wait(celery, "restore", run_id)["state"] == "success", _task_instances(celery, "restore", run_id)
        assert _workers_of(celery, "restore", run_id) <= WORKERS


@pytest.mark.timeout(1200)
def test_an_emergency_backup_survives_a_worker_killed_mid_run(celery, stack):
    classes = ["vendor_data", "client_data"]
    run_id = _trigger(celery, "emergency_backup", {"reason": "celery worker failover drill", "scope": "classes",
                                                   "data_classes": classes})
    victim, task = None, None
    deadline = time.monotonic() + 300
    while victim is None and time.monotonic() < deadline:
        for ti in _task_instances(celery, "emergency_backup", run_id):
            if ti["state"] == "running" and ti["hostname"] in WORKERS and ti["task_id"].split(".")[0] in classes:
                victim, task = ti["hostname"], ti["task_id"]  # a step of a backup in scope, on its worker
                break
        time.sleep(0.3)
    assert victim, "no chain task was seen running"
    local_stack.stop_service(stack, f"celery-{victim}", kill=True)  # SIGKILL: no goodbye to the scheduler
    run = _wait(celery, "emergency_backup", run_id, timeout=900)
    instances = {ti["task_id"]: ti for ti in _task_instances(celery, "emergency_backup", run_id)}
    assert run["state"] == "success", instances
    survivor = (WORKERS - {victim}).pop()
    assert instances[task]["hostname"] == survivor and instances[task]["try_number"] >= 2, instances[task]
    assert _workers_of(celery, "emergency_backup", run_id) == WORKERS  # the victim's try counts: it ran there
    with catalog.connect() as conn:
        for data_class in classes:
            (backup_id,) = conn.execute(  # a killed try may have left a row of its own: the sweep settles it
                "SELECT backup_id FROM backup_catalog.backups WHERE run_id = %s AND data_class = %s "
                "AND status = 'validated'", (run_id, data_class)).fetchone()
            record = catalog.backup(conn, backup_id)
            assert "emergency" in record["labels"], record
            _every_copy_reads_back(stack, record)
