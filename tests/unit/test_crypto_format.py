"""The Tink streaming format: interop with the real `tink` package, round trips, and every tamper case.

The segment logic is exercised exhaustively with small segments (fast), and at the real 1 MiB size at its
boundaries, where the tink package judges both directions.
"""

from __future__ import annotations

import io
import os

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from wedsync_dr import crypto
from wedsync_dr.crypto.streaming import HEADER_SIZE, SEGMENT_SIZE, TAG_SIZE

FIRST = SEGMENT_SIZE - HEADER_SIZE - TAG_SIZE  # plaintext bytes in the first segment: 1,048,520
OTHER = SEGMENT_SIZE - TAG_SIZE  # and in every other one: 1,048,560
SMALL = 96  # a small segment size, for fast exhaustive tests of the segment logic
SMALL_FIRST = SMALL - HEADER_SIZE - TAG_SIZE  # 40
SMALL_OTHER = SMALL - TAG_SIZE  # 80
AD = crypto.associated_data("critical_weddings-20260101T000000Z-abc123", "guests.copy.zst.tink")


def tink_streaming_aead(raw_key: bytes, segment_size: int = SEGMENT_SIZE):
    """The tink package's StreamingAead for a raw 32-byte key: AES256_GCM_HKDF_1MB, no output prefix."""
    from tink import proto_keyset_format, secret_key_access, streaming_aead
    from tink.proto import aes_gcm_hkdf_streaming_pb2, common_pb2, tink_pb2

    streaming_aead.register()
    params = aes_gcm_hkdf_streaming_pb2.AesGcmHkdfStreamingParams(
        ciphertext_segment_size=segment_size, derived_key_size=32, hkdf_hash_type=common_pb2.SHA256)
    key = aes_gcm_hkdf_streaming_pb2.AesGcmHkdfStreamingKey(version=0, key_value=raw_key, params=params)
    key_data = tink_pb2.KeyData(type_url="type.googleapis.com/google.crypto.tink.AesGcmHkdfStreamingKey",
                                value=key.SerializeToString(), key_material_type=tink_pb2.KeyData.SYMMETRIC)
    keyset = tink_pb2.Keyset(primary_key_id=1, key=[tink_pb2.Keyset.Key(
        key_data=key_data, status=tink_pb2.ENABLED, key_id=1, output_prefix_type=tink_pb2.RAW)])
    handle = proto_keyset_format.parse(keyset.SerializeToString(), secret_key_access.TOKEN)
    return handle.primitive(streaming_aead.StreamingAead)


class _KeepOpen(io.BytesIO):
    def close(self):  # tink closes the sink it wrote to; keep the bytes readable
        pass


def encrypt(data: bytes, key, ad: bytes = AD, *, segment_size: int = SEGMENT_SIZE, zstd_level=None) -> bytes:
    out = io.BytesIO()
    crypto.encrypt_stream(io.BytesIO(data), out, key, ad, zstd_level=zstd_level, segment_size=segment_size)
    return out.getvalue()


def decrypt(blob: bytes, key, ad: bytes = AD, *, segment_size: int = SEGMENT_SIZE, decompress=False) -> bytes:
    out = io.BytesIO()
    crypto.decrypt_stream(io.BytesIO(blob), out, key, ad, object_name="obj", decompress=decompress,
                          segment_size=segment_size)
    return out.getvalue()


def read_all(blob: bytes, key, ad: bytes = AD, *, segment_size: int = SEGMENT_SIZE,
             decompress=False) -> bytes:
    """The restore path: decrypting_reader, read in odd-sized pieces."""
    reader = crypto.decrypting_reader(io.BytesIO(blob), key, ad, object_name="obj", decompress=decompress,
                                      segment_size=segment_size)
    parts = []
    while part := reader.read(12345):
        parts.append(part)
    return b"".join(parts)


@pytest.fixture
def key():
    return crypto.KeyRing.new_data_key()


