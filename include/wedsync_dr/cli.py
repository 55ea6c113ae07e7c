"""`wedsync-dr`: the operator's command line (list, verify, restore, repair, rebuild-catalog, emergency).

It works without a running Airflow and without the dev tooling (`wedsync_dr_dev`, the `wedsync-dev` script:
local stack, demo data, local backup runs): an install of this package and its runtime requirements is enough.
Errors are one clear line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wedsync_dr.console import StepBoard
    from wedsync_dr.format import Manifest


def _use_connections(args: argparse.Namespace) -> None:
    """Connection settings come from the environment (AIRFLOW_CONN_*, a secrets backend); on a machine with
    the local stack and none set, from the stack. No Airflow scheduler or metadata DB is needed."""
    if "AIRFLOW_CONN_WEDSYNC_DB" in os.environ:
        return
    try:  # optional: a checkout with the dev tooling installed; the product never needs it
        from wedsync_dr_dev import local_stack
    except ImportError:
        local_stack = None
    if local_stack is not None:
        directory = Path(args.stack_dir) if args.stack_dir else local_stack.DEFAULT_STACK_DIR
        state = local_stack.StackState.load(directory.resolve())
        if state.services:
            os.environ.update(local_stack.environment(state))
            return
    raise CliError("no connections: set AIRFLOW_CONN_WEDSYNC_DB, AIRFLOW_CONN_WEDSYNC_CATALOG, "
                   "AIRFLOW_CONN_BACKUP_* and AIRFLOW_CONN_WEDSYNC_BACKUP_KEYS (in a checkout: wedsync-dev stack up)")


def _product(args: argparse.Namespace):
    """Policy, stores and key ring for an operator verb. With --from-cloud, the ONLY store is that cloud's: a
    break-glass run told to use one cloud never waits on another (hung, gone, or being the problem)."""
    _use_connections(args)
    from wedsync_dr import backup, crypto
    from wedsync_dr.policy import load_policy

    policy = load_policy()
    data_class = getattr(args, "data_class", None)
    if data_class is not None and data_class not in policy.data_classes:
        raise CliError(f"unknown data class {data_class!r}: choose one of {', '.join(sorted(policy.data_classes))}")
    for option in ("from_cloud", "cloud"):
        cloud = getattr(args, option, None)
        if cloud is not None and cloud not in policy.cloud_names:
            raise CliError(f"--{option.replace('_', '-')} {cloud!r} is not a cloud of the policy: "
                           f"choose one of {', '.join(policy.cloud_names)}")
    from_cloud = getattr(args, "from_cloud", None)
    stores = backup.stores(policy, [from_cloud] if from_cloud else None)
    return policy, stores, crypto.KeyRing.from_connection(policy.key_ring_conn_id)


def _log_file(args: argparse.Namespace, command: str) -> Path:
    """Where a terminal session's full logs go: $WEDSYNC_LOG_DIR; with a local stack (--stack-dir, or the one
    `_use_connections` found), its `logs` directory; else ~/.local/state/wedsync-dr/logs ($XDG_STATE_HOME)."""
    from wedsync_dr.console import log_file_path

    if os.environ.get("WEDSYNC_LOG_DIR"):
        return log_file_path(Path(os.environ["WEDSYNC_LOG_DIR"]), command)
    stack = args.stack_dir or os.environ.get("WEDSYNC_STACK_DIR")  # the stack's environment names its directory
    if stack and Path(stack).is_dir():
        return log_file_path(Path(stack).resolve() / "logs", command)
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return log_file_path(state / "wedsync-dr" / "logs", command)


def _catalog(args: argparse.Namespace):
    """A catalog connection, or one clear line saying it cannot be had and what to do instead."""
    from wedsync_dr import catalog

    try:
        return catalog.connect()
    except catalog.CatalogNotReady as err:
        raise CliError(f"{err}; or read the backups straight from a cloud with --from-cloud <cloud>") from None
    except Exception as err:  # noqa: BLE001 - unreachable, refused, no such database: all mean "use a cloud"
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CliError(f"the backup catalog is unreachable ({type(err).__name__}: {detail}): read the backups "
                       "straight from a cloud with --from-cloud <cloud>") from None


def cmd_list(args: argparse.Namespace) -> int:
    from wedsync_dr import catalog, report

    policy, stores, _ = _product(args)
    classes = [args.data_class] if args.data_class else sorted(policy.data_classes)
    rows = []
    if args.from_cloud:
        from wedsync_dr.restore import list_manifest_keys

        for name in classes:
            for key in list_manifest_keys(stores[args.from_cloud], policy, name):
                rows.append([name, key.rsplit("/", 2)[-2], "committed", args.from_cloud])
    else:
        with _catalog(args) as conn:
            for name in classes:
                for backup_id, status, started, clouds in catalog.backups_of_class(conn, name, args.limit):
                    rows.append([name, backup_id, status, ",".join(clouds) or "-", f"{started:%Y-%m-%d %H:%M:%S}"])
    headers = ["class", "backup id", "status", "clouds"] + ([] if args.from_cloud else ["started (UTC)"])
    print(report.table(headers, rows))
    return 0


def _resolve(args, policy, stores):
    from wedsync_dr import catalog
    from wedsync_dr.restore import resolve

    return resolve(policy, stores, args.data_class, backup_id=args.backup_id,
                   point_in_time=_instant(getattr(args, "point_in_time", None)),
                   catalog_connect=None if args.from_cloud else catalog.connect)


def _instant(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(f"--point-in-time {value!r} is not an ISO 8601 timestamp") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def cmd_verify(args: argparse.Namespace) -> int:
    """In a terminal: a row per cloud (bytes read, rate) and the logs in a file; then the verdicts."""
    from wedsync_dr.console import terminal_session

    _use_connections(args)  # first: a local stack it finds also keeps the log file
    with terminal_session(_log_file(args, "verify")) as board:
        manifest, clouds, problems = _verify(args, board)
    for cloud in clouds:
        status = "OK" if not problems[cloud] else f"{len(problems[cloud])} PROBLEMS"
        print(f"{manifest.backup_id} in {cloud}: {status}")
        for problem in problems[cloud]:
            print(f"  {problem}")
    return 1 if any(problems.values()) else 0


def _verify(args: argparse.Namespace, board: StepBoard) -> tuple[Manifest, list[str], dict[str, list[str]]]:
    from wedsync_dr.console import DONE, FAILED, count
    from wedsync_dr.restore import verify_backup

    board.add("prepare", "connect, find the backup")
    board.start("prepare")
    policy, stores, key_ring = _product(args)
    clouds = [args.cloud] if args.cloud else list(stores)
    if args.from_cloud and args.cloud and args.cloud != args.from_cloud:
        raise CliError(f"--cloud {args.cloud} and --from-cloud {args.from_cloud}: verify reads only the cloud it "
                       "was told to use")
    if not 0 < args.sample <= 1:
        raise CliError(f"--sample {args.sample}: give a fraction in (0, 1]")
    manifest = _resolve(args, policy, stores)  # after the checks: bad options are refused before any cloud is read
    board.finish("prepare", DONE, detail=manifest.backup_id)
    for cloud in clouds:  # a row starts with the first byte read from its cloud
        board.add(cloud, f"verify in {cloud}")

    def verified(cloud: str, found: list[str]) -> None:
        board.finish(cloud, FAILED if found else DONE, detail=count(len(found), "problem") if found else "OK")

    with board.counting_transfers(lambda cloud, direction: cloud if direction == "download" else None):
        if args.from_cloud:  # told to use one cloud: nothing else, the catalog included
            problems = verify_backup(manifest, stores, key_ring, clouds, sample=args.sample)
            for cloud in clouds:
                verified(cloud, problems[cloud])
        else:  # findings go into the catalog, where status, alerts and `repair` find them
            from wedsync_dr import verification

            problems = {}
            with _catalog(args) as conn:
                record = {"backup_id": manifest.backup_id, "data_class": manifest.data_class,
                          "manifest": manifest.to_json()}
                for cloud in clouds:  # one cloud after another: each row ends when its cloud is done
                    problems[cloud] = verification.verify_copy(record, cloud, stores, key_ring, conn,
                                                               sample=args.sample, seed=0)["problems"]
                    verified(cloud, problems[cloud])
    return manifest, clouds, problems


def cmd_restore(args: argparse.Namespace) -> int:
    """In a terminal: one row (bytes downloaded, rate) and the logs in a file; then the report, once."""
    from wedsync_dr.console import terminal_session

    _use_connections(args)  # first: a local stack it finds also keeps the log file
    with terminal_session(_log_file(args, "restore")) as board:
        report = _restore(args, board)
    print(report.render())
    return 0


def _restore(args: argparse.Namespace, board: StepBoard):
    from wedsync_dr import catalog, health
    from wedsync_dr.console import DONE, count
    from wedsync_dr.requests import check_request
    from wedsync_dr.restore import run_restore

    board.add("prepare", "connect, check the request")
    board.add("restore", f"restore {args.data_class}")
    board.start("prepare")
    policy, stores, key_ring = _product(args)
    if args.from_cloud and args.source_cloud not in ("auto", args.from_cloud):
        raise CliError(f"--source-cloud {args.source_cloud} and --from-cloud {args.from_cloud}: a restore told to "
                       "use one cloud reads only that one")
    wedding_id = args.wedding_id
    if wedding_id == "soonest":  # the first bundle of the backup: bundles are ordered by wedding date
        bundles = [o.wedding_id for o in _resolve(args, policy, stores).objects if o.wedding_id]
        if not bundles:
            raise CliError(f"the {args.data_class} backup holds no wedding bundle")
        wedding_id = bundles[0]
    elif wedding_id is not None:
        try:
            wedding_id = int(wedding_id)
        except ValueError:
            raise CliError(f"--wedding-id {wedding_id!r}: give a number or 'soonest'") from None
    request = check_request(policy, {
        "data_class": args.data_class, "backup_id": args.backup_id, "point_in_time": args.point_in_time,
        "wedding_id": wedding_id, "target": args.target, "confirm": args.confirm,
        "source_cloud": args.source_cloud, "dry_run": args.dry_run})
    board.finish("prepare", DONE)
    board.start("restore")
    with board.counting_transfers(lambda _cloud, direction: "restore" if direction == "download" else None):
        report = run_restore(policy, request, stores=stores, key_ring=key_ring,
                             db_connect=catalog.db_connector("wedsync_db_owner"),
                             catalog_connect=None if args.from_cloud else catalog.connect,
                             healthy=() if args.from_cloud else health.healthy_clouds_if_known(
                                 policy, catalog.db_connector("wedsync_catalog")))
    board.finish("restore", DONE, detail=f"{count(report.objects, 'object')}, {count(sum(report.rows.values()), 'row')}"
                 + ("" if report.dry_run else f" into {report.target}"))
    return report


def cmd_rebuild_catalog(args: argparse.Namespace) -> int:
    from wedsync_dr import catalog

    policy, stores, _ = _product(args)
    try:
        catalog.migrate()  # rebuilding starts from the schema, whatever is left of it
    except Exception as err:  # noqa: BLE001 - one clear line
        raise CliError(f"the backup catalog is unreachable ({type(err).__name__}): {err}") from None
    with _catalog(args) as conn:
        count = catalog.rebuild_from_cloud(conn, policy, stores[args.from_cloud])
    print(f"catalog rebuilt from {args.from_cloud}: {count} backups")
    return 0


def cmd_repair(args: argparse.Namespace) -> int:
    """Re-copy what is missing or damaged (by HEAD, or found by a verification) from a good cloud."""
    from wedsync_dr import repair

    policy, stores, _ = _product(args)
    with _catalog(args) as conn:
        results = repair.run(policy, conn, stores, only_degraded=False,
                             backup_ids=[args.backup_id] if args.backup_id else None)
    if args.backup_id and not results:
        raise CliError(f"backup {args.backup_id} is not a committed backup in the catalog")
    for result in results:
        state = "OK" if not result.unrepairable else f"{len(result.unrepairable)} UNREPAIRABLE"
        print(f"{result.backup_id}: {state}; re-copied {len(result.copied)}, re-locked {len(result.relocked)}; "
              f"whole in {', '.join(result.clouds_ok) or 'no cloud'}")
        for key, source, target in result.copied:
            print(f"  copied {key} from {source} to {target}")
        for problem in result.unrepairable:
            print(f"  {problem}")
    return 1 if any(r.unrepairable for r in results) else 0


def cmd_catalog_migrate(args: argparse.Namespace) -> int:
    from wedsync_dr import catalog

    _use_connections(args)
    catalog.migrate()
    print("backup catalog schema ready")
    return 0


def cmd_emergency(args: argparse.Namespace) -> int:
    """Trigger emergency_backup through Airflow's REST API with the official apache-airflow-client."""
    import airflow_client.client as af

    from wedsync_dr.emergency import DAG_ID, EmergencyRequestError, validate_conf
    from wedsync_dr.policy import load_policy

    conf = {"reason": args.reason, "scope": args.scope, "requested_by": args.requested_by or os.environ.get("USER")}
    if args.wedding_ids:
        conf["wedding_ids"] = args.wedding_ids
    if args.data_classes:
        conf["data_classes"] = args.data_classes
    try:
        validate_conf(load_policy(), conf)  # refuse locally with the server's own rules
    except EmergencyRequestError as err:
        raise CliError(str(err)) from None
    password = args.password or os.environ.get("AIRFLOW_PASSWORD")
    if not password:
        raise CliError("no password: pass --password or set AIRFLOW_PASSWORD")
    configuration = af.Configuration(host=args.url.rstrip("/"))
    with af.ApiClient(configuration) as api:
        response = api.rest_client.request(
            "POST", f"{configuration.host}/auth/token", headers={"Content-Type": "application/json"},
            body={"username": args.username, "password": password})
        if response.status != 201:
            raise CliError(f"login to {configuration.host} failed: HTTP {response.status}")
        response.read()
        configuration.access_token = json.loads(response.data)["access_token"]
        run = af.DagRunApi(api).trigger_dag_run(DAG_ID, af.TriggerDAGRunPostBody(logical_date=None, conf=conf))
    print(f"triggered {DAG_ID} run {run.dag_run_id} ({run.state}) at {configuration.host}")
    return 0


