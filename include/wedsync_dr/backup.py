"""The backup pipeline, step by step: extract -> encrypt -> upload (per cloud) -> validate -> clean up.

Each step is a plain function the Airflow tasks call (and tests call directly). Steps hand each other a
small JSON-able `summary` (backup id, staging dir, totals) -- what XCom carries -- while the per-object
details live in files in the backup's staging directory (`extract.json`, `encrypt.json`), so XCom stays
small however many objects a run has.

Guarantees:
- Fail closed: without a usable key ring nothing is encrypted, so nothing is uploaded.
- Compressed plaintext exists only in staging (0600), and is deleted as soon as its object is encrypted;
  `cleanup` (a teardown) removes whatever a failed run left, and `wedsync_dr.abandoned` what a killed one
  left (its staging, its objects in the clouds) on the next run.
- A backup exists only once its manifest is written, and the manifest is written last, only to clouds
  whose every object validated, as soon as `quorum` clouds did (`commit_copy`: each upload task proves its
  own copy, so a hung cloud is not waited for). Below quorum, the objects that did land are deleted again:
  a failed run never leaves anything that looks like a backup.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wedsync_dr import alerts, catalog, chunking, crypto, extract, format, memory, staging
from wedsync_dr.format import BLOB_AD_SCOPE, Blob, ChunkedObject, DataObject, Entry
from wedsync_dr.parallel import in_parallel
from wedsync_dr.policy import DataClass, Policy
from wedsync_dr.storage import ObjectInfo, ObjectStore, StorageError, open_store
from wedsync_dr.streams import CloudChecksumWriter, HashingReader, lines

log = logging.getLogger(__name__)


class QuorumNotMet(RuntimeError):
    """Fewer clouds than the quorum hold a validated copy: the backup does not exist."""


# --------------------------------------------------------------------------- naming


def new_backup_id(data_class: str, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    return f"{data_class}-{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def backup_prefix(policy: Policy, data_class: str, backup_id: str, started_at: dt.datetime) -> str:
    return format.backup_prefix(policy.prefix, data_class, backup_id, started_at)


def blob_key(policy: Policy, content_id: str) -> str:
    return format.blob_key(policy.prefix, content_id)


def staging_dir(policy: Policy, backup_id: str) -> Path:
    return policy.staging_dir() / backup_id


def stores(policy: Policy, names: list[str] | None = None) -> dict[str, ObjectStore]:
    """The policy's clouds (or the named ones) as stores, every request bounded by the cloud's timeouts and limits."""
    return {c.name: open_store(c.name, c.kind, c.conn_id, c.bucket,
                               **{"retention_mode": policy.immutability_mode,
                                  "connect_timeout": c.timeouts.get("connect_seconds", 5),
                                  "read_timeout": c.timeouts.get("read_seconds", 30), "limits": c.limits,
                                  **c.options})
            for c in policy.clouds if names is None or c.name in names}


def _write_entries(area: staging.Staging, backup_id: str, name: str, entries: list[Entry | ChunkedObject]) -> None:
    """Entries handed from one step to the next, every field kept (a blob's compressed size too)."""
    area.write_json(backup_id, name, [e.to_json() if isinstance(e, ChunkedObject) else asdict(e) for e in entries])


def _read_entries(area: staging.Staging, backup_id: str, name: str) -> list[Entry | ChunkedObject]:
    return [format.entry_from_json(e) for e in area.read_json(backup_id, name, default=[])]


def _stored(entries: list[Entry | ChunkedObject]) -> list[Entry]:
    """The entries that are stored objects (a chunked object is stored as its chunks, which are blobs)."""
    return [e for e in entries if not isinstance(e, ChunkedObject)]


def _ciphertext_name(entry: Entry) -> str:
    """The staged file of an object's ciphertext (what the uploads send)."""
    return f"{entry.content_id}.tink" if isinstance(entry, Blob) else entry.name


def _ciphertext_path(directory: Path, entry: Entry) -> Path:
    return directory / _ciphertext_name(entry)


# --------------------------------------------------------------------------- extract


def run_extract(policy: Policy, data_class: DataClass, *, connect: Callable[[], Any], catalog_conn,
                backup_id: str | None = None, started_at: dt.datetime | None = None,
                wedding_ids: list[int] | None = None, labels: tuple[str, ...] = (), reason: str | None = None,
                requested_by: str | None = None, dag_id: str | None = None, run_id: str | None = None,
                workers: int | None = None, min_retention_days: int = 0,
                key_ring: crypto.KeyRing | None = None, store_map: dict[str, ObjectStore] | None = None
                ) -> dict[str, Any]:
    """Stage the class's data. `workers` (default: the class's `extract_workers`) tables or parts are copied at
    once. Assets need `key_ring` (its dedup key names the blobs); nothing is staged without it.

    Local staging: compressed plaintext files (0600) and `extract.json`, sealed by `run_encrypt` on this host.
    Object-store staging (tasks may run on other hosts): each object is sealed here, on the worker that read
    it, with its final data key and associated data, and only the ciphertext leaves this host (`sealed.json`
    describes it; `run_encrypt` proves it). That needs `key_ring` for every class: fail closed, nothing is read.
    """
    memory.bound_heap()
    started_at = started_at or dt.datetime.now(dt.UTC)
    backup_id = backup_id or new_backup_id(data_class.name, started_at)
    area = staging.for_policy(policy)
    if area.remote and key_ring is None:
        raise crypto.KeyUnavailableError("staging is an object store: extract seals every object before it leaves "
                                         "this worker, and needs the key ring")
    work = area.scratch(backup_id)
    prefix = backup_prefix(policy, data_class.name, backup_id, started_at)
    scope = {"wedding_ids": wedding_ids} if wedding_ids else None
    catalog.record_backup_start(catalog_conn, backup_id=backup_id, data_class=data_class.name, prefix=prefix,
                                started_at=started_at, labels=labels, reason=reason, requested_by=requested_by,
                                scope=scope, dag_id=dag_id, run_id=run_id)
    t0 = time.perf_counter()
    try:
        if data_class.deduplicated:
            if key_ring is None:
                raise crypto.KeyUnavailableError(f"{data_class.name} is deduplicated: its chunks are named by keyed "
                                                 "content ids (the key ring's dedup key), and nothing is read "
                                                 "without it")
            extraction = _extract_deduplicated(policy, data_class, backup_id, area, work, connect, catalog_conn,
                                               key_ring, workers or data_class.extract_workers, wedding_ids)
        elif data_class.kind == "tables":
            extraction = extract.extract_tables(connect, policy, data_class, backup_id, work,
                                                workers=workers or data_class.extract_workers)
        elif data_class.kind == "wedding_bundles":
            extraction = extract.extract_wedding_bundles(connect, policy, data_class, backup_id, work, wedding_ids)
        elif data_class.kind == "assets":
            if key_ring is None:
                raise crypto.KeyUnavailableError("an assets backup needs the key ring: its dedup key names the blobs")
            extraction = _extract_assets(policy, data_class, backup_id, area, work, catalog_conn, key_ring,
                                         store_map or stores(policy))
        else:  # the policy schema makes this unreachable
            raise ValueError(f"unknown data class kind {data_class.kind!r}")
        # Table definitions go into the manifest, not through XCom: they are kilobytes per table.
        area.write_json(backup_id, "tables.json", extraction.notes.pop("table_definitions", {}))
        if area.remote:
            sealed = _seal(policy, backup_id, prefix, extraction.objects, key_ring, work)
            for entry in _stored(sealed):
                area.publish(backup_id, _ciphertext_path(work, entry), sha256=entry.ciphertext_sha256)
            _write_entries(area, backup_id, "sealed.json", sealed)
        else:
            area.write_json(backup_id, "extract.json", extraction.to_json())
    finally:
        if area.remote:  # nothing of the run stays on this worker, plaintext above all, whatever happened
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - t0
    totals = extraction.totals
    log.info("extract %s: %d objects, %s rows, %.1f MB -> %.1f MB zstd in %.1fs (%.0f MB/s)", backup_id,
             totals["objects"], f"{totals['rows']:,}", totals["plaintext_bytes"] / 1e6,
             totals["compressed_bytes"] / 1e6, seconds, totals["plaintext_bytes"] / 1e6 / max(seconds, 1e-9))
    return {"backup_id": backup_id, "data_class": data_class.name, "prefix": prefix,
            "started_at": started_at.isoformat(), "snapshot_at": extraction.snapshot_at,
            "staging": area.describe(), **({} if area.remote else {"staging_dir": str(work)}),
            "labels": list(labels),
            "reason": reason, "extract_seconds": round(seconds, 3), **totals, "notes": extraction.notes,
            **_holds(policy, data_class, started_at, min_retention_days)}


def _holds(policy: Policy, data_class: DataClass, started_at: dt.datetime, min_retention_days: int) -> dict:
    """When the backup's objects stop being write-once (`lock_until`, None: not locked), and until when
    retention must keep it (`retain_until`): fixed once per backup, so every cloud gets the same."""
    lock_days = policy.lock_days(data_class)
    keep_days = max(lock_days, min_retention_days)
    return {"lock_until": (started_at + dt.timedelta(days=lock_days)).isoformat() if lock_days else None,
            "retain_until": (started_at + dt.timedelta(days=keep_days)).isoformat() if keep_days else None}


def _instant(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def _extract_deduplicated(policy: Policy, data_class: DataClass, backup_id: str, area: staging.Staging, work: Path,
                          connect, catalog_conn, key_ring: crypto.KeyRing, workers: int,
                          wedding_ids: list[int] | None) -> extract.Extraction:
    """The class's tables cut into content-defined chunks, or its wedding bundles each one chunk; the new chunks
    stored in packs (format 5).

    Which chunks are stored already: those in the packs of the class's newest good packed backup (its `blobs`),
    looked up in the catalog's `pack_chunks` (chunk -> pack and offset), where each pack's chunks are recorded as
    it closes (never in a manifest: they would make it grow with the data); the packs' full entries go to
    `referenced-blobs.json`. The clouds are asked about those packs, not told: each upload task proves every
    referenced pack in its cloud (one listing where it carries checksums) and validate copies one a cloud lacks
    from a cloud whose copy checks out, so the catalog is never trusted alone. A new chunk cannot be looked up
    in a cloud (its id names no object there), so the extract loads no cloud SDK and asks no cloud; a chunk the
    catalog does not know (a rebuilt catalog knows none) is stored again, once, in a new pack.

    Packs the newest backup uses little of (`sparse_packs`) are left out: their live chunks are stored again,
    in this run's new packs, and the old pack is referenced by no later backup."""
    chunks_prefix = format.chunks_prefix(policy.prefix)
    blobs, used = catalog.latest_packed_blobs(catalog_conn, data_class.name, policy.prefix)
    by_key = {b.key: b for b in blobs if b.key.startswith(chunks_prefix)}
    sparse = sparse_packs(by_key.values(), used, data_class.dedup_repack_below_percent)
    by_key = {key: b for key, b in by_key.items() if b.content_id not in sparse}
    known = extract.ChunkIndex((cid, by_key[key].content_id, offset)
                               for key, cid, offset in catalog.iter_pack_chunks(catalog_conn, by_key))
    packs = {b.content_id: b for b in by_key.values()}
    stager = extract.PackStager(work, policy.zstd_level, key_ring.content_id,
                                lambda cid: format.chunk_key(policy.prefix, cid), known,
                                pack_bytes=data_class.dedup_pack_kib << 10,
                                on_pack=lambda _cid, key, chunks: catalog.record_pack_chunks(catalog_conn, key, chunks),
                                content_digest=key_ring.content_digest)
    if data_class.kind == "tables":
        cdc = chunking.chunker(key_ring, data_class.dedup_chunk_kib << 10)
        extraction = extract.extract_tables(connect, policy, data_class, backup_id, work, workers=workers,
                                            chunks=stager, cdc=cdc)
    else:
        bundles = extract.BundlePacker(stager)
        try:
            extraction = extract.extract_wedding_bundles(connect, policy, data_class, backup_id, work, wedding_ids,
                                                         packs=bundles)
        except BaseException:
            bundles.abort()
            raise
        extraction.notes["chunks"] = bundles.chunk_count
    _write_entries(area, backup_id, "referenced-blobs.json",
                   sorted((packs[cid] for cid in stager.reused), key=lambda b: b.key))
    extraction.objects += stager.new
    extraction.notes |= {"new_packs": len(stager.new), "clouds_asked_seconds": 0, "new_chunks": stager.new_chunks,
                         "repacked_packs": len(sparse)}
    log.info("%s: %d chunks, %d new in %d packs, %d packs of earlier backups referenced, %d too sparse to be",
             data_class.name, extraction.notes["chunks"], extraction.notes["new_chunks"], len(stager.new),
             len(stager.reused), len(sparse))
    return extraction


def sparse_packs(packs: Iterable[Blob], used: Mapping[str, int], below_percent: int) -> set[str]:
    """The packs (content ids) of which the newest backup uses less than `below_percent` % of the plaintext: a
    deduplicated extract does not reference them, and stores their live chunks again.

    Why: a manifest locates chunks by pack and offset and is locked, so a pack cannot be rewritten while a kept
    backup names it, and a pack stays as long as any backup does -- one live chunk kept a pack of dead ones
    forever, and with activity spread over the weddings (2 % a day re-stores ~9 % of chunks) nearly every pack
    keeps one: stored bytes grew by a day's change every day, whatever the retention. Re-storing the few live
    chunks of a sparse pack lets it go when the backups that name it expire (restic's prune repacks instead; its
    index is not in its snapshots). The price is upload: at the default 25 %, a pack's last quarter is sent
    once more -- by a simple model (each pack decays alone), a third more than the churn itself once packs age.
    The first backups after a change are not affected: a day of 2 % activity leaves packs ~90 % used."""
    if below_percent <= 0:
        return set()
    return {p.content_id for p in packs if used.get(p.content_id, 0) * 100 < below_percent * p.plaintext_size}


def _extract_assets(policy: Policy, data_class: DataClass, backup_id: str, area: staging.Staging, work: Path,
                    catalog_conn, key_ring: crypto.KeyRing, store_map: dict[str, ObjectStore]):
    """Index every asset file under its keyed content id; stage only blobs no cloud holds yet.

    The blobs stored before are described in full in `referenced-blobs.json` (from the catalog, or adopted
    from a cloud that holds one the catalog does not know), so the manifest lists every blob the backup
    needs; validate proves each of them in every cloud. A stored blob is never overwritten: committed
    manifests may name its bytes and wrapped key.
    """
    source = Path(os.environ.get(data_class.source_env, ""))
    if not os.environ.get(data_class.source_env):
        raise RuntimeError(f"asset source not configured: set {data_class.source_env}")
    files, hashed = extract.scan_assets(source, catalog.asset_index(catalog_conn))
    content_ids = {f.sha256: key_ring.content_id(f.sha256) for f in files}
    known = catalog.known_blobs(catalog_conn, policy.prefix)
    new_blobs: dict[str, extract.AssetFile] = {}
    referenced: dict[str, Blob] = {}
    for f in files:
        cid = content_ids[f.sha256]
        if cid in known:
            referenced[cid] = known[cid]
        elif cid not in new_blobs:
            new_blobs[cid] = f
    candidates = {cid: _Candidate(blob_key(policy, cid), f.size, f.sha256, extract.blob_compression(f.path))
                  for cid, f in new_blobs.items()}
    for cid, entry in _adopt_stored_blobs(policy, store_map, key_ring, candidates,
                                          stored_estimate=len(known)).items():
        referenced[cid] = entry
        del new_blobs[cid]
    # The index is the backup's data object and the only place paths and plaintext hashes are kept:
    # path -> content id, and how to check each file.
    index_path = work / "asset-index.jsonl.zst"
    sink = extract._HashingCompressor(index_path, policy.zstd_level)
    for f in files:
        sink.write(json.dumps({"path": f.path, "content_id": content_ids[f.sha256], "sha256": f.sha256,
                               "size": f.size, "mtime_ns": f.mtime_ns}, separators=(",", ":")).encode() + b"\n")
    sha, size, compressed = sink.close()
    index = extract.StagedObject(name="asset-index.jsonl", path=str(index_path), source="asset-index",
                                 rows=len(files), plaintext_sha256=sha, plaintext_size=size,
                                 compressed_size=compressed)
    blobs = [_stage_blob(policy, source, work, cid, f) for cid, f in new_blobs.items()]
    log.info("assets: %d files (%d hashed, %d unchanged), %d new blobs to store, %d already stored", len(files),
             hashed, len(files) - hashed, len(blobs), len(referenced))
    extraction = extract.Extraction(backup_id, data_class.name, str(work),
                                    dt.datetime.now(dt.UTC).isoformat(), [index, *blobs])
    extraction.notes = {"files": len(files), "hashed": hashed, "new_blobs": len(blobs)}
    _write_entries(area, backup_id, "referenced-blobs.json", sorted(referenced.values(), key=lambda b: b.key))
    return extraction


def _stage_blob(policy: Policy, source: Path, staging: Path, content_id: str,
                asset: extract.AssetFile) -> extract.StagedObject:
    """A new blob's payload, staged (compressed where it compresses) like every other object of the backup."""
    compression = extract.blob_compression(asset.path)
    staged = staging / f"blob-{content_id}{'.zst' if compression == 'zstd' else ''}"
    sha, size, staged_size = extract.stage_file(source / asset.path, staged, compression, policy.zstd_level)
    if sha != asset.sha256:  # changed between the scan and now: the index would not match the blob
        staged.unlink(missing_ok=True)
        raise RuntimeError(f"{asset.path} changed while it was being backed up; it will be taken by the next run")
    return extract.StagedObject(name=f"blob-{content_id}", path=str(staged), source="asset-blob", rows=0,
                                plaintext_sha256=sha, plaintext_size=size, compressed_size=staged_size,
                                compression=compression, extra={"blob": True, "content_id": content_id})


@dataclass(frozen=True)
class _Candidate:
    """A new blob (asset file or table chunk) that a cloud may hold already: where, and what it must open to."""

    key: str
    size: int
    sha256: str
    compression: str


def _adopt_stored_blobs(policy: Policy, store_map: dict[str, ObjectStore], key_ring: crypto.KeyRing,
                        candidates: dict[str, _Candidate], stored_estimate: int = 0) -> dict[str, Blob]:
    """Blobs the catalog does not know but a cloud holds (a failed or concurrent run stored them, or the catalog
    was rebuilt or lost), described from the stored object itself once it is proven to decrypt to the file.
    Re-encrypting them instead would write a second ciphertext under the same key.

    Each cloud is asked by one listing of the blobs' prefix when that takes fewer requests than a HEAD per
    candidate (`stored_estimate`: how many objects the catalog knows there); only a listed key is then looked at
    more closely. A day-1 backup of 1 GB in 1 MiB chunks asks each cloud once, not 800 times."""
    listed = {cloud: _listing(store, [c.key for c in candidates.values()], stored_estimate)
              for cloud, store in store_map.items()}

    def find(item: tuple[str, _Candidate]) -> tuple[str, Blob | None]:
        cid, candidate = item
        key = candidate.key
        for cloud, store in store_map.items():
            if listed[cloud] is not None and key not in listed[cloud]:
                continue
            try:
                info = store.head(key)
            except StorageError as err:
                log.warning("cannot look for blob %s in %s: %s", key, cloud, err)
                continue
            if info is None or info.metadata.get("content-id") != cid or "wrapped-key" not in info.metadata:
                continue
            entry = format.adopted_blob_entry(info, cid, candidate.size,
                                              info.metadata.get("compression") or candidate.compression)
            if _proves(store, entry, key_ring, candidate.sha256):
                return cid, entry
            log.warning("blob %s in %s does not decrypt to its file: not adopted", key, cloud)
        return cid, None

    found = in_parallel(find, list(candidates.items()), policy.upload_concurrency, "adopt")
    adopted = {cid: entry for cid, entry in found if entry is not None}
    if adopted:
        log.info("%d blobs already stored in a cloud but unknown to the catalog: adopted, not re-sent",
                 len(adopted))
    return adopted


HEADS_PER_LISTING_PAGE = 8  # a listing page costs about what this many HEADs do (they go several at once)


def _listing(store: ObjectStore, keys: list[str], stored_estimate: int) -> dict[str, ObjectInfo] | None:
    """What one cloud holds of `keys`, from one listing of their common prefix, when that is a cheaper question
    than a HEAD per key; None when it is not, or when the listing failed -- then each key is asked by HEAD.

    `stored_estimate` (how many objects the prefix holds) decides whether to list at all; the listing stops,
    and HEADs take over, once it has cost what the HEADs would have (the prefix may hold far more than
    estimated: other classes' chunks, older versions kept by retention, a lost catalog's). Only the items
    asked for are kept."""
    if not keys:
        return None
    page_size = max(1, min(getattr(store, "list_page_size", 1000), 1000))  # no cloud pages more than 1,000
    budget = len(keys) // HEADS_PER_LISTING_PAGE  # pages that cost what the HEADs would
    if stored_estimate // page_size + 1 >= budget:
        return None
    prefix = os.path.commonprefix(keys).rpartition("/")[0] + "/"
    wanted = set(keys)
    found: dict[str, ObjectInfo] = {}
    try:
        for seen, info in enumerate(store.list(prefix), 1):
            if seen > budget * page_size:
                log.info("%s holds more under %s than listing is worth: asking for each object", store.cloud,
                         prefix)
                return None
            if info.key in wanted:
                found[info.key] = info
    except StorageError as err:
        log.warning("cannot list %s in %s (%s): asking for each object instead", prefix, store.cloud, err)
        return None
    return found


def _proves(store: ObjectStore, entry: Blob, key_ring: crypto.KeyRing, plaintext_sha256: str) -> bool:
    """Whether the stored object decrypts (tags, the content id's AD) to the plaintext with that sha256."""
    try:
        with store.open_read(entry.key) as src:
            stats = crypto.decrypt_stream(src, _NullSink(), key_ring.unwrap(entry.wrapped_key, object_name=entry.key),
                                          entry.associated_data(), object_name=entry.key, decompress=entry.decompress)
    except (crypto.DecryptionError, crypto.KeyUnavailableError, StorageError):
        return False
    return stats.plaintext_sha256 == plaintext_sha256


# --------------------------------------------------------------------------- encrypt


def run_encrypt(policy: Policy, summary: dict[str, Any], key_ring: crypto.KeyRing, *,
                workers: int = 2) -> dict[str, Any]:
    """Seal every staged object with its own data key (local staging; each plaintext is deleted as soon as it
    is sealed), or -- object-store staging, where extract sealed them on its own worker -- prove each sealed
    object before any cloud sees it: read back from staging, it must hash to what extract recorded and decrypt
    (tags, associated data) to the plaintext extract read. Either way `encrypt.json` lists what the uploads send.

    `workers` objects at a time: the checksums (MD5 most of all) and AES-GCM release the GIL on each
    segment, so two threads use two cores.
    """
    memory.bound_heap()
    backup_id = summary["backup_id"]
    area = staging.for_policy(policy)
    t0 = time.perf_counter()
    if area.remote:
        encrypted = _read_entries(area, backup_id, "sealed.json")
        in_parallel(lambda entry: _prove_staged(area, backup_id, entry, key_ring), _stored(encrypted), workers,
                    "prove")
    else:
        extraction = extract.Extraction.from_json(area.read_json(backup_id, "extract.json"))
        encrypted = _seal(policy, backup_id, summary["prefix"], extraction.objects, key_ring, area.scratch(backup_id),
                          workers=workers)
    seconds = time.perf_counter() - t0
    _write_entries(area, backup_id, "encrypt.json", encrypted)
    total = sum(o.ciphertext_size for o in _stored(encrypted))
    log.info("encrypt %s: %d objects, %.1f MB ciphertext %s in %.1fs, key %s", backup_id, len(encrypted), total / 1e6,
             "proven" if area.remote else "sealed", seconds, key_ring.primary_id)
    return {**summary, "ciphertext_bytes": total, "encrypt_seconds": round(seconds, 3),
            "compressed_bytes": sum(o.compressed_size or 0 for o in _stored(encrypted))}


def _seal(policy: Policy, backup_id: str, prefix: str, objects: list[extract.StagedObject],
          key_ring: crypto.KeyRing, work: Path, workers: int = 2) -> list[Entry | ChunkedObject]:
    """Seal staged payloads (already compressed in extract, tables and blobs alike) into ciphertext files beside
    them, each with its own data key and the associated data of where it will be stored; every plaintext is
    deleted as soon as its ciphertext exists. Returns the entries, in extraction order."""
    part_size = _s3_part_size(policy)

    def seal_one(obj: extract.StagedObject) -> Entry | ChunkedObject:
        if "chunks" in obj.extra or "extents" in obj.extra:  # stored as its chunks or packs, sealed on their own
            return ChunkedObject(name=obj.name, source=obj.source, rows=obj.rows, wedding_id=obj.wedding_id,
                                 columns=tuple(obj.columns) if obj.columns is not None else None,
                                 copy_format=obj.copy_format, plaintext_sha256=obj.plaintext_sha256,
                                 plaintext_size=obj.plaintext_size,
                                 **_chunk_layout(obj.extra))
        content_id = obj.extra.get("content_id") if obj.extra.get("blob") else None
        sizes = {"compression": obj.compression, "plaintext_size": obj.plaintext_size,
                 "compressed_size": obj.compressed_size}
        if content_id:
            ad = crypto.associated_data(BLOB_AD_SCOPE, content_id)
            sealed = _encrypt_one(key_ring, Path(obj.path), work / f"{content_id}.tink", ad, part_size=part_size)
            entry = Blob(content_id=content_id, key=obj.extra.get("key") or blob_key(policy, content_id), **sizes,
                         **sealed)
        else:
            name = f"{obj.name}.zst.tink" if obj.compression == "zstd" else f"{obj.name}.tink"
            ad = crypto.associated_data(backup_id, name)
            sealed = _encrypt_one(key_ring, Path(obj.path), work / name, ad, part_size=part_size)
            entry = DataObject(name=name, key=f"{prefix}/{name}", source=obj.source, rows=obj.rows,
                               columns=tuple(obj.columns) if obj.columns is not None else None,
                               wedding_id=obj.wedding_id, copy_format=obj.copy_format,
                               plaintext_sha256=obj.plaintext_sha256, **sizes, **sealed)
        Path(obj.path).unlink()  # staged plaintext lives only until its ciphertext exists
        return entry

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="encrypt") as pool:
        return list(pool.map(seal_one, objects))


def _chunk_layout(extra: dict[str, Any]) -> dict[str, Any]:
    """A chunked object's layout as extract staged it: extents of packs (format 5), or (content id, size) of each
    chunk blob (format 4: wedding bundles as an earlier release staged them, in a run this one finishes)."""
    if "extents" in extra:
        return {"extents": tuple(format.Extent(*e) for e in extra["extents"]), "chunk_count": extra["chunk_count"]}
    return {"chunks": tuple(format.ChunkRef(content_id=cid, size=size) for cid, size in extra["chunks"])}


def _prove_staged(area: staging.Staging, backup_id: str, entry: Entry, key_ring: crypto.KeyRing) -> None:
    """A sealed object read back from staging is the one extract described, and opens to its plaintext."""
    name = _ciphertext_name(entry)
    with area.open_read(backup_id, name) as raw:
        source = HashingReader(raw)
        stats = crypto.decrypt_stream(source, _NullSink(), key_ring.unwrap(entry.wrapped_key, object_name=entry.key),
                                      entry.associated_data(backup_id), object_name=entry.key,
                                      decompress=entry.decompress)
    if source.sha256.hexdigest() != entry.ciphertext_sha256 or source.size != entry.ciphertext_size:
        raise crypto.DecryptionError(f"staged {name} is not the ciphertext extract sealed")
    if stats.plaintext_size != entry.plaintext_size or (
            not key_ring.content_id_matches(stats.plaintext_sha256, entry.content_id) if isinstance(entry, Blob)
            else stats.plaintext_sha256 != entry.plaintext_sha256):
        raise crypto.DecryptionError(f"staged {name} does not open to the plaintext extract read")


def _s3_part_size(policy: Policy) -> int:
    """The part size (and multipart threshold) of the policy's S3 uploads: their composite checksum needs it."""
    from wedsync_dr.storage.s3 import DEFAULT_PART_SIZE

    return next((int(c.options.get("multipart_chunksize", DEFAULT_PART_SIZE)) for c in policy.clouds
                 if c.kind == "s3"), DEFAULT_PART_SIZE)


def _encrypt_one(key_ring: crypto.KeyRing, src: Path, dst: Path, ad: bytes, *, part_size: int) -> dict[str, Any]:
    """Seal one staged payload (already compressed in extract, tables and blobs alike) with its own data key."""
    data_key = key_ring.new_data_key()
    wrapped = key_ring.wrap(data_key)
    with open(src, "rb") as fin, extract.private_file(dst) as fout:
        sink = CloudChecksumWriter(fout, part_size)
        stats = crypto.encrypt_stream(fin, sink, data_key, ad, zstd_level=None)
    return {"ciphertext_sha256": stats.ciphertext_sha256, "ciphertext_size": stats.ciphertext_size,
            "ciphertext_md5": sink.md5.hexdigest(), "ciphertext_crc32c": sink.crc32c.digest().hex(),
            "ciphertext_crc32": f"{sink.crc32:08x}", "ciphertext_sha256_composite": sink.composite_sha256(),
            "encryption": crypto.encryption_entry(wrapped, ad)}


# --------------------------------------------------------------------------- upload


def _progress_logger(cloud: str, name: str, total: int) -> Callable[[int, int], None]:
    started = time.monotonic()
    last = [0.0]

    def report(done: int, _total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 5 or done >= total:
            last[0] = now
            elapsed = max(now - started, 1e-9)
            log.info("%s %s: %.1f/%.1f MB (%.0f MB/s)", cloud, name, done / 1e6, total / 1e6, done / 1e6 / elapsed)

    return report


SMALL_OBJECT_BYTES = 1 << 20  # up to this size an object is one request: several go at once (see run_upload)


def run_upload(policy: Policy, cloud: str, summary: dict[str, Any], store: ObjectStore | None = None) -> dict:
    """Upload every encrypted object of the backup to one cloud (blobs only where that cloud lacks them).

    Small objects (wedding bundles, asset blobs: one request each, where a cloud's latency costs more than
    its bandwidth) go `policy.upload_concurrency` at a time; large ones one after another, each a multipart
    or block upload with its own parallel parts. Either way at most a few MiB are in memory.
    """
    memory.bound_heap()
    store = store or stores(policy, [cloud])[cloud]
    area = staging.for_policy(policy)
    encrypted = _stored(_read_entries(area, summary["backup_id"], "encrypt.json"))
    lock_until = _instant(summary.get("lock_until"))
    lock_days = policy.lock_days(policy.data_classes[summary["data_class"]]) if lock_until is not None else 0
    t0 = time.perf_counter()

    def send(obj: Entry) -> int | None:
        """Bytes sent; None for a blob the cloud already holds (validate extends its lock if need be)."""
        if isinstance(obj, Blob) and (head := store.head(obj.key)):
            if head.sha256 != obj.ciphertext_sha256:  # another run stored it meanwhile: never overwrite
                log.warning("%s already holds %s from another run: not overwritten (validate decides)", cloud,
                            obj.key)
            return None
        # (object-store staging: fetched to this worker's scratch for the upload, removed right after)
        with area.local_copy(summary["backup_id"], _ciphertext_name(obj)) as path:
            format.write_object(store, obj, path, backup_id=summary["backup_id"],
                                lock_until=format.write_lock(obj, lock_until, lock_days),
                                progress=_progress_logger(cloud, obj.key.rsplit("/", 1)[-1], obj.ciphertext_size)
                                if obj.ciphertext_size > 64 << 20 else None)
        return obj.ciphertext_size

    small = [o for o in encrypted if o.ciphertext_size <= SMALL_OBJECT_BYTES]
    sent_sizes = in_parallel(send, small, policy.upload_concurrency, f"upload-{cloud}")
    sent_sizes += [send(o) for o in encrypted if o.ciphertext_size > SMALL_OBJECT_BYTES]
    sent = sum(1 for size in sent_sizes if size is not None)
    skipped = len(sent_sizes) - sent
    sent_bytes = sum(size for size in sent_sizes if size is not None)
    seconds = time.perf_counter() - t0
    log.info("upload %s to %s: %d objects (%d blobs already there), %.1f MB in %.1fs (%.1f MB/s)",
             summary["backup_id"], cloud, sent, skipped, sent_bytes / 1e6, seconds,
             sent_bytes / 1e6 / max(seconds, 1e-9))
    return {"cloud": cloud, "objects": sent, "skipped_blobs": skipped, "bytes": sent_bytes,
            "seconds": round(seconds, 3)}


# --------------------------------------------------------------------------- validate


@dataclass
class CopyCheck:
    cloud: str
    status: str  # validated | missing | corrupt | failed
    detail: str = ""
    bad_shared: frozenset[str] = frozenset()  # keys of shared blobs this cloud holds no good copy of


@dataclass
class _Locks:
    """Until when one cloud's blobs are write-once, where its listings do not say (S3): the dates the catalog
    recorded when each was last seen by HEAD or locked by us (`recorded`), and those this check saw or set
    (`seen`, recorded after it)."""

    recorded: dict[str, tuple[dt.datetime, dt.datetime]]  # key -> (locked until, recorded at)
    seen: dict[str, dt.datetime] = field(default_factory=dict)

    def covers(self, info: ObjectInfo, lock_until: dt.datetime) -> dt.datetime | None:
        """The recorded lock of the listed copy when it lasts until `lock_until`, and the copy is the one it was
        recorded for: written (per the cloud) well before the record -- a copy re-written since (a fill, repair,
        an overwrite) may carry a shorter lock. None: ask by HEAD."""
        until, recorded_at = self.recorded.get(info.key, (None, None))
        if until is None or until < lock_until or info.updated is None:
            return None
        return until if info.updated < recorded_at - LOCK_RECORD_MARGIN else None


LOCK_RECORD_MARGIN = dt.timedelta(minutes=1)  # the catalog's and the cloud's clocks may disagree by this much


def _recorded_locks(catalog_conn, cloud: str, keys: list[str]) -> _Locks | None:
    """The catalog's lock dates for `keys` in `cloud`; None (a HEAD each) when the catalog cannot answer: the
    record saves requests, it never decides a check."""
    try:
        return _Locks(catalog.recorded_locks(catalog_conn, cloud, keys) if keys else {})
    except Exception as err:  # noqa: BLE001 - any catalog error: fall back to asking the cloud
        log.warning("cannot read the recorded locks of %s (%s): asking for each blob", cloud, err)
        return None


def _record_locks(catalog_conn, cloud: str, seen: dict[str, dt.datetime]) -> None:
    try:
        catalog.record_locks(catalog_conn, cloud, seen)
    except Exception as err:  # noqa: BLE001 - a lost record costs a HEAD next time, not this backup
        log.warning("cannot record the locks of %d blobs in %s (%s)", len(seen), cloud, err)


def _check_and_lock(store: ObjectStore, entry: Entry, *, shared: bool, lock_until: dt.datetime | None,
                    lock_days: int, listed: dict[str, ObjectInfo] | None = None,
                    locks: _Locks | None = None) -> str | None:
    """None when the cloud's copy matches the entry (and, for a blob stored by an earlier backup, is locked at
    least as long as this backup); otherwise what is wrong, prefixed by its status.

    `listed`: the cloud's listing of the shared blobs. An item whose checksums match proves the bytes (a listing
    can save requests but never decide that a copy is bad: anything else is asked again by HEAD). Where listings
    carry no lock (S3), the lock is the date `locks` recorded: a HEAD is asked only when that falls short of
    this backup's lock. The date is the cloud's own answer or what we set, and no cloud shortens a compliance
    lock; a governance lock only whoever may bypass it -- and may as well delete the object."""
    info = listed.get(entry.key) if listed else None
    problem = format.check_listed(info, entry) if info is not None else "not listed"
    if problem is None and lock_until is not None and not getattr(store, "listing_has_checksums", False):
        recorded = locks.covers(info, lock_until) if locks else None
        if recorded is not None:
            info = dataclasses.replace(info, retain_until=recorded)
        else:
            problem = "its lock is not listed"
    asked = bool(problem)
    if problem:
        info = store.head(entry.key)
        problem = format.check_copy(info, entry)
    if problem:
        return f"{'missing' if info is None else 'corrupt'}: {entry.key} {problem}"
    if shared and format.lock_needs_extending(info, lock_until):
        until = format.extended_lock(lock_until, lock_days)
        if store.extend_retention(entry.key, until):
            info, asked = dataclasses.replace(info, retain_until=until), True
    if locks is not None and asked and info.retain_until is not None and isinstance(entry, Blob):
        locks.seen[entry.key] = info.retain_until
    return None


def _sample_decrypt(store: ObjectStore, obj: Entry, key_ring: crypto.KeyRing, backup_id: str) -> str | None:
    """Download, decrypt and decompress one object; compare with the plaintext checksum (a blob's: its keyed
    content id)."""
    try:
        with store.open_read(obj.key) as src:
            stats = crypto.decrypt_stream(src, _NullSink(), key_ring.unwrap(obj.wrapped_key, object_name=obj.key),
                                          obj.associated_data(backup_id), object_name=obj.key,
                                          decompress=obj.decompress)
    except (crypto.DecryptionError, StorageError) as err:
        return f"corrupt: {obj.key} failed to decrypt: {err}"
    if (isinstance(obj, Blob) and not key_ring.content_id_matches(stats.plaintext_sha256, obj.content_id)) or \
            (isinstance(obj, DataObject) and stats.plaintext_sha256 != obj.plaintext_sha256):
        return f"corrupt: {obj.key} plaintext sha256 mismatch"
    return None


class _NullSink:
    def write(self, data) -> int:
        return len(data)


@dataclass
class _Run:
    """What validating one backup needs, read once from its staging."""

    encrypted: list[Entry]
    shared: list[Blob]
    data_class: DataClass
    lock_until: dt.datetime | None
    retain_until: dt.datetime | None

    @classmethod
    def load(cls, policy: Policy, summary: dict[str, Any], retain_until: dt.datetime | None = None) -> _Run:
        area, backup_id = staging.for_policy(policy), summary["backup_id"]
        return cls(_read_entries(area, backup_id, "encrypt.json"),
                   _read_entries(area, backup_id, "referenced-blobs.json"),
                   policy.data_classes[summary["data_class"]], _instant(summary.get("lock_until")),
                   retain_until or _instant(summary.get("retain_until")))


def check_copy_in(policy: Policy, summary: dict[str, Any], cloud: str, store: ObjectStore, key_ring: crypto.KeyRing,
                  run: _Run | None = None, others: dict[str, ObjectStore] | None = None,
                  catalog_conn=None) -> CopyCheck:
    """Prove one cloud's copy: every object of this run and every shared blob the backup references is there
    and matches (shared blobs locked for less time than this backup get their lock extended first, so nothing
    a committed backup needs can be deleted before the backup's own lock ends), and one object decrypts.

    A shared blob (asset blob, chunk) this cloud lacks -- the catalog knew it from a degraded backup, or it was
    adopted from another cloud -- is copied here from one of `others` whose copy checks out (its ciphertext as it
    is, like repair), so the catalog is never trusted alone and a missing chunk costs one copy, not a backup.

    With `catalog_conn`, the locks of blobs in a cloud whose listings show none (S3) are read from and recorded
    in the catalog (`_Locks`); without it every such blob is asked by HEAD."""
    run = run or _Run.load(policy, summary)
    lock_days = policy.lock_days(run.data_class)
    stored = _stored(run.encrypted)
    entries = [(o, False) for o in stored] + [(b, True) for b in run.shared]
    bad_shared: frozenset[str] = frozenset()
    try:
        # (thousands of shared bundles or chunks: one listing instead of a HEAD each, where listings carry checksums)
        shared_keys = [b.key for b in run.shared]
        listed = (_listing(store, shared_keys, len(run.shared)) if getattr(store, "listing_has_checksums", False)
                  or getattr(store, "listing_has_md5", False) else None)
        locks = (_recorded_locks(catalog_conn, cloud, shared_keys if listed else [])
                 if catalog_conn is not None and run.lock_until is not None
                 and not getattr(store, "listing_has_checksums", False) else None)
        found = in_parallel(lambda item: _check_and_lock(store, item[0], shared=item[1], lock_until=run.lock_until,
                                                         lock_days=lock_days, listed=listed if item[1] else None,
                                                         locks=locks),
                            entries, policy.upload_concurrency, f"validate-{cloud}")
        missing = [i for i, ((_entry, is_shared), p) in enumerate(zip(entries, found, strict=True))
                   if is_shared and p and p.startswith("missing")]
        if missing and others:
            scratch = staging.for_policy(policy).scratch(summary["backup_id"]) / f"fill-{cloud}"
            copy_locks = {i: format.write_lock(entries[i][0], run.lock_until, lock_days) for i in missing}
            filled = in_parallel(lambda i: _fill_from_others(store, cloud, entries[i][0], others, scratch,
                                                             summary["backup_id"], copy_locks[i]),
                                 missing, policy.upload_concurrency, f"fill-{cloud}")
            for i, ok in zip(missing, filled, strict=True):
                if ok:
                    found[i] = None
                    if locks is not None:  # copied with the lock it was written with
                        locks.seen[entries[i][0].key] = copy_locks[i]
        if locks is not None:
            _record_locks(catalog_conn, cloud, locks.seen)
        bad_shared = frozenset(entry.key for (entry, is_shared), p in zip(entries, found, strict=True)
                               if is_shared and p)  # missing or corrupt, and no other cloud's copy filled it
        problems = [p for p in found if p]
        problem = (problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                   if problems else None)
        if problem is None and stored:
            sample = stored[int(summary["backup_id"].rsplit("-", 1)[1], 16) % len(stored)]
            problem = _sample_decrypt(store, sample, key_ring, summary["backup_id"])
    except StorageError as err:
        problem = f"failed: {err}"
    check = CopyCheck(cloud, problem.split(":", 1)[0] if problem else "validated", problem or "", bad_shared)
    log.info("copy in %s: %s %s", cloud, check.status.upper(), check.detail)
    return check


def _fill_from_others(store: ObjectStore, cloud: str, entry: Blob, others: dict[str, ObjectStore], scratch: Path,
                      backup_id: str, lock_until: dt.datetime | None) -> bool:
    """Copy a shared blob this cloud lacks from another cloud whose copy checks out; whether it is here now."""
    from wedsync_dr import repair

    for name, source in others.items():
        if name == cloud:
            continue
        try:
            if format.check_copy(source.head(entry.key), entry) is not None:
                continue
            repair.copy_object(source, store, entry, scratch, backup_id=backup_id, lock_until=lock_until)
            if format.check_copy(store.head(entry.key), entry) is None:
                log.info("%s lacked shared %s: copied from %s", cloud, entry.key, name)
                return True
        except StorageError as err:
            log.warning("could not copy shared %s from %s to %s: %s", entry.key, name, cloud, err)
    return False


def commit_copy(policy: Policy, summary: dict[str, Any], check: CopyCheck, catalog_conn,
                store_map: dict[str, ObjectStore], key_ring: crypto.KeyRing, run: _Run | None = None) -> bool:
    """Record one cloud's checked copy, and commit the backup as soon as `quorum` copies are validated.

    Each upload task calls this when its own copy is proven, so the backup exists once the quorum's uploads are
    done -- a hung or slow cloud is not waited for: its copy is added when its upload finishes, or by repair.
    A proven copy gets its manifest (the same bytes in every cloud) before the catalog counts it as validated,
    so when the quorum's last copy is recorded, every validated cloud already holds its manifest, and the commit
    is the catalog row alone. Serialised per backup by an advisory lock. Returns whether the backup is committed.

    Why each cloud's manifest is written by the task that proved that copy, not all of them by the committing
    one: writing another cloud's manifest loads that cloud's SDK into the committing task beside its own (the
    google provider alone is 57 MB over a task's 116), which took it to 201-204 MB, over the issue's 200 MB per
    task. A manifest in a cloud says that cloud holds a proven, complete copy; the backup exists (for restore,
    retention and repair) once the catalog commits it. A run that misses the quorum deletes its manifests first
    (`_roll_back`); one killed before it is recorded from such a manifest by the abandoned-backup sweep.
    """
    run = run or _Run.load(policy, summary)
    backup_id = summary["backup_id"]
    manifest = build_manifest(policy, summary, run.encrypted, run.shared, run.retain_until)
    with catalog_conn.transaction():
        catalog.lock_backup(catalog_conn, backup_id)
        copy_status, detail = check.status, check.detail
        if catalog.has_ended_without_it(catalog_conn, backup_id):
            # a late upload (cleared by hand, a zombie) of a run validate rolled back: no manifest, no commit
            log.warning("copy in %s of backup %s arrived after the run failed: not recorded", check.cloud, backup_id)
            return False
        if copy_status == "validated":
            try:
                format.write_manifest(store_map[check.cloud], manifest)
            except StorageError as err:
                copy_status, detail = "failed", f"manifest write failed: {err}"
        catalog.record_copy(catalog_conn, backup_id, check.cloud, copy_status, detail)
        copies = catalog.copies(catalog_conn, backup_id)
        good = sorted(c for c, (status, _detail) in copies.items() if status == "validated")
        committed = catalog.is_committed(catalog_conn, backup_id)
        if not committed and len(good) < policy.quorum:
            return False
        status = "validated" if len(good) == len(store_map) else "degraded"
        if not committed:
            # the blobs (asset files, packs) it stored, and those an assets run adopted from a cloud (known ones
            # are already there: no-ops)
            catalog.record_blobs(catalog_conn, [o for o in run.encrypted if isinstance(o, Blob)]
                                 + run.shared, backup_id)
        if not committed and run.data_class.kind == "assets":
            catalog.replace_asset_index(catalog_conn, _asset_files(policy, backup_id, run, key_ring), backup_id)
        catalog.record_backup_result(catalog_conn, manifest, backup_id=backup_id, status=status, copies=copies,
                                     retain_until=run.retain_until)
    if not committed:
        log.info("backup %s COMMITTED with %d of %d copies (%s)", backup_id, len(good), len(store_map),
                 ", ".join(good))
    return True


def _asset_files(policy: Policy, backup_id: str, run: _Run, key_ring: crypto.KeyRing) -> list[tuple]:
    """(path, sha256, size, mtime_ns) of every file, read back from the backup's own sealed asset index: the
    catalog's index of unchanged files comes from what was stored, and no list of paths and plaintext hashes
    is ever staged in the clear (object-store staging may be another host's, or a bucket)."""
    index = next(o for o in run.encrypted if isinstance(o, DataObject) and o.source == "asset-index")
    with staging.for_policy(policy).open_read(backup_id, _ciphertext_name(index)) as raw:
        reader = crypto.decrypting_reader(raw, key_ring.unwrap(index.wrapped_key, object_name=index.key),
                                          index.associated_data(backup_id), object_name=index.key,
                                          decompress=index.decompress, expected_sha256=index.plaintext_sha256,
                                          expected_size=index.plaintext_size)
        files = [json.loads(line) for line in lines(reader)]
    return [(f["path"], f["sha256"], f["size"], f["mtime_ns"]) for f in files]


def check_and_commit(policy: Policy, cloud: str, summary: dict[str, Any], key_ring: crypto.KeyRing, catalog_conn,
                     store: ObjectStore | None = None) -> dict[str, Any]:
    """An upload task's last step: prove its cloud's copy, and commit the backup if that makes the quorum."""
    memory.return_free_memory()  # what sending freed, before the proof reads listings and writes the manifest
    run = _Run.load(policy, summary)
    store_map = stores(policy)
    if store is not None:
        store_map[cloud] = store
    check = check_copy_in(policy, summary, cloud, store_map[cloud], key_ring, run, others=store_map,
                          catalog_conn=catalog_conn)
    committed = commit_copy(policy, summary, check, catalog_conn, store_map, key_ring, run)
    return {"cloud": cloud, "copy": check.status, "detail": check.detail, "committed": committed}


def run_validate(policy: Policy, summary: dict[str, Any], upload_results: dict[str, dict | None],
                 key_ring: crypto.KeyRing, catalog_conn, store_map: dict[str, ObjectStore] | None = None,
                 retain_until: dt.datetime | None = None) -> dict[str, Any]:
    """After every upload has finished or given up: prove the copies no upload task has proven yet, commit
    (or find committed) the backup, or roll it back when fewer than the quorum hold a validated copy."""
    memory.bound_heap()
    store_map = store_map or stores(policy)
    run = _Run.load(policy, summary, retain_until)
    backup_id = summary["backup_id"]
    recorded = catalog.copies(catalog_conn, backup_id)
    unchecked = [c for c in store_map if upload_results.get(c) is not None and c not in recorded]
    # The clouds are checked at the same time: a slow or unreachable one costs its own time, not the sum.
    checks = dict(zip(unchecked, in_parallel(lambda c: check_copy_in(policy, summary, c, store_map[c], key_ring, run,
                                                                     others=store_map, catalog_conn=catalog_conn),
                                             unchecked, len(store_map), "validate"), strict=True))
    for cloud in store_map:
        if upload_results.get(cloud) is None and recorded.get(cloud, ("",))[0] != "validated":
            checks[cloud] = CopyCheck(cloud, "failed", "upload task did not succeed")
    for check in checks.values():
        commit_copy(policy, summary, check, catalog_conn, store_map, key_ring, run)
    if run.shared:
        log.info("asset blobs stored by earlier backups and referenced by this one: %d", len(run.shared))
    copies = catalog.copies(catalog_conn, backup_id)
    good = sorted(c for c, (status, _detail) in copies.items() if status == "validated")
    if not catalog.is_committed(catalog_conn, backup_id):
        _roll_back(summary, store_map)
        # Blobs the catalog promised and that no cloud, each checked, holds a good copy of: forget them, so the
        # next run stores their content again (a pack under a new key; a missing blob or bundle under its own).
        checked = [c.bad_shared for c in checks.values() if c.status in ("validated", "missing", "corrupt")]
        gone = sorted(frozenset.intersection(*checked)) if len(checked) == len(store_map) else []
        if gone:
            catalog.forget_blobs(catalog_conn, gone)
        message = (f"backup {backup_id} has {len(good)} validated copies, quorum is {policy.quorum}: "
                   + "; ".join(f"{c}: {status} {detail}" for c, (status, detail) in sorted(copies.items()))
                   + (f"; {len(gone)} blobs the catalog knew are good in no cloud: the next run stores them again"
                      if gone else ""))
        catalog.record_backup_result(catalog_conn, None, backup_id=backup_id, status="failed", copies=copies,
                                     error=message)
        alerts.alert(severity="critical", kind="backup_failed", subject=summary["data_class"], message=message,
                     backup_id=backup_id, catalog_conn=catalog_conn)
        raise QuorumNotMet(message)
    status = "validated" if len(good) == len(store_map) else "degraded"
    if status == "degraded":
        missing = sorted(set(store_map) - set(good))
        alerts.alert(severity="warning", kind="backup_degraded", subject=summary["data_class"],
                     message=f"backup {backup_id} is degraded: no valid copy in {', '.join(missing)}; "
                             f"the repair run will copy it from {', '.join(good)}",
                     backup_id=backup_id, details={"missing": missing, "good": good}, catalog_conn=catalog_conn)
    manifest = catalog.backup(catalog_conn, backup_id)["manifest"]
    return {"backup_id": backup_id, "status": status, "clouds_ok": good,
            "clouds_failed": sorted(set(store_map) - set(good)),
            "manifest_key": format.manifest_key(summary["prefix"]),
            "copies": {c: tuple(v) for c, v in copies.items()}, "totals": manifest["totals"]}


def _roll_back(summary: dict[str, Any], store_map: dict[str, ObjectStore]) -> None:
    """Delete what this run put in the clouds (never shared blobs, which older backups may reference): a cloud's
    manifest first, so no manifest is ever left describing objects that are gone."""
    for cloud, store in store_map.items():
        try:
            store.delete(format.manifest_key(summary["prefix"]))
            store.delete_prefix(f"{summary['prefix']}/")
        except StorageError as err:
            log.warning("could not remove the objects of the failed backup from %s: %s", cloud, err)


def build_manifest(policy: Policy, summary: dict[str, Any], encrypted: list[Entry | ChunkedObject],
                   shared: list[Blob] = (), retain_until: dt.datetime | None = None) -> format.Manifest:
    """The manifest of a run (see `wedsync_dr.format.build_manifest`): its objects, and every blob it needs --
    the ones it stored and the ones earlier backups stored (`shared`)."""
    new_blobs = [o for o in encrypted if isinstance(o, Blob)]
    area = staging.for_policy(policy)
    notes = summary.get("notes", {})
    return format.build_manifest(
        backup_id=summary["backup_id"], data_class=summary["data_class"], created_at=summary["started_at"],
        snapshot_at=summary.get("snapshot_at"), source_schema=policy.source_schema,
        labels=summary.get("labels", []), reason=summary.get("reason"), prefix=summary["prefix"],
        lock_until=summary.get("lock_until"), retain_until=retain_until.isoformat() if retain_until else None,
        objects=[o for o in encrypted if isinstance(o, DataObject | ChunkedObject)], blobs=[*new_blobs, *shared],
        tables=area.read_json(summary["backup_id"], "tables.json"),
        chunks_packed=notes.get("new_chunks", 0) if "new_packs" in notes else 0,
        stored_blob_keys=[b.key for b in new_blobs])


# --------------------------------------------------------------------------- cleanup


def cleanup(policy: Policy, backup_id: str) -> bool:
    """Remove everything staged for the backup, wherever it is (plaintext and ciphertext alike), and this
    host's scratch of it. Safe to call twice."""
    return staging.for_policy(policy).remove(backup_id)
