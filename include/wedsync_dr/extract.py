"""Extraction: stream WedSync rows out of PostgreSQL into compressed staging files.

All tables of one run are read from ONE consistent snapshot: a REPEATABLE READ, READ ONLY transaction
exports its snapshot (`pg_export_snapshot()`) and every worker connection adopts it (`SET TRANSACTION
SNAPSHOT`), as `pg_dump -j` does; tables are then copied in parallel. Rows leave the server with
`COPY ... TO STDOUT (FORMAT binary)` (a decrypted, decompressed table object loads with plain
`psql \\copy ... FROM ... WITH (FORMAT binary)`) and go through sha256 and zstd straight to a 0600
staging file. Binary, not text, because the server is the bottleneck of an extract and skips every
output function in binary (timestamps, numerics, escaping): measured on the 1 GB benchmark, about 10 %
less CPU for the whole extract, and zstd compresses the binary stream faster and smaller. Nothing is
materialised in memory beyond one segment per worker (`SEGMENT_SIZE`) -- except wedding bundles (COPY
text, split per wedding), which hold one batch of weddings (`batch_size`) at a time.

Wedding bundle format (plaintext of one `wedding-<id>.bundle` object): a sequence of sections, each a
JSON header line `{"table": ..., "columns": [...], "rows": N, "bytes": M}` followed by exactly M bytes of
COPY text for that table.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import os
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from wedsync_dr.chunking import ChunkingWriter
from wedsync_dr.policy import DataClass, Policy
from wedsync_dr.streams import HashingWriter, LimitedReader

log = logging.getLogger(__name__)

COPY_CHUNK_TARGET = 1 << 20
SEGMENT_SIZE = 4 << 20  # plaintext bytes per zstd frame of a staged object (see _HashingCompressor)
TABLE_COPY_FORMAT = "binary"


@dataclass
class StagedObject:
    """One data object in staging: compressed plaintext until `encrypt` replaces it."""

    name: str
    path: str
    source: str  # a table name, "wedding:<id>", or "asset-index"
    rows: int
    plaintext_sha256: str  # of the uncompressed bytes: what a restore must reproduce
    plaintext_size: int
    compressed_size: int
    compression: str = "zstd"
    copy_format: str | None = None  # "binary" for table objects (a COPY stream), None for anything else
    columns: list[str] | None = None
    wedding_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Extraction:
    backup_id: str
    data_class: str
    staging_dir: str
    snapshot_at: str
    objects: list[StagedObject]
    notes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Extraction:
        return cls(**{**raw, "objects": [StagedObject(**o) for o in raw["objects"]]})

    @property
    def totals(self) -> dict[str, int]:
        """Objects, rows and plaintext of what was read; compressed bytes of what was staged (new chunks
        of a chunked table, not the chunks earlier backups stored)."""
        own = [o for o in self.objects if not o.extra.get("chunk")]
        return {"objects": len(own), "rows": sum(o.rows for o in own),
                "plaintext_bytes": sum(o.plaintext_size for o in own),
                "compressed_bytes": sum(o.compressed_size for o in self.objects),
                "new_chunks": len(self.objects) - len(own)}


def private_file(path: Path) -> BinaryIO:
    """Open a new staging file readable by its owner only (compressed plaintext lives here)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    return os.fdopen(fd, "wb")


