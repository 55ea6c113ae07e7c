"""The storage interface every cloud adapter implements, and the parts they share.

The pipeline talks to `ObjectStore` only; which SDK sits behind it is data in the policy (`kind`). The
shared base turns caller arguments into one `Upload` description (checksums checked, metadata
normalised), wraps downloads as plain file objects, and translates SDK exceptions into the typed errors
of `errors.py` so that every cloud fails the same way. It also applies the cloud's limits (`limits.py`):
every request holds a slot, every byte sent or read is paced, for all adapters alike.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Protocol

from wedsync_dr.storage.errors import ObjectNotFound, StorageError
from wedsync_dr.storage.limits import TransferLimits, shared_limits

log = logging.getLogger(__name__)

MiB = 1 << 20
Progress = Callable[[int, int], None]

# Our metadata keys work unchanged on all three clouds: S3 lower-cases keys, GCS keeps them, Azure wants
# C# identifiers (no "-"; the Azure adapter maps "-" <-> "_"). Values travel as HTTP headers: ASCII only.
_METADATA_KEY = re.compile(r"^[a-z][a-z0-9-]*$")
_HEX = {"sha256": 64, "md5": 32, "crc32c": 8}
RETENTION_MODES = ("governance", "compliance")
_COPY_CHUNK = MiB


@dataclass(frozen=True)
class ObjectInfo:
    """What a cloud holds for one key: our claims (metadata) beside the cloud's own checksums (native)."""

    key: str
    size: int
    sha256: str | None  # hex, from our metadata key "sha256": what the uploader claimed
    metadata: dict[str, str]  # user metadata as stored, lower-case keys
    native: dict[str, str]  # checksums the cloud holds, lowercase hex (see each adapter for what is there)
    updated: datetime | None
    retain_until: datetime | None = None  # the cloud's retention/immutability expiry, where one is set


class ObjectStore(Protocol):
    """One bucket (container) in one cloud. Keys are used as given; the caller builds them."""

    cloud: str  # the policy's cloud name, e.g. "aws"

    def put_file(self, key: str, path: Path, *, sha256: str, md5: str | None = None, crc32c: str | None = None,
                 metadata: Mapping[str, str] | None = None, progress: Progress | None = None,
                 retain_until: datetime | None = None) -> ObjectInfo: ...

    def put_bytes(self, key: str, data: bytes, *, metadata: Mapping[str, str] | None = None,
                  content_type: str = "application/octet-stream",
                  retain_until: datetime | None = None) -> ObjectInfo: ...

    def open_read(self, key: str) -> BinaryIO: ...

    def download_to(self, key: str, fileobj: BinaryIO) -> int: ...

    def read_bytes(self, key: str) -> bytes: ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    def delete(self, key: str) -> None: ...

    def delete_prefix(self, prefix: str) -> int: ...

    def extend_retention(self, key: str, retain_until: datetime) -> bool: ...


@dataclass(frozen=True)
class Upload:
    """One object to send, as every adapter needs it: where the bytes are and what they must hash to."""

    source: Path | bytes
    size: int
    sha256: str
    md5: str | None
    crc32c: str | None
    metadata: dict[str, str]  # already includes "sha256"
    content_type: str
    retain_until: datetime | None
    progress: ProgressReporter
    limits: TransferLimits

    @contextmanager
    def open(self, *, paced: bool = True) -> Iterator[BinaryIO]:
        """The bytes as a seekable binary stream; a file is streamed from disk, never read whole.

        Reads are paced by the cloud's bandwidth limit: an SDK reads a body as it sends it. An adapter whose
        SDK reports the bytes it sends (S3's Callback) opens it unpaced and calls `sending` instead."""
        if isinstance(self.source, bytes):
            stream: BinaryIO = io.BytesIO(self.source)
        else:
            stream = open(self.source, "rb")
        try:
            yield _PacedReader(stream, self.limits) if paced else stream
        finally:
            stream.close()

    def sending(self, increment: int) -> None:
        """The SDK reports `increment` bytes going out (negative: a part being retried): pace them, report them."""
        self.limits.pace("upload", increment)
        self.progress.add(increment)


