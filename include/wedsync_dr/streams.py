"""Stream filters: the one home of what passes bytes through while counting, hashing, limiting or splitting them.

- `HashingReader`: reads from a stream, counting and sha256-ing what passes (restore: the ciphertext as it is
  downloaded and the plaintext as it is loaded; the decryptor's plaintext check).
- `HashingWriter`: writes to a sink, counting and sha256-ing what passes (the encryptor's ciphertext).
- `CloudChecksumWriter`: writes to a sink computing every other checksum a cloud may compute over the stored
  bytes (MD5, CRC32C, CRC32, S3's per-part composite SHA-256): a copy is judged by what the cloud computed.
- `LimitedReader`: at most N bytes of a stream, then end of file (a wedding bundle's sections).
- `lines` / `FilteredLines`: a stream's lines, chunk by chunk, never the whole stream in memory.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Iterable
from typing import BinaryIO

import google_crc32c

CHUNK = 1 << 20


class HashingReader:
    """A file-like over `stream` whose `sha256` and `size` cover every byte read through it."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self.sha256 = hashlib.sha256()
        self.size = 0

    def _seen(self, data) -> None:
        self.sha256.update(data)
        self.size += len(data)

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self._seen(data)
        return data

    def readline(self) -> bytes:
        data = self._stream.readline()
        self._seen(data)
        return data

    def readinto(self, buffer) -> int:
        readinto = getattr(self._stream, "readinto", None)
        if readinto is None:
            data = self._stream.read(len(buffer))
            buffer[:len(data)] = data
            count = len(data)
        else:
            count = readinto(buffer) or 0
        self._seen(memoryview(buffer)[:count])
        return count


class HashingWriter:
    """Passes writes on to `sink` whole (short writes retried), keeping `sha256` and `size` of them."""

    def __init__(self, sink: BinaryIO):
        self._sink = sink
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        view = memoryview(data)
        while view:
            written = self._sink.write(view)
            view = view[written if written is not None else len(view):]
        self.sha256.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        if hasattr(self._sink, "flush"):
            self._sink.flush()


class CloudChecksumWriter:
    """Passes writes on to `sink`, computing the checksums the clouds compute over stored bytes: MD5 (Azure,
    GCS), CRC32C (GCS), CRC32 (S3's default for a put without our checksum headers) and the per-part SHA-256
    of an S3 multipart upload of `part_size` parts (its composite checksum). The whole sha256 is the
    encryptor's."""

    def __init__(self, sink: BinaryIO, part_size: int):
        self._sink = sink
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.crc32c = google_crc32c.Checksum()
        self.crc32 = 0
        self._part_size = part_size
        self._part = hashlib.sha256()
        self._part_filled = 0
        self._part_digests: list[bytes] = []
        self.size = 0

    def write(self, data) -> int:
        data = bytes(data)  # the C extensions take bytes only (segments arrive as memoryviews)
        self.md5.update(data)
        self.crc32c.update(data)
        self.crc32 = zlib.crc32(data, self.crc32)
        view = memoryview(data)
        while view:
            take = view[:self._part_size - self._part_filled]
            self._part.update(take)
            self._part_filled += len(take)
            view = view[len(take):]
            if self._part_filled == self._part_size:
                self._part_digests.append(self._part.digest())
                self._part, self._part_filled = hashlib.sha256(), 0
        self.size += len(data)
        return self._sink.write(data)

    def flush(self) -> None:
        self._sink.flush()

    def composite_sha256(self) -> str | None:
        """S3's checksum of a multipart upload of these bytes (None when they go up in one request)."""
        if self.size < self._part_size:  # s3transfer goes multipart from its threshold (= the part size) up
            return None
        digests = self._part_digests + ([self._part.digest()] if self._part_filled else [])
        return f"{hashlib.sha256(b''.join(digests)).hexdigest()}-{len(digests)}"


class LimitedReader:
    """The next `remaining` bytes of `stream`, then end of file; a stream that ends sooner is an error."""

    def __init__(self, stream: BinaryIO, remaining: int):
        self._stream, self.remaining = stream, remaining

    def read(self, size: int = -1) -> bytes:
        if self.remaining <= 0:
            return b""
        size = self.remaining if size < 0 else min(size, self.remaining)
        data = self._stream.read(size)
        if not data:
            raise ValueError("bundle section is truncated")
        self.remaining -= len(data)
        return data

    def drain(self) -> None:
        """Skip what is left of the section."""
        while self.read(CHUNK):
            pass


def lines(stream: BinaryIO) -> Iterable[bytes]:
    """The stream's non-empty lines (without their newline), read a chunk at a time."""
    tail = b""
    while chunk := stream.read(CHUNK):
        data = tail + chunk
        found = data.split(b"\n")
        tail = found.pop()
        yield from (line for line in found if line)
    if tail:
        yield tail


class FilteredLines:
    """A reader of the lines of `stream` that pass `keep` (one wedding's rows of a COPY text object)."""

    def __init__(self, stream: BinaryIO, keep: Callable[[bytes], bool]):
        self._stream, self._keep, self._tail = stream, keep, b""

    def read(self, n: int = -1) -> bytes:
        while True:
            chunk = self._stream.read(CHUNK)
            data = self._tail + chunk
            if not chunk:
                self._tail = b""
                return data if data and self._keep(data.rstrip(b"\n")) else b""
            found = data.split(b"\n")
            self._tail = found.pop()
            kept = [line + b"\n" for line in found if self._keep(line)]
            if kept:
                return b"".join(kept)
