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
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from wedsync_dr import crypto
from wedsync_dr.storage import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)

FORMAT_VERSION = 3
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


# --------------------------------------------------------------------------- associated data


def expected_associated_data(backup_id: str, entry: dict[str, Any]) -> bytes:
    """The AD an object must have been sealed with, computed from where it is expected -- never read from the
    manifest's `associated_data`, so an object swapped between backups (or a manifest edited to match) fails."""
    if "content_id" in entry:
        return crypto.associated_data(BLOB_AD_SCOPE, entry["content_id"])
    if entry.get("blob"):  # format 2: bound to the plaintext hash
        return crypto.associated_data(BLOB_AD_SCOPE, entry["plaintext_sha256"])
    return crypto.associated_data(backup_id, entry["name"])


# --------------------------------------------------------------------------- reading manifests


def check_readable(manifest: dict[str, Any]) -> dict[str, Any]:
    version = manifest.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise FormatError(f"backup {manifest.get('backup_id')} has manifest format {version}; this wedsync-dr "
                          f"reads formats up to {FORMAT_VERSION}: restore with a newer release")
    return manifest


def data_objects(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The backup's own data objects (tables, parts, bundles, the asset index): never shared blobs."""
    return [o for o in manifest["objects"] if not o.get("blob")]


def blob_entries(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The blobs this manifest itself describes in full: all it needs (format 3), or only the ones its
    backup stored (format 2, whose other blobs are only named by hash in `referenced_blobs`)."""
    if manifest.get("format_version", 1) >= 3:
        return list(manifest.get("blobs", []))
    return [o for o in manifest["objects"] if o.get("blob")]


def referenced_blob_keys(manifest: dict[str, Any], prefix: str) -> set[str]:
    """Keys of every blob the backup needs (what mark-and-sweep must keep)."""
    if manifest.get("format_version", 1) >= 3:
        return {b["key"] for b in manifest.get("blobs", [])}
    return {blob_key(prefix, sha) for sha in manifest.get("referenced_blobs", [])}


def all_entries(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object a complete copy of the backup needs in a cloud that the manifest describes."""
    return [*data_objects(manifest), *blob_entries(manifest)]


def locked_until(manifest: dict[str, Any]) -> dt.datetime | None:
    value = manifest.get("locked_until")
    return dt.datetime.fromisoformat(value) if value else None


# --------------------------------------------------------------------------- building manifests


def object_entry(obj: dict[str, Any]) -> dict[str, Any]:
    entry = {k: obj.get(k) for k in OBJECT_FIELDS}
    if obj.get("copy_format"):
        entry["copy_format"] = obj["copy_format"]
    return entry


def blob_entry(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: obj.get(k) for k in BLOB_FIELDS}


def build_manifest(*, backup_id: str, data_class: str, created_at: str, snapshot_at: str | None, source_schema: str,
                   labels: Iterable[str], reason: str | None, prefix: str, lock_until: str | None,
                   retain_until: str | None, objects: list[dict[str, Any]], blobs: list[dict[str, Any]],
                   tables: dict[str, Any], stored_blob_keys: Iterable[str] = ()) -> dict[str, Any]:
    """The manifest: plain JSON, no secrets, enough on its own to restore the backup and rebuild the catalog.

    `objects` are the backup's own data objects, `blobs` every asset blob it needs (new or stored by an
    earlier backup); `totals` count what this backup stored (its objects and the blobs it added).
    """
    stored = set(stored_blob_keys)
    new_blobs = [b for b in blobs if b["key"] in stored]
    own = [*objects, *new_blobs]
    return {
        "format_version": FORMAT_VERSION,
        "backup_id": backup_id,
        "data_class": data_class,
        "created_at": created_at,
        "snapshot_at": snapshot_at or created_at,
        "source_schema": source_schema,
        "labels": list(labels),
        "reason": reason,
        "prefix": prefix,
        "locked_until": lock_until,  # every object it needs is write-once in every cloud until then (None: not)
        "retain_until": retain_until,  # retention keeps the backup at least until then (None: the rules decide)
        "objects": [object_entry(o) for o in objects],
        "blobs": sorted((blob_entry(b) for b in blobs), key=lambda b: b["key"]),
        "tables": tables,
        "totals": {"objects": len(objects), "blobs": len(blobs), "blobs_stored": len(new_blobs),
                   "rows": sum(o.get("rows") or 0 for o in objects),
                   "plaintext_bytes": sum(o["plaintext_size"] for o in own),
                   "compressed_bytes": sum(o.get("compressed_size") or o["plaintext_size"] for o in own),
                   "ciphertext_bytes": sum(o["ciphertext_size"] for o in own)},
    }


def manifest_body(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, indent=2, sort_keys=True).encode()


# --------------------------------------------------------------------------- writing and checking copies


def object_metadata(backup_id: str, entry: dict[str, Any]) -> dict[str, str]:
    """What every stored object carries besides our sha256 claim: enough for a person to open a blob found
    without its manifest (wrapped key and content id are not secret), nothing that names the plaintext."""
    metadata = {"backup-id": backup_id, "kek-id": entry["encryption"]["kek_id"]}
    if "content_id" in entry:
        metadata |= {"wrapped-key": entry["encryption"]["wrapped_key"], "content-id": entry["content_id"],
                     "compression": entry["compression"]}
    elif entry.get("blob"):  # a format-2 blob re-copied by repair keeps what it was written with
        metadata |= {"wrapped-key": entry["encryption"]["wrapped_key"], "plaintext-sha256": entry["plaintext_sha256"]}
    return metadata


def adopted_blob_entry(info: ObjectInfo, content_id: str, plaintext_size: int, compression: str) -> dict[str, Any]:
    """The manifest entry of a blob found in a cloud, from its metadata and the cloud's own checksums."""
    encryption = {"format": crypto.FORMAT_NAME, "kek_id": info.metadata["kek-id"],
                  "wrapped_key": info.metadata["wrapped-key"], "key_wrap": crypto.KEY_WRAP_ALGORITHM,
                  "associated_data": base64.b64encode(crypto.associated_data(BLOB_AD_SCOPE, content_id)).decode()}
    return {"content_id": content_id, "key": info.key, "compression": compression, "plaintext_size": plaintext_size,
            "ciphertext_sha256": info.sha256, "ciphertext_size": info.size,
            "ciphertext_md5": info.native.get("md5"), "ciphertext_crc32c": info.native.get("crc32c"),
            "encryption": encryption}


def is_other_version(info: ObjectInfo | None, entry: dict[str, Any]) -> bool:
    """True when a shared blob's key holds ANOTHER encryption of the content (another run's: a different
    wrapped key, as every encryption has its own data key), not a damaged copy of this one. Repair never
    overwrites it: committed manifests may name those bytes."""
    if info is None or "content_id" not in entry:
        return False
    wrapped = info.metadata.get("wrapped-key")
    return wrapped is not None and wrapped != entry["encryption"]["wrapped_key"]


def write_object(store: ObjectStore, entry: dict[str, Any], path: Path, *, backup_id: str,
                 lock_until: dt.datetime | None, progress=None) -> ObjectInfo:
    """Store one encrypted object with its checksums, metadata and write-once lock. Upload and repair both
    write through here, so a repaired copy is exactly as locked and described as the original."""
    return store.put_file(entry["key"], path, sha256=entry["ciphertext_sha256"], md5=entry.get("ciphertext_md5"),
                          crc32c=entry.get("ciphertext_crc32c"), metadata=object_metadata(backup_id, entry),
                          retain_until=lock_until, progress=progress)


def write_manifest(store: ObjectStore, manifest: dict[str, Any]) -> ObjectInfo:
    """The commit marker, locked like the objects it describes."""
    return store.put_bytes(manifest_key(manifest["prefix"]), manifest_body(manifest),
                           metadata={"backup-id": manifest["backup_id"]}, content_type="application/json",
                           retain_until=locked_until(manifest))


def check_copy(info: ObjectInfo | None, entry: dict[str, Any]) -> str | None:
    """None when a cloud's copy matches the manifest entry; otherwise what is wrong with it.

    Judged by what the cloud computed over the bytes it stores (S3 SHA-256 -- whole or per part -- or CRC32,
    Azure MD5, GCS MD5 and CRC32C), compared with the checksums the manifest recorded over the ciphertext
    before upload: every one the cloud reports must match, and a copy whose checksums the manifest cannot
    check at all was written by something else (a re-put without our checksum headers), whatever our
    metadata claims. Size and our sha256 claim come first.
    """
    if info is None:
        return "missing"
    if info.size != entry["ciphertext_size"]:
        return f"size {info.size} != {entry['ciphertext_size']}"
    if info.sha256 != entry["ciphertext_sha256"]:
        return f"sha256 metadata {info.sha256} != {entry['ciphertext_sha256']}"
    checked = 0
    for algorithm, value in info.native.items():
        expected = entry.get(NATIVE_FIELDS.get(algorithm, ""))
        if expected is None:
            continue
        if value != expected:
            return f"native {algorithm} {value} != {expected}"
        checked += 1
    # An entry written since the manifest records CRC32 and S3's composite knows every checksum a proper
    # upload leaves; older entries cannot tell, and are judged by what they can check.
    if info.native and not checked and "ciphertext_crc32" in entry:
        return (f"the cloud's checksums ({', '.join(sorted(info.native))}) are none the manifest recorded: "
                "the object was rewritten")
    return None


def lock_needs_extending(info: ObjectInfo, lock_until: dt.datetime | None) -> bool:
    """True when the cloud's copy is not write-once for at least as long as a backup that needs it."""
    return lock_until is not None and (info.retain_until is None or info.retain_until < lock_until)


def extended_lock(lock_until: dt.datetime, lock_days: int) -> dt.datetime:
    """How far a shared object's lock is pushed when a backup needs it longer: one more lock period beyond the
    backup's own, so that a daily class re-locks each shared blob once a period, not once a day."""
    return lock_until + dt.timedelta(days=lock_days)
