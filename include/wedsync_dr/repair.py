"""Cross-cloud repair: make every kept backup whole again in every cloud.

For each backup, each cloud's copy of each object is checked (`format.check_copy`: exists, size, sha256
metadata, the cloud's native checksums) and its write-once lock compared with the backup's. A missing or
bad copy is re-copied from a cloud whose copy checks out -- the ciphertext as it is, never re-encrypted --
through a private temporary file, written with the backup's metadata and lock, then checked again. The manifest is
written to a cloud only once all of that cloud's objects are good (it stays the commit marker). The
catalog's copies and the backup's status follow: a degraded backup becomes validated.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wedsync_dr import format, memory
from wedsync_dr.format import Blob, Entry, Manifest
from wedsync_dr.parallel import in_parallel
from wedsync_dr.storage import ObjectInfo, ObjectStore, StorageError

log = logging.getLogger(__name__)


def _suspect_keys(manifest: Manifest, failures: dict[str, list[str]]) -> dict[str, set[str]]:
    """cloud -> keys of the manifest's objects that a failed verification names (its problems start with the
    object's key, as restore.verify_backup reports them)."""
    keys = {e.key for e in manifest.entries}
    return {cloud: {k for p in problems if (k := p.split(": ", 1)[0]) in keys}
            for cloud, problems in failures.items()}


@dataclass
class RepairResult:
    backup_id: str
    copied: list[tuple[str, str, str]] = field(default_factory=list)  # (key, from cloud, to cloud)
    relocked: list[tuple[str, str]] = field(default_factory=list)  # (key, cloud) whose lock was extended
    unrepairable: list[str] = field(default_factory=list)
    clouds_ok: list[str] = field(default_factory=list)


def _heads(stores: dict[str, ObjectStore], key: str) -> dict[str, ObjectInfo | None | StorageError]:
    result: dict[str, Any] = {}
    for cloud, store in stores.items():
        try:
            result[cloud] = store.head(key)
        except StorageError as err:
            result[cloud] = err
    return result


class SourceCopyBad(StorageError):
    """The copy chosen as the source does not hash to the manifest's ciphertext: try another cloud."""


def copy_object(src: ObjectStore, dst: ObjectStore, entry: Entry, staging: Path, *, backup_id: str,
                lock_until: dt.datetime | None) -> None:
    """Re-copy one object: download it whole, prove it against the manifest, then write it with its lock."""
    staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, name = tempfile.mkstemp(dir=staging, prefix="repair-")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, src.open_read(entry.key) as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != entry.ciphertext_sha256:  # its HEAD looked fine: its bytes are not
            raise SourceCopyBad(src.cloud, entry.key, "its bytes do not hash to the manifest's sha256")
        format.write_object(dst, entry, Path(name), backup_id=backup_id, lock_until=lock_until)
    finally:
        os.unlink(name)


