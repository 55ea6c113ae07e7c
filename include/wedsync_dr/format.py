"""The backup format's one home: key layout, manifest, entries, associated data, object metadata, copy checks.

Everything that decides what a stored backup looks like, or whether a cloud's copy of it is good, lives
here; backup, restore, repair, retention, drills, verify and the catalog call it (docs/FORMAT.md documents
the same things for people).

Versions (`format_version` in the manifest; restores read all of them):
- 1: table objects are COPY text.
- 2: table objects are binary COPY (`copy_format`). Asset blobs are keyed by the sha256 of their plaintext,
  carry it as metadata, and a manifest lists only the blobs its own backup stored (`objects` with
  `blob: true`) plus the bare hashes of the others (`referenced_blobs`).
- 3: asset blobs are keyed by a **content id**, HMAC-SHA256 under the key ring's dedup key, so that a cloud
  (or anyone who can list it) cannot confirm that a known file is stored; no plaintext hash or path
  leaves the encrypted asset index. Every manifest lists **every** blob its backup needs, with its key,
  wrapped data key, sizes and checksums (`blobs`): each manifest restores its backup on its own.
- 4: a table object of a class with `dedup_chunk_kib` is stored as content-defined **chunks** (FastCDC over its binary
  COPY stream), each chunk a blob like an asset file's (keyed content id, sealed alone, stored once per cloud
  under `<prefix>/chunks/`): the manifest's object lists its chunks in order (`chunks`) and every chunk is in
  `blobs`. A backup stores only the chunks no earlier backup stored; its manifest alone still restores it.
- 5: the chunks of a table object are stored in **packs**: a pack is a blob like a format-4 chunk (keyed content
  id of its plaintext, sealed alone, stored once per cloud under `<prefix>/chunks/`) whose plaintext is new chunks
  of one object, one after another (after a 16-byte nonce). The object lists its packs (`packs`) and its plaintext
  as byte ranges of their plaintexts (`extents`: pack index, offset, length); every pack is in `blobs`. Which chunk
  ids a pack holds is recorded in the catalog only (`pack_chunks`): what deduplication looks up, never needed to
  restore. So ~16 KiB chunks cost no request each, and a manifest grows with what changed (extents), not with the
  number of chunks (50,000 per GB).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from wedsync_dr import crypto
from wedsync_dr.storage import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

FORMAT_VERSION = 5
MANIFEST_NAME = "manifest.json"
BLOB_AD_SCOPE = "assets-blob"  # blobs are shared by many backups: their AD binds the content id instead

# The per-object fields a manifest keeps for a data object (a table, part, bundle or asset index).
OBJECT_FIELDS = ("name", "key", "source", "rows", "columns", "wedding_id", "compression", "plaintext_sha256",
                 "plaintext_size", "compressed_size", "ciphertext_sha256", "ciphertext_size", "ciphertext_md5",
                 "ciphertext_crc32c", "ciphertext_crc32", "ciphertext_sha256_composite", "encryption")
# ... and for a format-3 asset blob: nothing that names or hashes the plaintext.
BLOB_FIELDS = ("content_id", "key", "compression", "plaintext_size", "ciphertext_sha256", "ciphertext_size",
               "ciphertext_md5", "ciphertext_crc32c", "ciphertext_crc32", "ciphertext_sha256_composite", "encryption")
# the manifest's name of each checksum a cloud computes (ObjectInfo.native's names)
NATIVE_FIELDS = {"sha256": "ciphertext_sha256", "md5": "ciphertext_md5", "crc32c": "ciphertext_crc32c",
                 "crc32": "ciphertext_crc32", "sha256_composite": "ciphertext_sha256_composite"}


class FormatError(ValueError):
    """A manifest this release cannot read (newer format) or that is malformed."""


# --------------------------------------------------------------------------- key layout


def backup_prefix(prefix: str, data_class: str, backup_id: str, started_at: dt.datetime) -> str:
    return f"{prefix}/{data_class}/{started_at:%Y/%m/%d}/{backup_id}"


def manifest_key(backup_prefix_: str) -> str:
    return f"{backup_prefix_}/{MANIFEST_NAME}"


def is_manifest_key(key: str) -> bool:
    return key.endswith("/" + MANIFEST_NAME)


def blobs_prefix(prefix: str) -> str:
    return f"{prefix}/assets/blobs/"


def blob_key(prefix: str, content_id: str) -> str:
    """Where a blob lives: by its content id (format 3) or, for format-2 blobs, by its plaintext sha256."""
    return f"{blobs_prefix(prefix)}{content_id[:2]}/{content_id}.tink"


def chunks_prefix(prefix: str) -> str:
    return f"{prefix}/chunks/"


def chunk_key(prefix: str, content_id: str) -> str:
    """Where a table chunk lives (format 4): by its keyed content id, shared by every backup that has it."""
    return f"{chunks_prefix(prefix)}{content_id[:2]}/{content_id}.tink"


def shared_prefixes(prefix: str) -> tuple[str, ...]:
    """Where content-addressed objects (asset blobs, table chunks) live: what mark-and-sweep lists."""
    return blobs_prefix(prefix), chunks_prefix(prefix)


# --------------------------------------------------------------------------- entries


@dataclass(frozen=True, kw_only=True)
class StoredObject:
    """What a manifest records of every stored object: where it is, how it was sealed (no secret: the data key
    is wrapped by the key ring), and the checksums a cloud's copy must report."""

    key: str
    compression: str | None  # "zstd" or "none": what decrypting must undo
    plaintext_size: int
    ciphertext_sha256: str
    ciphertext_size: int
    encryption: dict[str, Any]  # crypto.encryption_entry(): kek id, wrapped data key, key wrap, AD (base64)
    ciphertext_md5: str | None = None
    ciphertext_crc32c: str | None = None
    ciphertext_crc32: str | None = None  # recorded since cloud-computed checksums are judged (see check_copy)
    ciphertext_sha256_composite: str | None = None  # S3's SHA-256 of part SHA-256s, at the policy's part size
    compressed_size: int | None = None  # what was sealed; not recorded for a blob (it would hint at content)

    def native(self, algorithm: str) -> str | None:
        """The checksum the manifest recorded for a cloud's `ObjectInfo.native` algorithm (None: not recorded)."""
        field_name = NATIVE_FIELDS.get(algorithm)
        return getattr(self, field_name) if field_name else None

    @property
    def wrapped_key(self) -> crypto.WrappedKey:
        return crypto.WrappedKey.from_manifest(self.encryption)

    @property
    def decompress(self) -> bool:
        return self.compression == "zstd"


