"""One storage interface over three clouds: `open_store(...)` gives an `ObjectStore` for a policy entry.

The pipeline never branches on a cloud's name: a cloud is data in the policy,
`{"name": "aws", "kind": "s3", "conn_id": "backup_s3", "bucket": "wedsync-backups", "options": {...}}`,
and `kind` picks the adapter. Importing this package is cheap: the adapters load their provider hook and
SDK only when a store first talks to its cloud.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from wedsync_dr.storage.base import RETENTION_MODES, ObjectInfo, ObjectStore
from wedsync_dr.storage.errors import CloudAuthError, CloudUnavailable, ObjectNotFound, StorageError

# kind -> "module:class", imported on first use
KINDS = {
    "s3": "wedsync_dr.storage.s3:S3Store",
    "azure_blob": "wedsync_dr.storage.azure_blob:AzureBlobStore",
    "gcs": "wedsync_dr.storage.gcs:GcsStore",
}

__all__ = ["KINDS", "RETENTION_MODES", "CloudAuthError", "CloudUnavailable", "ObjectInfo", "ObjectNotFound",
           "ObjectStore", "StorageError", "open_store"]


def open_store(cloud: str, kind: str, conn_id: str, bucket: str, **options: Any) -> ObjectStore:
    """The store for one cloud of the policy. `options` are the adapter's keyword arguments (sizes,
    timeouts, retries, retention mode); a misspelt one fails here rather than being ignored. No network
    access happens until the first call."""
    if kind not in KINDS:
        raise ValueError(f"unknown storage kind {kind!r} for cloud {cloud!r}: expected one of {sorted(KINDS)}")
    module, _, name = KINDS[kind].partition(":")
    return getattr(import_module(module), name)(cloud, conn_id, bucket, **options)
