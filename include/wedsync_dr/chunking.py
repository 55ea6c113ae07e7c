"""Content-defined chunking of table streams (format 4): a changed row changes only the chunks around it.

A table object's plaintext (its binary COPY stream) is cut by FastCDC into chunks of `avg` bytes on average
(a quarter of that at least, four times at most). A cut point depends only on the bytes since the previous
cut, so an insert, update or delete shifts the boundaries of the chunks around it and no others: the rest of
the stream cuts into the same chunks as before, which earlier backups already stored. The chunker's gear
table is keyed by the key ring (`KeyRing.chunker_seed`), so chunk sizes do not fingerprint known content.

`pyfastcdc` (Cython, GIL released while cutting) was chosen by measurement on this machine: 3.7-4.6 GB/s on
1 GiB of data at 256 KiB-1 MiB averages, against 2.1 GB/s for the `fastcdc` package (which has no keyed gear
table) -- either way far above what zstd compresses, so chunking costs the extract nothing measurable.

`ChunkingWriter` is the streaming end: it takes the COPY stream in blocks and hands over each chunk once
its end is final, holding at most two maximal chunks and one block (a few MiB) whatever the table's size.
"""

from __future__ import annotations

from collections.abc import Callable

from pyfastcdc.cy import FastCDC

from wedsync_dr import crypto

DEFAULT_AVG_CHUNK_BYTES = 1 << 20


def chunker(key_ring: crypto.KeyRing, avg_bytes: int = DEFAULT_AVG_CHUNK_BYTES) -> FastCDC:
    """The keyed FastCDC of a key ring (normalised chunking level 1, FastCDC's recommendation)."""
    return FastCDC(avg_size=avg_bytes, min_size=avg_bytes // 4, max_size=avg_bytes * 4,
                   normalized_chunking=1, seed=key_ring.chunker_seed())


class ChunkingWriter:
    """A file-like sink that cuts what is written to it into content-defined chunks.

    `on_chunk(view)` is called with each chunk, in order, as a memoryview that is valid only during the
    call (copy it to keep it). A chunk is handed over once a later cut, or the end of the stream, fixed its
    end; `close()` hands over the rest. Or, with `on_chunks(view, cuts)`, the chunks come in batches: a view of
    the buffer and the (offset, length) of each chunk in it, one after another (a caller that handles a
    run of neighbouring chunks in one call saves a call per chunk).
    """

    def __init__(self, cdc: FastCDC, on_chunk: Callable[[memoryview], None] | None = None, *,
                 on_chunks: Callable[[memoryview, list[tuple[int, int]]], None] | None = None):
        self._cdc = cdc
        self._on_chunk = on_chunk
        self._on_chunks = on_chunks
        self._buffer = bytearray()
        self._threshold = 2 * cdc.max_size  # so a cut of the buffer always yields a chunk that is final
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self.size += len(data)
        if len(data) < self._threshold:
            self._buffer += data
            if len(self._buffer) >= self._threshold:
                self._cut(final=False)
            return len(data)
        with memoryview(data) as view:  # a block (copy_out's are MiBs) is cut where it lies: no copy of it
            start = self._finish_held_chunk(view) if self._buffer else 0
            cuts = [(start + c.offset, c.length) for c in self._cdc.cut_buf(view[start:])]
            if cuts:
                held = cuts.pop()  # it ends where the block does: the next bytes may move its end
                self._buffer = bytearray(view[held[0]:])
                self._emit(view, cuts)
        return len(data)

    def _finish_held_chunk(self, view: memoryview) -> int:
        """The chunk held from the previous write ends in this block: cut it again with enough of the block that
        its end is final (it starts at a cut, so it cuts as it would in one buffer), hand it over, and return
        where in the block the next chunk starts."""
        held = len(self._buffer)
        self._buffer += view[:self._threshold]
        with memoryview(self._buffer) as joined:
            cuts = [(c.offset, c.length) for c in self._cdc.cut_buf(joined)]  # no Chunk's view outlives this
            cuts = cuts[:next(i for i, (offset, length) in enumerate(cuts) if offset + length >= held) + 1]
            self._emit(joined, cuts)
        del self._buffer[:]  # BufferError if a consumer kept a view, as in `_cut`
        return cuts[-1][0] + cuts[-1][1] - held

    def close(self) -> None:
        self._cut(final=True)

    def _emit(self, view: memoryview, cuts: list[tuple[int, int]]) -> None:
        if not cuts:
            return
        if self._on_chunks is not None:
            self._on_chunks(view, cuts)
        else:
            for offset, length in cuts:
                self._on_chunk(view[offset:offset + length])

    def _cut(self, *, final: bool) -> None:
        consumed = 0
        with memoryview(self._buffer) as view:
            cuts = [(c.offset, c.length) for c in self._cdc.cut_buf(view)]  # no view of a Chunk outlives this
            if cuts and not final:
                cuts.pop()  # it ends where the buffer does: the next bytes may move its end
            if cuts:
                consumed = cuts[-1][0] + cuts[-1][1]
            self._emit(view, cuts)
        del self._buffer[:consumed]  # BufferError if a consumer kept a view: a bug, never silent
