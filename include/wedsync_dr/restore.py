"""Restore: resolve a backup, stream its objects from the best cloud, verify, load -- never half-overwrite.

Pipeline per object: stream download -> decrypt (each segment's tag verified before its bytes move on)
-> decompress -> `COPY FROM` into a scratch/target schema, inside a savepoint. The ciphertext sha256 and
the plaintext sha256/size are checked when the stream ends; any failure (missing object, checksum or tag
mismatch, auth error, timeout) rolls the savepoint back and the same object is fetched from the next
cloud, with the reason logged. Row counts are verified against the manifest before anything is committed.

Targets:
- default: a new schema `restore_<class>_<UTC timestamp>_<4 hex>` (the live schema is not touched);
- `in_place`: the rows load into a scratch schema first; only after verification are the live tables'
  contents replaced, all in ONE transaction (a failure anywhere leaves live data exactly as it was).
- assets: files are written under a target directory (paths can never escape it), each file via a
  temporary name and renamed once its sha256 is verified.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import io
import json
import logging
import os
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from wedsync_dr import crypto, extract, format, memory
from wedsync_dr.format import Blob, ChunkedObject, DataObject, Entry, Manifest
from wedsync_dr.policy import Policy
from wedsync_dr.requests import _BACKUP_TS, InvalidRequest, RestoreError, RestoreRequest, default_target
from wedsync_dr.storage import ObjectStore, StorageError
from wedsync_dr.streams import FilteredLines, HashingReader, lines

log = logging.getLogger(__name__)


class BackupNotFound(RestoreError):
    pass


class RestoreTargetError(RestoreError, InvalidRequest):
    """The restore target is not allowed (a user error: never pages)."""


class WeddingNotInBackup(RestoreError, InvalidRequest):
    """A one-wedding restore asked for a wedding the backup does not hold (a user error: never pages)."""


# ----------------------------------------------------------------------------- resolving


def backup_time(backup_id: str) -> dt.datetime:
    match = _BACKUP_TS.search(backup_id)
    if not match:
        raise ValueError(f"not a wedsync-dr backup id: {backup_id!r}")
    return dt.datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)


def resolve_from_catalog(catalog_conn, data_class: str, backup_id: str = "latest",
                         point_in_time: dt.datetime | None = None) -> Manifest | None:
    """The manifest of the wanted backup, from the catalog (None when the catalog does not know it)."""
    from wedsync_dr import catalog

    if backup_id != "latest":
        return catalog.good_backup_manifest(catalog_conn, data_class, backup_id)
    return catalog.latest_good_manifest(catalog_conn, data_class, point_in_time)


def list_manifest_keys(store: ObjectStore, policy: Policy, data_class: str) -> list[str]:
    """Keys of every committed backup of a class in one cloud (a backup exists iff its manifest does)."""
    return sorted(info.key for info in store.list(f"{policy.prefix}/{data_class}/")
                  if format.is_manifest_key(info.key))


def resolve_from_clouds(stores: dict[str, ObjectStore], policy: Policy, data_class: str, backup_id: str = "latest",
                        point_in_time: dt.datetime | None = None) -> Manifest:
    """Find the manifest in the clouds themselves (catalog lost), trying each cloud in turn (in `stores`' order:
    a restore passes its own cloud order). A cloud that lacks the newest backup (one committed without it, not
    repaired yet) answers "latest" with the newest it holds; name the backup id to be sure of one."""
    errors = []
    for cloud, store in stores.items():
        try:
            keys = list_manifest_keys(store, policy, data_class)
            candidates = []
            for key in keys:
                bid = key.rsplit("/", 2)[-2]
                if backup_id != "latest" and bid != backup_id:
                    continue
                if point_in_time and backup_time(bid) > point_in_time:
                    continue
                candidates.append((backup_time(bid), key))
            if candidates:
                return Manifest.from_json(json.loads(store.read_bytes(max(candidates)[1])))
        except format.FormatError as err:
            raise RestoreError(str(err)) from None
        except (StorageError, ValueError) as err:
            errors.append(f"{cloud}: {err}")
            log.warning("cannot list backups in %s: %s", cloud, err)
    detail = f" ({'; '.join(errors)})" if errors else ""
    raise BackupNotFound(f"no {data_class} backup matching {backup_id!r}"
                         + (f" at or before {point_in_time.isoformat()}" if point_in_time else "") + detail)


def resolve(policy: Policy, stores: dict[str, ObjectStore], data_class: str, *, backup_id: str = "latest",
            point_in_time: dt.datetime | None = None, catalog_connect: Callable[[], Any] | None = None
            ) -> dict[str, Any]:
    """Catalog first; when it is unreachable or does not know the backup, the manifests in the clouds."""
    if catalog_connect is not None:
        try:
            with catalog_connect() as conn:
                manifest = resolve_from_catalog(conn, data_class, backup_id, point_in_time)
            if manifest:
                return manifest
            log.info("catalog has no matching %s backup: looking in the clouds", data_class)
        except format.FormatError as err:  # the backup exists, and this release cannot read it
            raise RestoreError(str(err)) from None
        except Exception as err:  # noqa: BLE001 - any catalog failure means: go to the clouds
            log.warning("catalog unavailable (%s: %s): resolving from the clouds", type(err).__name__, err)
    return resolve_from_clouds(stores, policy, data_class, backup_id, point_in_time)


def cloud_order(stores: dict[str, ObjectStore], preferred: str = "auto", healthy: Iterable[str] = ()) -> list[str]:
    """Requested cloud first, then healthy ones, then any (policy order within each group)."""
    healthy = [c for c in healthy if c in stores]
    order = ([preferred] if preferred in stores else []) + healthy + list(stores)
    return list(dict.fromkeys(order))


# ----------------------------------------------------------------------------- reading one object


def _data_key(entry: Entry, key_ring: crypto.KeyRing):
    return key_ring.unwrap(entry.wrapped_key, object_name=entry.key)


@dataclass
class Attempt:
    cloud: str
    ok: bool
    reason: str = ""
    seconds: float = 0.0


def with_failover(entry: Entry, order: list[str], stores: dict[str, ObjectStore], key_ring: crypto.KeyRing,
                  consume: Callable[[BinaryIO], Any], *, backup_id: str, savepoint=None
                  ) -> tuple[Any, list[Attempt]]:
    """Stream one object's verified plaintext into `consume`, trying each cloud until one works.

    `savepoint` (a context-manager factory, e.g. `conn.transaction`) wraps each attempt so a failed one
    is rolled back before the next cloud is tried.
    """
    attempts: list[Attempt] = []
    data_key = _data_key(entry, key_ring)
    # from where the object should be (backup id and name, or content id), not from the manifest's record
    ad = entry.associated_data(backup_id)
    for cloud in order:
        started = time.monotonic()
        try:
            with stores[cloud].open_read(entry.key) as raw:
                verifier = HashingReader(raw)
                plaintext = crypto.decrypting_reader(verifier, data_key, ad, object_name=entry.key,
                                                     decompress=entry.decompress)
                checked = HashingReader(plaintext)
                if savepoint is None:
                    result = _consume_and_verify(entry, consume, checked, verifier, key_ring)
                else:
                    with savepoint():
                        result = _consume_and_verify(entry, consume, checked, verifier, key_ring)
            attempts.append(Attempt(cloud, True, seconds=time.monotonic() - started))
            return result, attempts
        except _RETRYABLE as err:
            reason = f"{type(err).__name__}: {err}"
            attempts.append(Attempt(cloud, False, reason, time.monotonic() - started))
            log.warning("restore of %s from %s failed (%s); trying the next cloud", entry.key, cloud, reason)
    raise RestoreError(f"{entry.key}: no cloud delivered a valid copy: "
                       + "; ".join(f"{a.cloud}: {a.reason}" for a in attempts))


class IntegrityError(RuntimeError):
    pass


def _consume_and_verify(entry: Entry, consume, checked: HashingReader, verifier: HashingReader,
                        key_ring: crypto.KeyRing):
    result = consume(checked)
    while checked.read(1 << 20):  # anything the consumer left unread still has to be verified
        pass
    if verifier.sha256.hexdigest() != entry.ciphertext_sha256:
        raise IntegrityError("ciphertext sha256 differs from the manifest")
    if checked.size != entry.plaintext_size:
        raise IntegrityError("plaintext size differs from the manifest")
    if entry.plaintext_sha256 is not None:  # data objects; a blob read for a file of the (decrypted) asset index
        if checked.sha256.hexdigest() != entry.plaintext_sha256:
            raise IntegrityError("plaintext sha256 differs from the manifest")
    elif key_ring.has_dedup_key and not key_ring.content_id_matches(checked.sha256.hexdigest(), entry.content_id):
        raise IntegrityError("plaintext does not match the blob's content id")
    return result


_RETRYABLE = (StorageError, crypto.DecryptionError, IntegrityError, OSError, ValueError)


# ----------------------------------------------------------------------------- tables


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def create_scratch_table(conn, schema: str, table: str, definition: dict[str, Any]) -> None:
    """Columns and types only: a scratch table takes rows as they were, constraints are checked on swap."""
    columns = ", ".join(f"{_quote(c['name'])} {c['type']}" for c in definition["columns"])
    conn.execute(f"CREATE TABLE {_quote(schema)}.{_quote(table)} ({columns})")


def recreate_live_table(conn, schema: str, table: str, definition: dict[str, Any]) -> None:
    """Recreate a dropped live table from the definition stored with the backup."""
    columns = []
    for c in definition["columns"]:
        column = f"{_quote(c['name'])} {c['type']}"
        if c.get("identity"):
            column += " GENERATED " + ("ALWAYS" if c["identity"] == "a" else "BY DEFAULT") + " AS IDENTITY"
        if c["not_null"]:
            column += " NOT NULL"
        columns.append(column)
    conn.execute(f"CREATE TABLE {_quote(schema)}.{_quote(table)} ({', '.join(columns)})")
    for constraint in definition["constraints"]:
        conn.execute(f"ALTER TABLE {_quote(schema)}.{_quote(table)} ADD CONSTRAINT {_quote(constraint['name'])} "
                     f"{constraint['definition']}")
    for index in definition["indexes"]:
        conn.execute(index)


COPY_BLOCK = 256 << 10  # what a restore passes to COPY FROM at a time: each buffer on the way holds one of these


def copy_into(conn, schema: str, table: str, columns: list[str], stream: BinaryIO, copy_format: str = "text") -> int:
    """COPY FROM a plaintext stream (`copy_format` "text" or "binary"); returns the rows loaded."""
    column_list = ", ".join(_quote(c) for c in columns)
    options = " (FORMAT binary)" if copy_format == "binary" else ""
    with conn.cursor() as cur:
        with cur.copy(f"COPY {_quote(schema)}.{_quote(table)} ({column_list}) FROM STDIN{options}") as copy:
            while chunk := stream.read(COPY_BLOCK):
                copy.write(chunk)
        return cur.rowcount


@dataclass
class RestoreReport:
    backup_id: str
    data_class: str
    target: str
    dry_run: bool = False
    wedding_id: int | None = None
    rows: dict[str, int] = field(default_factory=dict)
    objects: int = 0
    bytes: int = 0
    seconds: float = 0.0
    sources: dict[str, int] = field(default_factory=dict)  # cloud -> objects served
    failovers: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def render(self) -> str:
        lines = [f"restore of {self.data_class} backup {self.backup_id}"
                 + (f", wedding {self.wedding_id}" if self.wedding_id else "")
                 + (" (dry run: nothing written)" if self.dry_run else f" into {self.target}"),
                 f"  {self.objects} objects, {self.bytes / 1e6:.1f} MB, {sum(self.rows.values()):,} rows "
                 f"in {self.seconds:.2f}s",
                 "  served by: " + ", ".join(f"{c} ({n})" for c, n in sorted(self.sources.items()))]
        lines += [f"  {t}: {n:,} rows" for t, n in sorted(self.rows.items())]
        lines += [f"  failover: {f['key']} from {f['cloud']}: {f['reason']}" for f in self.failovers]
        return "\n".join(lines)


def _record_attempts(report: RestoreReport, entry: Entry, attempts: list[Attempt]) -> None:
    for attempt in attempts:
        if attempt.ok:
            report.sources[attempt.cloud] = report.sources.get(attempt.cloud, 0) + 1
        else:
            report.failovers.append({"key": entry.key, "cloud": attempt.cloud, "reason": attempt.reason})


class LastBlob:
    """The blob (a pack) the previous object's reader fetched, verified, kept for the next object: a restore of a
    class of wedding bundles reads hundreds of one-extent objects out of each pack, and with its objects in pack
    order (`restore_tables` sorts them so) fetches each pack once, not once per bundle. One blob, let go before
    the next is fetched: with a reader's own, memory stays at `PACKS_HELD` packs."""

    def __init__(self) -> None:
        self.key: str | None = None
        self.data: bytearray | None = None


