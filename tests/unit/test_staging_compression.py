"""Staged objects: sha256 of the plaintext, zstd in frames of SEGMENT_SIZE, readable by any zstd reader."""

from __future__ import annotations

import hashlib
import io
import random
import shutil
import subprocess

import pytest
import zstandard

from wedsync_dr import extract

ROW = b"%d\tBride %d\tGroom %d\t2027-06-%02d 14:00:00+00\tconfirmed\t{\"diet\": \"vegan\"}\n"


def _rows(count: int, seed: int) -> bytes:
    rnd = random.Random(seed)
    return b"".join(ROW % (i, rnd.randrange(10**6), rnd.randrange(10**6), 1 + i % 28) for i in range(count))


def _split_frames(data: bytes) -> list[bytes]:
    """The plaintext of every frame of a zstd stream, in order."""
    frames = []
    view = memoryview(data)
    while view:
        dobj = zstandard.ZstdDecompressor().decompressobj()
        out = dobj.decompress(view)
        used = len(view) - len(dobj.unused_data)
        frames.append(out)
        view = view[used:]
    return frames


def test_large_objects_are_several_frames_that_read_back_as_one_stream(tmp_path):
    blocks = _rows(120_000, 1)  # ~10 MB of COPY-like text, written as copy_out writes it: whole blocks
    small = _rows(40_000, 2)  # and as bundles and the asset index write: line by line
    plaintext = blocks + blocks + small
    sink = extract._HashingCompressor(tmp_path / "t.copy.zst", level=3)
    for start in range(0, len(blocks) * 2, extract.SEGMENT_SIZE):
        sink.write(memoryview(plaintext)[start:min(start + extract.SEGMENT_SIZE, len(blocks) * 2)])
    for line in small.splitlines(keepends=True):
        sink.write(line)
    sha, size, compressed = sink.close()

    data = (tmp_path / "t.copy.zst").read_bytes()
    assert (sha, size, compressed) == (hashlib.sha256(plaintext).hexdigest(), len(plaintext), len(data))
    frames = _split_frames(data)
    assert len(frames) >= 3 and b"".join(frames) == plaintext
    assert all(len(f) <= extract.SEGMENT_SIZE for f in frames)
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    assert reader.read() == plaintext
    if shutil.which("zstd"):  # what FORMAT.md tells people to use by hand
        unpacked = subprocess.run(["zstd", "-d", "-c", "-q"], input=data, capture_output=True, check=True).stdout
        assert unpacked == plaintext


def test_small_writes_gather_into_one_frame(tmp_path):
    plaintext = _rows(2_000, 3)
    sink = extract._HashingCompressor(tmp_path / "index.zst", level=3)
    for line in plaintext.splitlines(keepends=True):
        sink.write(line)
    sink.close()
    assert [len(f) for f in _split_frames((tmp_path / "index.zst").read_bytes())] == [len(plaintext)]


def test_an_empty_object_is_one_empty_frame(tmp_path):
    sink = extract._HashingCompressor(tmp_path / "empty.zst", level=3)
    assert sink.close() == (hashlib.sha256(b"").hexdigest(), 0, (tmp_path / "empty.zst").stat().st_size)
    data = (tmp_path / "empty.zst").read_bytes()
    assert data and _split_frames(data) == [b""]


@pytest.mark.parametrize("level", [1, 3])
def test_staging_files_are_private(tmp_path, level):
    sink = extract._HashingCompressor(tmp_path / "p.zst", level=level)
    sink.write(b"x" * 10)
    sink.close()
    assert (tmp_path / "p.zst").stat().st_mode & 0o777 == 0o600
