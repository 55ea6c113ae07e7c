"""The backup catalog (schema `backup_catalog`): runs, objects, per-cloud copies, alerts, asset blobs.

It is a cache of the manifests in the clouds (rebuildable from any one cloud) plus operational history.
Every function takes an open psycopg 3 connection; writes commit before returning.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from typing import Any

from psycopg.types.json import Jsonb

from wedsync_dr.paths import SQL_DIR

log = logging.getLogger(__name__)

GOOD_STATUSES = ("validated", "degraded")


class DbConnector:
    """New connections for one Airflow connection id, through the postgres provider's PostgresHook.

    Calling it gives a psycopg 3 connection (everything but bulk reads). `copy_out()` gives a psycopg2
    connection of the same Airflow connection, for `COPY ... TO STDOUT` of whole tables: psycopg2's
    `copy_expert` hands every row to a C-level buffered write, where psycopg 3 makes one Python generator
    round trip per row (about 3 us: 11 s of a 3.6 M-row extract, measured in bench/bench_backup.py).
    """

    def __init__(self, conn_id: str):
        self.conn_id = conn_id

    def __call__(self):
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        conn = PostgresHook(postgres_conn_id=self.conn_id).get_conn()
        conn.row_factory = _tuple_rows
        return conn

    def copy_out(self):
        return _psycopg2_hook(self.conn_id).get_conn()

    def __repr__(self) -> str:
        return f"DbConnector({self.conn_id!r})"


def _psycopg2_hook(conn_id: str):
    import psycopg2
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    class Psycopg2Hook(PostgresHook):
        # The hook builds the arguments (extras, IAM tokens) and picks the driver in this one method.
        def _create_connection(self, conn_args: dict[str, Any]):
            return psycopg2.connect(**conn_args)

    return Psycopg2Hook(postgres_conn_id=conn_id)


def db_connector(conn_id: str) -> DbConnector:
    return DbConnector(conn_id)


def _tuple_rows(cursor):
    from psycopg.rows import tuple_row

    return tuple_row(cursor)


def _instant(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


SCHEMA_VERSION = 3  # include/sql/backup_catalog.sql's schema_version: 2 added blobs, verifications,
# acknowledgements; 3 the `abandoned` backup status


class CatalogNotReady(RuntimeError):
    """The catalog database has no backup_catalog schema: nothing was migrated, or it was dropped."""


def connect(conn_id: str = "wedsync_catalog"):
    """An autocommit connection to a migrated catalog. No DDL runs here: `migrate` creates and upgrades the
    schema once (stack up, the compose init container, `wedsync-dr catalog migrate`, rebuild-catalog)."""
    conn = db_connector(conn_id)()
    conn.autocommit = True
    if conn.execute("SELECT to_regclass('backup_catalog.backups')").fetchone()[0] is None:
        conn.close()
        raise CatalogNotReady(f"the backup catalog ({conn_id}) has no backup_catalog schema: create it with "
                              "`wedsync-dr catalog migrate`, or recreate it from a cloud with "
                              "`wedsync-dr rebuild-catalog --from-cloud <cloud>`")
    version = None
    if conn.execute("SELECT to_regclass('backup_catalog.schema_version')").fetchone()[0] is not None:
        version = conn.execute("SELECT version FROM backup_catalog.schema_version").fetchone()[0]
    if (version or 1) < SCHEMA_VERSION:
        conn.close()
        raise CatalogNotReady(f"the backup catalog ({conn_id}) has schema version {version or 1}, this release "
                              f"needs {SCHEMA_VERSION}: run `wedsync-dr catalog migrate`")
    return conn


def migrate(conn_id: str = "wedsync_catalog") -> None:
    """Create or upgrade the backup_catalog schema (idempotent)."""
    with db_connector(conn_id)() as conn:
        conn.autocommit = True
        ensure_schema(conn)


def ensure_schema(conn) -> None:
    """Apply include/sql/backup_catalog.sql on an open connection (idempotent DDL)."""
    conn.execute((SQL_DIR / "backup_catalog.sql").read_text())


def record_backup_start(conn, *, backup_id: str, data_class: str, prefix: str, started_at: dt.datetime,
                        labels: Iterable[str] = (), reason: str | None = None, requested_by: str | None = None,
                        scope: dict | None = None, dag_id: str | None = None, run_id: str | None = None) -> None:
    conn.execute(
        "INSERT INTO backup_catalog.backups (backup_id, data_class, status, prefix, started_at, labels, reason, "
        "requested_by, scope, dag_id, run_id) VALUES (%s, %s, 'running', %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (backup_id) DO NOTHING",
        (backup_id, data_class, prefix, started_at, list(labels), reason, requested_by,
         Jsonb(scope) if scope is not None else None, dag_id, run_id))


def record_backup_result(conn, manifest: dict[str, Any] | None, *, backup_id: str, status: str,
                         copies: dict[str, tuple[str, str]], error: str | None = None,
                         retain_until: dt.datetime | None = None) -> None:
    """Store the outcome of a backup: its manifest (when committed), objects and per-cloud copies."""
    clouds_ok = sorted(c for c, (s, _) in copies.items() if s == "validated")
    clouds_failed = sorted(c for c, (s, _) in copies.items() if s != "validated")
    with conn.transaction():
        if manifest:
            totals = manifest["totals"]
            conn.execute(
                "UPDATE backup_catalog.backups SET status=%s, finished_at=now(), snapshot_at=%s, object_count=%s, "
                "row_count=%s, plaintext_bytes=%s, compressed_bytes=%s, ciphertext_bytes=%s, clouds_ok=%s, "
                "clouds_failed=%s, manifest=%s, error=%s, retain_until=%s WHERE backup_id=%s",
                (status, manifest["snapshot_at"], totals["objects"], totals["rows"], totals["plaintext_bytes"],
                 totals["compressed_bytes"], totals["ciphertext_bytes"], clouds_ok, clouds_failed, Jsonb(manifest),
                 error, retain_until, backup_id))
            conn.execute("DELETE FROM backup_catalog.backup_objects WHERE backup_id = %s", (backup_id,))
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO backup_catalog.backup_objects (backup_id, name, key, source, wedding_id, rows, "
                    "plaintext_sha256, plaintext_size, ciphertext_sha256, ciphertext_size) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [(backup_id, o["name"], o["key"], o.get("source"), o.get("wedding_id"), o.get("rows"),
                      o["plaintext_sha256"], o["plaintext_size"], o["ciphertext_sha256"], o["ciphertext_size"])
                     for o in manifest["objects"]])
        else:
            conn.execute(
                "UPDATE backup_catalog.backups SET status=%s, finished_at=now(), clouds_ok=%s, clouds_failed=%s, "
                "error=%s WHERE backup_id=%s", (status, clouds_ok, clouds_failed, error, backup_id))
        for cloud, (copy_status, detail) in copies.items():
            conn.execute(
                "INSERT INTO backup_catalog.backup_copies (backup_id, cloud, status, detail) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (backup_id, cloud) DO UPDATE SET status = EXCLUDED.status, detail = EXCLUDED.detail, "
                "checked_at = now()", (backup_id, cloud, copy_status, detail))


def raise_alert(conn, *, severity: str, kind: str, message: str, subject: str | None = None,
                backup_id: str | None = None, details: dict | None = None) -> int:
    """Record an alert (the local default notifier); configured notifiers are called by wedsync_dr.alerts."""
    row = conn.execute(
        "INSERT INTO backup_catalog.alerts (severity, kind, subject, message, backup_id, details) "
        "VALUES (%s, %s, %s, %s, %s, %s) RETURNING alert_id",
        (severity, kind, subject, message, backup_id, Jsonb(details) if details else None)).fetchone()
    return row[0]


def alerts(conn, kind: str | None = None, backup_id: str | None = None) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT alert_id, raised_at, severity, kind, subject, message, backup_id, details "
        "FROM backup_catalog.alerts WHERE (%s::text IS NULL OR kind = %s) AND (%s::text IS NULL OR backup_id = %s) "
        "ORDER BY alert_id", (kind, kind, backup_id, backup_id)).fetchall()
    keys = ("alert_id", "raised_at", "severity", "kind", "subject", "message", "backup_id", "details")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def backup(conn, backup_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT backup_id, data_class, status, started_at, finished_at, snapshot_at, labels, clouds_ok, "
        "clouds_failed, manifest, error, prefix, retain_until FROM backup_catalog.backups WHERE backup_id = %s",
        (backup_id,)).fetchone()
    if not row:
        return None
    keys = ("backup_id", "data_class", "status", "started_at", "finished_at", "snapshot_at", "labels", "clouds_ok",
            "clouds_failed", "manifest", "error", "prefix", "retain_until")
    record = dict(zip(keys, row, strict=True))
    record["copies"] = {cloud: status for cloud, (status, _) in copies(conn, backup_id).items()}
    return record


def backup_for_run(conn, dag_id: str, run_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT backup_id FROM backup_catalog.backups WHERE dag_id = %s AND run_id = %s "
                       "ORDER BY started_at DESC LIMIT 1", (dag_id, run_id)).fetchone()
    return backup(conn, row[0]) if row else None


def running_backups(conn, prefix: str, data_classes: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The backups still marked running under the clouds' key `prefix` (of `data_classes`, when given), oldest
    first: what the abandoned-backup sweep (wedsync_dr.abandoned) judges."""
    classes = list(data_classes) if data_classes is not None else None
    rows = conn.execute(
        "SELECT backup_id, data_class, prefix, started_at, dag_id, run_id FROM backup_catalog.backups "
        "WHERE status = 'running' AND starts_with(prefix, %s) AND (%s::text[] IS NULL OR data_class = ANY(%s)) "
        "ORDER BY started_at", (f"{prefix}/", classes, classes)).fetchall()
    keys = ("backup_id", "data_class", "prefix", "started_at", "dag_id", "run_id")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def backup_statuses(conn, backup_ids: Iterable[str]) -> dict[str, str]:
    """backup id -> status, for the ids the catalog knows."""
    rows = conn.execute("SELECT backup_id, status FROM backup_catalog.backups WHERE backup_id = ANY(%s)",
                        (list(backup_ids),)).fetchall()
    return dict(rows)


