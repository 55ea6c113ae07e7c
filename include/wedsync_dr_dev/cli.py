"""`wedsync-dev`: the checkout's dev tooling: the local stack, Airflow on it, demo data, local backup runs.

The operator verbs (list, verify, restore, repair, rebuild-catalog, emergency) are `wedsync-dr`'s.
Errors are one clear line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

from wedsync_dr_dev import local_stack


def _stack_dir(args: argparse.Namespace) -> Path:
    return Path(args.stack_dir) if args.stack_dir else local_stack.DEFAULT_STACK_DIR


def cmd_stack_up(args: argparse.Namespace) -> int:
    state = local_stack.start(_stack_dir(args))
    for name, svc in state.services.items():
        print(f"  {name:9} pid {svc.pid:<7} 127.0.0.1:{svc.port}")
    if state.external_db:
        print("  postgres  external (WEDSYNC_DB_URL)")
    print(f"  connections and settings: {state.directory / 'stack.env'}")
    return 0


def cmd_stack_down(args: argparse.Namespace) -> int:
    stopped = local_stack.stop(_stack_dir(args))
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def cmd_stack_status(args: argparse.Namespace) -> int:
    print(json.dumps(local_stack.status(_stack_dir(args)), indent=2))
    return 0


def cmd_stack_env(args: argparse.Namespace) -> int:
    state = local_stack.StackState.load(_stack_dir(args).resolve())
    if not state.services:
        raise DevError("the local stack is not set up: run `make run` (or `wedsync-dev stack up`)")
    print(local_stack.write_env_file(state).read_text(), end="")
    return 0


def cmd_airflow_up(args: argparse.Namespace) -> int:
    state = local_stack.start(_stack_dir(args))
    url = local_stack.start_airflow(state, port=args.port)
    print(f"Airflow UI and API: {url}  (user admin, password in {state.airflow_home / 'passwords.json'})")
    print(f"  shell settings:  source {state.directory / 'stack.env'}")
    print("  stop everything: make down")
    return 0


def _log_file(args: argparse.Namespace, command: str) -> Path:
    """Where a terminal session's full logs go: `<stack dir>/logs/<command>-<UTC time>.log`."""
    from wedsync_dr.console import log_file_path

    return log_file_path(_stack_dir(args).resolve() / "logs", command)