@dataclass(frozen=True, kw_only=True)
class DataObject(StoredObject):
    """One of the backup's own objects: a table or table part, a wedding bundle, the asset index."""

    name: str  # the object's name inside its backup (the key's last part); the AD binds it
    source: str  # the table, "bundle" or "asset-index"
    plaintext_sha256: str
    rows: int | None = None
    columns: tuple[str, ...] | None = None
    wedding_id: int | None = None
    copy_format: str | None = None  # "binary" (format 2+) or "text"; format 1 has no field: COPY text

    def associated_data(self, backup_id: str) -> bytes:
        """The AD it must have been sealed with, from where it is expected -- never the manifest's recorded
        `associated_data` -- so an object swapped between backups (or a manifest edited to match) fails."""
        return crypto.associated_data(backup_id, self.name)

    def to_json(self) -> dict[str, Any]:
        entry = {k: getattr(self, k) for k in OBJECT_FIELDS}
        entry["columns"] = list(self.columns) if self.columns is not None else None
        if self.copy_format:
            entry["copy_format"] = self.copy_format
        return entry


@dataclass(frozen=True, kw_only=True)
class Blob(StoredObject):
    """An asset blob, shared by every backup whose files have its content. Format 3 names it by its keyed
    content id and records nothing that names or hashes the plaintext; a format-2 blob is named by its
    plaintext sha256. `plaintext_sha256` is also what a restore sets from the (decrypted) asset index, so the
    file the blob decrypts to is checked against the index."""

    content_id: str | None = None
    plaintext_sha256: str | None = None

    def associated_data(self, _backup_id: str = "") -> bytes:
        """Blobs are shared by many backups: their AD binds the content id (format 2: the plaintext sha256)."""
        return crypto.associated_data(BLOB_AD_SCOPE, self.content_id or self.plaintext_sha256)

    def to_json(self) -> dict[str, Any]:
        if self.content_id is None:  # format 2, as the catalog and old manifests hold it
            return {**{k: getattr(self, k) for k in BLOB_FIELDS if k != "content_id"}, "blob": True,
                    "plaintext_sha256": self.plaintext_sha256}
        return {k: getattr(self, k) for k in BLOB_FIELDS}


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkRef:
    """One chunk of a format-4 chunked object: the blob's content id and how many plaintext bytes it holds."""

    content_id: str
    size: int