class ProgressReporter:
    """Turns each SDK's progress signal into `progress(bytes_done, total)` calls.

    S3 reports increments from its transfer threads (negative ones when a part is retried), Azure reports
    running totals, GCS none at all (we count reads). `finish()` guarantees a last call at the total.
    """

    def __init__(self, callback: Progress | None, total: int) -> None:
        self._callback = callback
        self._total = total
        self._done = 0
        self._reported = -1
        self._lock = threading.Lock()

    def add(self, increment: int) -> None:
        with self._lock:
            self._done += increment
            self._report(self._done)

    def at(self, done: int) -> None:
        with self._lock:
            self._done = done
            self._report(done)

    def finish(self) -> None:
        with self._lock:
            if self._reported != self._total:
                self._report(self._total)

    def _report(self, done: int) -> None:
        done = max(0, min(done, self._total))
        if self._callback is not None and done != self._reported:
            self._reported = done
            self._callback(done, self._total)


def check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Reject keys or values some cloud would refuse or mangle, before any bytes are sent."""
    checked = {}
    for name, value in (metadata or {}).items():
        if not _METADATA_KEY.match(name):
            raise ValueError(f"metadata key {name!r} must match {_METADATA_KEY.pattern} (portable to every cloud)")
        if not isinstance(value, str) or not value.isascii() or not value.isprintable():
            raise ValueError(f"metadata value of {name!r} must be printable ASCII text")
        checked[name] = value
    return checked


def check_key(key: str) -> None:
    """Keys are used as given, so they must mean the same on every cloud: no empty key, no leading "/"."""
    if not key or key.startswith("/"):
        raise ValueError(f"object key {key!r} must be non-empty and relative (no leading '/')")


def check_hex(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    value = value.lower()
    if len(value) != _HEX[name] or not re.fullmatch(r"[0-9a-f]+", value):
        raise ValueError(f"{name} must be {_HEX[name]} hex digits, got {value!r}")
    return value


def check_retention(retain_until: datetime | None, mode: str) -> None:
    if retain_until is not None and retain_until.tzinfo is None:
        raise ValueError("retain_until must be timezone-aware")
    if mode not in RETENTION_MODES:
        raise ValueError(f"retention_mode must be one of {RETENTION_MODES}, got {mode!r}")


def b64_to_hex(value: str) -> str:
    return base64.b64decode(value).hex()


def hex_to_b64(value: str) -> str:
    return base64.b64encode(bytes.fromhex(value)).decode()


class BaseStore:
    """The cloud-independent half of an adapter. Subclasses implement the `_`-prefixed SDK calls."""

    kind = ""
    # whether a listing's items carry what `head` returns (checksums, our metadata, the lock): S3's do not
    listing_has_checksums = False
    # whether they carry at least the cloud's own MD5 of the bytes (S3: the ETag of a single-request upload), so
    # that a listing can prove an object's content -- but not, without `listing_has_checksums`, its lock
    listing_has_md5 = False

    def __init__(self, cloud: str, conn_id: str, bucket: str, *, retention_mode: str = "governance",
                 limits: Mapping[str, int] | None = None) -> None:
        check_retention(None, retention_mode)
        self.cloud = cloud
        self.conn_id = conn_id
        self.bucket = bucket
        self.retention_mode = retention_mode
        self._retention_unimplemented = False
        # the policy's `limits` (bytes_per_second, concurrent_requests): shared by every store of this cloud
        self.limits = shared_limits(cloud, **dict(limits or {}))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(cloud={self.cloud!r}, conn_id={self.conn_id!r}, bucket={self.bucket!r})"

    # ------------------------------------------------------------------ writes

    def put_file(self, key: str, path: Path, *, sha256: str, md5: str | None = None, crc32c: str | None = None,
                 metadata: Mapping[str, str] | None = None, progress: Progress | None = None,
                 retain_until: datetime | None = None) -> ObjectInfo:
        """Upload a file, streamed from disk; `sha256` (and md5/crc32c when given) are the caller's claims."""
        check_key(key)
        path = Path(path)
        size = path.stat().st_size
        upload = self._describe(path, size, sha256, md5, crc32c, metadata, "application/octet-stream", retain_until,
                                progress)
        with self._calling(key):
            info = self._upload(key, upload)
        upload.progress.finish()
        return info

    def put_bytes(self, key: str, data: bytes, *, metadata: Mapping[str, str] | None = None,
                  content_type: str = "application/octet-stream",
                  retain_until: datetime | None = None) -> ObjectInfo:
        """Upload a small object (manifest, canary); its checksums are computed here."""
        import google_crc32c

        check_key(key)
        data = bytes(data)
        upload = self._describe(data, len(data), hashlib.sha256(data).hexdigest(),
                                hashlib.md5(data, usedforsecurity=False).hexdigest(),
                                google_crc32c.Checksum(data).digest().hex(), metadata, content_type, retain_until, None)
        with self._calling(key):
            return self._upload(key, upload)

    def _describe(self, source: Path | bytes, size: int, sha256: str, md5: str | None, crc32c: str | None,
                  metadata: Mapping[str, str] | None, content_type: str, retain_until: datetime | None,
                  progress: Progress | None) -> Upload:
        user = check_metadata(metadata)
        if "sha256" in user:
            raise ValueError("metadata key 'sha256' is reserved: pass sha256= instead")
        check_retention(retain_until, self.retention_mode)
        sha256 = check_hex("sha256", sha256 or "")
        return Upload(source=source, size=size, sha256=sha256, md5=check_hex("md5", md5),
                      crc32c=check_hex("crc32c", crc32c), metadata={"sha256": sha256, **user},
                      content_type=content_type, retain_until=retain_until, progress=ProgressReporter(progress, size),
                      limits=self.limits)

    # ------------------------------------------------------------------ reads

    def open_read(self, key: str) -> BinaryIO:
        """A streaming download: each read pulls bytes from the cloud as needed. Close it (or use `with`).

        The stream holds one of the cloud's request slots from open to close."""
        hold = self.limits.hold()
        try:
            with self._calling(key, slot=False):
                read, close = self._open(key)
        except BaseException:
            self.limits.release(hold)
            raise
        return io.BufferedReader(_CloudReader(self, key, read, close, hold), buffer_size=256 * 1024)

    def download_to(self, key: str, fileobj: BinaryIO) -> int:
        """Stream an object into `fileobj`; returns the number of bytes written."""
        written = 0
        with self.open_read(key) as src:
            while chunk := src.read(_COPY_CHUNK):
                fileobj.write(chunk)
                written += len(chunk)
        return written

    def read_bytes(self, key: str) -> bytes:
        """A small object (manifest) in memory."""
        with self.open_read(key) as src:
            return src.read()

    def head(self, key: str) -> ObjectInfo | None:
        """The object's size, our claims and the cloud's checksums; None when the key does not exist."""
        try:
            with self._calling(key):
                return self._head(key)
        except ObjectNotFound:
            return None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under `prefix`, page by page (metadata/native may be empty in listings).

        A request slot is held while the SDK fetches, never while the caller handles an item: a caller may
        HEAD or delete what it is given, whatever the request limit."""
        items = self._list(prefix)
        try:
            while True:
                with self._calling(prefix):
                    item = next(items, None)
                if item is None:
                    return
                yield item
        finally:
            items.close()

    # ------------------------------------------------------------------ deletes

    def delete(self, key: str) -> None:
        """Delete one object; a missing one is fine."""
        try:
            with self._calling(key):
                self._delete(key)
        except ObjectNotFound:
            pass

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix`; returns how many there were."""
        keys = [info.key for info in self.list(prefix)]
        for key in keys:
            self.delete(key)
        return len(keys)

    # ------------------------------------------------------------------ retention

    def extend_retention(self, key: str, retain_until: datetime) -> bool:
        """Make an existing object write-once until at least `retain_until` (never shortens a lock).

        Returns False when the service does not implement object retention (the local emulators): the
        request was sent and refused as unimplemented, which a real cloud never answers.
        """
        check_key(key)
        check_retention(retain_until, self.retention_mode)
        if retain_until is None:
            raise ValueError("retain_until is required")
        if self._retention_unimplemented:  # asked once per store: an emulator refuses every object alike
            return False
        with self._calling(key):
            locked = self._extend_retention(key, retain_until)
        if not locked:
            log.warning("%s does not implement object retention (refused for %s): this store stops asking to "
                        "extend locks; a real cloud never answers so", self.cloud, key)
            self._retention_unimplemented = True
        return locked

    # ------------------------------------------------------------------ errors

    @contextmanager
    def _calling(self, key: str, *, slot: bool = True) -> Iterator[None]:
        """Run SDK calls for `key` in one of the cloud's request slots (`slot=False`: the caller holds one),
        re-raising SDK exceptions as typed StorageErrors (others pass untouched)."""
        hold = self.limits.hold() if slot else None
        try:
            yield
        except StorageError:
            raise
        except Exception as err:
            translated = self._translate(err, key)
            if translated is None:
                raise
            raise translated from err
        finally:
            self.limits.release(hold)

    def _translate(self, err: Exception, key: str) -> StorageError | None:
        """The typed error for an SDK exception, or None when `err` is not the SDK's (a bug, a local OSError)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ SDK calls (per adapter)

    def _upload(self, key: str, upload: Upload) -> ObjectInfo:
        raise NotImplementedError

    def _open(self, key: str) -> tuple[Callable[[int], bytes], Callable[[], None]]:
        """(read(n), close) of a started download; raises for a missing key before any read."""
        raise NotImplementedError

    def _head(self, key: str) -> ObjectInfo:
        """The object's info; raises (an SDK error or ObjectNotFound) when it is missing."""
        raise NotImplementedError

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        raise NotImplementedError

    def _delete(self, key: str) -> None:
        raise NotImplementedError

    def _extend_retention(self, key: str, retain_until: datetime) -> bool:
        raise NotImplementedError