def read_object(manifest: Manifest, entry: DataObject | ChunkedObject, order: list[str],
                stores: dict[str, ObjectStore], key_ring: crypto.KeyRing, consume: Callable[[BinaryIO], Any],
                report: RestoreReport, savepoint=None, last_blob: LastBlob | None = None) -> Any:
    """Stream one data object's verified plaintext into `consume` (see `with_failover`), and count what was read.

    A chunked object (format 4, 5) is read chunk by chunk, each from the first cloud that delivers a valid copy
    of the blob that holds it (its own, or its pack): a blob is verified whole (tags, ciphertext sha256, content
    id) before any of its bytes move on, and the object's own sha256 and size once every chunk is in. A chunk no
    cloud delivers fails the object (the savepoint rolls back what it loaded). `last_blob`, shared by the
    objects of one restore, spares a blob the previous object fetched a second download."""
    if isinstance(entry, DataObject):
        result, attempts = with_failover(entry, order, stores, key_ring, consume, backup_id=manifest.backup_id,
                                         savepoint=savepoint)
        _record_attempts(report, entry, attempts)
        report.bytes += entry.ciphertext_size
        return result
    chunks = manifest.chunks_of(entry)

    def fetch(blob: Blob) -> bytearray:
        if last_blob is not None:
            if last_blob.key == blob.key:
                return last_blob.data
            last_blob.key = last_blob.data = None  # before the download, not after it
        whole = functools.partial(_read_into, blob.plaintext_size)
        data, attempts = with_failover(blob, order, stores, key_ring, whole, backup_id=manifest.backup_id)
        _record_attempts(report, blob, attempts)
        report.bytes += blob.ciphertext_size
        if last_blob is not None:
            last_blob.key, last_blob.data = blob.key, data
        return data

    def attempt() -> Any:
        with _ChunkedReader(chunks, fetch) as reader:  # closing removes what it spilled
            checked = HashingReader(io.BufferedReader(reader, buffer_size=COPY_BLOCK))
            result = consume(checked)
            while checked.read(1 << 20):  # anything the consumer left unread still has to be verified
                pass
        if checked.size != entry.plaintext_size or checked.sha256.hexdigest() != entry.plaintext_sha256:
            raise IntegrityError(f"{entry.name}: its chunks do not reassemble to the object the manifest describes")
        return result

    if savepoint is None:
        return attempt()
    with savepoint():
        return attempt()