def mark_abandoned(conn, backup_id: str, error: str) -> bool:
    """A running backup whose run died is `abandoned` (nothing of it is left); False if it was not running."""
    return conn.execute("UPDATE backup_catalog.backups SET status = 'abandoned', finished_at = now(), error = %s "
                        "WHERE backup_id = %s AND status = 'running'", (error, backup_id)).rowcount == 1


def summary_fields(record: dict[str, Any] | None) -> dict[str, Any]:
    """Sizes and copies of a backup record, for reports."""
    if not record:
        return {}
    totals = (record.get("manifest") or {}).get("totals", {})
    return {"objects": totals.get("objects"), "rows": totals.get("rows"),
            "plaintext_bytes": totals.get("plaintext_bytes"), "compressed_bytes": totals.get("compressed_bytes"),
            "ciphertext_bytes": totals.get("ciphertext_bytes"), "copies": record.get("copies", {})}


def copies(conn, backup_id: str) -> dict[str, tuple[str, str | None]]:
    rows = conn.execute("SELECT cloud, status, detail FROM backup_catalog.backup_copies WHERE backup_id = %s",
                        (backup_id,)).fetchall()
    return {cloud: (status, detail) for cloud, status, detail in rows}


def record_restore(conn, report: dict[str, Any], run_id: str | None = None) -> None:
    conn.execute(
        "INSERT INTO backup_catalog.restores (backup_id, data_class, target, wedding_id, dry_run, rows, seconds, "
        "sources, failovers, run_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (report["backup_id"], report["data_class"], report["target"], report.get("wedding_id"), report["dry_run"],
         sum(report["rows"].values()), report["seconds"], Jsonb(report["sources"]), Jsonb(report["failovers"]),
         run_id))