class CliError(RuntimeError):
    """A user-facing error: printed as one line."""


def _add_backup_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--class", dest="data_class", required=True, help="data class")
    parser.add_argument("--backup-id", default="latest", help="a backup id, or latest (default)")
    parser.add_argument("--from-cloud", help="resolve from this cloud's manifests, not the catalog")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wedsync-dr", description=__doc__.splitlines()[0])
    parser.add_argument("--stack-dir", help="with the dev tooling and no AIRFLOW_CONN_*: the local stack to use "
                        "(default .local/stack)")
    sub = parser.add_subparsers(dest="command", required=True)

    list_parser = sub.add_parser("list", help="backups per class, from the catalog or straight from a cloud")
    list_parser.add_argument("--class", dest="data_class")
    list_parser.add_argument("--from-cloud", help="read manifests from this cloud instead of the catalog")
    list_parser.add_argument("--limit", type=int, default=20)
    list_parser.set_defaults(func=cmd_list)

    verify = sub.add_parser("verify", help="download, decrypt and checksum a backup's objects")
    _add_backup_selection(verify)
    verify.add_argument("--cloud", help="only this cloud (default: every cloud)")
    verify.add_argument("--sample", type=float, default=1.0, help="fraction of objects to read (default all)")
    verify.set_defaults(func=cmd_verify)

    restore = sub.add_parser("restore", help="restore a backup without Airflow (same options as the DAG)")
    _add_backup_selection(restore)
    restore.add_argument("--point-in-time", help="ISO 8601: the newest backup at or before it")
    restore.add_argument("--wedding-id", help="a wedding id, or 'soonest' (the first bundle of the backup)")
    restore.add_argument("--target", default="", help="'' (new schema), in_place, a schema, or a directory")
    restore.add_argument("--confirm", default="", help="for in_place: RESTORE <class>")
    restore.add_argument("--source-cloud", default="auto")
    restore.add_argument("--dry-run", action="store_true")
    restore.set_defaults(func=cmd_restore)

    catalog_parser = sub.add_parser("catalog", help="the backup catalog database")
    catalog_sub = catalog_parser.add_subparsers(dest="catalog_command", required=True)
    catalog_sub.add_parser("migrate", help="create or upgrade the backup_catalog schema (idempotent)").set_defaults(
        func=cmd_catalog_migrate)

    repair_parser = sub.add_parser("repair", help="re-copy missing or damaged copies of kept backups")
    repair_parser.add_argument("--backup-id", help="only this backup, whatever its status (default: every kept one)")
    repair_parser.set_defaults(func=cmd_repair)

    rebuild = sub.add_parser("rebuild-catalog", help="recreate the catalog from one cloud's manifests")
    rebuild.add_argument("--from-cloud", required=True)
    rebuild.set_defaults(func=cmd_rebuild_catalog)

    emergency = sub.add_parser("emergency", help="trigger an emergency backup through the Airflow REST API")
    emergency.add_argument("--reason", required=True, help="why (10-500 characters)")
    emergency.add_argument("--scope", choices=["all", "weddings", "classes"], default="all")
    emergency.add_argument("--wedding-ids", type=int, nargs="+", help="with --scope weddings")
    emergency.add_argument("--data-classes", nargs="+", help="with --scope classes")
    emergency.add_argument("--requested-by")
    emergency.add_argument("--url", default=os.environ.get("AIRFLOW_URL", "http://127.0.0.1:8080"))
    emergency.add_argument("--username", default=os.environ.get("AIRFLOW_USERNAME", "admin"))
    emergency.add_argument("--password", help="default: $AIRFLOW_PASSWORD")
    emergency.set_defaults(func=cmd_emergency)

    return parser


def run_verb(prog: str, args: argparse.Namespace, expected: tuple[type[BaseException], ...]) -> int:
    """Run a parsed verb; any error is one line on stderr and exit status 1 (a traceback with WEDSYNC_DEBUG).
    `expected` errors are the user's to act on: their message alone; anything else names its type too."""
    try:
        return args.func(args)
    except expected as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        if os.environ.get("WEDSYNC_DEBUG"):
            raise
        print(f"{prog}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    from wedsync_dr.requests import RestoreError

    return run_verb("wedsync-dr", build_parser().parse_args(argv), (CliError, RestoreError))


if __name__ == "__main__":
    sys.exit(main())
