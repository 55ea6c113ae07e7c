"""S3 (and S3-compatible stores) through the Amazon provider's S3Hook.

Native checksum: every upload asks for `ChecksumAlgorithm="SHA256"`: botocore hashes the bytes as they go
out and S3 verifies them on arrival. A single-request upload then holds the full-object SHA-256 (comparable
with our `sha256` claim); a multipart upload holds a COMPOSITE one (sha256 of the parts' sha256s, suffix
`-<parts>`), reported as `native["sha256_composite"]` because it depends on the part size.

Verified against moto server 5.2.5:
- single and multipart uploads with SHA256 work; HeadObject(ChecksumMode=ENABLED) returns the checksum.
- moto's HeadObject omits ChecksumType and the `-N` suffix of a composite checksum (GetObject has both),
  so a multipart ETag (`"...-N"`) without a ChecksumType is read as composite.
- moto neither stores nor verifies a caller-supplied `ChecksumSHA256` value (it accepted a wrong one), so
  we let botocore compute the checksum rather than sending our claim.
- a plain SDK put (no algorithm asked) gets botocore's default CRC32: native `{"crc32": ...}`.
- Object Lock works on a bucket created with ObjectLockEnabledForBucket; on other buckets a retention
  request is refused (InvalidRequest).
- full-object CRC32C for multipart would need `botocore[crt]`, which is not installed.
- ListObjectsV2 carries no metadata, checksums or lock, but the ETag of a single-request upload is the MD5 of
  the stored bytes (moto too; on S3 not under SSE-KMS or SSE-C, where the ETag is something else -- then a
  listing proves nothing and HEAD is asked): listed as `native["md5"]`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from functools import cached_property
from typing import Any

from wedsync_dr.storage.base import BaseStore, MiB, ObjectInfo, Upload, b64_to_hex
from wedsync_dr.storage.errors import CloudAuthError, CloudUnavailable, ObjectNotFound, StorageError

_LOCK_MODES = {"governance": "GOVERNANCE", "compliance": "COMPLIANCE"}
_MULTIPART_ETAG = re.compile(r'-(\d+)"?$')
_MD5_ETAG = re.compile(r'^"?([0-9a-f]{32})"?$')
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_AUTH = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
         "TokenRefreshRequired", "AuthorizationHeaderMalformed", "403", "401"}
_TRANSIENT = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
              "ServiceUnavailable", "InternalError"}


DEFAULT_PART_SIZE = 64 * MiB  # multipart threshold and part size: the composite checksum depends on it


class S3Store(BaseStore):
    """A bucket in S3. Large files go up in parallel multipart uploads straight from disk."""

    kind = "s3"
    listing_has_md5 = True  # the ETag of a single-request upload (see above)

    def __init__(self, cloud: str, conn_id: str, bucket: str, *, multipart_threshold: int = DEFAULT_PART_SIZE,
                 multipart_chunksize: int = DEFAULT_PART_SIZE, max_concurrency: int = 4, max_attempts: int = 2,
                 connect_timeout: float = 5, read_timeout: float = 60, list_page_size: int = 1000,
                 retention_mode: str = "governance", limits: dict[str, int] | None = None) -> None:
        super().__init__(cloud, conn_id, bucket, retention_mode=retention_mode, limits=limits)
        self.multipart_threshold = multipart_threshold
        self.multipart_chunksize = multipart_chunksize
        self.max_concurrency = max_concurrency
        self.max_attempts = max_attempts
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.list_page_size = list_page_size

    @cached_property
    def _client(self):
        """boto3 client from the connection, with retries and timeouts bounded so an outage fails fast."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook
        from botocore.config import Config

        hook = S3Hook(aws_conn_id=self.conn_id)
        bounded = Config(retries={"max_attempts": self.max_attempts, "mode": "standard"},
                         connect_timeout=self.connect_timeout, read_timeout=self.read_timeout)
        # the connection's own botocore settings (addressing style, proxies...) stay; ours win on conflict
        return hook.get_client_type(config=hook.config.merge(bounded))

    @cached_property
    def _transfer_config(self):
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=self.multipart_threshold,
                              multipart_chunksize=self.multipart_chunksize,
                              max_concurrency=self.limits.parallel_parts(self.max_concurrency))

    def _upload(self, key: str, upload: Upload) -> ObjectInfo:
        extra: dict[str, Any] = {"Metadata": upload.metadata, "ContentType": upload.content_type,
                                 "ChecksumAlgorithm": "SHA256"}
        if upload.retain_until is not None:
            extra |= {"ObjectLockMode": _LOCK_MODES[self.retention_mode],
                      "ObjectLockRetainUntilDate": upload.retain_until}
        # boto3 calls Callback as it reads each 256 KiB of a body to send it: the pacing point for both
        if isinstance(upload.source, bytes):
            with upload.open(paced=False) as stream:
                self._client.upload_fileobj(stream, self.bucket, key, ExtraArgs=extra, Config=self._transfer_config,
                                            Callback=upload.sending)
        else:  # by file name: each part is read from disk as it is sent, so memory stays at a few buffers
            self._client.upload_file(str(upload.source), self.bucket, key, ExtraArgs=extra,
                                     Config=self._transfer_config, Callback=upload.sending)
        return self._head(key)

    def _open(self, key: str) -> tuple[Callable[[int], bytes], Callable[[], None]]:
        # botocore validates a full-object checksum when the body has been read to its end
        body = self._client.get_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")["Body"]
        return body.read, body.close

    def _head(self, key: str) -> ObjectInfo:
        response = self._client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        metadata = {name.lower(): value for name, value in response.get("Metadata", {}).items()}
        return ObjectInfo(key=key, size=response["ContentLength"], sha256=metadata.get("sha256"), metadata=metadata,
                          native=_native_checksums(response), updated=response.get("LastModified"),
                          retain_until=response.get("ObjectLockRetainUntilDate"))

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        for page in self._pages(prefix):
            for item in page.get("Contents", []):
                md5 = _MD5_ETAG.match(item.get("ETag", ""))
                yield ObjectInfo(key=item["Key"], size=item["Size"], sha256=None, metadata={},
                                 native={"md5": md5.group(1)} if md5 else {}, updated=item.get("LastModified"))

    def _pages(self, prefix: str) -> Iterator[dict]:
        paginator = self._client.get_paginator("list_objects_v2")
        yield from paginator.paginate(Bucket=self.bucket, Prefix=prefix,
                                      PaginationConfig={"PageSize": self.list_page_size})

    def _extend_retention(self, key: str, retain_until) -> bool:
        # PutObjectRetention may lengthen a governance or compliance lock without any bypass permission
        self._client.put_object_retention(Bucket=self.bucket, Key=key, Retention={
            "Mode": _LOCK_MODES[self.retention_mode], "RetainUntilDate": retain_until})
        return True

    def _delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=key)  # S3 answers 204 for a missing key too

    def delete_prefix(self, prefix: str) -> int:
        """Delete in batches of one listing page (at most 1,000 keys per DeleteObjects request)."""
        deleted = 0
        with self._calling(prefix):
            for page in self._pages(prefix):
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if not keys:
                    continue
                response = self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
                if errors := response.get("Errors"):
                    first = errors[0]
                    raise StorageError(self.cloud, first.get("Key", prefix), f"{len(errors)} deletes failed, "
                                       f"e.g. {first.get('Code')}: {first.get('Message')}")
                deleted += len(keys)
        return deleted

    def _translate(self, err: Exception, key: str) -> StorageError | None:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionError,
            CredentialRetrievalError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        if isinstance(err, S3UploadFailedError) and isinstance(err.__context__, ClientError):
            err = err.__context__  # boto3 re-raises an upload's ClientError as a bare message
        if isinstance(err, ClientError):
            error = err.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            message = f"{code or status}: {error.get('Message') or err}"
            if code in _NOT_FOUND:
                return ObjectNotFound(self.cloud, key, message)
            if code in _AUTH or status in (401, 403):
                return CloudAuthError(self.cloud, key, message)
            if code in _TRANSIENT or status >= 500:
                return CloudUnavailable(self.cloud, key, message)
            return StorageError(self.cloud, key, message)
        if isinstance(err, (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)):
            return CloudAuthError(self.cloud, key, f"{type(err).__name__}: {err}")
        if isinstance(err, (ConnectionError, HTTPClientError)):
            return CloudUnavailable(self.cloud, key, f"{type(err).__name__}: {err}")
        if isinstance(err, (BotoCoreError, S3UploadFailedError)):
            return StorageError(self.cloud, key, f"{type(err).__name__}: {err}")
        return None


def _native_checksums(response: dict) -> dict[str, str]:
    """S3's `Checksum<ALG>` fields as lowercase hex; composite (per-part) ones as `<alg>_composite: <hex>-<N>`."""
    multipart = _MULTIPART_ETAG.search(response.get("ETag", ""))
    checksum_type = response.get("ChecksumType")
    native = {}
    for field, value in response.items():
        if not field.startswith("Checksum") or field == "ChecksumType" or not isinstance(value, str):
            continue
        algorithm = field.removeprefix("Checksum").lower()
        digest, _, parts = value.partition("-")
        parts = parts or (multipart.group(1) if multipart else "")
        # moto omits ChecksumType on HeadObject: then a multipart ETag means a composite checksum
        composite = checksum_type == "COMPOSITE" or (checksum_type is None and bool(parts))
        if composite:
            native[f"{algorithm}_composite"] = f"{b64_to_hex(digest)}-{parts}" if parts else b64_to_hex(digest)
        else:
            native[algorithm] = b64_to_hex(digest)
    return native