class _HashingCompressor:
    """sha256 + size of the plaintext, zstd-compressed into a private staging file.

    The plaintext is compressed in independent frames of `SEGMENT_SIZE` bytes, each in one call (a zstd
    stream may hold any number of frames; every reader, `zstd -d` included, reads them as one payload).
    Why not one streamed frame: a streaming compressor copies its input into a ring buffer and, once the
    window wraps, matches through zstd's slower external-dictionary path; one call over a contiguous
    block does not, and works in longer bursts between the COPY backends' turns on the same cores.
    Measured on the 1 GB benchmark: the extract 6.4-7.1 s -> 5.7-6.1 s, about 1.3 CPU-s less. 4 MiB, not
    8: as fast, 1.4 % bigger output, and 11-17 MB less peak RSS (each worker holds a segment-sized buffer).
    """

    def __init__(self, path: Path, level: int):
        self.path = path
        self._file = private_file(path)
        self._zstd = zstandard.ZstdCompressor(level=level)
        # small writes (bundles, the asset index, a pack's nonce) gather into one segment, filled in place: a
        # bytearray that is cleared and grown again costs a fresh allocation and its page faults per segment
        self._segment: bytearray | None = None
        self._filled = 0
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        self._sha.update(data)
        self.size += len(data)
        if len(data) >= SEGMENT_SIZE // 2:  # a block from copy_out, a pack's run of new chunks: no extra copy
            if self._filled:
                self._flush_segment()
            with memoryview(data) as view:  # frames of at most a segment, as the format says
                for start in range(0, len(view), SEGMENT_SIZE):
                    self._file.write(self._zstd.compress(view[start:start + SEGMENT_SIZE]))
            return
        if self._segment is None:
            self._segment = bytearray()
        if len(self._segment) < min(SEGMENT_SIZE, self._filled + len(data)):  # grows to one segment, not at once:
            grown = min(SEGMENT_SIZE, max(2 * len(self._segment), self._filled + len(data), 64 << 10))
            self._segment += bytes(grown - len(self._segment))  # a pack's first write is its 16-byte nonce
        view = memoryview(data).cast("B")
        while view:
            take = min(len(view), SEGMENT_SIZE - self._filled)
            self._segment[self._filled:self._filled + take] = view[:take]
            self._filled += take
            view = view[take:]
            if self._filled == SEGMENT_SIZE:
                self._flush_segment()

    def _flush_segment(self) -> None:
        segment = self._segment if self._segment is not None else bytearray()
        with memoryview(segment) as view:
            self._file.write(self._zstd.compress(view[:self._filled]))
        self._filled = 0

    def close(self) -> tuple[str, int, int]:
        """Write the last frame; returns (plaintext sha256, plaintext size, compressed size)."""
        if self._filled or not self.size:  # an empty object is one empty frame, not zero bytes
            self._flush_segment()
        self._segment = None
        self._file.flush()
        compressed = self._file.tell()
        self._file.close()
        return self._sha.hexdigest(), self.size, compressed

    def abort(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


class ChunkStager:
    """Stages the new chunks of one run's chunked tables (shared by its copy workers): format 4, each chunk a
    blob of its own. No backup writes format 4 any more (tables and bundles are packed, `PackStager`); it stays
    as the reference writer of what format-4 backups hold, which the tests of its reader build their objects with.

    Each chunk is named by its keyed content id; one that an earlier backup stored (`known`) or another object
    of this run already staged is only referenced. A new one is zstd-compressed in one call into its own
    private staging file, a blob to seal and upload like an asset blob (`extra`: content id and key).
    """

    def __init__(self, staging: Path, level: int, content_id: Callable[[str], str], key: Callable[[str], str],
                 known: Iterable[str] = ()):
        self._staging = staging
        self._level = level
        self._content_id = content_id
        self._key = key
        self._known = set(known)
        self._claimed: set[str] = set()
        self._lock = threading.Lock()
        self._local = threading.local()  # a ZstdCompressor is not thread-safe: one per copy worker
        self.new: list[StagedObject] = []
        self.reused: set[str] = set()

    def add(self, chunk: memoryview) -> tuple[str, int]:
        """Stage one chunk if it is new; returns (content id, plaintext size)."""
        sha = hashlib.sha256(chunk).hexdigest()
        cid = self._content_id(sha)
        with self._lock:
            new = cid not in self._known and cid not in self._claimed
            (self._claimed if new else self.reused).add(cid)
        if new:
            if not hasattr(self._local, "zstd"):
                self._local.zstd = zstandard.ZstdCompressor(level=self._level)
            compressed = self._local.zstd.compress(chunk)
            path = self._staging / f"chunk-{cid}.zst"
            with private_file(path) as out:
                out.write(compressed)
            staged = StagedObject(name=f"chunk-{cid}", path=str(path), source="table-chunk", rows=0,
                                  plaintext_sha256=sha, plaintext_size=len(chunk), compressed_size=len(compressed),
                                  extra={"blob": True, "chunk": True, "content_id": cid, "key": self._key(cid)})
            with self._lock:
                self.new.append(staged)
        return cid, len(chunk)

    def forget(self, content_ids: Iterable[str]) -> None:
        """New chunks found stored after all (adopted from a cloud): their staged files are not needed."""
        gone = set(content_ids)
        for staged in [s for s in self.new if s.extra["content_id"] in gone]:
            Path(staged.path).unlink(missing_ok=True)
        self.new = [s for s in self.new if s.extra["content_id"] not in gone]
        self.reused |= gone


class _ChunkedSink:
    """sha256 + size of a table object's plaintext, cut into content-defined chunks staged by a ChunkStager."""

    def __init__(self, stager: ChunkStager, cdc):
        self._stager = stager
        self._sha = hashlib.sha256()
        self._writer = ChunkingWriter(cdc, self._chunk)
        self.chunks: list[tuple[str, int]] = []

    def write(self, data: bytes | memoryview) -> None:
        self._sha.update(data)
        self._writer.write(data)

    def _chunk(self, view: memoryview) -> None:
        self.chunks.append(self._stager.add(view))

    def close(self) -> tuple[str, int, int]:
        self._writer.close()
        return self._sha.hexdigest(), self._writer.size, 0  # its chunks are staged (and counted) on their own

    def abort(self) -> None:
        """Chunks staged so far stay in the run's staging, removed with it."""


PACK_TARGET_BYTES = 8 << 20  # plaintext of the new chunks a pack gathers before it is sealed (format 5)


PACK_NONCE_BYTES = 16


class _Pack:
    """One pack being filled: a random nonce, then its chunks' plaintexts one after another, through sha256 and
    zstd into a private staging file. Its content id (and so its key) is known once it is closed.

    Why the nonce: a pack is named by its content, and the same chunks can be packed again -- a table that went
    back to an earlier state, chunks the catalog forgot, two runs at once. Without it the new pack would have the
    key of a stored one whose bytes (another data key) committed manifests may name: never overwritten, so the
    new backup's copy could never check out. With it no two packs share a key, and a pack never takes the key
    of a format-4 chunk blob. No extent covers the nonce."""

    def __init__(self, path: Path, level: int):
        self.sink = _HashingCompressor(path, level)
        self.sink.write(os.urandom(PACK_NONCE_BYTES))
        self.offsets: dict[bytes, int] = {}  # chunk content id (raw bytes) -> offset in the pack's plaintext
        self.sizes: dict[bytes, int] = {}
        self.content_id: str | None = None


class ChunkIndex:
    """Where stored chunks are: chunk content id -> (pack content id, offset in the pack's plaintext).

    Compact, because it holds every chunk of a class's newest backup (65,000 a GB at 16 KiB): the id as its 32 raw
    bytes, the place as one int (pack number << 40 | offset), the packs' ids once each -- about 140 bytes a chunk,
    against 250 for a dict of hex strings to tuples (the extract's peak RSS grew 30 MB a GB with those)."""

    _OFFSET_BITS = 40

    def __init__(self, items: Iterable[tuple[bytes | str, str, int]] = ()):
        self._packs: list[str] = []
        self._pack_no: dict[str, int] = {}
        self._where: dict[bytes, int] = {}
        for chunk_id, pack, offset in items:
            self.add(chunk_id, pack, offset)

    @classmethod
    def of(cls, places: Mapping[str, tuple[str, int]]) -> ChunkIndex:
        """From {chunk content id (hex): (pack content id, offset)}."""
        return cls((chunk_id, pack, offset) for chunk_id, (pack, offset) in places.items())

    def add(self, chunk_id: bytes | str, pack: str, offset: int, *, keep: bool = False) -> None:
        """Record a chunk's place (`keep`: not if it has one already)."""
        number = self._pack_no.get(pack)
        if number is None:
            number = self._pack_no[pack] = len(self._packs)
            self._packs.append(pack)
        key = bytes.fromhex(chunk_id) if isinstance(chunk_id, str) else chunk_id
        if keep and key in self._where:
            return
        self._where[key] = number << self._OFFSET_BITS | offset

    def get(self, chunk_id: bytes) -> tuple[str, int] | None:
        place = self._where.get(chunk_id)
        if place is None:
            return None
        return self._packs[place >> self._OFFSET_BITS], place & ((1 << self._OFFSET_BITS) - 1)

    def __len__(self) -> int:
        return len(self._where)


class PackStager:
    """Stages the new chunks of one run's chunked tables, or its new wedding bundles, in packs (format 5), shared
    by its copy workers.

    A chunk in a pack the previous backup references (`known`, a `ChunkIndex`, or content id -> (pack content id,
    offset)) or in a pack this run closed already is only referenced; a new one is appended to its object's open
    pack, which is sealed as one blob (its keyed content id from the sha256 of its plaintext, compressed in
    `SEGMENT_SIZE` frames like a table) once it holds `pack_bytes`, and when its object ends. Each table object
    fills its own packs, so a table's new chunks sit together and in order, which is how a restore reads them;
    a run's wedding bundles share theirs (`BundlePacker`: a bundle is kilobytes).
    """

    def __init__(self, staging: Path, level: int, content_id: Callable[[str], str], key: Callable[[str], str],
                 known: ChunkIndex | Mapping[str, tuple[str, int]], pack_bytes: int = PACK_TARGET_BYTES,
                 on_pack: Callable[[str, str, list[list]], None] | None = None,
                 content_digest: Callable[[bytes], bytes] | None = None):
        self._staging = staging
        self._level = level
        self.content_id = content_id
        # a chunk's content id as raw bytes from its raw sha256 (`KeyRing.content_digest`): once per chunk
        self.content_digest = content_digest or (lambda digest: bytes.fromhex(content_id(digest.hex())))
        self._key = key
        self._known = known if isinstance(known, ChunkIndex) else ChunkIndex.of(known)
        self.pack_bytes = pack_bytes
        self._stored = ChunkIndex()  # chunks in this run's closed packs
        self._lock = threading.Lock()
        self._sequence = 0
        self.new: list[StagedObject] = []  # the closed packs, to seal and upload like asset blobs
        # each closed pack's chunks, [[chunk id, offset, size], ...], go to `on_pack(content id, key, chunks)` (the
        # catalog: nothing of them stays here), or without one are kept in `pack_chunks` (content id -> chunks)
        self._on_pack = on_pack
        self.pack_chunks: dict[str, list[list]] = {}
        self.new_chunks = 0
        self.reused: set[str] = set()  # content ids of the earlier backups' packs referenced

    def open(self) -> _Pack:
        with self._lock:
            self._sequence += 1
            return _Pack(self._staging / f"pack-{self._sequence:06d}.zst", self._level)

    def locate(self, cid: bytes, pack: _Pack | None) -> tuple[_Pack | str, int] | None:
        """Where a chunk is already: in the caller's open `pack` (repeated within it), else `lookup`'s answer."""
        if pack is not None and cid in pack.offsets:
            return pack, pack.offsets[cid]
        return self.lookup(cid)

    def lookup(self, cid: bytes) -> tuple[str, int] | None:
        """Where a chunk (its content id's raw bytes) is stored already (pack content id, offset), or None."""
        with self._lock:
            found = self._known.get(cid)
            if found is not None:
                self.reused.add(found[0])
                return found
            return self._stored.get(cid)

    def close(self, pack: _Pack) -> str:
        """Seal the pack's plaintext file and stage it as a blob; returns its content id."""
        path = pack.sink.path
        sha, size, compressed = pack.sink.close()
        pack.sink = None  # its compressor's context (MBs): a run closes a pack per 8 MiB of new chunks
        pack.content_id = cid = self.content_id(sha)
        staged = StagedObject(name=f"pack-{cid}", path=str(path), source="table-pack", rows=0,
                              plaintext_sha256=sha, plaintext_size=size, compressed_size=compressed,
                              extra={"blob": True, "chunk": True, "content_id": cid, "key": self._key(cid)})
        chunks = [[c.hex(), o, pack.sizes[c]] for c, o in pack.offsets.items()]
        if self._on_pack is not None:  # outside the lock: the other workers go on looking chunks up meanwhile
            self._on_pack(cid, staged.extra["key"], chunks)
        with self._lock:
            self.new.append(staged)
            self.new_chunks += len(chunks)
            if self._on_pack is None:
                self.pack_chunks[cid] = chunks
            for chunk_id, offset in pack.offsets.items():
                self._stored.add(chunk_id, cid, offset, keep=True)
        pack.offsets, pack.sizes = {}, {}  # recorded now; the objects' extents hold only the pack
        return cid


class BundlePacker:
    """Wedding bundles in packs (format 5): each bundle whole is one chunk, named by its keyed content id; one
    that a stored pack holds is only referenced, a new one is appended to the run's open pack, which all its
    bundles share -- a bundle is kilobytes, and a blob of its own per changed wedding was a request per wedding
    to each cloud (77 changed weddings: 30 s of gcp writes on the emulator). One sha256 per bundle: the chunk's
    is the object's, as a bundle is its only chunk.

    Extents name a pack by its content id once it is sealed: `close()` seals the last one and resolves them."""

    def __init__(self, stager: PackStager):
        self._stager = stager
        self._pack: _Pack | None = None
        self._extents: list[list] = []  # every extent handed out: [pack (a _Pack while open), offset, length]
        self.chunk_count = 0

    def add(self, body: bytes | bytearray | memoryview) -> tuple[str, list[list]]:
        """Place one bundle; returns (its plaintext sha256, its extents: one [pack, offset, length])."""
        digest = hashlib.sha256(body).digest()
        cid = self._stager.content_digest(digest)
        self.chunk_count += 1
        pack = self._pack
        where = self._stager.locate(cid, pack)
        if where is None:
            if pack is None:
                pack = self._pack = self._stager.open()
            where = (pack, pack.sink.size)
            pack.offsets[cid] = pack.sink.size
            pack.sizes[cid] = len(body)
            pack.sink.write(body)
        extent = [*where, len(body)]
        self._extents.append(extent)
        if pack is not None and pack.sink.size - PACK_NONCE_BYTES >= self._stager.pack_bytes:
            self._seal()
        return digest.hex(), [extent]

    def _seal(self) -> None:
        self._stager.close(self._pack)
        self._pack = None

    def close(self) -> None:
        if self._pack is not None:
            self._seal()
        for extent in self._extents:  # the same lists the bundles' objects hold
            if isinstance(extent[0], _Pack):
                extent[0] = extent[0].content_id

    def abort(self) -> None:
        if self._pack is not None and self._pack.sink is not None:  # (sealed already if its catalog write failed)
            self._pack.sink.abort()


class _PackedSink:
    """sha256 + size of a table object's plaintext, cut into content-defined chunks; the new ones go into packs
    (`PackStager`). Once the object is closed, `extents` lists [pack content id, offset, length] -- its chunks'
    places, adjacent ones of a pack merged: what it keeps grows with what changed, not with the table -- and
    `chunk_count` how many chunks they hold.

    The chunks come in batches (`ChunkingWriter`'s `on_chunks`), and a run of neighbouring new chunks is
    appended to the pack in one write: on a first backup every chunk is new, and a write per 16 KiB chunk
    (a hash update, a copy, their calls) was a fifth of what chunking cost."""

    def __init__(self, stager: PackStager, cdc):
        self._stager = stager
        self._sha = hashlib.sha256()
        self._writer = ChunkingWriter(cdc, on_chunks=self._chunks)
        self._pack: _Pack | None = None
        self._extents: list[list] = []  # [pack (a _Pack while it is open, else its content id), offset, length]
        self.extents: list[list] = []
        self.chunk_count = 0

    def _place(self, pack: _Pack | str, offset: int, size: int) -> None:
        last = self._extents[-1] if self._extents else None
        if last is not None and (last[0] is pack or last[0] == pack) and last[1] + last[2] == offset:
            last[2] += size
        else:
            self._extents.append([pack, offset, size])

    def write(self, data: bytes | memoryview) -> None:
        self._sha.update(data)
        self._writer.write(data)

    def _chunks(self, view: memoryview, cuts: list[tuple[int, int]]) -> None:
        stager, sha256, content_digest = self._stager, hashlib.sha256, self._stager.content_digest
        pack = self._pack
        run = -1  # where in `view` the new chunks not yet written to `pack` begin (they end where the last did)
        run_end = 0
        self.chunk_count += len(cuts)
        for offset, length in cuts:
            cid = content_digest(sha256(view[offset:offset + length]).digest())
            where = stager.locate(cid, pack)
            if where is not None:
                if run >= 0:
                    pack.sink.write(view[run:run_end])
                    run = -1
                self._place(*where, length)
                continue
            if pack is None:
                pack = self._pack = stager.open()
            if run < 0:
                run = offset
            place = pack.sink.size + (offset - run)  # where the chunk lands once the run is written
            pack.offsets[cid] = place
            pack.sizes[cid] = length
            self._place(pack, place, length)
            run_end = offset + length
            if place + length - PACK_NONCE_BYTES >= stager.pack_bytes:
                pack.sink.write(view[run:run_end])
                run = -1
                self._close_pack()
                pack = None
        if run >= 0:
            pack.sink.write(view[run:run_end])

    def _close_pack(self) -> None:
        self._stager.close(self._pack)
        self._pack = None

    def close(self) -> tuple[str, int, int]:
        self._writer.close()
        if self._pack is not None:
            self._close_pack()
        self.extents = [[pack if isinstance(pack, str) else pack.content_id, offset, length]
                        for pack, offset, length in self._extents]
        return self._sha.hexdigest(), self._writer.size, 0  # its packs are staged (and counted) on their own

    def abort(self) -> None:
        if self._pack is not None and self._pack.sink is not None:  # (sealed already if its catalog write failed)
            self._pack.sink.abort()


# --------------------------------------------------------------------------- snapshot


@dataclass
class Snapshot:
    snapshot_id: str
    taken_at: dt.datetime
    today: dt.date


@contextmanager
def consistent_snapshot(connect: Callable[[], Any]):
    """Hold an exported REPEATABLE READ snapshot open for the duration of the block."""
    conn = connect()
    try:
        conn.autocommit = False
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        snapshot_id, taken_at, today = conn.execute(
            "SELECT pg_export_snapshot(), now(), (now() AT TIME ZONE 'UTC')::date").fetchone()
        yield Snapshot(snapshot_id, taken_at, today)
    finally:
        conn.rollback()
        conn.close()


@contextmanager
def snapshot_copy_connection(connect, snapshot: Snapshot):
    """A psycopg2 connection (`connect.copy_out()`, see catalog.DbConnector) inside the exported snapshot, set
    to read an indexed order from its index (`INDEX_ORDER`)."""
    conn = connect.copy_out()
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn.cursor() as cur:  # the first statement of the transaction psycopg2 opens
            cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot.snapshot_id,))
            for setting in INDEX_ORDER:
                cur.execute(setting)
        yield conn
    finally:
        conn.rollback()
        conn.close()