def _read_into(size: int, stream: BinaryIO) -> bytearray:
    """The first `size` bytes of `stream` (a blob of that plaintext size) in one buffer allocated once: joining
    reads held a pack twice at the end (8 MiB of pieces and their join). More or fewer bytes fail the check
    that follows (`_consume_and_verify` reads the rest and compares the size)."""
    buffer = bytearray(size)
    filled = 0
    with memoryview(buffer) as view:
        while filled < size:  # straight into the buffer: no piece is allocated, nor copied twice
            count = stream.readinto(view[filled:])
            if not count:
                break
            filled += count
    return buffer


PACKS_HELD = 2  # packs a chunked object's reader keeps in memory (8 MiB of plaintext each): see _ChunkedReader


class _ChunkedReader(io.RawIOBase):
    """The plaintext of a chunked object: each blob (a pack, or a format-4 chunk) fetched and verified whole when
    the reader first reaches it, then sliced. A later backup's object interleaves extents of many packs (each
    day's new chunks of it sit in that day's packs), so a blob is downloaded once per object whatever the order:
    of the blobs a later extent still reads, the last `PACKS_HELD` read are held in memory (one no later extent
    reads is let go at once), and one pushed out while a later extent still needs it is spilled to a scratch
    file and read from there. Memory stays at `PACKS_HELD` blobs, a fetch included (room is made before it);
    the disk holds at most the object's packs. The scratch file is anonymous (`tempfile.TemporaryFile`:
    O_TMPFILE, 0600, never linked into a directory; where a filesystem lacks O_TMPFILE, unlinked as soon as it
    is created), so its plaintext goes with the process however it ends -- SIGKILL and OOM included -- where a
    named file would stay behind."""

    def __init__(self, chunks: list[format.ChunkPiece], fetch: Callable[[Blob], bytes | bytearray]):
        self._pieces = list(chunks)
        self._next = 0
        self._fetch = fetch
        self._last_use = {piece.blob.key: i for i, piece in enumerate(self._pieces)}
        self._held: OrderedDict[str, memoryview] = OrderedDict()
        self._spilled: dict[str, int] = {}  # blob key -> where its plaintext starts in the scratch file
        self._scratch: BinaryIO | None = None
        self._current = memoryview(b"")

    def readable(self) -> bool:
        return True

    def _slice(self, piece: format.ChunkPiece, index: int) -> memoryview:
        key = piece.blob.key
        if key in self._spilled:
            return memoryview(os.pread(self._scratch.fileno(), piece.size, self._spilled[key] + piece.offset))
        held = self._held.pop(key, None)
        if held is None:
            self._make_room(index, PACKS_HELD - 1)  # before the fetch: never PACKS_HELD + 1 blobs at once
            held = memoryview(self._fetch(piece.blob))
        piece_view = held[piece.offset:piece.offset + piece.size]
        if self._last_use[key] > index:
            self._held[key] = held  # the most recently read: the last to go
        else:
            held.release()  # no later extent reads it: gone once this piece is read, not when pushed out
        return piece_view

    def _make_room(self, index: int, keep: int) -> None:
        """Hold at most `keep` blobs: the least recently read go, to the scratch file if a later extent needs them."""
        while len(self._held) > keep:
            evicted, data = self._held.popitem(last=False)
            if self._last_use[evicted] > index:
                self._spill(evicted, data)
            data.release()

    def _spill(self, key: str, data: memoryview) -> None:
        if self._scratch is None:
            self._scratch = tempfile.TemporaryFile(prefix="wedsync-restore-")
        start = self._scratch.seek(0, os.SEEK_END)
        self._scratch.write(data)
        self._scratch.flush()  # read back with pread, past the buffer
        self._spilled[key] = start

    def close(self) -> None:
        self._held.clear()
        if self._scratch is not None:
            self._scratch.close()
            self._scratch = None
        super().close()

    def readinto(self, buffer) -> int:
        while not self._current:
            if self._next == len(self._pieces):
                return 0
            self._current.release()  # an empty slice still pins its blob, which _slice may be evicting
            self._current = self._slice(self._pieces[self._next], self._next)
            self._next += 1
        n = min(len(buffer), len(self._current))
        buffer[:n] = self._current[:n]
        self._current = self._current[n:]
        return n


