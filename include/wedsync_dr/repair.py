"""Cross-cloud repair: make every kept backup whole again in every cloud.

For each backup, each cloud's copy of each object is checked (exists, size, sha256 metadata, the cloud's
native checksum). A missing or bad copy is re-copied from a cloud whose copy checks out -- the ciphertext
as it is, never re-encrypted -- through a private temporary file, then checked again. The manifest is
written to a cloud only once all of that cloud's objects are good (it stays the commit marker). The
catalog's copies and the backup's status follow: a degraded backup becomes validated.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wedsync_dr.parallel import in_parallel
from wedsync_dr.storage import ObjectInfo, ObjectStore, StorageError

log = logging.getLogger(__name__)


@dataclass
class RepairResult:
    backup_id: str
    copied: list[tuple[str, str, str]] = field(default_factory=list)  # (key, from cloud, to cloud)
    unrepairable: list[str] = field(default_factory=list)
    clouds_ok: list[str] = field(default_factory=list)


def copy_problem(info: ObjectInfo | None, entry: dict[str, Any]) -> str | None:
    """None when a cloud's copy matches the manifest entry; otherwise what is wrong with it."""
    if info is None:
        return "missing"
    if info.size != entry["ciphertext_size"]:
        return f"size {info.size} != {entry['ciphertext_size']}"
    if info.sha256 != entry["ciphertext_sha256"]:
        return "sha256 metadata differs"
    expected = {"sha256": entry["ciphertext_sha256"], "md5": entry.get("ciphertext_md5"),
                "crc32c": entry.get("ciphertext_crc32c")}
    for algorithm, value in info.native.items():
        if expected.get(algorithm) and value != expected[algorithm]:
            return f"native {algorithm} differs"
    return None


def _heads(stores: dict[str, ObjectStore], key: str) -> dict[str, ObjectInfo | None | StorageError]:
    result: dict[str, Any] = {}
    for cloud, store in stores.items():
        try:
            result[cloud] = store.head(key)
        except StorageError as err:
            result[cloud] = err
    return result


def _copy(src: ObjectStore, dst: ObjectStore, entry: dict[str, Any], staging: Path, metadata: dict[str, str]) -> None:
    staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, name = tempfile.mkstemp(dir=staging, prefix="repair-")
    try:
        with os.fdopen(fd, "wb") as out:
            src.download_to(entry["key"], out)
        dst.put_file(entry["key"], Path(name), sha256=entry["ciphertext_sha256"], md5=entry.get("ciphertext_md5"),
                     crc32c=entry.get("ciphertext_crc32c"), metadata=metadata)
    finally:
        os.unlink(name)


def repair_backup(manifest: dict[str, Any], stores: dict[str, ObjectStore], staging: Path,
                  blob_entries: list[dict[str, Any]] = (), concurrency: int = 1) -> RepairResult:
    """Check every object in every cloud (`concurrency` objects at a time: a sweep of an hourly class is
    thousands of HEADs), then re-copy the bad copies one at a time (each streams through a file)."""
    result = RepairResult(manifest["backup_id"])
    broken_clouds: set[str] = set()
    entries = [*manifest["objects"], *blob_entries]
    all_heads = in_parallel(lambda entry: _heads(stores, entry["key"]), entries, concurrency, "repair-check")
    for entry, heads in zip(entries, all_heads, strict=True):
        problems = {c: (str(h) if isinstance(h, StorageError) else copy_problem(h, entry)) for c, h in heads.items()}
        good = [c for c, p in problems.items() if p is None]
        for cloud, problem in problems.items():
            if problem is None:
                continue
            if isinstance(heads[cloud], StorageError) or not good:
                broken_clouds.add(cloud)
                result.unrepairable.append(f"{entry['key']} in {cloud}: {problem}")
                continue
            source = good[0]
            metadata = {"backup-id": manifest["backup_id"], "kek-id": entry["encryption"]["kek_id"]}
            if entry.get("blob"):
                metadata |= {"wrapped-key": entry["encryption"]["wrapped_key"],
                             "plaintext-sha256": entry["plaintext_sha256"]}
            try:
                _copy(stores[source], stores[cloud], entry, staging, metadata)
                after = copy_problem(stores[cloud].head(entry["key"]), entry)
            except StorageError as err:
                after = str(err)
            if after is None:
                log.info("repaired %s in %s (was: %s) from %s", entry["key"], cloud, problem, source)
                result.copied.append((entry["key"], source, cloud))
            else:
                broken_clouds.add(cloud)
                result.unrepairable.append(f"{entry['key']} in {cloud}: still {after} after copying from {source}")
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    for cloud, store in stores.items():
        if cloud in broken_clouds:
            continue
        try:
            if store.head(f"{manifest['prefix']}/manifest.json") is None:
                store.put_bytes(f"{manifest['prefix']}/manifest.json", body,
                                metadata={"backup-id": manifest["backup_id"]}, content_type="application/json")
            result.clouds_ok.append(cloud)
        except StorageError as err:
            result.unrepairable.append(f"manifest in {cloud}: {err}")
    return result


def run(policy, catalog_conn, stores: dict[str, ObjectStore], *, only_degraded: bool) -> list[RepairResult]:
    """Repair degraded backups (or, on the daily sweep, every kept backup) and update the catalog."""
    from wedsync_dr import catalog

    rows = catalog_conn.execute(
        "SELECT backup_id, manifest FROM backup_catalog.backups WHERE manifest IS NOT NULL AND status = ANY(%s) "
        "ORDER BY started_at DESC", (["degraded"] if only_degraded else ["validated", "degraded"],)).fetchall()
    known_blobs = catalog.known_asset_blobs(catalog_conn)
    results = []
    for backup_id, manifest in rows:
        blob_entries = [{"key": b["key"], "ciphertext_sha256": b["ciphertext_sha256"],
                         "ciphertext_size": b["ciphertext_size"], "encryption": b["encryption"],
                         "plaintext_sha256": sha, "blob": True}
                        for sha in manifest.get("referenced_blobs", []) if (b := known_blobs.get(sha))]
        result = repair_backup(manifest, stores, policy.staging_dir() / "repair", blob_entries,
                               concurrency=policy.upload_concurrency)
        copies = {c: ("validated", "repaired" if any(t == c for _, _, t in result.copied) else "checked")
                  for c in result.clouds_ok}
        copies |= {c: ("missing", "; ".join(u for u in result.unrepairable if f" in {c}:" in u)[:1000])
                   for c in stores if c not in result.clouds_ok}
        status = "validated" if len(result.clouds_ok) == len(stores) else "degraded"
        with catalog_conn.transaction():
            for cloud, (copy_status, detail) in copies.items():
                catalog_conn.execute(
                    "INSERT INTO backup_catalog.backup_copies (backup_id, cloud, status, detail) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT (backup_id, cloud) DO UPDATE SET status = EXCLUDED.status, "
                    "detail = EXCLUDED.detail, checked_at = now()", (backup_id, cloud, copy_status, detail))
            catalog_conn.execute(
                "UPDATE backup_catalog.backups SET status = %s, clouds_ok = %s, clouds_failed = %s "
                "WHERE backup_id = %s",
                (status, sorted(result.clouds_ok), sorted(set(stores) - set(result.clouds_ok)), backup_id))
        results.append(result)
    return results