@dataclass(frozen=True, slots=True)
class Extent:
    """A byte range of a pack's plaintext (format 5): `length` bytes at `offset` of the pack whose content id is
    `pack`; a chunked object's plaintext is its extents in order. (Slots: a manifest holds tens of thousands of
    extents, and a restore their `ChunkPiece`s too -- 64 bytes each instead of ~150 with a `__dict__`.)"""

    pack: str
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class ChunkPiece:
    """Where part of a chunked object's plaintext is: `size` bytes at `offset` in the plaintext of `blob`."""

    blob: Blob
    offset: int
    size: int


@dataclass(frozen=True, kw_only=True)
class ChunkedObject:
    """A table object stored as content-defined chunks: no stored object of its own. Its plaintext is its
    `extents` of packs in order (format 5), or its `chunks` in order (format 4: each chunk a `Blob` of the
    manifest). The object's own sha256 and size are checked when a restore has read it all."""

    name: str  # e.g. "guests.copy": the object's name in its backup (no storage key: the chunks are stored)
    source: str
    plaintext_sha256: str
    plaintext_size: int
    chunks: tuple[ChunkRef, ...] = ()  # format 4
    extents: tuple[Extent, ...] = ()  # format 5
    chunk_count: int | None = None  # format 5: how many chunks the extents hold
    rows: int | None = None
    columns: tuple[str, ...] | None = None
    wedding_id: int | None = None
    copy_format: str | None = None
    compression: str = "zstd"  # how each chunk (pack) was compressed (its own entry says so too)

    @property
    def packs(self) -> list[str]:
        return list(dict.fromkeys(e.pack for e in self.extents))

    @property
    def blob_ids(self) -> set[str]:
        """The content ids of the blobs that hold its plaintext."""
        return {e.pack for e in self.extents} | {c.content_id for c in self.chunks}

    def to_json(self) -> dict[str, Any]:
        entry = {"name": self.name, "source": self.source, "rows": self.rows,
                 "columns": list(self.columns) if self.columns is not None else None, "wedding_id": self.wedding_id,
                 "copy_format": self.copy_format, "compression": self.compression,
                 "plaintext_sha256": self.plaintext_sha256, "plaintext_size": self.plaintext_size}
        if not self.extents:  # format 4: a blob per chunk
            return {**entry, "chunks": [[c.content_id, c.size] for c in self.chunks]}
        index = {pack: i for i, pack in enumerate(self.packs)}
        return {**entry, "chunk_count": self.chunk_count, "packs": self.packs,
                "extents": [[index[e.pack], e.offset, e.length] for e in self.extents]}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> ChunkedObject:
        try:
            packs = value.get("packs") or []
            return cls(name=value["name"], source=value["source"], rows=value.get("rows"),
                       columns=tuple(value["columns"]) if value.get("columns") is not None else None,
                       wedding_id=value.get("wedding_id"), copy_format=value.get("copy_format"),
                       compression=value.get("compression", "zstd"), plaintext_sha256=value["plaintext_sha256"],
                       plaintext_size=value["plaintext_size"], chunk_count=value.get("chunk_count"),
                       chunks=tuple(ChunkRef(content_id=cid, size=size) for cid, size in value.get("chunks", ())),
                       extents=tuple(Extent(_pack_at(packs, i), offset, length)
                                     for i, offset, length in value.get("extents", ())))
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise FormatError(f"malformed chunked object {value.get('name')!r}: {err!r}") from None


def _pack_at(packs: list[str], index: int) -> str:
    if not 0 <= index < len(packs):
        raise IndexError(f"extent names pack {index} of {len(packs)}")
    return packs[index]


