"""The backup catalog (schema `backup_catalog`): runs, objects, per-cloud copies, alerts, asset blobs.

It is a cache of the manifests in the clouds (rebuildable from any one cloud) plus operational history.
Every function takes an open psycopg 3 connection; writes commit before returning.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from psycopg.types.json import Jsonb

from wedsync_dr.format import Blob, ChunkedObject, Manifest, entry_from_json
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


SCHEMA_VERSION = 7  # include/sql/backup_catalog.sql's schema_version: 2 added blobs, verifications,
# acknowledgements; 3 the `abandoned` backup status; 4 backup_steps (metrics); 5 chunked objects (format 4);
# 6 blob_locks; 7 pack_chunks (format 5)


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


def record_backup_result(conn, manifest: Manifest | None, *, backup_id: str, status: str,
                         copies: dict[str, tuple[str, str]], error: str | None = None,
                         retain_until: dt.datetime | None = None) -> None:
    """Store the outcome of a backup: its manifest (when committed), objects and per-cloud copies."""
    clouds_ok = sorted(c for c, (s, _) in copies.items() if s == "validated")
    clouds_failed = sorted(c for c, (s, _) in copies.items() if s != "validated")
    with conn.transaction():
        if manifest:
            totals = manifest.totals
            conn.execute(
                "UPDATE backup_catalog.backups SET status=%s, finished_at=now(), snapshot_at=%s, object_count=%s, "
                "row_count=%s, plaintext_bytes=%s, compressed_bytes=%s, ciphertext_bytes=%s, clouds_ok=%s, "
                "clouds_failed=%s, manifest=%s, error=%s, retain_until=%s WHERE backup_id=%s",
                (status, manifest.snapshot_at, totals["objects"], totals["rows"], totals["plaintext_bytes"],
                 totals["compressed_bytes"], totals["ciphertext_bytes"], clouds_ok, clouds_failed,
                 Jsonb(manifest.to_json()),
                 error, retain_until, backup_id))
            conn.execute("DELETE FROM backup_catalog.backup_objects WHERE backup_id = %s", (backup_id,))
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO backup_catalog.backup_objects (backup_id, name, key, source, wedding_id, rows, "
                    "plaintext_sha256, plaintext_size, ciphertext_sha256, ciphertext_size, chunks) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [(backup_id, o.name, getattr(o, "key", None), o.source, o.wedding_id, o.rows, o.plaintext_sha256,
                      o.plaintext_size, getattr(o, "ciphertext_sha256", None), getattr(o, "ciphertext_size", None),
                      (o.chunk_count or len(o.chunks)) if isinstance(o, ChunkedObject) else None)
                     for o in manifest.objects])
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


def has_ended_without_it(conn, backup_id: str) -> bool:
    """Whether the backup is failed or deleted: a copy that turns up later (a late upload, a manifest a cloud's
    lock kept) makes it neither committed nor recorded again."""
    return backup_statuses(conn, [backup_id]).get(backup_id) in ("failed", "deleted")


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


def known_blobs(conn, prefix: str | None = None) -> dict[str, Blob]:
    """Format-3 blobs by content id (under the clouds' key `prefix`, when given): their manifest entries."""
    rows = conn.execute("SELECT content_id, entry FROM backup_catalog.blobs WHERE %s::text IS NULL OR "
                        "starts_with(key, %s)", (prefix, f"{prefix}/" if prefix else None))
    return {cid: entry_from_json(entry) for cid, entry in rows}


def record_blobs(conn, entries: Iterable[Blob], backup_id: str) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO backup_catalog.blobs (content_id, key, entry, first_backup_id) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (key) DO NOTHING",
            [(e.content_id, e.key, Jsonb(e.to_json()), backup_id) for e in entries])


def forget_blobs(conn, keys: Iterable[str]) -> None:
    """Blobs found in no cloud: the next backup that needs them stores them again."""
    keys = list(keys)
    for table in ("blobs", "blob_locks", "pack_chunks"):
        conn.execute(f"DELETE FROM backup_catalog.{table} WHERE key = ANY(%s)", (keys,))


def forget_blobs_under(conn, prefix: str) -> None:
    """Every blob (its recorded locks, a pack's chunks) under a key prefix: what a test or a benchmark stored
    there is gone."""
    for table in ("blobs", "blob_locks", "pack_chunks"):
        conn.execute(f"DELETE FROM backup_catalog.{table} WHERE starts_with(key, %s)", (f"{prefix}/",))


def pack_chunks(conn, pack_keys: Iterable[str]) -> list[tuple[str, str, int]]:
    """(pack key, chunk content id, offset in the pack's plaintext) of every chunk in these packs (format 5)."""
    return [(key, content_id.hex(), offset) for key, content_id, offset in iter_pack_chunks(conn, pack_keys)]