@contextmanager
def snapshot_connection(connect: Callable[[], Any], snapshot: Snapshot):
    conn = connect()
    try:
        conn.autocommit = False
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot.snapshot_id}'")  # id comes from the server
        yield conn
    finally:
        conn.rollback()
        conn.close()


def _columns(conn, schema: str, table: str) -> list[str]:
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = (quote_ident(%s) || '.' || quote_ident(%s))::regclass "
        "AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (schema, table)).fetchall()
    if not rows:
        raise LookupError(f"table {schema}.{table} named in the policy does not exist")
    return [r[0] for r in rows]


def table_definition(conn, schema: str, table: str) -> dict[str, Any]:
    """Enough DDL to recreate a table a restore finds dropped: columns, constraints, indexes.

    Constraint and index definitions come from the server (`pg_get_constraintdef`, `pg_get_indexdef`),
    and are stored with the backup so a restore never depends on the live schema still existing.
    """
    regclass = f"{_quote_ident(schema)}.{_quote_ident(table)}"
    columns = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity "
        "FROM pg_attribute a WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped "
        "ORDER BY a.attnum", (regclass,)).fetchall()
    constraints = conn.execute(
        "SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass "
        "ORDER BY contype = 'f', conname", (regclass,)).fetchall()
    indexes = conn.execute(
        "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i WHERE i.indrelid = %s::regclass AND NOT EXISTS "
        "(SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) ORDER BY 1", (regclass,)).fetchall()
    return {
        "columns": [{"name": n, "type": t, "not_null": nn, "identity": ident or None} for n, t, nn, ident in columns],
        "constraints": [{"name": n, "type": ty, "definition": d} for n, ty, d in constraints],
        "indexes": [d for (d,) in indexes],
    }


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --------------------------------------------------------------------------- table classes


