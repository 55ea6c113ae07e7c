"""Helpers shared by several test modules (import from here, not from another test file)."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from wedsync_dr import backup, catalog, crypto
from wedsync_dr.policy import DataClass, Policy
from wedsync_dr.storage import ObjectStore


def run_backup_steps(policy: Policy, data_class: DataClass, *, catalog_conn, key_ring: crypto.KeyRing,
                     started_at: dt.datetime | None = None, store_map: dict[str, ObjectStore] | None = None,
                     wedding_ids: list[int] | None = None) -> dict[str, Any]:
    """One backup through the library's steps as the DAG chains them (extract -> encrypt -> upload to each
    cloud -> validate, staging always removed), with the clock injectable; returns validate's result."""
    store_map = store_map or backup.stores(policy)
    summary = backup.run_extract(policy, data_class, connect=catalog.db_connector("wedsync_db"),
                                 catalog_conn=catalog_conn, started_at=started_at, key_ring=key_ring,
                                 wedding_ids=wedding_ids, store_map=store_map)
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