Entry = DataObject | Blob
BackupObject = DataObject | ChunkedObject  # what a manifest's `objects` hold


def entry_from_json(value: dict[str, Any]) -> Entry | ChunkedObject:
    """A manifest entry (any format) as its dataclass; fields a newer minor writer added are ignored."""
    if "chunks" in value or "extents" in value:
        return ChunkedObject.from_json(value)
    try:
        if "content_id" in value or value.get("blob"):
            return Blob(**{k: value.get(k) for k in (*_COMMON, "content_id", "plaintext_sha256")})
        fields = {k: value.get(k) for k in (*_COMMON, *_DATA_ONLY)}
        fields["columns"] = tuple(fields["columns"]) if fields["columns"] is not None else None
        return DataObject(**fields)
    except TypeError as err:
        raise FormatError(f"malformed manifest entry {value.get('key')!r}: {err}") from None


_COMMON = ("key", "compression", "plaintext_size", "ciphertext_sha256", "ciphertext_size", "encryption",
           "ciphertext_md5", "ciphertext_crc32c", "ciphertext_crc32", "ciphertext_sha256_composite", "compressed_size")
_DATA_ONLY = ("name", "source", "plaintext_sha256", "rows", "columns", "wedding_id", "copy_format")


# --------------------------------------------------------------------------- manifests


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """A backup's commit marker: plain JSON, no secrets, enough on its own to restore it and rebuild the catalog.

    `objects` are the backup's own data objects; `blobs` the asset blobs it describes in full (format 3: every
    blob it needs, new or stored by an earlier backup; format 2: only those its own run stored, the others
    named by plaintext hash in `referenced_blob_hashes`). `totals` count what this backup stored.
    """

    backup_id: str
    data_class: str
    prefix: str
    created_at: str
    snapshot_at: str
    source_schema: str = "wedsync"
    format_version: int = FORMAT_VERSION
    labels: tuple[str, ...] = ()
    reason: str | None = None
    locked_until: dt.datetime | None = None  # every object it needs is write-once in every cloud until then
    retain_until: dt.datetime | None = None  # retention keeps it at least until then (None: the rules decide)
    objects: tuple[BackupObject, ...] = ()
    blobs: tuple[Blob, ...] = ()
    referenced_blob_hashes: tuple[str, ...] = ()  # format 2 only
    tables: dict[str, Any] = field(default_factory=dict)  # table definitions (columns, constraints, indexes)
    totals: dict[str, int] = field(default_factory=dict)
    # The JSON a stored manifest was read from: written back as it was (an older format is never rewritten into
    # the current one; a repaired cloud gets the same content as the others -- as compact JSON: manifests
    # stored before 2026-12-07 are indented, and nothing compares manifests byte for byte).
    stored_json: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Manifest:
        """A stored manifest, any format this release reads; FormatError for a newer or malformed one."""
        version = value.get("format_version", 1)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise FormatError(f"backup {value.get('backup_id')} has manifest format {version}; this wedsync-dr "
                              f"reads formats up to {FORMAT_VERSION}: restore with a newer release")
        entries = [entry_from_json(o) for o in value.get("objects", [])]
        blobs = [entry_from_json(b) for b in value.get("blobs", [])] if version >= 3 else []
        try:
            return cls(backup_id=value["backup_id"], data_class=value["data_class"], prefix=value["prefix"],
                       created_at=value["created_at"], snapshot_at=value.get("snapshot_at") or value["created_at"],
                       source_schema=value.get("source_schema", "wedsync"), format_version=version,
                       labels=tuple(value.get("labels") or ()), reason=value.get("reason"),
                       locked_until=_instant(value.get("locked_until")),
                       retain_until=_instant(value.get("retain_until")),
                       objects=tuple(e for e in entries if isinstance(e, DataObject | ChunkedObject)),
                       blobs=tuple([*(e for e in entries if isinstance(e, Blob)), *blobs]),
                       referenced_blob_hashes=tuple(value.get("referenced_blobs", ())) if version < 3 else (),
                       tables=value.get("tables") or {}, totals=value.get("totals") or {},
                       stored_json=value)
        except KeyError as err:
            raise FormatError(f"manifest of backup {value.get('backup_id')} has no {err.args[0]!r}") from None

    def to_json(self) -> dict[str, Any]:
        if self.stored_json is not None:
            return self.stored_json
        return {
            "format_version": self.format_version, "backup_id": self.backup_id, "data_class": self.data_class,
            "created_at": self.created_at, "snapshot_at": self.snapshot_at, "source_schema": self.source_schema,
            "labels": list(self.labels), "reason": self.reason, "prefix": self.prefix,
            "locked_until": self.locked_until.isoformat() if self.locked_until else None,
            "retain_until": self.retain_until.isoformat() if self.retain_until else None,
            "objects": [o.to_json() for o in self.objects],
            "blobs": [b.to_json() for b in self.blobs],
            "tables": self.tables, "totals": self.totals,
        }

    def body(self) -> bytes:
        """The manifest as stored: the same bytes in every cloud, so encoded once."""
        return self._body

    @cached_property
    def _body(self) -> bytes:
        # compact, keys sorted: json's C encoder. Indented, the dump ran in the pure-Python encoder, which held a
        # string per token -- a 4 GB day 2's 80,000 extents took ~30 MB and 2 s of an upload task that commits,
        # and 3.6x the bytes (every day uploads its manifest to every cloud: it is all a day without change sends)
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    @property
    def key(self) -> str:
        return manifest_key(self.prefix)

    @property
    def entries(self) -> list[Entry]:
        """Every stored object a complete copy of the backup needs in a cloud that the manifest describes (a
        chunked object is its chunks, which are blobs)."""
        return [*(o for o in self.objects if isinstance(o, DataObject)), *self.blobs]

    @cached_property
    def _blobs_by_content_id(self) -> dict[str, Blob]:
        # once per manifest: a restore of a class of bundles asks for the chunks of thousands of objects
        return {b.content_id: b for b in self.blobs if b.content_id}

    def chunks_of(self, obj: ChunkedObject) -> list[ChunkPiece]:
        """Where a chunked object's plaintext is, in order: its extents of packs (format 5) or its chunks, each its
        own blob (format 4). FormatError when the manifest lacks a blob, or an extent lies outside its pack."""
        blobs = self._blobs_by_content_id
        wanted = [(e.pack, e.offset, e.length) for e in obj.extents] or [(c.content_id, 0, c.size) for c in obj.chunks]
        pieces = []
        for content_id, offset, size in wanted:
            blob = blobs.get(content_id)
            if blob is None:
                raise FormatError(f"manifest of backup {self.backup_id} lists no blob for chunk {content_id} of "
                                  f"{obj.name}")
            if offset < 0 or size < 0 or offset + size > blob.plaintext_size:
                raise FormatError(f"{obj.name}: bytes {offset}+{size} lie outside blob {content_id}")
            pieces.append(ChunkPiece(blob, offset, size))
        return pieces

    def referenced_blob_keys(self, prefix: str) -> set[str]:
        """Keys of every blob the backup needs (what mark-and-sweep must keep)."""
        if self.format_version >= 3:
            return {b.key for b in self.blobs}
        return {blob_key(prefix, sha) for sha in self.referenced_blob_hashes}

    @property
    def wedding_ids(self) -> list[int]:
        return sorted(o.wedding_id for o in self.objects if o.wedding_id is not None)


