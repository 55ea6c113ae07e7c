"""Tink's AES-GCM-HKDF streaming AEAD (key template AES256_GCM_HKDF_1MB), written with `cryptography`.

Any Tink implementation opens what this writes, given the 32-byte data key and the associated data, so a
restore never depends on this code surviving (docs/FORMAT.md has the layout and a by-hand decryption).

    ciphertext = header || segment_0 || segment_1 || ... || segment_n
    header     = 0x28 (header length, 40) || salt (32 random bytes) || nonce prefix (7 random bytes)
    key        = HKDF-SHA256(ikm = data key, salt = salt, info = associated data, length = 32)
    segment_i  = AES-256-GCM(key, nonce_i, plaintext_i, aad = "") = ciphertext_i || tag (16)
    nonce_i    = nonce prefix (7) || i as 4-byte big-endian || 0x01 if last segment else 0x00
    sizes      : every ciphertext segment is 1 MiB (1,048,576 bytes) except the last; the first one is
                 shorter by the header, so plaintext_0 is 1,048,520 bytes and the others 1,048,560.

Both directions stream through two preallocated segment buffers (AESGCM.encrypt_into / decrypt_into), so
memory is a few MiB whatever the object's size. Decryption releases a segment's plaintext only after its
tag verified, and knows the last segment by its flag: truncation (at a segment boundary too), dropped,
reordered or appended segments all fail as DecryptionError. Output read before such an error was genuine
but incomplete: a consumer must treat it as untrusted until the stream reached its end without error.
"""

from __future__ import annotations

import io
import os
import struct
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from wedsync_dr.crypto.errors import CryptoError, DecryptionError, KeyUnavailableError
from wedsync_dr.crypto.keys import KEY_BYTES, DataKey

FORMAT_NAME = "tink-aes256-gcm-hkdf-1mb"
SEGMENT_SIZE = 1 << 20
SALT_SIZE = KEY_BYTES  # Tink: the salt is as long as the derived key
NONCE_PREFIX_SIZE = 7
TAG_SIZE = 16
HEADER_SIZE = 1 + SALT_SIZE + NONCE_PREFIX_SIZE  # 40, also the header's first byte
MAX_SEGMENTS = 1 << 32  # the segment index is 4 bytes: 4 PiB at 1 MiB segments


def require_data_key(data_key: DataKey, object_name: str | None = None) -> None:
    """Fail closed: anything but a DataKey (None, raw bytes) stops the work before it starts."""
    if not isinstance(data_key, DataKey):
        raise KeyUnavailableError(f"no data key{f' for {object_name}' if object_name else ''}: "
                                  "refusing to encrypt or decrypt")


def _segment_cipher(data_key: DataKey, salt: bytes, associated_data: bytes) -> AESGCM:
    require_data_key(data_key)
    derived = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=associated_data)
    return AESGCM(derived.derive(data_key.material()))


def _check_segment_size(segment_size: int) -> None:
    # Tink's own bounds: the first segment must hold the header, a tag and at least one plaintext byte.
    if not HEADER_SIZE + TAG_SIZE < segment_size < 1 << 31:
        raise ValueError(f"segment size must be between {HEADER_SIZE + TAG_SIZE + 1} and 2^31 - 1")


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", index, last)


def write_all(sink: BinaryIO, data: memoryview) -> None:
    """Writes all of `data`: raw sinks (pipes, sockets, RawIOBase) may take less than offered."""
    while data:
        written = sink.write(data)
        if written is None or written >= len(data):
            return
        data = data[written:]


