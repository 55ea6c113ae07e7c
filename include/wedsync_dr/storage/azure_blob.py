"""Azure Blob Storage through the Microsoft Azure provider's WasbHook.

The hook resolves the connection (connection string, shared key, SAS, service principal...); we then
build one BlobServiceClient on the same endpoint and credential with our transfer sizes and a bounded
retry policy, because the SDK fixes both when a client is created (its default retry waits 15 s and
more between attempts, and the first GET of a download buffers up to 32 MiB).

Native checksum: `content_md5`. When the caller gives the whole-object MD5 it is sent as the blob's
Content-MD5 property. Azure (and Azurite 3.35, verified) checks it against the bytes for a single-request
upload and rejects a mismatch; for a block upload it is stored as given (the service never hashes the
assembled blob, each block is checked in transit). A single-request upload without a claim gets an MD5
computed by the service; a block upload without one has none.

Metadata names must be C# identifiers on Azure: our portable "-" is stored as "_" and mapped back.

Retention: `immutability_policy=ImmutabilityPolicy(expiry_time, "Unlocked"|"Locked")` at upload; it needs
version-level immutability on the container. Azurite 3.35 accepts the headers and ignores them
(`set_immutability_policy` is "not implemented yet" there).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from functools import cached_property
from typing import Any

from wedsync_dr.storage.base import BaseStore, MiB, ObjectInfo, Upload
from wedsync_dr.storage.errors import CloudAuthError, CloudUnavailable, ObjectNotFound, StorageError

log = logging.getLogger(__name__)

_POLICY_MODES = {"governance": "Unlocked", "compliance": "Locked"}
_BATCH_DELETE = 256  # blobs per batch request, the service's limit


class AzureBlobStore(BaseStore):
    """A container in Azure Blob Storage. Files above `max_single_put_size` go up as blocks."""

    kind = "azure_blob"
    listing_has_checksums = True  # List Blobs (metadata, immutability policy): Get Blob Properties' fields

    def __init__(self, cloud: str, conn_id: str, bucket: str, *, max_block_size: int = 8 * MiB,
                 max_single_put_size: int = 8 * MiB, read_chunk_size: int = 4 * MiB, max_concurrency: int = 2,
                 max_attempts: int = 2, retry_backoff: float = 1, connect_timeout: float = 5,
                 read_timeout: float = 60, list_page_size: int = 1000, retention_mode: str = "governance",
                 limits: dict[str, int] | None = None) -> None:
        super().__init__(cloud, conn_id, bucket, retention_mode=retention_mode, limits=limits)
        self.max_block_size = max_block_size
        self.max_single_put_size = max_single_put_size
        self.read_chunk_size = read_chunk_size
        self.max_concurrency = max_concurrency
        self.max_attempts = max_attempts
        self.retry_backoff = retry_backoff
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.list_page_size = list_page_size

    @cached_property
    def _container(self):
        """A ContainerClient on the hook's endpoint and credential, with our sizes, timeouts and retries."""
        from airflow.providers.microsoft.azure.hooks.wasb import WasbHook
        from azure.storage.blob import BlobServiceClient, ExponentialRetry

        connected = WasbHook(wasb_conn_id=self.conn_id).get_conn()
        service = BlobServiceClient(
            account_url=connected.url, credential=connected.credential, api_version=connected.api_version,
            retry_policy=ExponentialRetry(initial_backoff=self.retry_backoff, increment_base=2,
                                          retry_total=self.max_attempts - 1, random_jitter_range=self.retry_backoff),
            connection_timeout=self.connect_timeout, read_timeout=self.read_timeout,
            # every GET of a download is buffered whole (and azure-core's generator reports its byte count as
            # its length, so the SDK's list() of it reserves 8x the chunk in untouched memory): keep GETs small
            max_block_size=self.max_block_size, max_single_put_size=self.max_single_put_size,
            max_single_get_size=self.read_chunk_size, max_chunk_get_size=self.read_chunk_size)
        return service.get_container_client(self.bucket)

    def _upload(self, key: str, upload: Upload) -> ObjectInfo:
        from azure.storage.blob import ContentSettings, ImmutabilityPolicy

        options: dict[str, Any] = {}
        if upload.retain_until is not None:
            options["immutability_policy"] = ImmutabilityPolicy(expiry_time=upload.retain_until,
                                                                policy_mode=_POLICY_MODES[self.retention_mode])
        settings = ContentSettings(content_type=upload.content_type,
                                   content_md5=bytearray.fromhex(upload.md5) if upload.md5 else None)
        with upload.open() as stream:
            self._container.get_blob_client(key).upload_blob(
                stream, length=upload.size, overwrite=True, metadata=_to_azure(upload.metadata),
                content_settings=settings, max_concurrency=self.limits.parallel_parts(self.max_concurrency),
                progress_hook=lambda done, _total: upload.progress.at(done), **options)
        return self._head(key)

    def _open(self, key: str) -> tuple[Callable[[int], bytes], Callable[[], None]]:
        # the downloader pins the blob's ETag: a concurrent overwrite fails the read instead of mixing versions
        downloader = self._container.get_blob_client(key).download_blob()
        return downloader.read, lambda: None

    def _head(self, key: str) -> ObjectInfo:
        return _info(self._container.get_blob_client(key).get_blob_properties())

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        for blob in self._container.list_blobs(name_starts_with=prefix, include=["metadata", "immutabilitypolicy"],
                                               results_per_page=self.list_page_size):
            yield _info(blob)

    def _extend_retention(self, key: str, retain_until) -> bool:
        from azure.core.exceptions import HttpResponseError
        from azure.storage.blob import ImmutabilityPolicy

        try:
            self._container.get_blob_client(key).set_immutability_policy(
                ImmutabilityPolicy(expiry_time=retain_until, policy_mode=_POLICY_MODES[self.retention_mode]))
        except HttpResponseError as err:
            if err.status_code == 501:  # Azurite: "Current API is not implemented yet"
                log.debug("%s does not implement blob immutability policies: %s not re-locked", self.cloud, key)
                return False
            raise
        return True

    def _delete(self, key: str) -> None:
        self._container.delete_blob(key)

    def delete_prefix(self, prefix: str) -> int:
        """Delete in batch requests of up to 256 blobs; a blob that vanished meanwhile counts as deleted."""
        names = [info.key for info in self.list(prefix)]
        with self._calling(prefix):
            for start in range(0, len(names), _BATCH_DELETE):
                batch = names[start:start + _BATCH_DELETE]
                responses = self._container.delete_blobs(*batch, raise_on_any_failure=False)
                failed = [(name, r.status_code) for name, r in zip(batch, responses, strict=True)
                          if r.status_code not in (202, 404)]
                if failed:
                    raise StorageError(self.cloud, failed[0][0],
                                       f"{len(failed)} deletes failed, e.g. HTTP {failed[0][1]}")
        return len(names)

    def _translate(self, err: Exception, key: str) -> StorageError | None:
        from azure.core.exceptions import (
            AzureError,
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
            ServiceRequestError,
            ServiceResponseError,
        )

        # the service's message repeats RequestId and Time on further lines: keep the first and the error code
        first_line = next(iter((getattr(err, "message", None) or str(err)).splitlines()), "")
        code = getattr(err, "error_code", None)
        message = f"{type(err).__name__}: {first_line}" + (f" ({code})" if code else "")
        if isinstance(err, ResourceNotFoundError):
            if getattr(err, "error_code", None) == "ContainerNotFound":
                return StorageError(self.cloud, key, f"container {self.bucket!r} does not exist")
            return ObjectNotFound(self.cloud, key, message)
        if isinstance(err, ClientAuthenticationError):
            return CloudAuthError(self.cloud, key, message)
        if isinstance(err, (ServiceRequestError, ServiceResponseError)):
            return CloudUnavailable(self.cloud, key, message)
        if isinstance(err, HttpResponseError):
            status = err.status_code or 0
            if status in (401, 403):
                return CloudAuthError(self.cloud, key, message)
            if status >= 500 or status in (408, 429):
                return CloudUnavailable(self.cloud, key, message)
            return StorageError(self.cloud, key, message)
        if isinstance(err, AzureError):
            return StorageError(self.cloud, key, message)
        return None


def _to_azure(metadata: dict[str, str]) -> dict[str, str]:
    return {name.replace("-", "_"): value for name, value in metadata.items()}


def _info(blob) -> ObjectInfo:
    """ObjectInfo from BlobProperties (head and listings carry the same fields)."""
    metadata = {name.lower().replace("_", "-"): value for name, value in (blob.metadata or {}).items()}
    md5 = blob.content_settings.content_md5
    policy = blob.immutability_policy
    return ObjectInfo(key=blob.name, size=blob.size, sha256=metadata.get("sha256"), metadata=metadata,
                      native={"md5": bytes(md5).hex()} if md5 else {}, updated=blob.last_modified,
                      retain_until=policy.expiry_time if policy else None)