def iter_pack_chunks(conn, pack_keys: Iterable[str], batch: int = 20_000) -> Iterator[tuple[str, bytes, int]]:
    """`pack_chunks` as the extract reads them: content ids as raw bytes, through a server-side cursor a batch
    at a time (a newest backup of 4 GB has 260,000 chunks: all its rows at once were ~80 MB of the extract's
    peak)."""
    with conn.transaction(), conn.cursor(name="wedsync_pack_chunks") as cur:
        cur.itersize = batch
        cur.execute("SELECT key, decode(content_id, 'hex'), pack_offset FROM backup_catalog.pack_chunks "
                    "WHERE key = ANY(%s)", (list(pack_keys),))
        yield from cur


def record_pack_chunks(conn, pack_key: str, chunks: list[list]) -> None:
    """The chunks a new pack holds ([chunk id, offset, size], ...), as the extract closes it. Recorded here only:
    a failed backup's rows name a pack no good backup lists (never looked up; retention's sweep forgets them),
    and a lost catalog loses only deduplication against what is stored (the next backup stores it once more)."""
    # one statement of three arrays, not a row each: a pack holds ~500 chunks, and the extract's workers wait on
    # this while it runs (executemany took 8 % of the extract's time on the 1 GB benchmark)
    ids, offsets, sizes = zip(*chunks, strict=True) if chunks else ((), (), ())
    conn.execute(
        "INSERT INTO backup_catalog.pack_chunks (key, content_id, pack_offset, size) "
        "SELECT %s, c.content_id, c.pack_offset, c.size FROM unnest(%s::text[], %s::bigint[], %s::bigint[]) "
        "AS c(content_id, pack_offset, size) ON CONFLICT (key, content_id) DO NOTHING",
        (pack_key, list(ids), list(offsets), list(sizes)))


def recorded_locks(conn, cloud: str, keys: Iterable[str]) -> dict[str, tuple[dt.datetime, dt.datetime]]:
    """Until when each of `keys` was last seen or made write-once in `cloud`, and when that was recorded (keys
    never recorded are absent)."""
    rows = conn.execute("SELECT key, locked_until, recorded_at FROM backup_catalog.blob_locks WHERE cloud = %s "
                        "AND key = ANY(%s)", (cloud, list(keys)))
    return {key: (until, at) for key, until, at in rows}


def record_locks(conn, cloud: str, locks: dict[str, dt.datetime]) -> None:
    """What a check saw (HEAD) or set: the cloud's answer replaces what was recorded, even an earlier date (a
    governance lock can be shortened by whoever may bypass it); a too-early date costs only a HEAD later."""
    if not locks:
        return
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO backup_catalog.blob_locks (cloud, key, locked_until, recorded_at) VALUES (%s, %s, %s, now()) "
            "ON CONFLICT (cloud, key) DO UPDATE SET locked_until = EXCLUDED.locked_until, recorded_at = now()",
            [(cloud, key, until) for key, until in locks.items()])


def forget_unreferenced_blobs(conn, prefix: str, referenced_keys: Iterable[str], older_than: dt.datetime) -> None:
    """After retention: the catalog forgets blobs under `prefix` no kept backup needs (formats 2 and 3)."""
    keys = sorted(referenced_keys)
    for table in ("blobs", "asset_blobs"):
        conn.execute(f"DELETE FROM backup_catalog.{table} WHERE starts_with(key, %s) AND NOT (key = ANY(%s)) "
                     "AND created_at < %s", (f"{prefix}/", keys, older_than))
    for table in ("blob_locks", "pack_chunks"):
        conn.execute(f"DELETE FROM backup_catalog.{table} l WHERE starts_with(key, %s) AND NOT (key = ANY(%s)) "
                     "AND NOT EXISTS (SELECT 1 FROM backup_catalog.blobs b WHERE b.key = l.key)", (f"{prefix}/", keys))


def legacy_blob_entries(conn, manifest: Manifest) -> list[Blob]:
    """Format 2 only: the blobs a manifest names by plaintext sha256 but does not describe (an earlier backup
    stored them), as the catalog knows them; a hash the catalog does not know is left out."""
    described = {b.plaintext_sha256 for b in manifest.blobs}
    wanted = [sha for sha in manifest.referenced_blob_hashes if sha not in described]
    if not wanted:
        return []
    rows = conn.execute("SELECT sha256, size, ciphertext_sha256, ciphertext_size, key, encryption "
                        "FROM backup_catalog.asset_blobs WHERE sha256 = ANY(%s)", (wanted,)).fetchall()
    return [Blob(plaintext_sha256=sha, plaintext_size=size, ciphertext_sha256=ciphertext_sha256,
                 ciphertext_size=ciphertext_size, key=key, encryption=encryption,
                 compression=encryption.get("compression", "none"))
            for sha, size, ciphertext_sha256, ciphertext_size, key, encryption in rows]