def record_emergency_run(conn, run_id: str, request: dict[str, Any], classes: list[str], *, status: str,
                         coalesced_into: str | None = None) -> None:
    scope = {k: request[k] for k in ("scope", "wedding_ids", "data_classes")}
    conn.execute(
        "INSERT INTO backup_catalog.emergency_runs (run_id, reason, requested_by, scope, classes, status, "
        "coalesced_into, finished_at) VALUES (%s, %s, %s, %s, %s, %s, %s, CASE WHEN %s THEN now() END) "
        "ON CONFLICT (run_id) DO NOTHING",
        (run_id, request["reason"], request["requested_by"], Jsonb(scope), classes, status, coalesced_into,
         status == "coalesced"))


def finish_emergency_run(conn, run_id: str, status: str, clouds: list[str], backup_ids: list[str]) -> None:
    conn.execute("UPDATE backup_catalog.emergency_runs SET status = %s, clouds = %s, backup_ids = %s, "
                 "finished_at = now() WHERE run_id = %s", (status, clouds, backup_ids, run_id))


# ----------------------------------------------------------------------------- assets


def known_blobs(conn, prefix: str | None = None) -> dict[str, dict[str, Any]]:
    """Format-3 blobs by content id (under the clouds' key `prefix`, when given): their manifest entries."""
    rows = conn.execute("SELECT content_id, entry FROM backup_catalog.blobs WHERE %s::text IS NULL OR "
                        "starts_with(key, %s)", (prefix, f"{prefix}/" if prefix else None))
    return {cid: entry for cid, entry in rows}


