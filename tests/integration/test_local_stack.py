"""The local stack starts real services on loopback, reuses them, and stops every process it started."""

from __future__ import annotations

import json
import os
import socket

import psycopg
import pytest

from wedsync_dr_dev import local_stack

CONNECTION_IDS = {"wedsync_db", "wedsync_catalog", "backup_s3", "backup_azure", "backup_gcs"}


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_every_service_listens_on_loopback(stack):
    assert {"postgres", "s3", "azure", "gcs"} <= set(stack.services)
    for name in ("postgres", "s3", "azure", "gcs"):  # Airflow's components run only while a module needs them
        service = stack.services[name]
        assert service.is_running(), name
        assert _listening(service.port), name


def test_airflow_connections_are_exported(stack):
    for conn_id in CONNECTION_IDS:
        conn = json.loads(os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"])
        assert conn["conn_type"]
    assert os.environ["STORAGE_EMULATOR_HOST"] == f"http://127.0.0.1:{stack.port('gcs')}"
    env_file = stack.directory / "stack.env"
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"  # it holds database passwords


def test_the_buckets_are_made_for_backups(stack):
    """S3 with Object Lock (the policy locks every object); the GCS emulator's bucket without soft delete
    (it rewrites a metadata file listing every object, deleted ones too, on each write)."""
    lock = local_stack.sdk_s3(stack).get_object_lock_configuration(Bucket=local_stack.BUCKET)
    assert lock["ObjectLockConfiguration"]["ObjectLockEnabled"] == "Enabled"
    bucket = local_stack.sdk_gcs_bucket(stack)
    bucket.reload()
    assert bucket.soft_delete_policy.retention_duration_seconds == 0


def test_backup_role_cannot_write(stack, demo_data):
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    with PostgresHook(postgres_conn_id="wedsync_db").get_conn() as conn:
        assert isinstance(conn, psycopg.Connection)  # the hook hands out psycopg 3: COPY streams with it
        assert conn.execute("SELECT count(*) FROM wedsync.weddings").fetchone()[0] == 200
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("DELETE FROM wedsync.guests")


def test_start_is_idempotent(stack):
    again = local_stack.start(stack.directory)
    assert {n: s.pid for n, s in again.services.items()} == {n: s.pid for n, s in stack.services.items()}


def test_stop_leaves_no_process_behind(tmp_path_factory):
    directory = tmp_path_factory.mktemp("stack-lifecycle")
    state = local_stack.start(directory)
    pids = {name: service.pid for name, service in state.services.items()}
    try:
        assert all(state.services[name].is_running() for name in pids)
        stopped = local_stack.stop(directory)
        assert set(stopped) == set(pids)
        for name, pid in pids.items():
            assert not state.services[name].is_running(), f"{name} (pid {pid}) still running"
            # no child of the service survives either (azurite runs under node, moto forks workers)
            assert not _members_of_process_group(pid), name
        assert not any(_listening(port) for port in (s.port for s in state.services.values()))
    finally:
        local_stack.destroy(directory)


def _members_of_process_group(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members