class _BlockSink(io.RawIOBase):
    """The raw end of a BufferedWriter: receives the COPY stream in blocks of `SEGMENT_SIZE` bytes."""

    def __init__(self, sink: _HashingCompressor):
        self._sink = sink

    def writable(self) -> bool:
        return True

    def write(self, block) -> int:
        self._sink.write(block)
        return len(block)


def copy_out(conn, query: str, sink: _HashingCompressor) -> int:
    """Run `COPY ... TO STDOUT` on a psycopg2 connection into `sink`; returns the row count.

    psycopg2 passes each row to the BufferedWriter's C `write` (a memcpy); hashing and compression see
    whole segments, and both release the GIL on them, so parallel workers really run in parallel.
    """
    writer = io.BufferedWriter(_BlockSink(sink), buffer_size=SEGMENT_SIZE)
    with conn.cursor() as cur:
        cur.copy_expert(query, writer, size=COPY_CHUNK_TARGET)
        rows = cur.rowcount
    writer.flush()
    return rows


@dataclass
class CopyJob:
    """One object of a table class: a whole table, or one block range of a large one."""

    table: str
    name: str
    query: str
    estimated_bytes: int


CLUSTER_COLUMN = "wedding_id"  # what a deduplicated table's rows are ordered by first (see `clustered_order`)