def record_blobs(conn, entries: Iterable[dict[str, Any]], backup_id: str) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO backup_catalog.blobs (content_id, key, entry, first_backup_id) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (key) DO NOTHING",
            [(e["content_id"], e["key"], Jsonb(e), backup_id) for e in entries])


def forget_blobs(conn, keys: Iterable[str]) -> None:
    """Blobs found in no cloud: the next backup that needs them stores them again."""
    conn.execute("DELETE FROM backup_catalog.blobs WHERE key = ANY(%s)", (list(keys),))


def forget_unreferenced_blobs(conn, prefix: str, referenced_keys: Iterable[str], older_than: dt.datetime) -> None:
    """After retention: the catalog forgets blobs under `prefix` no kept backup needs (formats 2 and 3)."""
    keys = sorted(referenced_keys)
    for table in ("blobs", "asset_blobs"):
        conn.execute(f"DELETE FROM backup_catalog.{table} WHERE starts_with(key, %s) AND NOT (key = ANY(%s)) "
                     "AND created_at < %s", (f"{prefix}/", keys, older_than))


def known_asset_blobs(conn) -> dict[str, dict[str, Any]]:
    """Format-2 blobs by plaintext sha256 (read for backups written before format 3)."""
    rows = conn.execute("SELECT sha256, size, ciphertext_sha256, ciphertext_size, key, encryption "
                        "FROM backup_catalog.asset_blobs").fetchall()
    return {r[0]: {"size": r[1], "ciphertext_sha256": r[2], "ciphertext_size": r[3], "key": r[4],
                   "encryption": r[5]} for r in rows}


def record_asset_blobs(conn, blobs: Iterable[dict[str, Any]], backup_id: str) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO backup_catalog.asset_blobs (sha256, size, ciphertext_sha256, ciphertext_size, key, "
            "encryption, first_backup_id) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (sha256) DO NOTHING",
            [(b["sha256"], b["size"], b["ciphertext_sha256"], b["ciphertext_size"], b["key"], Jsonb(b["encryption"]),
              backup_id) for b in blobs])


def asset_index(conn) -> dict[str, tuple[str, int, int]]:
    rows = conn.execute("SELECT path, sha256, size, mtime_ns FROM backup_catalog.asset_index").fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def replace_asset_index(conn, files: Iterable[tuple[str, str, int, int]], backup_id: str) -> None:
    with conn.transaction():
        conn.execute("DELETE FROM backup_catalog.asset_index")
        with conn.cursor() as cur, cur.copy(
                "COPY backup_catalog.asset_index (path, sha256, size, mtime_ns, backup_id) FROM STDIN") as copy:
            for path, sha, size, mtime in files:
                copy.write_row((path, sha, size, mtime, backup_id))


def upsert_from_manifest(conn, manifest: dict[str, Any], cloud: str) -> None:
    """Recreate a backup's catalog rows from its manifest (rebuild-catalog): what retention needs to keep it
    (its lock and keep-until dates) and what later backups need to reference its blobs.

    Only the copy in `cloud` is known to exist, so the backup is recorded as degraded until a repair or
    validation run has checked the other clouds.
    """
    from wedsync_dr import format

    conn.execute(
        "INSERT INTO backup_catalog.backups (backup_id, data_class, status, prefix, started_at, labels, reason) "
        "VALUES (%s, %s, 'degraded', %s, %s, %s, %s) ON CONFLICT (backup_id) DO NOTHING",
        (manifest["backup_id"], manifest["data_class"], manifest["prefix"], manifest["created_at"],
         manifest.get("labels", []), manifest.get("reason")))
    holds = [d for d in (format.locked_until(manifest), _instant(manifest.get("retain_until"))) if d]
    record_backup_result(conn, manifest, backup_id=manifest["backup_id"], status="degraded",
                         copies={cloud: ("validated", "rebuilt from this cloud's manifest")},
                         retain_until=max(holds) if holds else None)
    if manifest.get("format_version", 1) >= 3:
        record_blobs(conn, format.blob_entries(manifest), manifest["backup_id"])
        return
    blobs = [{"sha256": o["plaintext_sha256"], "size": o["plaintext_size"], "key": o["key"],
              "ciphertext_sha256": o["ciphertext_sha256"], "ciphertext_size": o["ciphertext_size"],
              "encryption": {**o["encryption"], "compression": o["compression"]}}
             for o in manifest["objects"] if o.get("blob")]
    if blobs:
        record_asset_blobs(conn, blobs, manifest["backup_id"])


