"""What the benchmarks share: the local stack of `make run`, loaded with demo data at a chosen scale."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "include"))

from wedsync_dr_dev import local_stack  # noqa: E402

# demo-data weddings per GB of client_data table text (measured: 20,000 weddings -> 516 MB)
WEDDINGS_PER_GB = 40_000


def stack_with_data(weddings: int | None, parser_args=None):
    """Start (or reuse) the stack and, unless `weddings` is None, load that many demo weddings (no assets).

    Returns (stack state, environment); this process's environment is updated so the library finds the
    stack's connections.
    """
    state = local_stack.start()
    env = {**os.environ, **local_stack.environment(state)}
    os.environ.update(env)
    if weddings is not None:
        load(env, weddings)
    return state, env


def load(env: dict[str, str], weddings: int) -> None:
    """Load, then VACUUM and CHECKPOINT: right after a bulk load the first reader of every page sets its hint
    bits and autovacuum and the checkpointer write gigabytes, which would land on whichever side of a
    comparison runs first."""
    import psycopg

    subprocess.run([str(Path(sys.executable).parent / "wedsync-dev"), "demo-data", "--weddings", str(weddings),
                    "--photos", "0", "--documents", "0"], env=env, check=True)
    state = local_stack.StackState.load(local_stack.DEFAULT_STACK_DIR.resolve())
    with psycopg.connect(state.admin_url(local_stack.SOURCE_DB), autocommit=True) as conn:
        conn.execute("VACUUM (FREEZE, ANALYZE)")
        conn.execute("CHECKPOINT")


def task_step(name: str, arg: dict, env: dict[str, str]) -> dict:
    """Run one step in its own process (`bench/task_step.py`); returns its output, seconds and peak RSS."""
    import json

    proc = subprocess.run([sys.executable, str(REPO / "bench" / "task_step.py"), name, json.dumps(arg, default=str)],
                          env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def clean_slate(prefix: str) -> None:
    """Forget and delete every backup and blob a benchmark stored under `prefix`, in the catalog and the clouds."""
    from wedsync_dr import backup, catalog
    from wedsync_dr.policy import load_policy

    with catalog.connect() as conn:
        conn.execute("DELETE FROM backup_catalog.backups WHERE starts_with(prefix, %s)", (f"{prefix}/",))
        catalog.forget_blobs_under(conn, prefix)
    for store in backup.stores(load_policy().with_overrides(prefix=prefix)).values():
        store.delete_prefix(f"{prefix}/")