def record_asset_blobs(conn, blobs: Iterable[Blob], backup_id: str) -> None:
    """Format-2 blobs (rebuild-catalog of an old backup); the compression is kept in the encryption object."""
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO backup_catalog.asset_blobs (sha256, size, ciphertext_sha256, ciphertext_size, key, "
            "encryption, first_backup_id) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (sha256) DO NOTHING",
            [(b.plaintext_sha256, b.plaintext_size, b.ciphertext_sha256, b.ciphertext_size, b.key,
              Jsonb({**b.encryption, "compression": b.compression}), backup_id) for b in blobs])


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


def upsert_from_manifest(conn, manifest: Manifest, cloud: str) -> None:
    """Recreate a backup's catalog rows from its manifest (rebuild-catalog): what retention needs to keep it
    (its lock and keep-until dates) and what later backups need to reference its blobs.

    Only the copy in `cloud` is known to exist, so the backup is recorded as degraded until a repair or
    validation run has checked the other clouds. A backup the catalog holds as failed or deleted stays so: its
    manifest outlived a roll-back or a retention delete (a cloud's lock refused the delete), and a proven copy
    of a run that missed the quorum is not a backup.
    """
    if has_ended_without_it(conn, manifest.backup_id):
        return
    conn.execute(
        "INSERT INTO backup_catalog.backups (backup_id, data_class, status, prefix, started_at, labels, reason) "
        "VALUES (%s, %s, 'degraded', %s, %s, %s, %s) ON CONFLICT (backup_id) DO NOTHING",
        (manifest.backup_id, manifest.data_class, manifest.prefix, manifest.created_at, list(manifest.labels),
         manifest.reason))
    holds = [d for d in (manifest.locked_until, manifest.retain_until) if d]
    record_backup_result(conn, manifest, backup_id=manifest.backup_id, status="degraded",
                         copies={cloud: ("validated", "rebuilt from this cloud's manifest")},
                         retain_until=max(holds) if holds else None)
    if manifest.format_version >= 3:
        record_blobs(conn, manifest.blobs, manifest.backup_id)
    elif manifest.blobs:
        record_asset_blobs(conn, manifest.blobs, manifest.backup_id)


def rebuild_from_cloud(conn, policy, store) -> int:
    """Recreate the catalog's rows of every committed backup (every manifest) in one cloud; returns how many."""
    import json

    from wedsync_dr.restore import list_manifest_keys

    count = 0
    for name in sorted(policy.data_classes):
        for key in list_manifest_keys(store, policy, name):
            upsert_from_manifest(conn, Manifest.from_json(json.loads(store.read_bytes(key))), store.cloud)
            count += 1
    return count


def backups_to_repair(conn, prefix: str, *, only_degraded: bool,
                      backup_ids: list[str] | None = None) -> list[Manifest]:
    """Manifests newest first: of the named backups whatever their status, else of the degraded ones, else of
    every kept (validated or degraded) one -- of the policy's key prefix."""
    if backup_ids:
        rows = conn.execute("SELECT manifest FROM backup_catalog.backups WHERE manifest IS NOT NULL "
                            "AND backup_id = ANY(%s) ORDER BY started_at DESC", (list(backup_ids),)).fetchall()
    else:
        statuses = ["degraded"] if only_degraded else ["validated", "degraded"]
        rows = conn.execute("SELECT manifest FROM backup_catalog.backups WHERE manifest IS NOT NULL "
                            "AND status = ANY(%s) AND starts_with(prefix, %s) ORDER BY started_at DESC",
                            (statuses, f"{prefix}/")).fetchall()
    return [Manifest.from_json(r[0]) for r in rows]


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


# ----------------------------------------------------------------------------- health (wedsync_dr.health)


def record_health_check(conn, cloud: str, ok: bool, latency_ms: float, error: str | None) -> None:
    """Store one canary result; runs inside the caller's transaction (health.record_checks)."""
    conn.execute("INSERT INTO backup_catalog.cloud_health_checks (cloud, ok, latency_ms, error) "
                 "VALUES (%s, %s, %s, %s)", (cloud, ok, latency_ms, error))


def recent_check_results(conn, cloud: str, limit: int) -> list[bool]:
    """The `ok` of a cloud's newest `limit` canary checks, newest first."""
    return [ok for (ok,) in conn.execute(
        "SELECT ok FROM backup_catalog.cloud_health_checks WHERE cloud = %s ORDER BY check_id DESC LIMIT %s",
        (cloud, limit)).fetchall()]