def rebuild_from_cloud(conn, policy, store) -> int:
    """Recreate the catalog's rows of every committed backup (every manifest) in one cloud; returns how many."""
    import json

    from wedsync_dr.restore import list_manifest_keys

    count = 0
    for name in sorted(policy.data_classes):
        for key in list_manifest_keys(store, policy, name):
            upsert_from_manifest(conn, json.loads(store.read_bytes(key)), store.cloud)
            count += 1
    return count


def backups_to_repair(conn, prefix: str, *, only_degraded: bool, backup_ids: list[str] | None = None) -> list[tuple]:
    """(backup_id, manifest) newest first: the named backups whatever their status, else the degraded ones,
    else every kept (validated or degraded) one -- of the policy's key prefix."""
    if backup_ids:
        return conn.execute("SELECT backup_id, manifest FROM backup_catalog.backups WHERE manifest IS NOT NULL "
                            "AND backup_id = ANY(%s) ORDER BY started_at DESC", (list(backup_ids),)).fetchall()
    statuses = ["degraded"] if only_degraded else ["validated", "degraded"]
    return conn.execute("SELECT backup_id, manifest FROM backup_catalog.backups WHERE manifest IS NOT NULL "
                        "AND status = ANY(%s) AND starts_with(prefix, %s) ORDER BY started_at DESC",
                        (statuses, f"{prefix}/")).fetchall()


def failed_verifications_since_repair(conn, backup_id: str) -> dict[str, list[str]]:
    """cloud -> problems of the failed verifications of a backup newer than both the last repair that
    checked that copy and the last full verification that passed."""
    rows = conn.execute(
        "SELECT v.cloud, v.problems FROM backup_catalog.verifications v WHERE v.backup_id = %s AND NOT v.ok "
        "AND v.verified_at > COALESCE((SELECT c.checked_at FROM backup_catalog.backup_copies c "
        "  WHERE c.backup_id = v.backup_id AND c.cloud = v.cloud), '-infinity') "
        "AND v.verified_at > COALESCE((SELECT max(o.verified_at) FROM backup_catalog.verifications o "
        "  WHERE o.backup_id = v.backup_id AND o.cloud = v.cloud AND o.ok AND o.sample >= 1), '-infinity')",
        (backup_id,)).fetchall()
    found: dict[str, list[str]] = {}
    for cloud, problems in rows:
        found.setdefault(cloud, []).extend(problems or [])
    return found


def lock_backup(conn, backup_id: str) -> None:
    """Serialise commits of one backup (its upload tasks finish in any order, on any worker) until the end of
    the caller's transaction."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('wedsync_dr.backup'), hashtext(%s))", (backup_id,))


def record_copy(conn, backup_id: str, cloud: str, status: str, detail: str = "") -> None:
    conn.execute(
        "INSERT INTO backup_catalog.backup_copies (backup_id, cloud, status, detail) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (backup_id, cloud) DO UPDATE SET status = EXCLUDED.status, detail = EXCLUDED.detail, "
        "checked_at = now()", (backup_id, cloud, status, detail))


def is_committed(conn, backup_id: str) -> bool:
    row = conn.execute("SELECT manifest IS NOT NULL FROM backup_catalog.backups WHERE backup_id = %s",
                       (backup_id,)).fetchone()
    return bool(row and row[0])


def existing_wedding_ids(conn, schema: str, wedding_ids: list[int]) -> set[int]:
    """Which of `wedding_ids` are in `schema`.weddings (conn: the source database, wedsync_db)."""
    return {r[0] for r in conn.execute(f"SELECT wedding_id FROM {schema}.weddings WHERE wedding_id = ANY(%s)",
                                       (wedding_ids,))}


def coalesced_emergency_run(conn, run_id: str) -> dict[str, Any] | None:
    """`{"into": <run id>}` when the emergency run was coalesced into another one, else None."""
    row = conn.execute("SELECT coalesced_into FROM backup_catalog.emergency_runs WHERE run_id = %s "
                       "AND status = 'coalesced'", (run_id,)).fetchone()
    return {"into": row[0]} if row else None
