"""A hung cloud (its emulator SIGSTOPped) does not hold back a backup (issue #18 item 3): every request is
bounded by the policy's timeouts, and the backup commits as soon as the quorum's copies are proven -- while
the hung cloud's upload is still waiting -- then ends degraded, for repair to fill in.

The three uploads run at once in threads, as an executor runs the three upload tasks. The times are printed
(they go in the issue's note), not asserted: a slow machine must not fail the test.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time

import pytest

from tests.helpers import a_supplier_changed
from wedsync_dr import backup, catalog, crypto, format
from wedsync_dr.policy import load_policy

POLICY = load_policy()
HUNG = POLICY.with_overrides(prefix="wedsync-dr-hung", upload_retries=0, clouds=tuple(
    dataclasses.replace(c, timeouts={"connect_seconds": 2, "read_seconds": 5}) for c in POLICY.clouds))


def _backup_with_parallel_uploads(key_ring, *, hang: int | None = None) -> dict:
    """extract + encrypt, then one thread per cloud (upload, prove, commit); returns timings and outcome."""
    data_class = HUNG.data_classes["vendor_data"]
    with catalog.connect() as conn:
        summary = backup.run_extract(HUNG, data_class, connect=catalog.db_connector("wedsync_db"), catalog_conn=conn,
                                     key_ring=key_ring)
    summary = backup.run_encrypt(HUNG, summary, key_ring)
    results: dict[str, dict | None] = {}

    def upload(cloud: str) -> None:
        try:
            store = backup.stores(HUNG, [cloud])[cloud]
            sent = backup.run_upload(HUNG, cloud, summary, store)
            with catalog.connect() as conn:
                results[cloud] = {**sent, **backup.check_and_commit(HUNG, cloud, summary, key_ring, conn, store)}
        except Exception as err:  # noqa: BLE001 - as a failed upload task: validate sees None
            results[cloud] = None
            print(f"upload to {cloud} failed: {type(err).__name__}: {str(err)[:200]}")

    started = time.monotonic()
    threads = {c: threading.Thread(target=upload, args=(c,), daemon=True) for c in HUNG.cloud_names}
    try:
        if hang is not None:
            os.kill(hang, signal.SIGSTOP)
        for thread in threads.values():
            thread.start()
        committed_at, still_running = None, []
        while time.monotonic() - started < 600:
            with catalog.connect() as conn:
                if catalog.is_committed(conn, summary["backup_id"]):
                    committed_at = time.monotonic() - started
                    still_running = sorted(c for c, t in threads.items() if t.is_alive())
                    break
            if not any(t.is_alive() for t in threads.values()):
                break
            time.sleep(0.2)
        for thread in threads.values():  # the hung cloud stays hung: its requests must give up by themselves
            thread.join(timeout=300)
        finished_at = time.monotonic() - started
    finally:
        if hang is not None:
            os.kill(hang, signal.SIGCONT)
    try:
        with catalog.connect() as conn:
            validated = backup.run_validate(HUNG, summary, {c: results.get(c) for c in HUNG.cloud_names}, key_ring,
                                            conn)
    finally:
        backup.cleanup(HUNG, summary["backup_id"])
    return {"committed_at": committed_at, "still_running": still_running, "finished_at": finished_at,
            "validated": validated, "summary": summary}


@pytest.fixture(scope="module")
def key_ring(stack, demo_data, airflow_db):
    yield crypto.KeyRing.from_connection(POLICY.key_ring_conn_id)
    with catalog.connect() as conn:
        conn.execute("DELETE FROM backup_catalog.backups WHERE starts_with(prefix, %s)", (f"{HUNG.prefix}/",))


def test_a_hung_cloud_does_not_hold_back_the_commit(stack, key_ring):
    healthy = _backup_with_parallel_uploads(key_ring)
    assert healthy["validated"]["status"] == "validated"

    with a_supplier_changed(stack):  # a new pack for the hung cloud to wait on
        hung = _backup_with_parallel_uploads(key_ring, hang=stack.services["azure"].pid)
    print(f"healthy: committed after {healthy['committed_at']:.1f}s, done after {healthy['finished_at']:.1f}s; "
          f"azure hung: committed after {hung['committed_at']:.1f}s (still waiting: {hung['still_running']}), "
          f"the hung upload gave up after {hung['finished_at']:.1f}s; read timeout 5s")
    # committed while the hung cloud's upload was still waiting on it, by the two healthy clouds
    assert hung["committed_at"] is not None and hung["still_running"] == ["azure"]
    # its upload gave up by itself (bounded requests, no retry here), and the backup is degraded: repair's job
    result = hung["validated"]
    assert result["clouds_ok"] == ["aws", "gcp"] and result["status"] == "degraded"
    stores = backup.stores(HUNG)
    for cloud in result["clouds_ok"]:
        assert stores[cloud].head(format.manifest_key(hung["summary"]["prefix"])) is not None, cloud


class _AnotherCloud:
    """A cloud an upload task must not touch while it proves and commits its own copy (loading another cloud's
    SDK is what took the committing task over 200 MB)."""

    def __init__(self, cloud: str, task: str):
        self.cloud, self.task = cloud, task

    def __getattr__(self, name: str):
        raise AssertionError(f"the upload task of {self.task} used {self.cloud}'s store ({name})")


def _prove_and_commit_alone(monkeypatch, cloud: str, summary: dict, key_ring, store) -> dict:
    """As an upload task: send, then prove and commit with every other cloud's store forbidden."""
    backup.run_upload(HUNG, cloud, summary, store)
    with monkeypatch.context() as patched:
        patched.setattr(backup, "stores", lambda policy, names=None: {
            c: _AnotherCloud(c, cloud) for c in policy.cloud_names if c != cloud and (names is None or c in names)})
        with catalog.connect() as conn:
            return backup.check_and_commit(HUNG, cloud, summary, key_ring, conn, store)