# ----------------------------------------------------------------------------- interop with tink, 1 MiB

BOUNDARY_SIZES = [0, 1, FIRST - 1, FIRST, FIRST + 1, FIRST + OTHER - 1, FIRST + OTHER, FIRST + OTHER + 1,
                  FIRST + 2 * OTHER + 12345]


@pytest.mark.parametrize("size", BOUNDARY_SIZES)
def test_tink_decrypts_what_we_write(key, size):
    data = os.urandom(size)
    ours = encrypt(data, key)
    with tink_streaming_aead(key.material()).new_decrypting_stream(io.BytesIO(ours), AD) as stream:
        assert stream.read() == data


@pytest.mark.parametrize("size", BOUNDARY_SIZES)
def test_we_decrypt_what_tink_writes(key, size):
    data = os.urandom(size)
    sink = _KeepOpen()
    with tink_streaming_aead(key.material()).new_encrypting_stream(sink, AD) as stream:
        stream.write(data)
    assert decrypt(sink.getvalue(), key) == data
    assert read_all(sink.getvalue(), key) == data
    assert len(sink.getvalue()) == len(encrypt(data, key))  # the same segmentation, byte for byte in size


def test_tink_rejects_our_objects_under_other_associated_data(key):
    from tink import TinkError

    blob = encrypt(b"row", key)
    with pytest.raises(TinkError):
        with tink_streaming_aead(key.material()).new_decrypting_stream(io.BytesIO(blob), AD + b"x") as stream:
            stream.read()


def test_interop_with_small_segments_too(key):
    """Tink accepts any segment size: the small ones the tests use follow the same rules."""
    data = os.urandom(SMALL_FIRST + 3 * SMALL_OTHER)
    ours = encrypt(data, key, segment_size=SMALL)
    with tink_streaming_aead(key.material(), SMALL).new_decrypting_stream(io.BytesIO(ours), AD) as stream:
        assert stream.read() == data


def test_ciphertext_sizes_follow_the_segment_layout(key):
    assert len(encrypt(b"", key)) == HEADER_SIZE + TAG_SIZE
    assert len(encrypt(os.urandom(FIRST), key)) == SEGMENT_SIZE  # exactly one full first segment
    assert len(encrypt(os.urandom(FIRST + 1), key)) == SEGMENT_SIZE + 1 + TAG_SIZE
    blob = encrypt(os.urandom(FIRST + OTHER + 5), key)
    assert len(blob) == 2 * SEGMENT_SIZE + 5 + TAG_SIZE and blob[0] == HEADER_SIZE == 40


def test_every_object_has_a_fresh_salt_and_nonce_prefix(key):
    headers = {encrypt(b"same", key)[:HEADER_SIZE] for _ in range(20)}
    assert len(headers) == 20


# ----------------------------------------------------------------------------- round trips

SMALL_BOUNDARIES = [0, 1, SMALL_FIRST - 1, SMALL_FIRST, SMALL_FIRST + 1, SMALL_FIRST + SMALL_OTHER - 1,
                    SMALL_FIRST + SMALL_OTHER, SMALL_FIRST + SMALL_OTHER + 1, SMALL_FIRST + 7 * SMALL_OTHER]
sizes = st.sampled_from(SMALL_BOUNDARIES) | st.integers(0, 10 * SMALL)


