"""Helpers shared by several test modules (import from here, not from another test file)."""

from __future__ import annotations

import datetime as dt
import fcntl
import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.text import Text

from wedsync_dr import backup, catalog, crypto, format
from wedsync_dr.console import StepBoard, new_progress
from wedsync_dr.policy import DataClass, Policy
from wedsync_dr.storage import ObjectStore
from wedsync_dr_dev import local_stack


def run_dag(dag, conf: dict | None = None):
    """dag.test() returns the DagRun (it does not raise when a task fails): the caller asserts its state."""
    return dag.test(run_conf=conf)


def run_in_terminal(argv: list[str], env: dict[str, str], timeout: float = 300, columns: int = 160
                    ) -> tuple[int, str]:
    """Run `argv` with a pseudo-terminal as its stdin, stdout and stderr, as a person at a terminal would;
    returns its exit status and everything it showed there (escape sequences stripped, lines as shown)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    child = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=REPO,
                             start_new_session=True)
    os.close(slave)
    shown = bytearray()
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:  # a hang guard: nothing shown for `timeout` seconds
                child.kill()
                raise TimeoutError(f"{argv} showed nothing for {timeout}s")
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal (it exited)
                break
            if not data:
                break
            shown += data
    finally:
        os.close(master)
        returncode = child.wait(timeout)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode(errors="replace"))
    return returncode, text.replace("\r\n", "\n")


class Screen:
    """A StepBoard drawn by rich into a string as on a terminal of 140 columns, on a clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0
        self.out = io.StringIO()
        console = Console(file=self.out, force_terminal=True, width=140, color_system=None)
        self.progress = new_progress(console, get_time=lambda: self.now, auto_refresh=False)
        self.progress.start()
        self.board = StepBoard(self.progress)

    def rows(self) -> list[str]:
        """The rows as they read now (the last frame drawn)."""
        self.progress.refresh()
        frames = Text.from_ansi(self.out.getvalue()).plain.split("\r")
        frame = frames[-1] if frames[-1].strip() else frames[-2]
        return [line.rstrip() for line in frame.splitlines() if line.strip()][-len(self.progress.tasks):]

    def close(self) -> list[str]:
        self.progress.stop()
        return [line.rstrip() for line in Text.from_ansi(self.out.getvalue()).plain.splitlines() if line.strip()]