# Run on a connection before a clustered COPY (`clustered_order`): an ORDER BY that an index provides is read from
# that index, never sorted (a sort of rows tied on the order's columns could come out in another order tomorrow),
# and by one process (a parallel index scan's Gather Merge interleaves the workers' rows of one key)
INDEX_ORDER = ("SET enable_sort = off", "SET max_parallel_workers_per_gather = 0")


def clustered_order(conn, qualified: str, columns: list[str]) -> str:
    """` ORDER BY <the key of the table's narrowest btree index that leads with wedding_id>` (read from it on a
    connection set with `INDEX_ORDER`); without such an index ` ORDER BY wedding_id, <primary key>`
    (`wedding_id` where the table has one; `ctid` without a key).

    Why a deduplicated table is copied in this order, not the heap's: activity on a wedding changes rows of
    that wedding, and the chunks a change re-stores are those around its rows in the stream. In heap order a
    wedding's rows are scattered (an UPDATE moves its row into free space anywhere), so 2 % of weddings
    changed touched 86 % of 1 MiB chunks and 16 % of 16 KiB ones on the 1 GB demo; clustered by wedding,
    9 % of 16 KiB ones (bench/bench_chunk_layout.py).

    Why the index's order and not the primary key's within a wedding: a btree returns the rows of one key in
    their heap order (since PostgreSQL 12 the row's place breaks ties in the index), which is as stable from
    day to day as the key order -- VACUUM moves no row, an updated row moves within its own wedding, and only
    CLUSTER or VACUUM FULL reorders a table (its next backup then stores it again) -- and it costs no sort:
    sorting each wedding's rows by key took the server 3.6-4.0 s against 2.9 s for guests' 4.8 M rows
    (server-side COPY to /dev/null, this machine), a tenth of the whole extract's CPU.
    """
    if CLUSTER_COLUMN in columns:
        key = _wedding_index_key(conn, qualified)
        if key:
            return f" ORDER BY {', '.join(_quote_ident(c) for c in key)}"
    key = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary "
        "ORDER BY array_position(i.indkey::int2[], a.attnum)", (qualified,)).fetchall()
    order = [CLUSTER_COLUMN] if CLUSTER_COLUMN in columns else []
    order += [name for (name,) in key if name not in order]
    if not key:  # ties would come out in whatever order the sort leaves them: the physical one is stable
        order.append("ctid")  # (VACUUM moves no row; an updated row moves, as it would in the heap)
    return f" ORDER BY {', '.join(_quote_ident(c) for c in order)}"