@settings(max_examples=150, deadline=None)
@given(size=sizes, writes=st.lists(st.integers(1, 3 * SMALL), min_size=1, max_size=8), compress=st.booleans())
def test_round_trip_any_size_any_write_pattern(size, writes, compress):
    """Writes of every size pattern (within a segment, exactly one, several at once) round-trip."""
    key = crypto.KeyRing.new_data_key()
    data = os.urandom(size)
    out = io.BytesIO()
    encryptor = crypto.ObjectEncryptor(out, key, AD, zstd_level=3 if compress else None, segment_size=SMALL)
    pos, turn = 0, 0
    while pos < size:
        step = writes[turn % len(writes)]
        encryptor.write(data[pos:pos + step])
        pos, turn = pos + step, turn + 1
    stats = encryptor.close()
    blob = out.getvalue()
    assert decrypt(blob, key, segment_size=SMALL, decompress=compress) == data
    assert read_all(blob, key, segment_size=SMALL, decompress=compress) == data
    assert (stats.plaintext_size, stats.ciphertext_size) == (size, len(blob))
    if not compress:  # the layout is a function of the size alone
        segments = 1 + max(0, -(-(size - SMALL_FIRST) // SMALL_OTHER))
        assert len(blob) == HEADER_SIZE + size + segments * TAG_SIZE


@pytest.mark.parametrize("size", SMALL_BOUNDARIES)
def test_round_trip_at_every_small_boundary(key, size):
    data = os.urandom(size)
    blob = encrypt(data, key, segment_size=SMALL)
    assert decrypt(blob, key, segment_size=SMALL) == data == read_all(blob, key, segment_size=SMALL)


@pytest.mark.parametrize("size", [FIRST - 1, FIRST, FIRST + 1, FIRST + OTHER, FIRST + OTHER + 1])
def test_round_trip_at_the_real_boundaries_with_compression(key, size):
    data = os.urandom(size // 2) + bytes(size - size // 2)  # half noise, half zeros
    blob = encrypt(data, key, zstd_level=3)
    assert decrypt(blob, key, decompress=True) == data == read_all(blob, key, decompress=True)


# ----------------------------------------------------------------------------- tampering


def _flip(blob: bytes, index: int) -> bytes:
    changed = bytearray(blob)
    changed[index] ^= 0x01
    return bytes(changed)


def _tamper(case: str, blob: bytes, segment_size: int) -> bytes:
    """`blob` has three segments: [header + segment 0][segment 1][shorter segment 2]."""
    seg1, seg2 = segment_size, 2 * segment_size  # offsets of segments 1 and 2 in the object
    return {
        "header_length_byte": lambda: bytes([HEADER_SIZE + 1]) + blob[1:],
        "salt": lambda: _flip(blob, 5),
        "nonce_prefix": lambda: _flip(blob, HEADER_SIZE - 1),
        "body_first_segment": lambda: _flip(blob, HEADER_SIZE + 3),
        "body_middle_segment": lambda: _flip(blob, seg1 + 3),
        "tag_middle_segment": lambda: _flip(blob, seg2 - 1),
        "tag_last_segment": lambda: _flip(blob, len(blob) - 1),
        "truncated_inside_last_segment": lambda: blob[:-7],
        "truncated_at_segment_boundary": lambda: blob[:seg2],
        "truncated_at_first_boundary": lambda: blob[:seg1],
        "truncated_inside_header": lambda: blob[:HEADER_SIZE - 1],
        "header_only": lambda: blob[:HEADER_SIZE],
        "dropped_middle_segment": lambda: blob[:seg1] + blob[seg2:],
        "reordered_segments": lambda: blob[:seg1] + blob[seg2:] + blob[seg1:seg2],
        "duplicated_segment": lambda: blob[:seg2] + blob[seg1:],
        "appended_bytes": lambda: blob + b"\x00" * 5,
        "appended_segment": lambda: blob + blob[seg1:seg2],
        "empty": lambda: b"",
    }[case]()


TAMPER_CASES = ["header_length_byte", "salt", "nonce_prefix", "body_first_segment", "body_middle_segment",
                "tag_middle_segment", "tag_last_segment", "truncated_inside_last_segment",
                "truncated_at_segment_boundary", "truncated_at_first_boundary", "truncated_inside_header",
                "header_only", "dropped_middle_segment", "reordered_segments", "duplicated_segment",
                "appended_bytes", "appended_segment", "empty"]


@pytest.mark.parametrize("segment_size", [SMALL, SEGMENT_SIZE], ids=["small", "1MiB"])
@pytest.mark.parametrize("case", TAMPER_CASES)
@pytest.mark.parametrize("read", [decrypt, read_all], ids=["decrypt_stream", "decrypting_reader"])
def test_tampering_raises_a_typed_error_naming_the_object(key, case, segment_size, read):
    first, other = segment_size - HEADER_SIZE - TAG_SIZE, segment_size - TAG_SIZE
    blob = encrypt(os.urandom(first + 2 * other - 10), key, segment_size=segment_size)
    tampered = _tamper(case, blob, segment_size)
    with pytest.raises(crypto.DecryptionError, match="^cannot decrypt obj: ") as caught:
        read(tampered, key, segment_size=segment_size)
    assert caught.value.object_name == "obj"


@pytest.mark.parametrize(("ad", "why"), [
    (crypto.associated_data("critical_weddings-20251231T000000Z-ffffff", "guests.copy.zst.tink"), "moved"),
    (crypto.associated_data("critical_weddings-20260101T000000Z-abc123", "vendors.copy.zst.tink"), "renamed"),
    (b"", "no associated data"),
])
def test_wrong_associated_data_fails_on_the_first_segment(key, ad, why):
    blob = encrypt(os.urandom(3 * SMALL), key, segment_size=SMALL)
    with pytest.raises(crypto.DecryptionError, match="wrong associated data"):
        decrypt(blob, key, ad, segment_size=SMALL)


def test_wrong_key_fails(key):
    blob = encrypt(b"wedding", key)
    with pytest.raises(crypto.DecryptionError, match="wrong data key"):
        decrypt(blob, crypto.KeyRing.new_data_key())


@pytest.mark.parametrize(("case", "reason"), [
    ("truncated_at_segment_boundary", "truncated: the stream ends after segment 1"),
    ("appended_segment", "segment 2 failed authentication"),
    ("reordered_segments", "segment 1 failed authentication"),
])
def test_errors_say_what_went_wrong(key, case, reason):
    blob = encrypt(os.urandom(SMALL_FIRST + 2 * SMALL_OTHER - 10), key, segment_size=SMALL)
    with pytest.raises(crypto.DecryptionError, match=reason):
        decrypt(_tamper(case, blob, SMALL), key, segment_size=SMALL)


def test_data_after_a_full_final_segment_is_named():
    key = crypto.KeyRing.new_data_key()
    blob = encrypt(os.urandom(SMALL_FIRST + SMALL_OTHER), key, segment_size=SMALL)  # the last segment is full
    with pytest.raises(crypto.DecryptionError, match="unexpected data after the final segment"):
        decrypt(blob + b"\x00", key, segment_size=SMALL)


def test_no_plaintext_of_a_bad_segment_is_released_and_the_failure_sticks(key):
    data = os.urandom(SMALL_FIRST + 2 * SMALL_OTHER)
    blob = _flip(encrypt(data, key, segment_size=SMALL), SMALL + 3)  # segment 1 tampered
    reader = crypto.DecryptingReader(io.BytesIO(blob), key, AD, object_name="obj", segment_size=SMALL)
    assert bytes(reader.read_segment()) == data[:SMALL_FIRST]  # segment 0 verified on its own
    buffer = bytearray(1000)
    with pytest.raises(crypto.DecryptionError):
        reader.readinto(buffer)
    assert buffer == bytearray(1000)  # nothing of segment 1 reached the caller
    assert not reader.finished
    with pytest.raises(crypto.DecryptionError, match="segment 1"):  # and no later read yields data
        reader.read(1)


def test_finished_only_after_the_final_segment(key):
    data = os.urandom(SMALL_FIRST + SMALL_OTHER)
    reader = crypto.DecryptingReader(io.BytesIO(encrypt(data, key, segment_size=SMALL)), key, AD,
                                     object_name="obj", segment_size=SMALL)
    assert reader.read(SMALL_FIRST) == data[:SMALL_FIRST] and not reader.finished
    assert reader.read() == data[SMALL_FIRST:] and reader.finished


# ----------------------------------------------------------------------------- the writer fails closed


def test_an_unclosed_writer_leaves_an_object_that_cannot_pass_as_complete(key):
    out = io.BytesIO()
    with pytest.raises(RuntimeError):
        with crypto.ObjectEncryptor(out, key, AD, zstd_level=None, segment_size=SMALL) as encryptor:
            encryptor.write(os.urandom(5 * SMALL))
            raise RuntimeError("the COPY stream broke")
    assert encryptor.stats is None
    with pytest.raises(crypto.DecryptionError, match="truncated"):
        decrypt(out.getvalue(), key, segment_size=SMALL)


def test_a_writer_whose_sink_failed_refuses_to_seal(key):
    class FailingSink(io.BytesIO):
        def write(self, data):
            if self.tell() > SMALL:
                raise OSError("disk full")
            return super().write(data)

    writer = crypto.EncryptingWriter(FailingSink(), key, AD, segment_size=SMALL)
    with pytest.raises(OSError):
        writer.write(os.urandom(10 * SMALL))
    with pytest.raises(crypto.CryptoError, match="refusing to seal"):
        writer.close()
    with pytest.raises(ValueError):
        writer.write(b"more")


def test_short_writes_of_raw_sinks_are_completed(key):
    class ShortWrites(io.RawIOBase):
        def __init__(self):
            self.data = bytearray()

        def writable(self):
            return True

        def write(self, data):
            taken = bytes(data[:7])
            self.data += taken
            return len(taken)

    data = os.urandom(3 * SMALL)
    sink = ShortWrites()
    crypto.encrypt_stream(io.BytesIO(data), sink, key, AD, zstd_level=None, segment_size=SMALL)
    assert decrypt(bytes(sink.data), key, segment_size=SMALL) == data


# ----------------------------------------------------------------------------- zstd inside the ciphertext


def test_a_zstd_frame_cut_short_inside_valid_ciphertext_is_an_error(key):
    """python-zstandard ends silently inside a truncated frame; the library does not."""
    frame = zstandard.ZstdCompressor(level=3).compress(os.urandom(5000) * 40)
    blob = encrypt(frame[:-10], key)  # authentic ciphertext of an incomplete frame
    with pytest.raises(crypto.DecryptionError, match="ends inside a zstd frame"):
        decrypt(blob, key, decompress=True)
    with pytest.raises(crypto.DecryptionError, match="ends inside a zstd frame"):
        read_all(blob, key, decompress=True)


@pytest.mark.parametrize("payload", [b"", b"not zstd at all", b"\x28\xb5\x2f\xfd"])
def test_something_else_than_zstd_inside_is_an_error(key, payload):
    with pytest.raises(crypto.DecryptionError, match="zstd"):
        decrypt(encrypt(payload, key), key, decompress=True)


def test_several_frames_and_skippable_frames_decompress_like_the_zstd_cli(key):
    compressor = zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=True)
    skippable = (0x184D2A50).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"abc"
    parts = [b"first frame\n" * 1000, b"", os.urandom(300_000)]
    stream = b"".join(compressor.compress(p) for p in parts) + skippable
    blob = encrypt(stream, key)
    assert decrypt(blob, key, decompress=True) == b"".join(parts) == read_all(blob, key, decompress=True)


def test_a_corrupt_block_inside_valid_ciphertext_is_an_error(key):
    compressor = zstandard.ZstdCompressor(level=3, write_checksum=True)
    frame = bytearray(compressor.compress(b"guest row\n" * 10_000))
    frame[len(frame) // 2] ^= 0xFF
    with pytest.raises(crypto.DecryptionError, match="zstd"):
        decrypt(encrypt(bytes(frame), key), key, decompress=True)