def http_json(method: str, url: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def wait_for_dags(url: str, token: str, wanted: set[str], *, unpause: set[str] | None = None,
                  timeout: float = 240) -> None:
    """Until the dag-processor has serialised every DAG in `wanted`; then unpause those in `unpause`
    (default: all of them)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = http_json("GET", f"{url}/api/v2/dags?limit=100", token=token)
        if status == 200 and wanted <= {d["dag_id"] for d in body["dags"]}:
            break
        time.sleep(2)
    else:
        raise AssertionError(f"DAGs not parsed in {timeout:.0f}s: {body}")
    for dag_id in sorted(wanted if unpause is None else unpause):
        status, body = http_json("PATCH", f"{url}/api/v2/dags/{dag_id}", {"is_paused": False}, token)
        assert status == 200, body


def wait_for_run(url: str, token: str, dag_id: str, run_id: str, timeout: float = 420) -> dict:
    """The DAG run once it has finished (success or failed)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, run = http_json("GET", f"{url}/api/v2/dags/{dag_id}/dagRuns/{run_id}", token=token)
        if run.get("state") in ("success", "failed"):
            return run
        time.sleep(2)
    raise AssertionError(f"{dag_id} run {run_id} did not finish in {timeout:.0f}s: {run}")


def sdk_get(stack, cloud: str, key: str) -> bytes:
    """Read an object with the cloud's own SDK (not the product's storage layer)."""
    if cloud == "aws":
        return local_stack.sdk_s3(stack).get_object(Bucket=local_stack.BUCKET, Key=key)["Body"].read()
    if cloud == "azure":
        return local_stack.sdk_azure_container(stack).get_blob_client(key).download_blob().readall()
    return local_stack.sdk_gcs_bucket(stack).blob(key).download_as_bytes()


def sdk_put(stack, cloud: str, key: str, data: bytes) -> None:
    if cloud == "aws":
        local_stack.sdk_s3(stack).put_object(Bucket=local_stack.BUCKET, Key=key, Body=data)
    elif cloud == "azure":
        local_stack.sdk_azure_container(stack).get_blob_client(key).upload_blob(data, overwrite=True)
    else:
        local_stack.sdk_gcs_bucket(stack).blob(key).upload_from_string(data)


def owner_connection(stack) -> psycopg.Connection:
    return psycopg.connect(stack.role_url(local_stack.OWNER_ROLE, local_stack.SOURCE_DB))


@contextmanager
def a_supplier_changed(stack) -> Iterator[None]:
    """One supplier's phone number changed while the block runs, then put back as it was (its `updated_at` too,
    past the trigger that touches it): a day's change, so a backup of vendor_data (deduplicated) has a new chunk,
    and so a pack, to seal and send; afterwards the row is byte for byte what it was."""
    with owner_connection(stack) as conn:
        supplier_id, phone, updated_at = conn.execute(
            "SELECT supplier_id, phone, updated_at FROM wedsync.suppliers ORDER BY supplier_id LIMIT 1").fetchone()
        conn.execute("UPDATE wedsync.suppliers SET phone = %s WHERE supplier_id = %s",
                     (f"{phone or ''} ext. 7", supplier_id))
    try:
        yield
    finally:
        with owner_connection(stack) as conn:  # one transaction: no other session sees the trigger off
            conn.execute("ALTER TABLE wedsync.suppliers DISABLE TRIGGER touch_updated_at")
            conn.execute("UPDATE wedsync.suppliers SET phone = %s, updated_at = %s WHERE supplier_id = %s",
                         (phone, updated_at, supplier_id))
            conn.execute("ALTER TABLE wedsync.suppliers ENABLE TRIGGER touch_updated_at")


def stored_copies(manifest: format.Manifest | dict, source: str | None = None) -> list[format.StoredObject]:
    """What a backup's data is stored as in each cloud, in the order a restore reads it: a full copy's own
    objects, or the packs its deduplicated tables' extents lie in (format 4: chunk blobs). With `source`, only
    those holding that table's rows. What a test damages to play rot, or deletes to play a lost copy."""
    if isinstance(manifest, dict):
        manifest = format.Manifest.from_json(manifest)
    objects = [o for o in manifest.objects if source is None or o.source == source]
    blobs = {b.content_id: b for b in manifest.blobs}
    found: dict[str, format.StoredObject] = {}
    for entry in objects:
        if isinstance(entry, format.ChunkedObject):
            for content_id in [*entry.packs, *(c.content_id for c in entry.chunks)]:
                found.setdefault(blobs[content_id].key, blobs[content_id])
        else:
            found[entry.key] = entry
    return list(found.values())


def fresh_copy(conn, sql: str) -> bytes:
    buffer = io.BytesIO()
    with conn.cursor() as cur, cur.copy(sql) as copy:
        for chunk in copy:
            buffer.write(chunk)
    return buffer.getvalue()


def latest_backup(catalog_conn, data_class: str) -> dict:
    backup_id = catalog_conn.execute(
        "SELECT backup_id FROM backup_catalog.backups WHERE data_class = %s ORDER BY started_at DESC LIMIT 1",
        (data_class,)).fetchone()[0]
    return catalog.backup(catalog_conn, backup_id)


def run_backup_steps(policy: Policy, data_class: DataClass, *, catalog_conn, key_ring: crypto.KeyRing,
                     started_at: dt.datetime | None = None, store_map: dict[str, ObjectStore] | None = None,
                     wedding_ids: list[int] | None = None, labels: tuple[str, ...] = (),
                     min_retention_days: int = 0) -> dict[str, Any]:
    """One backup through the library's steps as the DAG chains them (extract -> encrypt -> upload to each
    cloud -> validate, staging always removed), with the clock injectable; returns validate's result.
    `labels` and `min_retention_days` as the emergency DAG passes them (("emergency",), the policy's minimum)."""
    store_map = store_map or backup.stores(policy)
    summary = backup.run_extract(policy, data_class, connect=catalog.db_connector("wedsync_db"),
                                 catalog_conn=catalog_conn, started_at=started_at, key_ring=key_ring,
                                 wedding_ids=wedding_ids, store_map=store_map, labels=labels,
                                 min_retention_days=min_retention_days)
    try:
        summary = backup.run_encrypt(policy, summary, key_ring)
        uploads = {cloud: backup.run_upload(policy, cloud, summary, store) for cloud, store in store_map.items()}
        return backup.run_validate(policy, summary, uploads, key_ring, catalog_conn, store_map)
    finally:
        backup.cleanup(policy, summary["backup_id"])


REPO = Path(__file__).resolve().parents[1]


def worked_example(label: str) -> str:
    """One code block of docs/FORMAT.md's worked example, verbatim."""
    document = (REPO / "docs" / "FORMAT.md").read_text()
    found = re.search(rf"<!-- worked-example: {re.escape(label)} -->\s*```\w+\n(.*?)```", document, re.S)
    assert found, f"docs/FORMAT.md lost its worked example {label!r}"
    return found.group(1)


def run_worked_example(directory: Path, label: str, extra_env: dict[str, str] | None = None):
    """Run a shell block of the worked example in `directory` (which holds decrypt_object.py, keyring.json and
    the downloaded objects), with `python3` this interpreter but without the project on its path."""
    python_dir = directory / "bin"
    python_dir.mkdir(exist_ok=True)
    (python_dir / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # keeps its venv
    (python_dir / "python3").chmod(0o755)
    env = {"PATH": f"{python_dir}:{os.environ['PATH']}", "HOME": str(directory), **(extra_env or {})}
    return subprocess.run(["bash", "-c", worked_example(label)], cwd=directory, env=env, capture_output=True,
                          text=True, timeout=120)


def start_killable_backup(data_class: str, marker: Path, *, run_id: str, upload_to: tuple[str, ...] = (),
                          full_copy: bool = False) -> subprocess.Popen:
    """Start, in a subprocess that leads its own process group, a backup of `data_class` through the library
    steps its DAG's tasks call, recorded as run `run_id` of `backup_<class>`: extract, then (when `upload_to`
    names clouds) encrypt and upload to those clouds only. The child then writes its summary to `marker` and
    sleeps until it is killed; its output goes to `marker` + `.log`. `full_copy`: the class with deduplication
    off (one object per table, under the backup's own prefix)."""
    code = "import sys; from tests.helpers import _killable_backup; _killable_backup(*sys.argv[1:])"
    with open(marker.with_name(marker.name + ".log"), "wb") as output:
        return subprocess.Popen([sys.executable, "-c", code, data_class, str(marker), run_id, ",".join(upload_to),
                                 "full" if full_copy else "as-policy"],
                                cwd=REPO, start_new_session=True, stdout=output, stderr=subprocess.STDOUT)


def _killable_backup(name: str, marker: str, run_id: str, clouds: str, layout: str) -> None:
    import dataclasses
    import json
    import time

    from wedsync_dr.policy import load_policy

    policy = load_policy()
    data_class = policy.data_classes[name]
    if layout == "full":
        data_class = dataclasses.replace(data_class, dedup_chunk_kib=0)
        policy = policy.with_overrides(data_classes={**policy.data_classes, name: data_class})
    key_ring = crypto.KeyRing.from_connection(policy.key_ring_conn_id)
    with catalog.connect() as conn:
        summary = backup.run_extract(policy, data_class, connect=catalog.db_connector("wedsync_db"),
                                     catalog_conn=conn, key_ring=key_ring,
                                     dag_id=f"backup_{name}", run_id=run_id)
    if clouds:
        summary = backup.run_encrypt(policy, summary, key_ring)
        for cloud in clouds.split(","):
            backup.run_upload(policy, cloud, summary)
    done = Path(marker)
    done.with_suffix(".tmp").write_text(json.dumps(summary))
    done.with_suffix(".tmp").replace(done)
    while True:  # until SIGKILL: no teardown, no validate
        time.sleep(60)
