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


# What an Airflow 3 task process has loaded before its task body runs: the supervisor forks it
# (airflow/sdk/execution_time/supervisor.py, `os.fork()`) from a process that imported Airflow once, so a task
# never pays Airflow's import (5-8 s on this machine's slower days) -- the steps are forked the same way.
TASK_PRELOAD = ["airflow.sdk", "airflow.providers.postgres.hooks.postgres"]
_forkserver = None


def task_step(name: str, arg: dict, env: dict[str, str]) -> dict:
    """Run one step (`bench/task_step.py`) in its own process, forked as an Airflow task is from a process that
    has Airflow loaded; returns its output, seconds and peak RSS (VmHWM: what the task process holds, pages it
    shares with the process it was forked from included, as an Airflow task's RSS counts them)."""
    import multiprocessing

    global _forkserver
    if _forkserver is None:
        os.environ.update(env)  # the preloaded Airflow reads its configuration from the stack's environment
        _forkserver = multiprocessing.get_context("forkserver")
        _forkserver.set_forkserver_preload(TASK_PRELOAD)
        warm = _forkserver.Process(target=int)  # starts the fork server (and its imports) outside any timing
        warm.start()
        warm.join()
    receive, send = _forkserver.Pipe(duplex=False)
    process = _forkserver.Process(target=_run_step, args=(name, arg, env, send))
    process.start()
    send.close()
    try:
        result = receive.recv()
    except EOFError:
        result = {"error": f"the {name} step's process died (exit code {process.join() or process.exitcode})"}
    process.join()
    if "error" in result:
        raise SystemExit(f"{name} failed:\n{result['error'][-3000:]}")
    return result


def _run_step(name: str, arg: dict, env: dict[str, str], send) -> None:
    import contextlib
    import io
    import json
    import traceback

    os.environ.clear()
    os.environ.update(env)
    sys.path.insert(0, str(REPO / "bench"))
    printed = io.StringIO()
    try:
        import task_step as step

        with contextlib.redirect_stdout(printed):
            step.main(name, json.loads(json.dumps(arg, default=str)))
        send.send(json.loads(printed.getvalue().strip().splitlines()[-1]))
    except BaseException:  # noqa: BLE001 - reported to the parent, which stops the benchmark
        send.send({"error": traceback.format_exc()})


def clean_slate(prefix: str) -> None:
    """Forget and delete every backup and blob a benchmark stored under `prefix`, in the catalog and the clouds."""
    from wedsync_dr import backup, catalog
    from wedsync_dr.policy import load_policy

    with catalog.connect() as conn:
        conn.execute("DELETE FROM backup_catalog.backups WHERE starts_with(prefix, %s)", (f"{prefix}/",))
        catalog.forget_blobs_under(conn, prefix)
    for store in backup.stores(load_policy().with_overrides(prefix=prefix)).values():
        store.delete_prefix(f"{prefix}/")


def settle(timeout: float = 30.0, idle_share: float = 0.85, window: float = 0.5) -> float:
    """Wait (at most `timeout` s) until the machine is idle -- `idle_share` of both cores over `window` s --
    before a timed step, and return how long that took. What a step leaves running (an emulator persisting what
    an upload sent, the checkpointer, autovacuum after a change) would otherwise land on whichever side of a
    comparison runs next."""
    import time

    def busy_idle() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, idle

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        busy0, idle0 = busy_idle()
        time.sleep(window)
        busy1, idle1 = busy_idle()
        total = (busy1 - busy0) + (idle1 - idle0)
        if total and (idle1 - idle0) / total >= idle_share:
            break
    return time.monotonic() - started