def cmd_backup_run(args: argparse.Namespace) -> int:
    """Run backup DAGs once, in this process (dag.test()), against the local stack; print a summary.

    In a terminal: one row per class and step, the logs in a file. Elsewhere: Airflow's log lines, as ever."""
    from wedsync_dr.console import DONE, terminal_session
    from wedsync_dr.policy import load_policy
    from wedsync_dr_dev.progress import row_label

    policy = load_policy()
    names = args.data_classes or sorted(policy.data_classes)
    unknown = [name for name in names if name not in policy.data_classes]
    if unknown:
        raise DevError(f"unknown data class {', '.join(unknown)}: choose from {', '.join(sorted(policy.data_classes))}")
    rows, failed = [], []
    with terminal_session(_log_file(args, "backup-run")) as board:
        width = max(len("local stack"), *map(len, names))  # the first column: what a row belongs to
        board.add("setup", row_label("local stack", "start", width))
        board.start("setup")
        state = local_stack.start(_stack_dir(args))
        os.environ.update(local_stack.environment(state))  # before Airflow is imported: it reads them once
        local_stack.migrate_airflow_db(state)  # (and the policy's pools)
        board.finish("setup", DONE)
        from wedsync_dr import catalog
        from wedsync_dr.wiring.backup_chain import build_backup_dag
        from wedsync_dr_dev.progress import BackupSteps  # (imports Airflow: after its settings are in place)

        steps = BackupSteps(board, policy, names, width=width)
        with steps.listening() if board.live else contextlib.nullcontext():
            for name in names:
                dag = build_backup_dag(policy, policy.data_classes[name], doc_md="")
                started = time.monotonic()
                run = dag.test()
                seconds = time.monotonic() - started
                if board.live:
                    steps.settle(name, {ti.task_id: ti.state for ti in run.get_task_instances()})
                with catalog.connect() as conn:
                    record = catalog.backup_for_run(conn, dag.dag_id, run.run_id)
                if run.state != "success":
                    failed.append(name)
                rows.append({"data_class": name, "seconds": seconds,
                             "status": (record or {}).get("status", run.state), **catalog.summary_fields(record)})
    from wedsync_dr import report

    print()
    print(report.backup_summary(rows))
    if failed:
        print(f"wedsync-dev: backup runs failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    import psycopg

    from wedsync_dr.console import DONE, terminal_session
    from wedsync_dr_dev import demo_data

    state = local_stack.StackState.load(_stack_dir(args).resolve())
    if not state.db_url:
        raise DevError("the local stack is not running: run `wedsync-dev stack up` first")
    marker = state.directory / "demo-data.json"
    scale = demo_data.Scale(weddings=args.weddings, seed=args.seed, photos=args.photos, documents=args.documents,
                            asset_size_scale=args.asset_size_scale)
    wanted = {"weddings": scale.weddings, "seed": scale.seed, "photos": scale.photo_count,
              "documents": scale.document_count, "asset_size_scale": scale.asset_size_scale,
              "today": dt.date.today().isoformat()}
    if args.if_missing and marker.exists() and json.loads(marker.read_text()).get("params") == wanted:
        print(f"demo data already loaded ({scale.weddings} weddings, seed {scale.seed}): reusing it")
        return 0
    with terminal_session(_log_file(args, "demo-data")) as board:
        steps = ("tables", "assets")
        for step in steps:
            board.add(step, f"demo data  {step:<8}")
        board.start("tables")  # the schema is made first: the time is the tables'

        def loaded(step: str, nbytes: int) -> None:
            for earlier in steps[:steps.index(step)]:  # the tables are all in once the first file is written
                if board.state(earlier) != DONE:
                    board.finish(earlier, DONE)
            board.advance(step, nbytes)

        with psycopg.connect(state.admin_url(local_stack.SOURCE_DB)) as conn:
            report = demo_data.load(conn, scale, Path(local_stack.environment(state)["WEDSYNC_ASSET_SOURCE"]),
                                    owner=local_stack.OWNER_ROLE, progress=loaded)
        board.finish("tables", DONE, detail=f"{report.total_rows:,} rows in {len(report.rows)} tables")
        board.finish("assets", DONE, completed=report.asset_bytes, detail=f"{report.asset_files} files")
    marker.write_text(json.dumps({"params": wanted, "rows": report.rows}, indent=2))
    print(f"loaded {report.total_rows:,} rows into {len(report.rows)} tables in {report.seconds:.1f}s "
          f"({report.rows_per_second:,.0f} rows/s); {report.asset_files} asset files, "
          f"{report.asset_bytes / 1e6:.1f} MB in {report.asset_seconds:.1f}s")
    return 0


class DevError(RuntimeError):
    """A user-facing error: printed as one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wedsync-dev", description=__doc__.splitlines()[0])
    parser.add_argument("--stack-dir", help="local stack directory (default .local/stack)")
    sub = parser.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="the embedded local stack (PostgreSQL + S3/Azure/GCS emulators)")
    stack_sub = stack.add_subparsers(dest="stack_command", required=True)
    stack_sub.add_parser("up", help="start or reuse every service").set_defaults(func=cmd_stack_up)
    stack_sub.add_parser("down", help="stop every process the stack started").set_defaults(func=cmd_stack_down)
    stack_sub.add_parser("status", help="PIDs, ports, running").set_defaults(func=cmd_stack_status)
    stack_sub.add_parser("env", help="print the AIRFLOW_CONN_* exports").set_defaults(func=cmd_stack_env)

    airflow = sub.add_parser("airflow", help="Airflow UI/API, scheduler, dag-processor, triggerer on the stack")
    airflow_sub = airflow.add_subparsers(dest="airflow_command", required=True)
    airflow_up = airflow_sub.add_parser("up", help="start (or reuse) the Airflow components")
    airflow_up.add_argument("--port", type=int, default=None, help="API port (default 8080)")
    airflow_up.set_defaults(func=cmd_airflow_up)

    backup_parser = sub.add_parser("backup", help="run backups")
    backup_sub = backup_parser.add_subparsers(dest="backup_command", required=True)
    backup_run = backup_sub.add_parser("run", help="run backup DAGs once on the local stack and print a summary")
    backup_run.add_argument("data_classes", nargs="*", help="default: every class in the policy")
    backup_run.set_defaults(func=cmd_backup_run)

    demo = sub.add_parser("demo-data", help="(re)load deterministic WedSync demo data")
    demo.add_argument("--weddings", type=int, default=300, help="scale: 200 for tests, 20000 is about 1 GB")
    demo.add_argument("--seed", type=int, default=42)
    demo.add_argument("--photos", type=int, help="photo files (default: weddings/10, at most 200)")
    demo.add_argument("--documents", type=int, help="document files (default: weddings/10, at most 200)")
    demo.add_argument("--asset-size-scale", type=float, default=1.0, help="shrink asset files (< 1)")
    demo.add_argument("--if-missing", action="store_true", help="keep data loaded with the same parameters")
    demo.set_defaults(func=cmd_demo_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    from wedsync_dr.cli import run_verb

    return run_verb("wedsync-dev", build_parser().parse_args(argv), (local_stack.StackError, DevError))


if __name__ == "__main__":
    sys.exit(main())