def repair_backup(manifest: Manifest, stores: dict[str, ObjectStore], staging: Path,
                  blob_entries: list[Blob] = (), concurrency: int = 1, lock_days: int = 0,
                  suspects: dict[str, set[str]] | None = None) -> RepairResult:
    """Check every object in every cloud (`concurrency` objects at a time: a sweep of an hourly class is
    thousands of HEADs), then re-copy the bad copies one at a time (each streams through a file).

    A copy is written exactly as the backup wrote it (`format.write_object`: metadata and the backup's lock),
    and an object locked for less time than the backup -- a blob an older backup stored, a copy written
    before copies were locked -- has its lock extended. `blob_entries` adds blobs the manifest does not
    describe itself (format 2). `suspects` (cloud -> keys) are copies a verification read back and found bad
    although their HEAD looks fine (bit rot after the cloud computed its checksum): they are re-copied too.
    """
    suspects = suspects or {}
    result = RepairResult(manifest.backup_id)
    lock_until = manifest.locked_until
    broken_clouds: set[str] = set()
    entries = [*manifest.entries, *blob_entries]
    all_heads = in_parallel(lambda entry: _heads(stores, entry.key), entries, concurrency, "repair-check")
    for entry, heads in zip(entries, all_heads, strict=True):
        problems = {c: (str(h) if isinstance(h, StorageError) else format.check_copy(h, entry)
                        or ("damaged: a verification read it back and it failed" if entry.key in
                            suspects.get(c, ()) else None))
                    for c, h in heads.items()}
        good = [c for c, p in problems.items() if p is None]
        for cloud, problem in problems.items():
            if problem is None:
                if format.lock_needs_extending(heads[cloud], lock_until):
                    try:
                        stores[cloud].extend_retention(entry.key, format.extended_lock(lock_until, lock_days))
                        result.relocked.append((entry.key, cloud))
                    except StorageError as err:
                        broken_clouds.add(cloud)
                        result.unrepairable.append(f"{entry.key} in {cloud}: lock not extended: {err}")
                continue
            if isinstance(heads[cloud], StorageError) or not good:
                broken_clouds.add(cloud)
                result.unrepairable.append(f"{entry.key} in {cloud}: {problem}")
                continue
            if format.is_other_version(heads[cloud], entry):
                broken_clouds.add(cloud)
                result.unrepairable.append(f"{entry.key} in {cloud}: holds another run's encryption of the "
                                           "blob, which other backups may need: not overwritten")
                continue
            after, source = "no good source", good[0]
            for source in good:  # each source is proven by its bytes, not its HEAD
                try:
                    copy_object(stores[source], stores[cloud], entry, staging, backup_id=manifest.backup_id,
                                lock_until=format.write_lock(entry, lock_until, lock_days))
                    after = format.check_copy(stores[cloud].head(entry.key), entry)
                    break
                except SourceCopyBad as err:
                    log.warning("repair of %s in %s: the copy in %s is bad too (%s)", entry.key, cloud, source, err)
                    after = str(err)
                except StorageError as err:
                    after = str(err)
                    break
            if after is None:
                log.info("repaired %s in %s (was: %s) from %s", entry.key, cloud, problem, source)
                result.copied.append((entry.key, source, cloud))
            else:
                broken_clouds.add(cloud)
                result.unrepairable.append(f"{entry.key} in {cloud}: still {after} after copying from {source}")
    for cloud, store in stores.items():
        if cloud in broken_clouds:
            continue
        try:
            info = store.head(manifest.key)
            if info is None:
                format.write_manifest(store, manifest)  # the bytes the other clouds hold
            elif format.lock_needs_extending(info, lock_until):
                store.extend_retention(manifest.key, lock_until)
            result.clouds_ok.append(cloud)
        except StorageError as err:
            result.unrepairable.append(f"manifest in {cloud}: {err}")
    return result


def run(policy, catalog_conn, stores: dict[str, ObjectStore], *, only_degraded: bool,
        backup_ids: list[str] | None = None) -> list[RepairResult]:
    """Repair degraded backups (or, on the daily sweep, every kept backup; or the named ones, whatever their
    status) and update the catalog. What a verification read back and found damaged since the last repair
    is re-copied even when its HEAD looks fine.

    Newest first: a blob several backups need is re-copied (or re-locked) with the newest backup's lock.
    """
    memory.bound_heap()
    from wedsync_dr import catalog

    manifests = catalog.backups_to_repair(catalog_conn, policy.prefix, only_degraded=only_degraded,
                                          backup_ids=backup_ids)
    results = []
    for manifest in manifests:
        backup_id = manifest.backup_id
        blob_entries = catalog.legacy_blob_entries(catalog_conn, manifest)  # format 2: blobs described elsewhere
        data_class = policy.data_classes.get(manifest.data_class)
        suspects = _suspect_keys(manifest, catalog.failed_verifications_since_repair(catalog_conn, backup_id))
        result = repair_backup(manifest, stores, policy.staging_dir() / "repair", blob_entries,
                               concurrency=policy.upload_concurrency,
                               lock_days=policy.lock_days(data_class) if data_class else 0, suspects=suspects)
        copies = {c: ("validated", "repaired" if any(t == c for _, _, t in result.copied) else "checked")
                  for c in result.clouds_ok}
        copies |= {c: ("missing", "; ".join(u for u in result.unrepairable if f" in {c}:" in u)[:1000])
                   for c in stores if c not in result.clouds_ok}
        status = "validated" if len(result.clouds_ok) == len(stores) else "degraded"
        with catalog_conn.transaction():
            for cloud, (copy_status, detail) in copies.items():
                catalog.record_copy(catalog_conn, backup_id, cloud, copy_status, detail)
            catalog.record_repair_status(catalog_conn, backup_id, status, sorted(result.clouds_ok),
                                         sorted(set(stores) - set(result.clouds_ok)))
        results.append(result)
    return results