def restore_tables(conn, manifest: Manifest, stores: dict[str, ObjectStore], key_ring: crypto.KeyRing, *,
                   order: list[str], target_schema: str, in_place: bool = False, live_schema: str = "wedsync",
                   wedding_id: int | None = None, dry_run: bool = False) -> RestoreReport:
    """Restore a table-class or wedding-bundle backup (see the module docstring for the guarantees)."""
    started = time.monotonic()
    report = RestoreReport(manifest.backup_id, manifest.data_class, target_schema, dry_run, wedding_id)
    entries = list(manifest.objects)
    bundles = any(o.wedding_id is not None for o in entries)
    if wedding_id is not None:
        entries = [o for o in entries if o.wedding_id == wedding_id] if bundles else entries
        if not entries:
            raise RestoreError(f"backup {manifest.backup_id} holds no bundle for wedding {wedding_id}")
        # one wedding out of whole tables: its row of `weddings` first, so an id the backup's snapshot does not
        # hold fails after one object, before the rest is read (the scratch schema is rolled back with it)
        entries.sort(key=lambda o: o.source != "weddings")
    if bundles:  # bundles in packs (format 5), many to a pack: in pack order, each pack is downloaded once
        entries.sort(key=_first_extent)
    last_blob = LastBlob()
    definitions = manifest.tables
    conn.autocommit = False
    try:
        if not dry_run:
            conn.execute(f"CREATE SCHEMA {_quote(target_schema)}")
            for table, definition in definitions.items():
                create_scratch_table(conn, target_schema, table, definition)
        for entry in entries:
            if dry_run:
                read_object(manifest, entry, order, stores, key_ring, lambda s: None, report, last_blob=last_blob)
            elif bundles:
                loaded = read_object(manifest, entry, order, stores, key_ring,
                                     lambda s: _load_bundle(conn, target_schema, s), report, conn.transaction,
                                     last_blob)
                for table, n in loaded.items():
                    report.rows[table] = report.rows.get(table, 0) + n
            else:
                rows = read_object(manifest, entry, order, stores, key_ring,
                                   lambda s, e=entry: _load_table(conn, target_schema, e, s, wedding_id), report,
                                   conn.transaction)
                report.rows[entry.source] = report.rows.get(entry.source, 0) + rows  # a table may be in parts
                if wedding_id is not None and entry.source == "weddings" and not report.rows["weddings"]:
                    raise WeddingNotInBackup(f"wedding {wedding_id} is not in backup {manifest.backup_id} "
                                             f"(taken {manifest.snapshot_at}): nothing was restored")
            report.objects += 1
        if not dry_run:
            if wedding_id is not None and not bundles and not sum(report.rows.values()):
                raise WeddingNotInBackup(f"backup {manifest.backup_id} holds no rows of wedding {wedding_id}: "
                                         "nothing was restored")
            _verify_counts(conn, target_schema, entries, report, bundles, wedding_id)
            if in_place:
                swap_into_live(conn, target_schema, live_schema, definitions, wedding_id if bundles else None)
                conn.execute(f"DROP SCHEMA {_quote(target_schema)} CASCADE")
                report.target = f"{live_schema} (in place)"
        conn.commit()
    except BaseException:
        conn.rollback()  # the scratch schema, the swap: all of it or none of it
        raise
    report.seconds = time.monotonic() - started
    return report