class EncryptingWriter:
    """A writable stream: plaintext in, Tink streaming ciphertext out to `sink` (which it does not close).

    The last segment carries a flag, so a full segment is held back until more plaintext arrives or
    `close()` says there is none. Deliberately not an `io.IOBase`: those close themselves when garbage
    collected, and closing writes the final segment, which would make an abandoned, incomplete object
    look complete. An object whose writer was never closed fails to decrypt as truncated.

    `write()` hands `sink` views of a reused buffer, valid only during the call (the `io` contract).
    """

    def __init__(self, sink: BinaryIO, data_key: DataKey, associated_data: bytes, *,
                 segment_size: int = SEGMENT_SIZE):
        _check_segment_size(segment_size)
        salt = os.urandom(SALT_SIZE)
        self._aead = _segment_cipher(data_key, salt, associated_data)  # fails before a byte is written
        self._nonce_prefix = os.urandom(NONCE_PREFIX_SIZE)
        self._sink = sink
        self._segment_plaintext = segment_size - TAG_SIZE
        self._plain = bytearray(self._segment_plaintext)
        self._plain_view = memoryview(self._plain)
        self._cipher_view = memoryview(bytearray(segment_size))
        self._filled = 0
        self._limit = segment_size - HEADER_SIZE - TAG_SIZE  # the first segment is shorter by the header
        self._index = 0
        self._closed = False
        self._broken = False
        self.plaintext_size = 0
        write_all(sink, memoryview(bytes([HEADER_SIZE]) + salt + self._nonce_prefix))

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self._closed or self._broken:
            raise ValueError("write to a closed or failed EncryptingWriter")
        view = memoryview(data).cast("B")
        try:
            self._write(view)
        except BaseException:
            self._broken = True  # the sink may hold part of a segment: never seal this stream
            raise
        self.plaintext_size += len(view)
        return len(view)

    def _write(self, view: memoryview) -> None:
        size, pos = len(view), 0
        while pos < size:
            if self._filled == self._limit:  # more plaintext follows: the held-back segment is not the last
                self._seal(self._plain_view[:self._filled], last=False)
            # Zero-copy path: whole segments straight from the caller's buffer when more data follows them.
            while self._filled == 0 and size - pos > (step := self._limit):
                self._seal(view[pos:pos + step], last=False)  # changes _limit after the first segment
                pos += step
            take = min(self._limit - self._filled, size - pos)
            self._plain_view[self._filled:self._filled + take] = view[pos:pos + take]
            self._filled += take
            pos += take

    def _seal(self, plaintext: memoryview, *, last: bool) -> None:
        if self._index >= MAX_SEGMENTS:
            raise CryptoError("object too large for the streaming format (2^32 segments)")
        out = self._cipher_view[:len(plaintext) + TAG_SIZE]
        self._aead.encrypt_into(_nonce(self._nonce_prefix, self._index, last), plaintext, None, out)
        write_all(self._sink, out)
        self._index += 1
        self._filled = 0
        self._limit = self._segment_plaintext

    def flush(self) -> None:
        """Flushes the sink; the held-back segment stays back (it may not be the last)."""
        if hasattr(self._sink, "flush"):
            self._sink.flush()

    def close(self) -> None:
        """Writes the final segment (possibly empty, flagged last). Closing twice is harmless."""
        if self._closed:
            return
        if self._broken:
            raise CryptoError("a write failed: refusing to seal an incomplete stream")
        self._seal(self._plain_view[:self._filled], last=True)
        self._closed = True