def recorded_health(conn, cloud: str) -> bool | None:
    """The cloud's recorded `healthy`, or None when it was never checked."""
    previous = conn.execute("SELECT healthy FROM backup_catalog.cloud_health WHERE cloud = %s",
                            (cloud,)).fetchone()
    return previous[0] if previous is not None else None


def record_cloud_health(conn, cloud: str, healthy: bool, failures: int, latency_ms: float,
                        error: str | None) -> None:
    """Upsert a cloud's health state (changed_at moves only when `healthy` changes); runs inside the caller's
    transaction (health.record_checks)."""
    conn.execute(
        "INSERT INTO backup_catalog.cloud_health (cloud, healthy, failures_in_a_row, last_latency_ms, "
        "last_error, changed_at, checked_at) VALUES (%s, %s, %s, %s, %s, now(), now()) "
        "ON CONFLICT (cloud) DO UPDATE SET healthy = EXCLUDED.healthy, failures_in_a_row = "
        "EXCLUDED.failures_in_a_row, last_latency_ms = EXCLUDED.last_latency_ms, last_error = "
        "EXCLUDED.last_error, checked_at = now(), changed_at = CASE WHEN backup_catalog.cloud_health.healthy "
        "<> EXCLUDED.healthy THEN now() ELSE backup_catalog.cloud_health.changed_at END",
        (cloud, healthy, failures, latency_ms, error))


def unhealthy_clouds(conn) -> set[str]:
    return {c for (c,) in conn.execute("SELECT cloud FROM backup_catalog.cloud_health WHERE NOT healthy")}


def unhealthy_state(conn, cloud: str) -> tuple | None:
    """(failures_in_a_row, changed_at, last_error) of the cloud when it is unhealthy, else None."""
    return conn.execute("SELECT failures_in_a_row, changed_at, last_error FROM backup_catalog.cloud_health "
                        "WHERE cloud = %s AND NOT healthy", (cloud,)).fetchone()


def last_good_backup_started(conn, data_class: str) -> dt.datetime | None:
    """When the class's newest good (validated or degraded) backup started; None when it has none."""
    row = conn.execute(
        "SELECT max(started_at) FROM backup_catalog.backups WHERE data_class = %s "
        "AND status IN ('validated', 'degraded')", (data_class,)).fetchone()
    return row[0] if row else None


def weddings_last_good_backup(conn, wedding_ids: list[int]) -> dict[int, dt.datetime]:
    """wedding id -> start of the newest good backup holding its bundle (weddings never backed up: absent)."""
    return dict(conn.execute(
        "SELECT o.wedding_id, max(b.started_at) FROM backup_catalog.backup_objects o JOIN backup_catalog.backups b "
        "USING (backup_id) WHERE b.status IN ('validated', 'degraded') AND o.wedding_id = ANY(%s) "
        "GROUP BY o.wedding_id", (wedding_ids,)).fetchall())


# ----------------------------------------------------------------------------- status reads (wedsync_dr.status)

BACKUP_SUMMARY_COLUMNS = "backup_id, status, started_at, finished_at, clouds_ok, clouds_failed, labels, error"


def committed_times_by_class(conn) -> list[tuple]:
    """(data_class, newest finish of a good backup, newest finish of a validated one) per class."""
    return conn.execute(
        "SELECT data_class, max(finished_at) FILTER (WHERE status IN ('validated', 'degraded')), "
        "max(finished_at) FILTER (WHERE status = 'validated') FROM backup_catalog.backups GROUP BY data_class"
    ).fetchall()


def last_passed_drills(conn) -> dict[str, dt.datetime]:
    """data class -> when its newest passing drill ran."""
    return dict(conn.execute(
        "SELECT data_class, max(drilled_at) FROM backup_catalog.drills WHERE ok GROUP BY data_class").fetchall())


def last_good_backup(conn, data_class: str) -> tuple | None:
    """The class's newest good (validated or degraded) backup as a BACKUP_SUMMARY_COLUMNS tuple, or None."""
    return conn.execute(
        f"SELECT {BACKUP_SUMMARY_COLUMNS} FROM backup_catalog.backups WHERE data_class = %s "
        "AND status IN ('validated', 'degraded') ORDER BY started_at DESC LIMIT 1", (data_class,)).fetchone()


def last_backup_attempt(conn, data_class: str) -> tuple | None:
    """The class's newest not deleted backup, whatever its status, as a BACKUP_SUMMARY_COLUMNS tuple, or None."""
    return conn.execute(
        f"SELECT {BACKUP_SUMMARY_COLUMNS} FROM backup_catalog.backups WHERE data_class = %s AND status <> 'deleted' "
        "ORDER BY started_at DESC LIMIT 1", (data_class,)).fetchone()