def _first_extent(entry: DataObject | ChunkedObject) -> tuple[str, int]:
    """Where an object's plaintext begins: its first extent's pack and offset (an object of its own: first)."""
    if isinstance(entry, ChunkedObject) and entry.extents:
        return entry.extents[0].pack, entry.extents[0].offset
    return "", 0


def _load_table(conn, schema: str, entry: DataObject, stream: BinaryIO, wedding_id: int | None) -> int:
    copy_format = entry.copy_format or "text"  # format 1 manifests have COPY text and no field
    if wedding_id is None or "wedding_id" not in entry.columns:
        if wedding_id is not None:  # this table has no wedding: nothing of it belongs to one wedding
            while stream.read(1 << 20):
                pass
            return 0
        return copy_into(conn, schema, entry.source, list(entry.columns), stream, copy_format)
    if copy_format == "binary":
        return _copy_one_wedding(conn, schema, entry, stream, wedding_id)
    position = entry.columns.index("wedding_id")
    wanted = str(wedding_id).encode()
    return copy_into(conn, schema, entry.source, list(entry.columns),
                     FilteredLines(stream, lambda row: row.split(b"\t")[position] == wanted))


def _copy_one_wedding(conn, schema: str, entry: DataObject, stream: BinaryIO, wedding_id: int) -> int:
    """One wedding's rows of a binary table object: the server filters them (binary rows have no cheap
    delimiter to split on in Python). The whole object goes into a temporary table shaped like the target,
    then only that wedding's rows move on; the temporary table is dropped before the next object."""
    table = entry.source
    name = f"_wedsync_restore_{table}"[:63]
    holding = f"pg_temp.{_quote(name)}"
    columns = ", ".join(_quote(c) for c in entry.columns)
    conn.execute(f"CREATE TEMPORARY TABLE {holding} (LIKE {_quote(schema)}.{_quote(table)})")
    # no try/finally: after an error the transaction is aborted, and rolling back the caller's savepoint
    # (with_failover) drops the temporary table with everything else the attempt did
    copy_into(conn, "pg_temp", name, list(entry.columns), stream, "binary")
    with conn.cursor() as cur:
        cur.execute(f"INSERT INTO {_quote(schema)}.{_quote(table)} ({columns}) SELECT {columns} FROM {holding} "
                    "WHERE wedding_id = %s", (wedding_id,))
        rows = cur.rowcount
    conn.execute(f"DROP TABLE {holding}")
    return rows