class _PacedReader:
    """An upload's source as the SDK reads it, each read paced by the cloud's bandwidth limit."""

    def __init__(self, stream: BinaryIO, limits: TransferLimits) -> None:
        self._stream = stream
        self._limits = limits

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._limits.pace("upload", len(data))
        return data

    def readinto(self, buffer) -> int:
        count = self._stream.readinto(buffer) or 0
        self._limits.pace("upload", count)
        return count

    def __getattr__(self, name: str):  # seek, tell, seekable, fileno, ...: the stream's own
        return getattr(self._stream, name)


class _CloudReader(io.RawIOBase):
    """A download as a raw file: read(n) asks the SDK for the next bytes; SDK errors become StorageErrors.

    Bytes are paced as they arrive: the next read waits, so the cloud's sending is held back by TCP."""

    def __init__(self, store: BaseStore, key: str, read: Callable[[int], bytes], close: Callable[[], None],
                 hold=None) -> None:
        super().__init__()
        self._store = store
        self._key = key
        self._read = read
        self._close = close
        self._hold = hold  # the stream's request slot, given back on close

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        with self._store._calling(self._key, slot=False):
            data = self._read(len(buffer))
        buffer[: len(data)] = data
        self._store.limits.pace("download", len(data))
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                with self._store._calling(self._key, slot=False):
                    self._close()
            finally:
                self._store.limits.release(self._hold)
                super().close()