def last_drill(conn, data_class: str) -> tuple | None:
    """(drilled_at, ok, backup_id, cloud, detail) of the class's newest drill, or None."""
    return conn.execute(
        "SELECT drilled_at, ok, backup_id, cloud, detail FROM backup_catalog.drills WHERE data_class = %s "
        "ORDER BY drilled_at DESC LIMIT 1", (data_class,)).fetchone()


def degraded_backups(conn) -> list[tuple]:
    """(backup_id, data_class, started_at, clouds_failed) of the newest 50 degraded backups, newest first."""
    return conn.execute(
        "SELECT backup_id, data_class, started_at, clouds_failed FROM backup_catalog.backups "
        "WHERE status = 'degraded' ORDER BY started_at DESC LIMIT 50").fetchall()


def cloud_health(conn) -> list[tuple]:
    """(cloud, healthy, failures_in_a_row, last_latency_ms, checked_at, last_error) per checked cloud."""
    return conn.execute(
        "SELECT cloud, healthy, failures_in_a_row, last_latency_ms, checked_at, last_error "
        "FROM backup_catalog.cloud_health ORDER BY cloud").fetchall()


def full_verification_passes(conn, backup_ids: list[str]) -> dict[tuple[str, str], dt.datetime]:
    """(backup id, cloud) -> newest passing verification of EVERY object of that copy, for `backup_ids`."""
    return {(b, c): at for b, c, at in conn.execute(
        # only a passing verification of EVERY object clears a failed one: a sample may miss the bad object
        "SELECT backup_id, cloud, max(verified_at) FROM backup_catalog.verifications WHERE ok AND sample >= 1 "
        "AND backup_id = ANY(%s) GROUP BY backup_id, cloud",
        (backup_ids,))}


def unacknowledged_alert_groups(conn, raised_after: dt.datetime) -> list[dict[str, Any]]:
    """The newest unacknowledged warning or critical alert of each kind and subject raised after
    `raised_after`, with the group's count and first raised_at."""
    rows = conn.execute(
        "SELECT DISTINCT ON (kind, subject) alert_id, raised_at, severity, kind, subject, message, backup_id, details, "
        "count(*) OVER w, min(raised_at) OVER w FROM backup_catalog.alerts "
        "WHERE severity <> 'info' AND acknowledged_at IS NULL AND raised_at > %s "
        "WINDOW w AS (PARTITION BY kind, subject) ORDER BY kind, subject, alert_id DESC",
        (raised_after,)).fetchall()
    keys = ("alert_id", "raised_at", "severity", "kind", "subject", "message", "backup_id", "details", "count",
            "first_raised_at")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def recent_alerts(conn, limit: int) -> list[tuple]:
    """(alert_id, raised_at, severity, kind, subject, message, backup_id, acknowledged_at, acknowledged_by) of
    the newest `limit` alerts, newest first."""
    return conn.execute(
        "SELECT alert_id, raised_at, severity, kind, subject, message, backup_id, acknowledged_at, acknowledged_by "
        "FROM backup_catalog.alerts ORDER BY alert_id DESC LIMIT %s", (limit,)).fetchall()


def recent_emergency_runs(conn, limit: int) -> list[tuple]:
    """(run_id, requested_at, finished_at, reason, requested_by, scope, classes, status, coalesced_into, clouds,
    backup_ids) of the newest `limit` emergency runs, newest first."""
    return conn.execute(
        "SELECT run_id, requested_at, finished_at, reason, requested_by, scope, classes, status, coalesced_into, "
        "clouds, backup_ids FROM backup_catalog.emergency_runs ORDER BY requested_at DESC LIMIT %s",
        (limit,)).fetchall()


def recent_restores(conn, limit: int) -> list[tuple]:
    """(restore_id, restored_at, backup_id, data_class, target, wedding_id, dry_run, rows, seconds, failovers,
    run_id) of the newest `limit` restores, newest first."""
    return conn.execute(
        "SELECT restore_id, restored_at, backup_id, data_class, target, wedding_id, dry_run, rows, seconds, "
        "failovers, run_id FROM backup_catalog.restores ORDER BY restored_at DESC LIMIT %s", (limit,)).fetchall()


def alert_kind_subject(conn, alert_id: int) -> tuple | None:
    """(kind, subject) of an alert, or None when there is no such alert."""
    return conn.execute("SELECT kind, subject FROM backup_catalog.alerts WHERE alert_id = %s", (alert_id,)).fetchone()