def _load_bundle(conn, schema: str, stream: BinaryIO) -> dict[str, int]:
    loaded = {}
    for header, section in extract.read_bundle(stream):
        rows = copy_into(conn, schema, header["table"], header["columns"], section)
        if rows != header["rows"]:
            raise IntegrityError(f"bundle section {header['table']}: {rows} rows loaded, header says {header['rows']}")
        loaded[header["table"]] = rows
    return loaded


def _verify_counts(conn, schema: str, entries, report: RestoreReport, bundles: bool, wedding_id) -> None:
    """Row counts in the target must equal the manifest's (the whole-class case) before any commit."""
    if bundles or wedding_id is not None:
        return  # bundle sections are checked against their headers while loading
    expected: dict[str, int] = {}
    for entry in entries:  # a large table is several objects (parts): their rows add up
        expected[entry.source] = expected.get(entry.source, 0) + entry.rows
    for table, rows in expected.items():
        count = conn.execute(f"SELECT count(*) FROM {_quote(schema)}.{_quote(table)}").fetchone()[0]
        if count != rows:
            raise RestoreError(f"{table}: {count} rows restored, the manifest says {rows}")


def swap_into_live(conn, scratch: str, live: str, definitions: dict[str, Any], wedding_id: int | None) -> None:
    """Make the live tables hold the verified scratch rows, inside the caller's (single) transaction.

    Rows are matched by primary key: existing rows are updated, missing ones inserted, and -- for a whole
    class -- rows the backup does not have are deleted. Rows of OTHER classes that reference these tables
    (a client's form response pointing at a vendor's form) keep their targets, which TRUNCATE would refuse
    and TRUNCATE ... CASCADE would destroy. A dropped table is recreated from the backup's definition.
    Any constraint violation aborts the whole transaction: live data stays exactly as it was.
    """
    existing = {r[0] for r in conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = %s", (live,)).fetchall()}
    tables = list(definitions)  # the policy's order: parents before children
    for table in tables:
        if table not in existing:
            recreate_live_table(conn, live, table, definitions[table])
    keys = {t: _primary_key(definitions[t]) for t in tables}
    # Rows come back exactly as backed up: application triggers (updated_at) must not rewrite them.
    # The table owner may do this; the ALTERs are part of the one transaction like everything else.
    for table in tables:
        conn.execute(f"ALTER TABLE {_quote(live)}.{_quote(table)} DISABLE TRIGGER USER")
    if wedding_id is None:
        for table in reversed(tables):  # children first
            if keys[table]:
                match = " AND ".join(f"s.{_quote(c)} = t.{_quote(c)}" for c in keys[table])
                conn.execute(f"DELETE FROM {_quote(live)}.{_quote(table)} t WHERE NOT EXISTS "
                             f"(SELECT 1 FROM {_quote(scratch)}.{_quote(table)} s WHERE {match})")
            else:
                conn.execute(f"DELETE FROM {_quote(live)}.{_quote(table)}")
    for table in tables:
        definition = definitions[table]
        names = [c["name"] for c in definition["columns"]]
        columns = ", ".join(_quote(c) for c in names)
        overriding = " OVERRIDING SYSTEM VALUE" if any(c.get("identity") for c in definition["columns"]) else ""
        upsert = ""
        if keys[table]:
            updates = ", ".join(f"{_quote(c)} = EXCLUDED.{_quote(c)}" for c in names if c not in keys[table])
            target = ", ".join(_quote(c) for c in keys[table])
            upsert = f" ON CONFLICT ({target}) DO " + (f"UPDATE SET {updates}" if updates else "NOTHING")
        conn.execute(f"INSERT INTO {_quote(live)}.{_quote(table)} ({columns}){overriding} "
                     f"SELECT {columns} FROM {_quote(scratch)}.{_quote(table)}{upsert}")
    for table in tables:
        conn.execute(f"ALTER TABLE {_quote(live)}.{_quote(table)} ENABLE TRIGGER USER")
    for table in tables:  # identity sequences continue after the restored ids
        for c in definitions[table]["columns"]:
            if c.get("identity"):
                conn.execute(f"SELECT setval(pg_get_serial_sequence(%s, %s), "
                             f"COALESCE((SELECT max({_quote(c['name'])}) FROM {_quote(live)}.{_quote(table)}), 0) + 1, "
                             "false)", (f"{_quote(live)}.{_quote(table)}", c["name"]))


def _primary_key(definition: dict[str, Any]) -> list[str]:
    for constraint in definition["constraints"]:
        if constraint["type"] == "p":
            inner = constraint["definition"].removeprefix("PRIMARY KEY (").removesuffix(")")
            return [c.strip().strip('"') for c in inner.split(",")]
    return []


# ----------------------------------------------------------------------------- assets


def safe_target_path(root: Path, relative: str) -> Path:
    """`root/relative`, refusing anything that could land outside `root` (absolute paths, `..`, links)."""
    posix = PurePosixPath(relative)
    if posix.is_absolute() or not posix.parts or any(p in ("..", "") for p in posix.parts) or "\\" in relative:
        raise RestoreError(f"refusing to restore {relative!r}: the path would escape the target directory")
    target = root.joinpath(*posix.parts)
    if not target.resolve().is_relative_to(root.resolve()):
        raise RestoreError(f"refusing to restore {relative!r}: it resolves outside the target directory")
    return target


def restore_assets(manifest: Manifest, stores: dict[str, ObjectStore], key_ring: crypto.KeyRing, *,
                   order: list[str], target_dir: Path, blob_entries: dict[str, Blob],
                   wedding_id: int | None = None, dry_run: bool = False) -> RestoreReport:
    """Restore the files an assets backup's index lists into `target_dir` (verified, atomic per file)."""
    started = time.monotonic()
    report = RestoreReport(manifest.backup_id, manifest.data_class, str(target_dir), dry_run, wedding_id)
    index_entry = next(o for o in manifest.objects if o.source == "asset-index")
    index, attempts = with_failover(index_entry, order, stores, key_ring,
                                    lambda s: [json.loads(line) for line in lines(s)],
                                    backup_id=manifest.backup_id)
    _record_attempts(report, index_entry, attempts)
    if wedding_id is not None:
        index = [f for f in index if f["path"].startswith(f"weddings/{wedding_id}/")]
    targets = [(f, safe_target_path(target_dir, f["path"])) for f in index]  # validate every path first
    for file, path in targets:
        # format 3 indexes name each file's blob by content id, format 2 by its plaintext sha256
        found = blob_entries.get(file.get("content_id") or file["sha256"])
        if found is None:
            raise RestoreError(f"no stored blob for {file['path']} (the manifest does not describe it)")
        # the file's own hash and size (from the authenticated index) are what the blob must decrypt to
        blob = dataclasses.replace(found, plaintext_sha256=file["sha256"], plaintext_size=file["size"])
        if not dry_run:
            path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")

        def write(stream, partial=partial):
            if dry_run:
                while stream.read(1 << 20):
                    pass
                return
            with open(partial, "wb") as out:
                while chunk := stream.read(1 << 20):
                    out.write(chunk)

        try:
            _, attempts = with_failover(blob, order, stores, key_ring, write, backup_id=manifest.backup_id)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        if not dry_run:
            os.replace(partial, path)
            os.utime(path, ns=(file["mtime_ns"], file["mtime_ns"]))
        _record_attempts(report, blob, attempts)
        report.objects += 1
        report.bytes += blob.ciphertext_size
    report.rows["files"] = len(targets)
    report.seconds = time.monotonic() - started
    return report


def run_restore(policy: Policy, request: RestoreRequest, *, stores: dict[str, ObjectStore],
                key_ring: crypto.KeyRing, db_connect: Callable[[], Any],
                catalog_connect: Callable[[], Any] | None = None, healthy: Iterable[str] = (),
                asset_root: Path | None = None) -> RestoreReport:
    """Resolve and restore what `request` asks for; returns the report (the caller shows it: printed, logged)."""
    memory.bound_heap()
    order = cloud_order(stores, request.source_cloud, healthy)
    # without the catalog, the manifest comes from the clouds in the same order as the data: a restore from
    # one cloud loads that cloud's SDK alone (each is 15-60 MB of a task's memory)
    manifest = resolve(policy, {cloud: stores[cloud] for cloud in order}, request.data_class,
                       backup_id=request.backup_id, point_in_time=request.point_in_time,
                       catalog_connect=catalog_connect)
    log.info("restoring %s backup %s (taken %s); clouds in order: %s", request.data_class, manifest.backup_id,
             manifest.snapshot_at, ", ".join(order))
    if policy.data_classes[request.data_class].kind == "assets":
        target = Path(request.target) if request.target else (asset_root or policy.staging_dir().parent
                                                                / "restores") / default_target(request)
        if not request.dry_run:
            check_asset_target(target, os.environ.get(policy.data_classes[request.data_class].source_env))
        blobs = blob_entries_by_content(manifest)
        if manifest.format_version < 3:  # format 2 describes only the blobs its own backup stored
            blobs |= _blob_entries_from_catalog(catalog_connect, policy, manifest)
        report = restore_assets(manifest, stores, key_ring, order=order, target_dir=target, blob_entries=blobs,
                                wedding_id=request.wedding_id, dry_run=request.dry_run)
    else:
        target = "" if request.in_place else (request.target or default_target(request))
        scratch = default_target(request) + "_scratch" if request.in_place else target
        with db_connect() as conn:
            report = restore_tables(conn, manifest, stores, key_ring, order=order, target_schema=scratch,
                                    in_place=request.in_place, live_schema=manifest.source_schema,
                                    wedding_id=request.wedding_id, dry_run=request.dry_run)
    return report


def check_asset_target(target: Path, live_source: str | None) -> None:
    """An asset restore writes only into a new or empty directory outside the live asset store: it never
    replaces files someone is using (the store, a DAGs folder, a home directory)."""
    resolved = target.resolve()
    if live_source:
        live = Path(live_source).resolve()
        if resolved == live or resolved.is_relative_to(live) or live.is_relative_to(resolved):
            raise RestoreTargetError(f"target {target} is the live asset store {live} or overlaps it: restore into "
                                     "a new directory and copy back what you need")
    if resolved.exists() and (not resolved.is_dir() or any(resolved.iterdir())):
        raise RestoreTargetError(f"target {target} exists and is not an empty directory: give a new one")


def blob_entries_by_content(manifest: Manifest) -> dict[str, Blob]:
    """The blobs a manifest describes, by what its asset index names them with (content id; format 2: sha256)."""
    return {b.content_id or b.plaintext_sha256: b for b in manifest.blobs}


def _blob_entries_from_catalog(catalog_connect, policy: Policy, manifest: Manifest) -> dict[str, Blob]:
    """Format 2 only: blobs stored by earlier backups are described by the catalog."""
    described = {b.plaintext_sha256 for b in manifest.blobs}
    wanted = [sha for sha in manifest.referenced_blob_hashes if sha not in described]
    if not wanted:
        return {}
    entries: dict[str, Blob] = {}
    if catalog_connect is not None:
        try:
            from wedsync_dr import catalog

            with catalog_connect() as conn:
                entries = {b.plaintext_sha256: b for b in catalog.legacy_blob_entries(conn, manifest)}
        except Exception as err:  # noqa: BLE001 - any catalog failure: say which blobs are unknown
            log.warning("catalog unavailable for blob keys (%s)", err)
    missing = [sha for sha in wanted if sha not in entries]
    if missing:
        raise RestoreError(f"{len(missing)} referenced blobs are unknown to the catalog; run rebuild-catalog first "
                           f"(e.g. {format.blob_key(policy.prefix, missing[0])})")
    return entries


# ----------------------------------------------------------------------------- verify (like restic check --read-data)


def verify_backup(manifest: Manifest, stores: dict[str, ObjectStore], key_ring: crypto.KeyRing,
                  clouds: Iterable[str], sample: float = 1.0, seed: int = 0) -> dict[str, list[str]]:
    """Download, decrypt and checksum the backup's objects in each cloud; returns problems per cloud.

    `sample` < 1 reads that fraction of the objects (at least one), chosen by `seed`, as
    `restic check --read-data-subset` does.
    """
    import random

    entries = manifest.entries
    if sample < 1.0 and entries:
        entries = random.Random(seed).sample(entries, max(1, round(len(entries) * sample)))
    problems: dict[str, list[str]] = {}
    for cloud in clouds:
        problems[cloud] = []
        for entry in entries:
            try:
                with_failover(entry, [cloud], stores, key_ring, lambda s: None, backup_id=manifest.backup_id)
            except RestoreError as err:
                problems[cloud].append(str(err))
    return problems
