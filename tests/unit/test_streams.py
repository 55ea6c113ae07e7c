"""The stream filters every step shares (wedsync_dr.streams)."""

from __future__ import annotations

import hashlib
import io

import pytest

from wedsync_dr.streams import FilteredLines, HashingReader, HashingWriter, LimitedReader, lines


class ShortWrites(io.RawIOBase):
    """A sink that takes at most 3 bytes a call, as pipes and sockets may."""

    def __init__(self):
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, chunk) -> int:
        self.data += bytes(chunk[:3])
        return min(3, len(chunk))


def test_hashing_reader_covers_read_readline_and_readinto():
    data = b"first line\nsecond\n" + bytes(range(256)) * 10
    reader = HashingReader(io.BytesIO(data))
    got = reader.readline() + reader.read(5)
    buffer = bytearray(100)
    while count := reader.readinto(buffer):
        got += bytes(buffer[:count])
    assert got == data and reader.size == len(data)
    assert reader.sha256.hexdigest() == hashlib.sha256(data).hexdigest()


def test_hashing_writer_passes_every_byte_even_to_a_sink_that_takes_few():
    sink = ShortWrites()
    writer = HashingWriter(sink)
    writer.write(memoryview(b"0123456789"))
    assert bytes(sink.data) == b"0123456789" and writer.size == 10
    assert writer.sha256.hexdigest() == hashlib.sha256(b"0123456789").hexdigest()


def test_a_limited_reader_ends_where_its_section_ends_and_refuses_a_truncated_one():
    stream = io.BytesIO(b"abcdefXYZ")
    section = LimitedReader(stream, 6)
    assert section.read(4) + section.read() == b"abcdef" and section.read() == b""
    assert stream.read() == b"XYZ"
    short = LimitedReader(io.BytesIO(b"ab"), 5)
    assert short.read() == b"ab"
    with pytest.raises(ValueError, match="truncated"):  # the stream ended 3 bytes before the section did
        short.read()


def test_lines_and_filtered_lines_split_across_chunks():
    data = b"".join(b"%d\tw%d\n" % (i, i % 3) for i in range(300_000))  # several 1 MiB chunks
    assert sum(1 for _ in lines(io.BytesIO(data))) == 300_000
    kept = FilteredLines(io.BytesIO(data), lambda row: row.endswith(b"\tw1"))
    out = b""
    while chunk := kept.read():
        out += chunk
    assert out.count(b"\n") == 100_000 and all(line.endswith(b"\tw1") for line in out.splitlines())