def acknowledge_alerts(conn, by: str, kind: str, subject: str | None, up_to_alert_id: int) -> list[int]:
    """Acknowledge the open alerts of `kind` and `subject` up to `up_to_alert_id`; returns their ids."""
    return [a for (a,) in conn.execute(
        "UPDATE backup_catalog.alerts SET acknowledged_at = now(), acknowledged_by = %s WHERE kind = %s "
        "AND subject IS NOT DISTINCT FROM %s AND alert_id <= %s AND acknowledged_at IS NULL RETURNING alert_id",
        (by, kind, subject, up_to_alert_id)).fetchall()]


def backups_of_class(conn, data_class: str, limit: int) -> list[tuple]:
    """(backup_id, status, started_at, clouds_ok) of the class's newest `limit` backups, newest first (the CLI's
    `list`)."""
    return conn.execute(
        "SELECT backup_id, status, started_at, clouds_ok FROM backup_catalog.backups "
        "WHERE data_class = %s ORDER BY started_at DESC LIMIT %s", (data_class, limit)).fetchall()


# ----------------------------------------------------------------------------- restore (wedsync_dr.restore)


def good_backup_manifest(conn, data_class: str, backup_id: str) -> Manifest | None:
    """The manifest of a committed good (validated or degraded) backup of the class, or None."""
    row = conn.execute(
        "SELECT manifest FROM backup_catalog.backups WHERE backup_id = %s AND data_class = %s "
        "AND status IN ('validated', 'degraded') AND manifest IS NOT NULL", (backup_id, data_class)).fetchone()
    return Manifest.from_json(row[0]) if row else None


def latest_good_manifest(conn, data_class: str, point_in_time: dt.datetime | None = None) -> Manifest | None:
    """The manifest of the class's newest committed good backup (started at or before `point_in_time`, when
    given), or None."""
    row = conn.execute(
        "SELECT manifest FROM backup_catalog.backups WHERE data_class = %s AND status IN ('validated', 'degraded') "
        "AND manifest IS NOT NULL AND (%s::timestamptz IS NULL OR started_at <= %s) "
        "ORDER BY started_at DESC LIMIT 1", (data_class, point_in_time, point_in_time)).fetchone()
    return Manifest.from_json(row[0]) if row else None


def latest_packed_blobs(conn, data_class: str, prefix: str) -> tuple[list[Blob], dict[str, int]]:
    """The blobs (packs among them) of the class's newest good backup under `prefix` that stored table chunks or
    wedding bundles in packs (format 5): what a deduplicated extract references; and how many plaintext bytes
    of each pack that backup's objects use (the sum of their extents in it: a chunk an object repeats counts
    each time). A full backup in between (deduplication off for a while) does not make the next deduplicated
    one store everything again; nor does an emergency run of a few weddings (a backup with a `scope`), which
    references only their bundles' packs. Only `blobs` and the objects' `packs` and `extents` are read, and
    the use is summed by the server."""
    row = conn.execute(
        "WITH newest AS (SELECT manifest FROM backup_catalog.backups WHERE data_class = %s "
        "AND starts_with(prefix, %s) AND status IN ('validated', 'degraded') AND scope IS NULL "
        "AND manifest->'objects' @> '[{\"extents\": []}]'::jsonb ORDER BY started_at DESC LIMIT 1) "
        "SELECT n.manifest->'blobs', (SELECT coalesce(jsonb_object_agg(pack, used) FILTER (WHERE pack IS NOT NULL), "
        "'{}'::jsonb) FROM ("
        "  SELECT o->'packs'->>((e->>0)::int) AS pack, sum((e->>2)::bigint) AS used "
        "  FROM jsonb_array_elements(n.manifest->'objects') o, "
        "  jsonb_array_elements(coalesce(o->'extents', '[]'::jsonb)) e GROUP BY 1) u) FROM newest n",
        (data_class, f"{prefix}/")).fetchone()
    if row is None:
        return [], {}
    return [entry_from_json(b) for b in row[0]], {pack: int(used) for pack, used in row[1].items()}


# ----------------------------------------------------------------------------- retention (wedsync_dr.retention)


def retention_candidates(conn, prefix: str) -> list[dict[str, Any]]:
    """The backups under the clouds' key `prefix` that retention judges (neither deleted nor running), as
    dicts of backup_id, data_class, status, started_at, labels, retain_until, prefix, manifest."""
    rows = conn.execute(
        "SELECT backup_id, data_class, status, started_at, labels, retain_until, prefix, manifest "
        "FROM backup_catalog.backups WHERE status <> 'deleted' AND status <> 'running' AND starts_with(prefix, %s)",
        (f"{prefix}/",)).fetchall()
    return [{"backup_id": r[0], "data_class": r[1], "status": r[2], "started_at": r[3], "labels": r[4],
             "retain_until": r[5], "prefix": r[6], "manifest": Manifest.from_json(r[7]) if r[7] else None}
            for r in rows]