def _instant(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def build_manifest(*, backup_id: str, data_class: str, created_at: str, snapshot_at: str | None, source_schema: str,
                   labels: Iterable[str], reason: str | None, prefix: str, lock_until: str | None,
                   retain_until: str | None, objects: list[BackupObject], blobs: list[Blob],
                   tables: dict[str, Any], stored_blob_keys: Iterable[str] = (),
                   chunks_packed: int = 0) -> Manifest:
    """A new backup's manifest: `objects` its own data objects, `blobs` every blob it needs (asset blobs, table
    packs and chunks, new or stored by an earlier backup), `chunks_packed` how many chunks its new packs hold;
    `totals` count what this backup holds (`rows`, `plaintext_bytes`, `chunks`) and what it stored (its own
    objects and the blobs it added: `compressed_bytes`, `ciphertext_bytes`, `stored_objects` -- what each cloud
    received -- `chunks_stored`, `packs_stored`)."""
    stored = set(stored_blob_keys)
    new_blobs = [b for b in blobs if b.key in stored]
    new_ids = {b.content_id for b in new_blobs}
    chunked = [o for o in objects if isinstance(o, ChunkedObject)]
    holders = {cid for o in chunked for cid in o.blob_ids}  # blobs holding chunks: their plaintext is the objects'
    chunk_blobs = {c.content_id for o in chunked for c in o.chunks}  # format 4
    own = [*(o for o in objects if isinstance(o, DataObject)), *new_blobs]
    return Manifest(
        backup_id=backup_id, data_class=data_class, prefix=prefix, created_at=created_at,
        snapshot_at=snapshot_at or created_at, source_schema=source_schema, labels=tuple(labels), reason=reason,
        locked_until=_instant(lock_until), retain_until=_instant(retain_until), objects=tuple(objects),
        blobs=tuple(sorted(blobs, key=lambda b: b.key)), tables=tables,
        totals={"objects": len(objects), "blobs": len(blobs), "blobs_stored": len(new_blobs),
                "chunks": len(chunk_blobs) + sum(o.chunk_count or 0 for o in chunked),
                "chunks_stored": len(chunk_blobs & new_ids) + chunks_packed,
                "packs_stored": len(new_ids & {e.pack for o in chunked for e in o.extents}),
                "stored_objects": len(own),
                "rows": sum(o.rows or 0 for o in objects),
                "plaintext_bytes": sum(o.plaintext_size for o in objects)
                + sum(b.plaintext_size for b in new_blobs if b.content_id not in holders),
                "compressed_bytes": sum(o.compressed_size or o.plaintext_size for o in own),
                "ciphertext_bytes": sum(o.ciphertext_size for o in own)})


# --------------------------------------------------------------------------- writing and checking copies


def object_metadata(backup_id: str, entry: Entry) -> dict[str, str]:
    """What every stored object carries besides our sha256 claim: enough for a person to open a blob found
    without its manifest (wrapped key and content id are not secret), nothing that names the plaintext."""
    metadata = {"backup-id": backup_id, "kek-id": entry.encryption["kek_id"]}
    if isinstance(entry, Blob) and entry.content_id:
        metadata |= {"wrapped-key": entry.encryption["wrapped_key"], "content-id": entry.content_id,
                     "compression": entry.compression}
    elif isinstance(entry, Blob):  # a format-2 blob re-copied by repair keeps what it was written with
        metadata |= {"wrapped-key": entry.encryption["wrapped_key"], "plaintext-sha256": entry.plaintext_sha256}
    return metadata


def adopted_blob_entry(info: ObjectInfo, content_id: str, plaintext_size: int, compression: str) -> Blob:
    """The manifest entry of a blob found in a cloud, from its metadata and the cloud's own checksums."""
    encryption = {"format": crypto.FORMAT_NAME, "kek_id": info.metadata["kek-id"],
                  "wrapped_key": info.metadata["wrapped-key"], "key_wrap": crypto.KEY_WRAP_ALGORITHM,
                  "associated_data": base64.b64encode(crypto.associated_data(BLOB_AD_SCOPE, content_id)).decode()}
    return Blob(content_id=content_id, key=info.key, compression=compression, plaintext_size=plaintext_size,
                ciphertext_sha256=info.sha256, ciphertext_size=info.size, ciphertext_md5=info.native.get("md5"),
                ciphertext_crc32c=info.native.get("crc32c"), encryption=encryption)


def is_other_version(info: ObjectInfo | None, entry: Entry) -> bool:
    """True when a shared blob's key holds ANOTHER encryption of the content (another run's: a different
    wrapped key, as every encryption has its own data key), not a damaged copy of this one. Repair never
    overwrites it: committed manifests may name those bytes."""
    if info is None or not isinstance(entry, Blob) or not entry.content_id:
        return False
    wrapped = info.metadata.get("wrapped-key")
    return wrapped is not None and wrapped != entry.encryption["wrapped_key"]


def write_object(store: ObjectStore, entry: Entry, path: Path, *, backup_id: str,
                 lock_until: dt.datetime | None, progress=None) -> ObjectInfo:
    """Store one encrypted object with its checksums, metadata and write-once lock. Upload and repair both
    write through here, so a repaired copy is exactly as locked and described as the original."""
    return store.put_file(entry.key, path, sha256=entry.ciphertext_sha256, md5=entry.ciphertext_md5,
                          crc32c=entry.ciphertext_crc32c, metadata=object_metadata(backup_id, entry),
                          retain_until=lock_until, progress=progress)


def write_manifest(store: ObjectStore, manifest: Manifest) -> ObjectInfo:
    """The commit marker, locked like the objects it describes."""
    return store.put_bytes(manifest.key, manifest.body(), metadata={"backup-id": manifest.backup_id},
                           content_type="application/json", retain_until=manifest.locked_until)


def check_copy(info: ObjectInfo | None, entry: Entry) -> str | None:
    """None when a cloud's copy matches the manifest entry; otherwise what is wrong with it.

    Judged by what the cloud computed over the bytes it stores (S3 SHA-256 -- whole or per part -- or CRC32,
    Azure MD5, GCS MD5 and CRC32C), compared with the checksums the manifest recorded over the ciphertext
    before upload: every one the cloud reports must match, and a copy whose checksums the manifest cannot
    check at all was written by something else (a re-put without our checksum headers), whatever our
    metadata claims. Size and our sha256 claim come first.
    """
    if info is None:
        return "missing"
    if info.sha256 != entry.ciphertext_sha256 and info.size == entry.ciphertext_size:  # a HEAD carries our claim
        return f"sha256 metadata {info.sha256} != {entry.ciphertext_sha256}"
    problem, checked = _compare(info, entry)
    if problem:
        return problem
    # An entry written since the manifest records CRC32 and S3's composite knows every checksum a proper
    # upload leaves; older entries cannot tell, and are judged by what they can check.
    if info.native and not checked and entry.ciphertext_crc32 is not None:
        return (f"the cloud's checksums ({', '.join(sorted(info.native))}) are none the manifest recorded: "
                "the object was rewritten")
    return None


def check_listed(info: ObjectInfo, entry: Entry) -> str | None:
    """None when a listing's item proves the copy matches the entry: its size, and every checksum the listing
    carries that the manifest recorded -- at least one (S3's ETag-MD5; Azure's and GCS's whole properties, our
    sha256 claim too). Otherwise why not; the caller then asks by HEAD (`check_copy`): a listing can prove a
    copy good, never bad."""
    problem, checked = _compare(info, entry)
    return problem or (None if checked else "the listing carries no checksum the manifest recorded")


def _compare(info: ObjectInfo, entry: Entry) -> tuple[str | None, int]:
    """What differs first -- size, our sha256 claim where the item carries one, each checksum the cloud computed
    that the manifest recorded -- and how many of the cloud's checksums were compared."""
    if info.size != entry.ciphertext_size:
        return f"size {info.size} != {entry.ciphertext_size}", 0
    if info.sha256 is not None and info.sha256 != entry.ciphertext_sha256:
        return f"sha256 metadata {info.sha256} != {entry.ciphertext_sha256}", 0
    checked = 0
    for algorithm, value in info.native.items():
        expected = entry.native(algorithm)
        if expected is None:
            continue
        if value != expected:
            return f"native {algorithm} {value} != {expected}", checked
        checked += 1
    return None, checked


def lock_needs_extending(info: ObjectInfo, lock_until: dt.datetime | None) -> bool:
    """True when the cloud's copy is not write-once for at least as long as a backup that needs it."""
    return lock_until is not None and (info.retain_until is None or info.retain_until < lock_until)


def extended_lock(lock_until: dt.datetime, lock_days: int) -> dt.datetime:
    """How far a shared object's lock is pushed when a backup needs it longer: one more lock period beyond the
    backup's own, so that a daily class re-locks each shared blob once a period, not once a day."""
    return lock_until + dt.timedelta(days=lock_days)


def write_lock(entry: Entry, lock_until: dt.datetime | None, lock_days: int) -> dt.datetime | None:
    """The lock a copy of `entry` is written with (upload, fill, repair): the backup's own; a shared blob's is
    extended from the start, so the backups that reference it within the next period re-lock none of it."""
    if lock_until is None or not isinstance(entry, Blob):
        return lock_until
    return extended_lock(lock_until, lock_days)