class DecryptingReader(io.RawIOBase):
    """A readable raw stream of verified plaintext over a Tink streaming ciphertext.

    Reads one segment plus one byte ahead: a segment followed by more bytes must carry the "not last" flag
    and a segment at the end of the source the "last" flag, so the tag check itself proves the stream ended
    where its writer ended it. Plaintext is decrypted into a private buffer and handed out only after the
    tag verified; on failure that buffer is wiped.
    """

    def __init__(self, source: BinaryIO, data_key: DataKey, associated_data: bytes, *, object_name: str,
                 segment_size: int = SEGMENT_SIZE):
        super().__init__()
        _check_segment_size(segment_size)
        require_data_key(data_key, object_name)  # before a byte of the source is read
        self._source = source
        self.object_name = object_name
        self._segment_size = segment_size
        header = bytearray(HEADER_SIZE)
        if _read_into(source, memoryview(header)) < HEADER_SIZE or header[0] != HEADER_SIZE:
            raise DecryptionError(object_name, "not a Tink AES-GCM-HKDF streaming ciphertext (bad or short "
                                               "header)")
        self._aead = _segment_cipher(data_key, bytes(header[1:1 + SALT_SIZE]), associated_data)
        self._nonce_prefix = bytes(header[1 + SALT_SIZE:])
        self._cipher = bytearray(segment_size + 1)  # a segment and the first byte of the next one
        self._cipher_view = memoryview(self._cipher)
        self._plain = bytearray(segment_size - TAG_SIZE)
        self._plain_view = memoryview(self._plain)
        self._lookahead = 0  # 1 when _cipher[0] already holds the next segment's first byte
        self._index = 0
        self._start = self._end = 0  # unread verified plaintext is _plain[_start:_end]
        self._finished = False
        self._failure: DecryptionError | None = None

    def readable(self) -> bool:
        return True

    @property
    def finished(self) -> bool:
        """True once the final segment verified: only then is what was read the whole object."""
        return self._finished

    def read_segment(self) -> memoryview:
        """The rest of the current verified segment (empty at the end), valid until the next read.

        Lets a consumer take plaintext without a copy; mixing it with read()/readinto() is fine.
        """
        while self._start == self._end:
            if self._finished:
                return self._plain_view[:0]
            self._decrypt_next()
        view = self._plain_view[self._start:self._end]
        self._start = self._end
        return view

    def readinto(self, buffer) -> int:
        while self._start == self._end:
            if self._finished:
                return 0
            self._decrypt_next()
        out = memoryview(buffer).cast("B")
        count = min(len(out), self._end - self._start)
        out[:count] = self._plain_view[self._start:self._start + count]
        self._start += count
        return count

    def _decrypt_next(self) -> None:
        if self._failure is not None:  # a failed stream stays failed: no read after an error yields data
            raise DecryptionError(self.object_name, self._failure.reason)
        try:
            self._decrypt_segment()
        except DecryptionError as err:
            self._failure = err
            raise

    def _decrypt_segment(self) -> None:
        full = self._segment_size - (HEADER_SIZE if self._index == 0 else 0)
        available = self._lookahead + _read_into(self._source, self._cipher_view[self._lookahead:full + 1])
        last = available <= full
        length = available if last else full
        if length < TAG_SIZE:
            raise DecryptionError(self.object_name, f"truncated: segment {self._index} is shorter than a tag")
        if self._index >= MAX_SEGMENTS:
            raise DecryptionError(self.object_name, "more segments than the format allows")
        segment = self._cipher_view[:length]
        plain = self._plain_view[:length - TAG_SIZE]
        try:
            self._aead.decrypt_into(_nonce(self._nonce_prefix, self._index, last), segment, None, plain)
        except InvalidTag:
            plain[:] = bytes(len(plain))  # decrypt_into leaves unverified plaintext behind
            raise DecryptionError(self.object_name, self._diagnose(segment, last)) from None
        if not last:
            self._cipher[0] = self._cipher[full]
        self._lookahead = 0 if last else 1
        self._index += 1
        self._start, self._end = 0, len(plain)
        self._finished = last

    def _diagnose(self, segment: memoryview, last: bool) -> str:
        """Why a segment failed: a retry with the other last-segment flag tells truncation from tampering."""
        index = self._index
        try:
            self._aead.decrypt(_nonce(self._nonce_prefix, index, not last), segment, None)
        except InvalidTag:
            if index == 0:
                return ("the first segment failed authentication: wrong data key, wrong associated data "
                        "(object renamed, moved to another backup or replayed), or tampered")
            return f"segment {index} failed authentication: tampered, reordered, or a segment was dropped"
        if last:
            return f"truncated: the stream ends after segment {index}, which is not the final one"
        return f"unexpected data after the final segment ({index})"


def _read_into(source: BinaryIO, buffer: memoryview) -> int:
    """Fills `buffer` as far as the source goes (sources may return short reads); returns the count."""
    readinto = getattr(source, "readinto", None)
    filled, size = 0, len(buffer)
    while filled < size:
        if readinto is not None:
            count = readinto(buffer[filled:])
        else:
            data = source.read(size - filled)
            count = len(data)
            buffer[filled:filled + count] = data
        if not count:
            break
        filled += count
    return filled