def mark_deleted(conn, backup_id: str) -> None:
    conn.execute("UPDATE backup_catalog.backups SET status = 'deleted' WHERE backup_id = %s",
                 (backup_id,))


def running_backup_ids(conn, prefix: str, data_classes: list[str], started_after: dt.datetime) -> list[str]:
    """Ids of the backups under `prefix` of `data_classes` still running that started after `started_after`."""
    return [r[0] for r in conn.execute(
        "SELECT backup_id FROM backup_catalog.backups WHERE status = 'running' AND starts_with(prefix, %s) "
        "AND data_class = ANY(%s) AND started_at > %s",
        (f"{prefix}/", data_classes, started_after)).fetchall()]


# ----------------------------------------------------------------------------- repair (wedsync_dr.repair)


def record_repair_status(conn, backup_id: str, status: str, clouds_ok: list[str], clouds_failed: list[str]) -> None:
    """A repaired backup's status and clouds; runs inside the caller's transaction (with its record_copy calls)."""
    conn.execute(
        "UPDATE backup_catalog.backups SET status = %s, clouds_ok = %s, clouds_failed = %s "
        "WHERE backup_id = %s",
        (status, clouds_ok, clouds_failed, backup_id))


# ----------------------------------------------------------------------------- drills (wedsync_dr.drill)


def drill_count(conn, data_class: str) -> int:
    return conn.execute("SELECT count(*) FROM backup_catalog.drills WHERE data_class = %s",
                        (data_class,)).fetchone()[0]


def recent_good_manifests(conn, data_class: str, limit: int) -> list[tuple[Manifest, list[str]]]:
    """(manifest, clouds_ok) of the class's newest `limit` committed good backups, newest first."""
    rows = conn.execute(
        "SELECT manifest, clouds_ok FROM backup_catalog.backups WHERE data_class = %s AND manifest IS NOT NULL "
        "AND status IN ('validated', 'degraded') ORDER BY started_at DESC LIMIT %s", (data_class, limit)).fetchall()
    return [(Manifest.from_json(m), clouds) for m, clouds in rows]


def record_drill(conn, data_class: str, backup_id: str, cloud: str, ok: bool, seconds: float, rows: int,
                 detail: str) -> None:
    conn.execute(
        "INSERT INTO backup_catalog.drills (data_class, backup_id, cloud, ok, seconds, rows, detail) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s)", (data_class, backup_id, cloud, ok, seconds, rows, detail))


# ----------------------------------------------------------------------------- emergency claims (wedsync_dr.emergency)


def claim_emergency_scope(conn, key: str, run_id: str, reason: str, ttl: dt.timedelta) -> str | None:
    """Claim `key` for `run_id` (claims older than `ttl` are dropped first), in one transaction serialised by
    an advisory lock; returns the run id already holding it (its claim records the coalesced request) or None
    (we hold it)."""
    import json

    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('wedsync_dr.emergency'))")
        conn.execute("DELETE FROM backup_catalog.emergency_claims WHERE claimed_at < now() - %s", (ttl,))
        holder = conn.execute(
            "SELECT run_id FROM backup_catalog.emergency_claims WHERE (scope_key = %s OR scope_key = 'all') "
            "AND run_id <> %s ORDER BY claimed_at LIMIT 1", (key, run_id)).fetchone()
        if holder:
            conn.execute("UPDATE backup_catalog.emergency_claims SET coalesced = coalesced || %s::jsonb "
                         "WHERE run_id = %s", (json.dumps([{"run_id": run_id, "reason": reason}]), holder[0]))
            return holder[0]
        conn.execute("INSERT INTO backup_catalog.emergency_claims (scope_key, run_id, reason) VALUES (%s, %s, %s) "
                     "ON CONFLICT (run_id) DO NOTHING", (key, run_id, reason))
    return None


def release_emergency_claim(conn, run_id: str) -> None:
    conn.execute("DELETE FROM backup_catalog.emergency_claims WHERE run_id = %s", (run_id,))


# ----------------------------------------------------------------------------- verifications (wedsync_dr.verification)


def latest_good_committed_backup_id(conn, data_class: str) -> str | None:
    """Id of the class's newest committed good (validated or degraded) backup, or None."""
    row = conn.execute(
        "SELECT backup_id FROM backup_catalog.backups WHERE data_class = %s AND status IN ('validated', "
        "'degraded') AND manifest IS NOT NULL ORDER BY started_at DESC LIMIT 1", (data_class,)).fetchone()
    return row[0] if row else None