def _staged(key_ring) -> dict:
    with catalog.connect() as conn:
        summary = backup.run_extract(HUNG, HUNG.data_classes["vendor_data"], connect=catalog.db_connector("wedsync_db"),
                                     catalog_conn=conn, key_ring=key_ring)
    return backup.run_encrypt(HUNG, summary, key_ring)


def test_each_upload_task_writes_its_own_clouds_manifest_and_the_quorums_last_commits_touching_no_other(
        stack, key_ring, monkeypatch):
    stores = backup.stores(HUNG)
    summary = _staged(key_ring)
    manifest = format.manifest_key(summary["prefix"])
    try:
        first = _prove_and_commit_alone(monkeypatch, "aws", summary, key_ring, stores["aws"])
        assert first["copy"] == "validated" and not first["committed"]  # one copy: below the quorum of two
        assert stores["aws"].head(manifest) is not None  # its proven copy has its manifest already
        with catalog.connect() as conn:
            assert not catalog.is_committed(conn, summary["backup_id"])
        second = _prove_and_commit_alone(monkeypatch, "gcp", summary, key_ring, stores["gcp"])
        assert second["copy"] == "validated" and second["committed"]
        assert stores["gcp"].head(manifest) is not None and stores["azure"].head(manifest) is None
        with catalog.connect() as conn:
            result = backup.run_validate(HUNG, summary, {"aws": first, "gcp": second, "azure": None}, key_ring, conn)
            recorded = catalog.backup(conn, summary["backup_id"])
        assert result["status"] == "degraded" and result["clouds_ok"] == ["aws", "gcp"]
        assert recorded["manifest"] == json.loads(stores["aws"].read_bytes(manifest))  # the same bytes everywhere
        assert stores["aws"].read_bytes(manifest) == stores["gcp"].read_bytes(manifest)
        late = _prove_and_commit_alone(monkeypatch, "azure", summary, key_ring, stores["azure"])  # its copy, late
        assert late["copy"] == "validated" and late["committed"]
        assert stores["azure"].read_bytes(manifest) == stores["aws"].read_bytes(manifest)
        with catalog.connect() as conn:
            assert catalog.backup(conn, summary["backup_id"])["status"] == "validated"
    finally:
        backup.cleanup(HUNG, summary["backup_id"])


def test_a_run_below_the_quorum_deletes_the_manifest_its_one_proven_copy_wrote(stack, key_ring, monkeypatch):
    stores = backup.stores(HUNG)
    summary = _staged(key_ring)
    manifest = format.manifest_key(summary["prefix"])
    try:
        alone = _prove_and_commit_alone(monkeypatch, "azure", summary, key_ring, stores["azure"])
        assert alone["copy"] == "validated" and not alone["committed"]
        assert stores["azure"].head(manifest) is not None
        with catalog.connect() as conn, pytest.raises(backup.QuorumNotMet):
            backup.run_validate(HUNG, summary, {"aws": None, "gcp": None, "azure": alone}, key_ring, conn)
        assert stores["azure"].head(manifest) is None
        assert not list(stores["azure"].list(f"{summary['prefix']}/"))
        late = _prove_and_commit_alone(monkeypatch, "aws", summary, key_ring, stores["aws"])  # after the failure
        assert not late["committed"] and stores["aws"].head(manifest) is None  # no manifest for a failed run
        with catalog.connect() as conn:
            assert catalog.backup(conn, summary["backup_id"])["status"] == "failed"
    finally:
        backup.cleanup(HUNG, summary["backup_id"])
