"""Objects: plaintext -> zstd -> Tink streaming ciphertext and back, with checksums, bound to their backup.

What the backup and restore code calls. Everything streams: memory stays at a few segments (plus zstd's
window) whatever the object's size.

Associated data = b"wedsync-dr/v1" 0x00 backup_id 0x00 object_name (UTF-8). Neither part may be empty or
contain NUL, so the encoding is unambiguous: an object renamed, moved to another backup, or replayed from
an older one fails to decrypt.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from wedsync_dr.crypto.errors import DecryptionError, IntegrityError
from wedsync_dr.crypto.keys import DataKey, WrappedKey
from wedsync_dr.crypto.streaming import (
    FORMAT_NAME,
    SEGMENT_SIZE,
    DecryptingReader,
    EncryptingWriter,
    require_data_key,
    write_all,
)
from wedsync_dr.streams import HashingReader, HashingWriter

AD_PREFIX = b"wedsync-dr/v1"
DEFAULT_ZSTD_LEVEL = 3
# One libzstd worker thread compresses while the calling thread hashes and encrypts: the arrangement of the
# `zstd` CLI's default (-T1), at most two busy cores per object (bench/bench_crypto.py measures 0, 1, 2).
# 0 compresses in the calling thread; N > 1 spreads compression over N workers.
DEFAULT_ZSTD_THREADS = 1
READ_CHUNK = 4 << 20  # several segments per read: whole segments go to the cipher without a copy
BUFFER_SIZE = 1 << 20


def associated_data(backup_id: str, object_name: str) -> bytes:
    """The AD that binds an object to its backup and name (docs/FORMAT.md, "Associated data")."""
    if not backup_id or not object_name or "\x00" in backup_id or "\x00" in object_name:
        raise ValueError("backup ids and object names must be non-empty and cannot contain NUL")
    return AD_PREFIX + b"\x00" + backup_id.encode() + b"\x00" + object_name.encode()


def encryption_entry(wrapped: WrappedKey, associated_data: bytes) -> dict[str, str]:
    """The `encryption` object of a manifest entry (docs/FORMAT.md): no secret in it.

    `associated_data` is recorded for people decrypting by hand; a restore recomputes it from the backup
    id and object name it expects, which is what makes a swapped object fail.
    """
    return {"format": FORMAT_NAME, **wrapped.to_manifest(),
            "associated_data": base64.b64encode(associated_data).decode()}


@dataclass(frozen=True)
class EncryptStats:
    plaintext_sha256: str
    plaintext_size: int
    compressed_size: int  # what was encrypted (== plaintext_size without compression)
    ciphertext_sha256: str
    ciphertext_size: int


@dataclass(frozen=True)
class DecryptStats:
    plaintext_sha256: str
    plaintext_size: int


class ObjectEncryptor:
    """A writable stream: plaintext in (e.g. a COPY stream), zstd + Tink ciphertext out to `sink`.

    `close()` writes the final segment and returns the stats the manifest records. Used as a context
    manager it closes on success only: after an exception the object stays unfinished (no final segment),
    so it can never be mistaken for a complete one. `zstd_level=None` encrypts without compressing (for
    input that is already compressed).
    """

    def __init__(self, sink: BinaryIO, data_key: DataKey, associated_data: bytes, *,
                 zstd_level: int | None = DEFAULT_ZSTD_LEVEL, zstd_threads: int = DEFAULT_ZSTD_THREADS,
                 segment_size: int = SEGMENT_SIZE):
        # Everything that can refuse (a bad zstd level, no key) refuses before the header is written.
        compressor = None if zstd_level is None else zstandard.ZstdCompressor(level=zstd_level,
                                                                             threads=zstd_threads)
        self._ciphertext = HashingWriter(sink)
        self._cipher = EncryptingWriter(self._ciphertext, data_key, associated_data,
                                        segment_size=segment_size)
        self._compressor = None if compressor is None else compressor.stream_writer(
            self._cipher, write_size=BUFFER_SIZE, closefd=False)
        self._plaintext_hash = hashlib.sha256()
        self._plaintext_size = 0
        self.stats: EncryptStats | None = None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.stats is not None:
            raise ValueError("write to a closed ObjectEncryptor")
        view = memoryview(data).cast("B")
        self._plaintext_hash.update(view)
        self._plaintext_size += len(view)
        (self._compressor or self._cipher).write(view)
        return len(view)

    def flush(self) -> None:
        """Nothing to do: segments leave when full; only close() may write the last one."""

    def close(self) -> EncryptStats:
        if self.stats is None:
            if self._compressor is not None:
                self._compressor.close()  # ends the zstd frame; closefd=False leaves the cipher open
            self._cipher.close()
            self.stats = EncryptStats(self._plaintext_hash.hexdigest(), self._plaintext_size,
                                      self._cipher.plaintext_size, self._ciphertext.sha256.hexdigest(),
                                      self._ciphertext.size)
        return self.stats

    def __enter__(self) -> ObjectEncryptor:
        return self

    def __exit__(self, exc_type, *_exc) -> None:
        if exc_type is None:
            self.close()


def encrypt_stream(source: BinaryIO, sink: BinaryIO, data_key: DataKey, associated_data: bytes, *,
                   zstd_level: int | None = DEFAULT_ZSTD_LEVEL, zstd_threads: int = DEFAULT_ZSTD_THREADS,
                   segment_size: int = SEGMENT_SIZE) -> EncryptStats:
    """Reads `source` to its end; writes (zstd-compressed unless `zstd_level=None`) ciphertext to `sink`."""
    with ObjectEncryptor(sink, data_key, associated_data, zstd_level=zstd_level, zstd_threads=zstd_threads,
                         segment_size=segment_size) as encryptor:
        readinto = getattr(source, "readinto", None)
        buffer = memoryview(bytearray(READ_CHUNK))
        while True:
            if readinto is not None:
                count = readinto(buffer)
                if not count:
                    break
                encryptor.write(buffer[:count])
            else:
                chunk = source.read(READ_CHUNK)
                if not chunk:
                    break
                encryptor.write(chunk)
    return encryptor.close()


def encrypt_file(src_path: str | os.PathLike, dst_path: str | os.PathLike, data_key: DataKey,
                 associated_data: bytes, *, zstd_level: int | None = DEFAULT_ZSTD_LEVEL,
                 zstd_threads: int = DEFAULT_ZSTD_THREADS) -> EncryptStats:
    """`encrypt_stream` between files. `dst_path` (0600) appears only once the object is complete."""
    require_data_key(data_key)  # before the output file is created
    with open(src_path, "rb") as source, _private_output(Path(dst_path)) as sink:
        return encrypt_stream(source, sink, data_key, associated_data, zstd_level=zstd_level,
                              zstd_threads=zstd_threads)


# ----------------------------------------------------------------------------- decryption


def decrypting_reader(source: BinaryIO, data_key: DataKey, associated_data: bytes, *, object_name: str,
                      decompress: bool = True, expected_sha256: str | None = None,
                      expected_size: int | None = None,
                      segment_size: int = SEGMENT_SIZE) -> io.BufferedReader:
    """A buffered readable stream (read, readline) of verified plaintext, e.g. to pipe into COPY FROM.

    Raises DecryptionError naming `object_name` on any tamper, and IntegrityError at the end when the
    plaintext differs from `expected_sha256` / `expected_size`. What was read before an error must be
    discarded: the stream is trustworthy only once it reached its end without one.
    """
    raw: io.RawIOBase = DecryptingReader(source, data_key, associated_data, object_name=object_name,
                                         segment_size=segment_size)
    if decompress:
        raw = _DecompressingReader(raw)
    if expected_sha256 is not None or expected_size is not None:
        raw = _CheckingReader(raw, object_name, expected_sha256, expected_size)
    return io.BufferedReader(raw, BUFFER_SIZE)


def decrypt_stream(source: BinaryIO, sink: BinaryIO, data_key: DataKey, associated_data: bytes, *,
                   object_name: str, decompress: bool = True, expected_sha256: str | None = None,
                   expected_size: int | None = None, segment_size: int = SEGMENT_SIZE) -> DecryptStats:
    """Decrypts (and decompresses) `source` into `sink`. See decrypting_reader for the errors."""
    decrypting = DecryptingReader(source, data_key, associated_data, object_name=object_name,
                                  segment_size=segment_size)
    plaintext_hash = hashlib.sha256()
    size = 0
    if decompress:
        reader = _DecompressingReader(decrypting)
        buffer = memoryview(bytearray(BUFFER_SIZE))
        while count := reader.readinto(buffer):
            plaintext_hash.update(buffer[:count])
            write_all(sink, buffer[:count])
            size += count
    else:
        while chunk := decrypting.read_segment():  # zero-copy: the verified segment itself
            plaintext_hash.update(chunk)
            write_all(sink, chunk)
            size += len(chunk)
    stats = DecryptStats(plaintext_hash.hexdigest(), size)
    _check_plaintext(object_name, stats, expected_sha256, expected_size)
    return stats


def decrypt_file(src_path: str | os.PathLike, dst_path: str | os.PathLike, data_key: DataKey,
                 associated_data: bytes, *, object_name: str, decompress: bool = True,
                 expected_sha256: str | None = None, expected_size: int | None = None) -> DecryptStats:
    """`decrypt_stream` between files: on any error `dst_path` does not exist, so no partial plaintext
    is ever left where a complete one is expected."""
    require_data_key(data_key, object_name)
    with open(src_path, "rb") as source, _private_output(Path(dst_path)) as sink:
        return decrypt_stream(source, sink, data_key, associated_data, object_name=object_name,
                              decompress=decompress, expected_sha256=expected_sha256,
                              expected_size=expected_size)


def _check_plaintext(object_name: str, stats: DecryptStats, expected_sha256: str | None,
                     expected_size: int | None) -> None:
    if expected_size is not None and stats.plaintext_size != expected_size:
        raise IntegrityError(object_name, f"plaintext is {stats.plaintext_size} bytes, "
                                          f"expected {expected_size}")
    if expected_sha256 is not None and stats.plaintext_sha256 != expected_sha256.lower():
        raise IntegrityError(object_name, f"plaintext sha256 {stats.plaintext_sha256} != "
                                          f"expected {expected_sha256}")


class _CheckingReader(io.RawIOBase):
    """Hashes the plaintext as it passes and compares it with the expected one at the end."""

    def __init__(self, inner: io.RawIOBase, object_name: str, expected_sha256: str | None,
                 expected_size: int | None):
        super().__init__()
        self._hashing = HashingReader(inner)
        self._object = object_name
        self._expected = (expected_sha256, expected_size)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self._hashing.readinto(buffer)
        if not count:
            _check_plaintext(self._object, DecryptStats(self._hashing.sha256.hexdigest(), self._hashing.size),
                             *self._expected)
        return count


class _DecompressingReader(io.RawIOBase):
    """zstd over verified plaintext, with bounded output per read.

    python-zstandard's readers end silently inside a truncated frame; the frame walker makes that an
    error. (Authenticated ciphertext cannot be truncated by an attacker, so this guards against writers
    that sealed a stream before ending its zstd frame.)
    """

    def __init__(self, decrypting: DecryptingReader):
        super().__init__()
        self._object = decrypting.object_name
        self._source = _FrameTrackingSource(decrypting)
        self._reader = zstandard.ZstdDecompressor().stream_reader(self._source, read_size=BUFFER_SIZE,
                                                                  read_across_frames=True)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            count = self._reader.readinto(buffer)
        except zstandard.ZstdError as err:
            raise DecryptionError(self._object, f"not a valid zstd stream after decryption ({err})") from None
        if not count and (problem := self._source.frames.problem_at_end()):
            raise DecryptionError(self._object, problem)
        return count


class _FrameTrackingSource:
    """The decrypted segments, handed to the zstd reader through a ZstdFrameWalker."""

    def __init__(self, decrypting: DecryptingReader):
        self._decrypting = decrypting
        self._pending = memoryview(b"")
        self.frames = ZstdFrameWalker(decrypting.object_name)

    def read(self, size: int = -1) -> bytes:
        if not self._pending:
            self._pending = self._decrypting.read_segment()
        take = len(self._pending) if size < 0 else size
        chunk = bytes(self._pending[:take])  # a copy: the segment buffer is reused by the next read
        self._pending = self._pending[take:]
        self.frames.feed(chunk)
        return chunk


class ZstdFrameWalker:
    """Follows zstd frame and block headers (RFC 8878) through a byte stream to tell frame boundaries.

    It does not decompress: it reads each block header and skips the block, a few operations per block
    of up to 128 KiB.
    """

    _ZSTD_MAGIC = 0xFD2FB528
    _SKIPPABLE_MASK, _SKIPPABLE_MAGIC = 0xFFFFFFF0, 0x184D2A50

    def __init__(self, object_name: str):
        self._object = object_name
        self._state = "magic"
        self._need = 4  # bytes of the current header still to collect
        self._header = bytearray()
        self._skip = 0  # bytes of block content (or skippable frame) still to pass over
        self._checksum = False
        self.frames = 0

    def problem_at_end(self) -> str | None:
        """What is wrong with the stream if it ended here: None at a frame boundary after a frame."""
        if self._state != "magic" or self._header or self._skip:
            return "the compressed stream ends inside a zstd frame"
        if not self.frames:
            return "the decrypted data holds no zstd frame"
        return None

    def feed(self, data: bytes) -> None:
        pos, size = 0, len(data)
        while pos < size:
            if self._skip:
                step = min(self._skip, size - pos)
                self._skip -= step
                pos += step
                continue
            step = min(self._need - len(self._header), size - pos)
            self._header += data[pos:pos + step]
            pos += step
            if len(self._header) == self._need:
                header = bytes(self._header)
                self._header.clear()
                self._advance(header)

    def _advance(self, header: bytes) -> None:
        value = int.from_bytes(header, "little")
        if self._state == "magic":
            if value == self._ZSTD_MAGIC:
                self._state, self._need = "descriptor", 1
            elif value & self._SKIPPABLE_MASK == self._SKIPPABLE_MAGIC:
                self._state, self._need = "skippable_size", 4
            else:
                raise DecryptionError(self._object, "the decrypted data is not a zstd stream (bad magic)")
        elif self._state == "skippable_size":
            self._skip, self._state, self._need = value, "magic", 4
            self.frames += 1
        elif self._state == "descriptor":
            single_segment = bool(value & 0x20)
            content_size_bytes = (1 if single_segment else 0, 2, 4, 8)[value >> 6]
            self._checksum = bool(value & 0x04)
            self._skip = (0 if single_segment else 1) + (0, 1, 2, 4)[value & 0x03] + content_size_bytes
            self._state, self._need = "block", 3
        elif self._state == "block":
            last, block_type, block_size = value & 1, (value >> 1) & 3, value >> 3
            self._skip = 1 if block_type == 1 else block_size  # an RLE block stores one byte
            if last:
                self._skip += 4 if self._checksum else 0
                self._state, self._need = "magic", 4
                self.frames += 1


@contextlib.contextmanager
def _private_output(path: Path) -> Iterator[BinaryIO]:
    """A 0600 file beside `path`, renamed onto it only when the `with` block succeeds, removed otherwise."""
    partial = path.with_name(f".{path.name}.{os.urandom(4).hex()}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            yield file
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