def record_verification(conn, result: dict[str, Any]) -> int:
    """Store a verdict (verification.verify_copy's result, its problems already cut to PROBLEMS_KEPT); returns
    its verification_id."""
    row = conn.execute(
        "INSERT INTO backup_catalog.verifications (backup_id, data_class, cloud, ok, sample, seed, objects_read, "
        "objects_total, problem_count, problems, seconds, dag_id, run_id) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING verification_id",
        (result["backup_id"], result["data_class"], result["cloud"], result["ok"], result["sample"], result["seed"],
         result["objects_read"], result["objects_total"], result["problem_count"],
         Jsonb(result["problems"]), result["seconds"], result.get("dag_id"),
         result.get("run_id"))).fetchone()
    return row[0]


_VERIFICATION_COLUMNS = ("verification_id", "verified_at", "backup_id", "data_class", "cloud", "ok", "sample",
                         "seed", "objects_read", "objects_total", "problem_count", "problems", "seconds", "dag_id",
                         "run_id")


def verifications(conn, *, backup_id: str | None = None, data_class: str | None = None, cloud: str | None = None,
                  run_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Recorded verdicts, newest first, optionally narrowed (verified_at as ISO 8601)."""
    rows = conn.execute(
        f"SELECT {', '.join(_VERIFICATION_COLUMNS)} FROM backup_catalog.verifications "
        "WHERE (%(b)s::text IS NULL OR backup_id = %(b)s) AND (%(d)s::text IS NULL OR data_class = %(d)s) "
        "AND (%(c)s::text IS NULL OR cloud = %(c)s) AND (%(r)s::text IS NULL OR run_id = %(r)s) "
        "ORDER BY verification_id DESC LIMIT %(n)s",
        {"b": backup_id, "d": data_class, "c": cloud, "r": run_id, "n": limit}).fetchall()
    found = [dict(zip(_VERIFICATION_COLUMNS, row, strict=True)) for row in rows]
    for item in found:
        item["verified_at"] = item["verified_at"].isoformat()
    return found


# ----------------------------------------------------------------------------- metrics (wedsync_dr.metrics)


def record_backup_step(conn, *, backup_id: str, data_class: str, step: str, seconds: float, cloud: str | None = None,
                       size: int | None = None, objects: int | None = None, outcome: str | None = None) -> None:
    """One finished step of a backup run (extract, encrypt, upload to `cloud`, validate with its `outcome`)."""
    conn.execute(
        "INSERT INTO backup_catalog.backup_steps (backup_id, data_class, step, cloud, seconds, bytes, objects, "
        "outcome) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (backup_id, data_class, step, cloud, seconds, size, objects, outcome))


def good_backup_times(conn) -> list[tuple]:
    """(data_class, newest start of a good backup, newest finish of one) per class that has a good backup."""
    return conn.execute(
        "SELECT data_class, max(started_at), max(finished_at) FROM backup_catalog.backups "
        "WHERE status IN ('validated', 'degraded') GROUP BY data_class").fetchall()


def backup_counts(conn) -> list[tuple]:
    """(data_class, status, how many backups have that status now)."""
    return conn.execute("SELECT data_class, status, count(*) FROM backup_catalog.backups "
                        "GROUP BY data_class, status").fetchall()


def backup_step_totals(conn) -> list[tuple]:
    """(data_class, step, cloud, outcome, rows, total seconds, total bytes, total objects) over every recorded
    backup step."""
    return conn.execute(
        "SELECT data_class, step, cloud, outcome, count(*), sum(seconds), coalesce(sum(bytes), 0), "
        "coalesce(sum(objects), 0) FROM backup_catalog.backup_steps GROUP BY data_class, step, cloud, outcome"
    ).fetchall()


def latest_backup_steps(conn) -> list[tuple]:
    """(data_class, step, cloud, seconds, finished_at) of the newest recorded step of each class, step and cloud."""
    return conn.execute(
        "SELECT DISTINCT ON (data_class, step, cloud) data_class, step, cloud, seconds, finished_at "
        "FROM backup_catalog.backup_steps ORDER BY data_class, step, cloud, step_id DESC").fetchall()


def drill_totals(conn) -> list[tuple]:
    """(data_class, ok, how many drills) over every recorded drill."""
    return conn.execute("SELECT data_class, ok, count(*) FROM backup_catalog.drills GROUP BY data_class, ok").fetchall()


def latest_drills(conn) -> list[tuple]:
    """(data_class, drilled_at, ok, seconds) of each class's newest drill."""
    return conn.execute(
        "SELECT DISTINCT ON (data_class) data_class, drilled_at, ok, seconds FROM backup_catalog.drills "
        "ORDER BY data_class, drilled_at DESC").fetchall()