def _wedding_index_key(conn, qualified: str) -> list[str] | None:
    """The key columns of the table's btree index with the fewest that leads with `wedding_id`, every key column a
    plain ascending column, valid and not partial (ties: the index's name); None without one."""
    rows = conn.execute(
        "SELECT c.relname, array(SELECT a.attname FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, n) "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
        "WHERE k.n <= i.indnkeyatts ORDER BY k.n), i.indnkeyatts, "
        "(SELECT bool_and(o = 0) FROM unnest(i.indoption::int2[]) o), 0 = ANY(i.indkey::int2[]) "
        "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam "
        "WHERE i.indrelid = %s::regclass AND am.amname = 'btree' AND i.indisvalid AND i.indpred IS NULL",
        (qualified,)).fetchall()
    keys = sorted((len(names), name, names) for name, names, key_count, ascending, on_expression in rows
                  if not on_expression and ascending and len(names) == key_count and names[0] == CLUSTER_COLUMN)
    return list(keys[0][2]) if keys else None


def plan_copies(conn, schema: str, tables: Iterable[str], part_bytes: int,
                columns: dict[str, list[str]] | None = None) -> list[CopyJob]:
    """Whole tables, and tables larger than `part_bytes` split into parts, largest first.

    A part selects `ctid` in [first block, next part's first block) -- a TID range scan, so each part
    reads only its own blocks; the last part has no upper bound. Largest first balances the workers.
    With `columns` (each table's), every object's rows are copied in `clustered_order` (deduplicated tables),
    and a table with an integer `wedding_id` is split by ranges of it instead (`_wedding_ranges`).
    """
    jobs = []
    copy_options = f"(FORMAT {TABLE_COPY_FORMAT})"
    for table in tables:
        qualified = f"{_quote_ident(schema)}.{_quote_ident(table)}"
        size, block_size = conn.execute("SELECT pg_relation_size(%s::regclass), current_setting('block_size')::int",
                                        (qualified,)).fetchone()
        order = clustered_order(conn, qualified, columns[table]) if columns is not None else ""
        parts = max(1, -(-size // part_bytes)) if part_bytes else 1
        if parts == 1:
            source = f"(SELECT * FROM {qualified}{order})" if order else qualified
            jobs.append(CopyJob(table, f"{table}.copy", f"COPY {source} TO STDOUT {copy_options}", size))
            continue
        ranges = _wedding_ranges(conn, qualified, parts) if order and CLUSTER_COLUMN in columns[table] else None
        if ranges is None:
            blocks = size // block_size
            bounds = [blocks * i // parts for i in range(parts)] + [None]
            ranges = [f"ctid >= '({bounds[i]},0)'::tid"
                      + (f" AND ctid < '({bounds[i + 1]},0)'::tid" if bounds[i + 1] is not None else "")
                      for i in range(parts)]
        for i, where in enumerate(ranges):
            jobs.append(CopyJob(table, f"{table}.part{i + 1:03d}.copy",
                                f"COPY (SELECT * FROM {qualified} WHERE {where}{order}) TO STDOUT {copy_options}",
                                size // len(ranges)))
    return sorted(jobs, key=lambda job: job.estimated_bytes, reverse=True)


def _wedding_ranges(conn, qualified: str, parts: int) -> list[str] | None:
    """`parts` conditions on `wedding_id` that together select every row once, splitting [min, max] evenly (and
    one more for NULLs where the column allows them); None unless the column is an integer (ids are ranges).

    Why not block ranges for a deduplicated table: each part is sorted by wedding, and a block range's rows
    must be sorted whole -- 120 MB parts of guests sorted on disk, ~0.9 s each against ~0.1 s to read them.
    A range of weddings reads in wedding order from the `wedding_id` index, sorted only within a wedding
    (as whole tables are). Its bounds move only as weddings are added, so the parts cut into the same
    chunks from day to day."""
    column = _quote_ident(CLUSTER_COLUMN)
    kind = conn.execute("SELECT atttypid::regtype::text, attnotnull FROM pg_attribute WHERE attrelid = %s::regclass "
                        "AND attname = %s AND NOT attisdropped", (qualified, CLUSTER_COLUMN)).fetchone()
    if kind is None or kind[0] not in ("smallint", "integer", "bigint"):
        return None
    low, high = conn.execute(f"SELECT min({column}), max({column}) FROM {qualified}").fetchone()
    if low is None:
        return None
    bounds = sorted({low + (high - low + 1) * i // parts for i in range(1, parts)} - {low})
    if not bounds:
        return None
    ranges = [f"{column} < {bounds[0]}"]
    ranges += [f"{column} >= {a} AND {column} < {b}" for a, b in zip(bounds, bounds[1:], strict=False)]
    ranges.append(f"{column} >= {bounds[-1]}")
    if not kind[1]:  # its own part: an OR in the last range would make the index scan read all of the index
        ranges.append(f"{column} IS NULL")
    return ranges


def extract_tables(connect, policy: Policy, data_class: DataClass, backup_id: str, staging: Path,
                   workers: int = 2, chunks: PackStager | ChunkStager | None = None, cdc=None) -> Extraction:
    """The class's tables (large ones in parts), all from one snapshot, `workers` objects at a time.

    With `chunks` (and the keyed chunker `cdc`), each table object is copied in `clustered_order`, cut into
    content-defined chunks, and only the new ones are staged: in packs (format 5, a `PackStager`) or each on
    its own (format 4, a `ChunkStager`). Otherwise each object is one compressed staging file."""
    schema = policy.source_schema
    with consistent_snapshot(connect) as snapshot:
        with snapshot_connection(connect, snapshot) as conn:
            columns = {t: _columns(conn, schema, t) for t in data_class.tables}
            definitions = {t: table_definition(conn, schema, t) for t in data_class.tables}
            jobs = plan_copies(conn, schema, data_class.tables, int(data_class.part_size_mb * (1 << 20)),
                               columns if chunks is not None else None)

        def new_sink(path: Path):
            if isinstance(chunks, PackStager):
                return _PackedSink(chunks, cdc)
            if chunks is not None:
                return _ChunkedSink(chunks, cdc)
            return _HashingCompressor(path, policy.zstd_level)

        def copy_one(job: CopyJob) -> StagedObject:
            path = staging / f"{job.name}.zst"
            sink = new_sink(path)
            try:
                with snapshot_copy_connection(connect, snapshot) as conn:
                    rows = copy_out(conn, job.query, sink)
                sha, size, compressed = sink.close()
            except BaseException:
                sink.abort()
                raise
            if chunks is not None:
                layout = ({"extents": sink.extents, "chunk_count": sink.chunk_count}
                          if isinstance(sink, _PackedSink) else {"chunks": sink.chunks})
                log.info("extracted %s: %s rows, %.1f MB in %d chunks", job.name, f"{rows:,}", size / 1e6,
                         sink.chunk_count if isinstance(sink, _PackedSink) else len(sink.chunks))
                return StagedObject(name=job.name, path="", source=job.table, rows=rows, plaintext_sha256=sha,
                                    plaintext_size=size, compressed_size=0, copy_format=TABLE_COPY_FORMAT,
                                    columns=columns[job.table], extra=layout)
            log.info("extracted %s: %s rows, %.1f MB -> %.1f MB zstd", job.name, f"{rows:,}", size / 1e6,
                     compressed / 1e6)
            return StagedObject(name=job.name, path=str(path), source=job.table, rows=rows, plaintext_sha256=sha,
                                plaintext_size=size, compressed_size=compressed, copy_format=TABLE_COPY_FORMAT,
                                columns=columns[job.table])

        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="extract") as pool:
            objects = list(pool.map(copy_one, jobs))
    order = {t: i for i, t in enumerate(data_class.tables)}  # objects listed in the policy's table order
    objects.sort(key=lambda o: (order[o.source], o.name))
    notes = {"table_definitions": definitions}
    if chunks is not None:
        notes["chunks"] = sum(o.extra.get("chunk_count") or len(o.extra.get("chunks", ())) for o in objects)
    return Extraction(backup_id, data_class.name, str(staging), snapshot.taken_at.isoformat(), objects, notes=notes)


# --------------------------------------------------------------------------- wedding bundles


def _critical_weddings(conn, schema: str, window_days: int) -> list[tuple[int, dt.date]]:
    return conn.execute(
        f"SELECT wedding_id, wedding_date FROM {_quote_ident(schema)}.weddings "
        "WHERE wedding_date BETWEEN (now() AT TIME ZONE 'UTC')::date "
        "AND (now() AT TIME ZONE 'UTC')::date + %s AND status <> 'cancelled' ORDER BY wedding_date, wedding_id",
        (window_days,)).fetchall()


def priority_of(days_until: int, window_days: int) -> str:
    """The seed's rule: a wedding within the window is CRITICAL; the last week is flagged URGENT too."""
    if days_until <= 7:
        return "URGENT"
    return "CRITICAL" if days_until <= window_days else "ROUTINE"


def _bundle_query(schema: str, table_spec, ids: list[int]) -> str:
    id_list = ",".join(str(int(i)) for i in ids)  # ints from the database: safe to inline in COPY
    table = f"{_quote_ident(schema)}.{_quote_ident(table_spec.name)}"
    return (f"COPY (SELECT {table_spec.wedding_key} AS __wedding_id, t.* FROM {table} t {table_spec.join} "
            f"WHERE {table_spec.wedding_key} = ANY(ARRAY[{id_list}]::bigint[]) ORDER BY 1, t.ctid) TO STDOUT")
    # (ctid: rows of one wedding in a stable order, so an unchanged wedding's bundle is the same bytes next time)


def _split_by_wedding(copy_chunks: Iterable[bytes]) -> Iterable[tuple[int, bytes]]:
    """COPY text rows prefixed with the wedding id -> (wedding id, row without the prefix)."""
    tail = b""
    for chunk in copy_chunks:
        data = tail + bytes(chunk)
        lines = data.split(b"\n")
        tail = lines.pop()
        for line in lines:
            key, _, row = line.partition(b"\t")
            yield int(key), row + b"\n"
    if tail:
        raise ValueError("COPY stream ended inside a row")


def extract_wedding_bundles(connect: Callable[[], Any], policy: Policy, data_class: DataClass, backup_id: str,
                            staging: Path, wedding_ids: list[int] | None = None,
                            packs: BundlePacker | None = None) -> Extraction:
    """One bundle per wedding: every row of that wedding across the class's tables, from one snapshot.

    Weddings are processed in batches: per batch, ONE query per table fetches the rows of all its
    weddings (ordered by wedding), so 1,000 weddings cost about 14 x 5 queries, not 14,000.
    With `packs` (format 5), each bundle is content-addressed: one chunk, packed only when no stored pack holds
    a bundle with the same bytes -- an unchanged wedding costs a hash, not a seal and three uploads.
    """
    schema = policy.source_schema
    with consistent_snapshot(connect) as snapshot, snapshot_connection(connect, snapshot) as conn:
        if wedding_ids is None:
            selected = _critical_weddings(conn, schema, data_class.window_days)
        else:
            selected = conn.execute(
                f"SELECT wedding_id, wedding_date FROM {_quote_ident(schema)}.weddings "
                "WHERE wedding_id = ANY(%s) ORDER BY wedding_id", (list(wedding_ids),)).fetchall()
            missing = sorted(set(wedding_ids) - {w for w, _ in selected})
            if missing:
                raise LookupError(f"wedding ids not found: {', '.join(map(str, missing))}")
        days = {wid: (date - snapshot.today).days for wid, date in selected}
        priorities = Counter(priority_of(d, data_class.window_days) for d in days.values())
        log.info("%d weddings to bundle (window %d days): %s", len(selected), data_class.window_days,
                 ", ".join(f"{p} {n}" for p, n in sorted(priorities.items())) or "none")
        columns = {t.name: _columns(conn, schema, t.name) for t in data_class.bundle_tables}
        definitions = {t.name: table_definition(conn, schema, t.name) for t in data_class.bundle_tables}
        objects: list[StagedObject] = []
        ids = [wid for wid, _ in selected]
        for start in range(0, len(ids), data_class.batch_size):
            batch = ids[start:start + data_class.batch_size]
            sections: dict[int, list[tuple[str, int, bytes]]] = defaultdict(list)
            for table_spec in data_class.bundle_tables:
                per_wedding: dict[int, list[bytes]] = defaultdict(list)
                with conn.cursor() as cur, cur.copy(_bundle_query(schema, table_spec, batch)) as copy:
                    for wid, row in _split_by_wedding(copy):
                        per_wedding[wid].append(row)
                for wid in batch:
                    rows = per_wedding.get(wid, [])
                    sections[wid].append((table_spec.name, len(rows), b"".join(rows)))
            for wid in batch:
                objects.append(_write_bundle(staging, wid, sections.pop(wid), columns, policy.zstd_level,
                                             priority_of(days[wid], data_class.window_days), days[wid], packs))
        if packs is not None:
            packs.close()  # the last pack sealed, and every bundle's extent naming its pack's content id
    extraction = Extraction(backup_id, data_class.name, str(staging), snapshot.taken_at.isoformat(), objects)
    extraction.notes = {"weddings": len(selected), "priorities": dict(priorities), "table_definitions": definitions}
    return extraction


def _write_bundle(staging: Path, wedding_id: int, sections: list[tuple[str, int, bytes]],
                  columns: dict[str, list[str]], level: int, priority: str, days_until: int,
                  packs: BundlePacker | None = None) -> StagedObject:
    name = f"wedding-{wedding_id}.bundle"
    path = staging / f"{name}.zst"
    extra = {"priority": priority, "days_until": days_until}
    rows = sum(count for _table, count, _body in sections)
    if packs is not None:
        body = bytearray()  # one batch's rows of one wedding: kilobytes
        for table, count, section in sections:
            body += _section_header(table, columns[table], count, len(section))
            body += section
        sha, extents = packs.add(body)
        return StagedObject(name=name, path="", source=f"wedding:{wedding_id}", rows=rows, plaintext_sha256=sha,
                            plaintext_size=len(body), compressed_size=0, wedding_id=wedding_id,
                            extra={**extra, "extents": extents, "chunk_count": 1})
    sink = _HashingCompressor(path, level)
    for table, count, section in sections:
        sink.write(_section_header(table, columns[table], count, len(section)))
        sink.write(section)
    sha, size, compressed = sink.close()
    return StagedObject(name=name, path=str(path), source=f"wedding:{wedding_id}", rows=rows, plaintext_sha256=sha,
                        plaintext_size=size, compressed_size=compressed, wedding_id=wedding_id, extra=extra)


def _section_header(table: str, columns: list[str], rows: int, size: int) -> bytes:
    """A bundle section's header line (FORMAT.md, "Wedding bundles"): its table, columns, rows and bytes."""
    header = {"table": table, "columns": columns, "rows": rows, "bytes": size}
    return json.dumps(header, separators=(",", ":")).encode() + b"\n"


def read_bundle(stream: BinaryIO) -> Iterable[tuple[dict[str, Any], BinaryIO]]:
    """Sections of a decompressed bundle: (header, a reader limited to that section's bytes)."""
    while True:
        line = stream.readline()
        if not line:
            return
        header = json.loads(line)
        section = LimitedReader(stream, header["bytes"])
        yield header, section
        section.drain()


# --------------------------------------------------------------------------- assets

# Formats that are already compressed: zstd would spend CPU for a ratio of 1.000.
INCOMPRESSIBLE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".heic", ".mp4", ".mov", ".zip", ".gz",
                           ".zst", ".7z"}


def _hash_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(COPY_CHUNK_TARGET):
            sha.update(chunk)
    return sha.hexdigest()


@dataclass
class AssetFile:
    path: str  # relative to the asset source, POSIX separators
    sha256: str
    size: int
    mtime_ns: int


def scan_assets(source: Path, known: dict[str, tuple[str, int, int]]) -> tuple[list[AssetFile], int]:
    """Every regular file under `source` with its sha256; returns (files, how many were hashed).

    `known` maps path -> (sha256, size, mtime_ns) from the last index: a file with the same size and mtime
    is not read again (as restic and rsync do); anything else is hashed.
    """
    files: list[AssetFile] = []
    hashed = 0
    if not source.is_dir():
        raise FileNotFoundError(f"asset source {source} is not a directory")
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames.sort()
        for filename in sorted(filenames):
            full = Path(dirpath) / filename
            st = full.lstat()
            if not full.is_file() or full.is_symlink():
                continue  # links could point outside the source
            rel = full.relative_to(source).as_posix()
            previous = known.get(rel)
            if previous and previous[1] == st.st_size and previous[2] == st.st_mtime_ns:
                sha = previous[0]
            else:
                sha = _hash_file(full)
                hashed += 1
            files.append(AssetFile(rel, sha, st.st_size, st.st_mtime_ns))
    return files, hashed


def stage_file(source: Path, staged: Path, compression: str, level: int) -> tuple[str, int, int]:
    """Copy one asset file into private staging as the object's payload -- zstd frames like every table
    object, or as it is for formats that do not compress -- hashing what it read: (sha256, size, staged size).
    The staged copy is what gets encrypted, so a file that changes afterwards cannot change the backup."""
    with open(source, "rb") as src:
        if compression == "zstd":
            sink = _HashingCompressor(staged, level)
            try:
                while chunk := src.read(SEGMENT_SIZE):
                    sink.write(chunk)
            except BaseException:
                sink.abort()
                raise
            return sink.close()
        with private_file(staged) as out:
            writer = HashingWriter(out)
            while chunk := src.read(SEGMENT_SIZE):
                writer.write(chunk)
        return writer.sha256.hexdigest(), writer.size, writer.size


def blob_compression(path: str) -> str:
    return "none" if Path(path).suffix.lower() in INCOMPRESSIBLE_SUFFIXES else "zstd"

