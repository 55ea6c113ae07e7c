"""Content-defined chunking (format 4): streaming cuts, locality of change, keyed boundaries, chunked manifests."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import random

import pytest

from wedsync_dr import chunking, crypto, format
from wedsync_dr.extract import ChunkStager, PackStager, _PackedSink

RING = crypto.KeyRing.generate(["k1"])
AVG = 16 << 10


def _rows(n: int, seed: int = 1) -> list[bytes]:
    """COPY-like rows of varied length (a guest list)."""
    rng = random.Random(seed)
    return [f"{i}\t{rng.choice(['Ann', 'Bo', 'Chidi', 'Dana'])}\t{rng.randbytes(rng.randint(10, 90)).hex()}\n"
            .encode() for i in range(n)]


def _cut(data: bytes, block: int, ring: crypto.KeyRing = RING) -> list[str]:
    digests = []
    writer = chunking.ChunkingWriter(chunking.chunker(ring, AVG),
                                     lambda view: digests.append(hashlib.sha256(view).hexdigest()))
    for start in range(0, len(data), block):
        writer.write(data[start:start + block])
    writer.close()
    assert writer.size == len(data)
    return digests


def test_a_stream_cuts_into_the_same_chunks_whatever_blocks_it_arrives_in():
    data = b"".join(_rows(20_000))
    whole = [hashlib.sha256(c.data).hexdigest() for c in chunking.chunker(RING, AVG).cut_buf(data)]
    assert len(whole) > 20
    for block in (1, 4096, 65_537, 1 << 20, len(data)):
        if block == 1:
            assert _cut(data[:200_000], 1) == _cut(data[:200_000], len(data))  # byte by byte, on a prefix
            continue
        assert _cut(data, block) == whole, block


def test_a_changed_row_changes_only_the_chunks_around_it():
    rows = _rows(20_000)
    before = _cut(b"".join(rows), 1 << 20)
    rows[10_000] = rows[10_000].replace(b"\t", b"\tchanged ", 1)  # an update in the middle of the table
    del rows[15_000]  # a delete further on
    rows.insert(5_000, b"99999\tEve\tnew guest\n")  # an insert earlier
    after = _cut(b"".join(rows), 1 << 20)
    new = [c for c in after if c not in set(before)]
    assert 1 <= len(new) <= 6, (len(new), len(after))  # up to two chunks per change
    assert len(set(before) - set(after)) <= 6


def test_chunk_boundaries_depend_on_the_key_ring():
    data = b"".join(_rows(20_000))
    other = crypto.KeyRing.generate(["k1"])
    assert _cut(data, 1 << 20) != _cut(data, 1 << 20, other)
    assert crypto.KeyRing.from_json(RING.to_json()).chunker_seed() == RING.chunker_seed()
    assert RING.with_new_key("k2").chunker_seed() == RING.chunker_seed()  # KEK rotation keeps dedup working
    without = json.loads(RING.to_json())
    del without["dedup_key"]
    with pytest.raises(crypto.KeyUnavailableError, match="dedup_key"):
        crypto.KeyRing.from_json(without).chunker_seed()


def test_the_writer_holds_at_most_two_maximal_chunks_and_one_block():
    cdc = chunking.chunker(RING, AVG)
    writer = chunking.ChunkingWriter(cdc, lambda v: None)
    block = 64 << 10
    peak = 0
    for _ in range(200):
        writer.write(random.randbytes(block))
        peak = max(peak, len(writer._buffer))
    assert peak < 2 * cdc.max_size + block


def test_a_consumer_that_keeps_a_view_is_an_error_not_a_silent_corruption():
    """Of the writer's own buffer: small writes gather there, and a chunk held over ends there."""
    for first, second in ((64 << 10, 64 << 10), (64 << 10, 1 << 20)):
        kept = []
        writer = chunking.ChunkingWriter(chunking.chunker(RING, AVG), kept.append)
        writer.write(random.randbytes(first))
        with pytest.raises(BufferError):
            writer.write(random.randbytes(second))


def test_mixed_small_and_large_writes_cut_as_one_buffer():
    data = b"".join(_rows(40_000))
    whole = [hashlib.sha256(c.data).hexdigest() for c in chunking.chunker(RING, AVG).cut_buf(data)]
    rng = random.Random(7)
    for _ in range(5):
        batches: list[str] = []

        def digests(view, cuts, into=batches):
            into.extend(hashlib.sha256(view[o:o + n]).hexdigest() for o, n in cuts)

        writer = chunking.ChunkingWriter(chunking.chunker(RING, AVG), on_chunks=digests)
        start = 0
        while start < len(data):
            size = rng.choice((1, 999, 70_000, 131_072, 140_000, 1 << 20))
            writer.write(memoryview(data)[start:start + size])
            start += size
        writer.close()
        assert batches == whole and writer.size == len(data)


def test_the_stager_stages_each_new_chunk_once_and_only_references_known_ones(tmp_path):
    known_data, new_data = random.randbytes(1000), random.randbytes(2000)
    known = RING.content_id(hashlib.sha256(known_data).hexdigest())
    stager = ChunkStager(tmp_path, 3, RING.content_id, lambda cid: format.chunk_key("p", cid), [known])
    refs = [stager.add(memoryview(d)) for d in (known_data, new_data, new_data)]
    assert [size for _cid, size in refs] == [1000, 2000, 2000] and refs[1] == refs[2]
    assert [s.extra["content_id"] for s in stager.new] == [refs[1][0]] and stager.reused == {known, refs[1][0]}
    (staged,) = stager.new
    assert staged.extra["key"] == f"p/chunks/{refs[1][0][:2]}/{refs[1][0]}.tink"
    assert (tmp_path / f"chunk-{refs[1][0]}.zst").stat().st_mode & 0o777 == 0o600
    stager.forget([refs[1][0]])  # found in a cloud after all: adopted, its staged file removed
    assert stager.new == [] and not list(tmp_path.iterdir())


def _blob(cid: str, size: int) -> format.Blob:
    return format.Blob(content_id=cid, key=format.chunk_key("p", cid), compression="zstd", plaintext_size=size,
                       ciphertext_sha256="0" * 64, ciphertext_size=size + 56,
                       encryption={"kek_id": "k1", "wrapped_key": "AA=="})


def test_a_format_4_chunked_manifest_lists_every_chunk_and_counts_what_it_stored():
    chunks = (format.ChunkRef(content_id="a" * 64, size=10), format.ChunkRef(content_id="b" * 64, size=20),
              format.ChunkRef(content_id="a" * 64, size=10))
    table = format.ChunkedObject(name="guests.copy", source="guests", plaintext_sha256="c" * 64, plaintext_size=40,
                                 chunks=chunks, rows=3, columns=("guest_id",), copy_format="binary")
    blobs = [_blob("a" * 64, 10), _blob("b" * 64, 20)]
    manifest = format.build_manifest(backup_id="b1", data_class="client_data", created_at="2026-01-01T00:00:00+00:00",
                                     snapshot_at=None, source_schema="wedsync", labels=(), reason=None, prefix="p/x",
                                     lock_until=None, retain_until=None, objects=[table], blobs=blobs, tables={},
                                     stored_blob_keys=[blobs[1].key])
    assert manifest.format_version == format.FORMAT_VERSION
    assert "packs" not in manifest.to_json()["objects"][0]  # a blob per chunk, as format 4 wrote it
    expected = {"objects": 1, "chunks": 2, "chunks_stored": 1, "packs_stored": 0, "stored_objects": 1,
                "plaintext_bytes": 40, "ciphertext_bytes": 76, "rows": 3}
    assert {k: manifest.totals[k] for k in expected} == expected
    read = format.Manifest.from_json(json.loads(manifest.body()))
    assert read.objects == (table,)
    assert [b.key for b in read.entries] == [b.key for b in blobs]  # a chunked object is stored as its chunks
    assert [(p.blob.content_id, p.offset, p.size) for p in read.chunks_of(read.objects[0])] == [
        ("a" * 64, 0, 10), ("b" * 64, 0, 20), ("a" * 64, 0, 10)]
    broken = {**json.loads(manifest.body()), "blobs": [blobs[0].to_json()]}
    with pytest.raises(format.FormatError, match="no blob for chunk"):
        format.Manifest.from_json(broken).chunks_of(table)
    with pytest.raises(format.FormatError, match="malformed chunked object"):
        format.entry_from_json({"name": "x", "chunks": [["a" * 64]]})


def _packed(tmp_path, known: dict[str, tuple[str, int]], objects: list[bytes], pack_bytes: int):
    """Cut `objects` as a run's copy workers do (one sink each), the new chunks into packs; each object's sink."""
    stager = PackStager(tmp_path, 3, RING.content_id, lambda cid: format.chunk_key("p", cid), known, pack_bytes)
    sinks = []
    for data in objects:
        sink = _PackedSink(stager, chunking.chunker(RING, AVG))
        for start in range(0, len(data), 50_000):
            sink.write(data[start:start + 50_000])
        sha, size, _ = sink.close()
        assert (sha, size) == (hashlib.sha256(data).hexdigest(), len(data))
        sinks.append(sink)
    return stager, sinks


def _read_pack(staged) -> bytes:
    import zstandard
    with open(staged.path, "rb") as f:
        return zstandard.ZstdDecompressor().decompressobj().decompress(f.read())


def _reassemble(packs: dict[str, bytes], extents: list[list]) -> bytes:
    return b"".join(packs[pack][offset:offset + length] for pack, offset, length in extents)


def test_new_chunks_go_into_packs_and_a_changed_row_stores_one_small_pack(tmp_path):
    rows = _rows(40_000)
    day1 = b"".join(rows)
    stager, (sink1,) = _packed(tmp_path / "d1", {}, [day1], pack_bytes=256 << 10)
    packs = {s.extra["content_id"]: _read_pack(s) for s in stager.new}
    assert sink1.chunk_count > 40 and 3 <= len(packs) < sink1.chunk_count  # many chunks, few objects
    assert len(sink1.extents) == len(packs)  # adjacent chunks of a pack merge: one extent a pack
    for staged in stager.new:
        cid = staged.extra["content_id"]
        assert staged.extra["key"] == format.chunk_key("p", cid)
        assert cid == RING.content_id(hashlib.sha256(packs[cid]).hexdigest())
        assert (tmp_path / "d1" / staged.path.rsplit("/", 1)[1]).stat().st_mode & 0o777 == 0o600
        for chunk_id, offset, size in stager.pack_chunks[cid]:  # each listed chunk is where the list says
            assert chunk_id == RING.content_id(hashlib.sha256(packs[cid][offset:offset + size]).hexdigest())
    assert sum(len(c) for c in stager.pack_chunks.values()) == sink1.chunk_count
    assert _reassemble(packs, sink1.extents) == day1

    rows[20_000] = rows[20_000].replace(b"\t", b"\tchanged ", 1)
    day2 = b"".join(rows)
    known = {cid: (pack, offset) for pack, chunks in stager.pack_chunks.items() for cid, offset, _size in chunks}
    stager2, (sink2,) = _packed(tmp_path / "d2", known, [day2], pack_bytes=256 << 10)
    (new,) = stager2.new  # the chunks around the change, in one new pack
    assert 1 <= len(stager2.pack_chunks[new.extra["content_id"]]) <= 3
    assert stager2.reused == set(packs)  # each old pack still holds kept chunks
    assert len(sink2.extents) <= len(sink1.extents) + 2  # the new pack's extent splits one old one
    packs[new.extra["content_id"]] = _read_pack(new)
    assert _reassemble(packs, sink2.extents) == day2


def test_a_chunk_repeated_within_a_run_is_packed_once(tmp_path):
    block = random.randbytes(200_000)
    stager, (first, second) = _packed(tmp_path, {}, [block * 3, block], pack_bytes=8 << 20)
    packed_bytes = sum(s.plaintext_size for s in stager.new)
    assert packed_bytes < len(block) * 2, packed_bytes  # the repeats and the second object reference the first
    assert {pack for pack, _o, _n in second.extents} <= {s.extra["content_id"] for s in stager.new}
    packs = {s.extra["content_id"]: _read_pack(s) for s in stager.new}
    assert _reassemble(packs, first.extents) == block * 3 and _reassemble(packs, second.extents) == block


def _bundles_packed(tmp_path, known: dict[str, tuple[str, int]], bodies: list[bytes], pack_bytes: int):
    """Place `bodies` as one run's wedding bundles do: one shared packer; returns the stager and each (sha, extents)."""
    from wedsync_dr.extract import BundlePacker

    stager = PackStager(tmp_path, 3, RING.content_id, lambda cid: format.chunk_key("p", cid), known, pack_bytes)
    packer = BundlePacker(stager)
    placed = [packer.add(body) for body in bodies]
    packer.close()
    return stager, placed


def test_wedding_bundles_share_packs_and_an_unchanged_one_is_only_referenced(tmp_path):
    """Bundles are kilobytes: many to a pack (not an object each), each bundle one chunk in one extent; a second
    run stores only the bundles that changed, and a bundle repeated within a run once."""
    rng = random.Random(5)
    bodies = [rng.randbytes(rng.randint(2_000, 9_000)) for _ in range(60)]
    stager, placed = _bundles_packed(tmp_path / "r1", {}, [*bodies, bodies[7]], pack_bytes=64 << 10)
    packs = {s.extra["content_id"]: _read_pack(s) for s in stager.new}
    assert 3 <= len(packs) <= 12  # ~330 KB of bundles in 64 KiB packs
    for body, (sha, extents) in zip([*bodies, bodies[7]], placed, strict=True):
        assert sha == hashlib.sha256(body).hexdigest() and len(extents) == 1
        assert isinstance(extents[0][0], str) and _reassemble(packs, extents) == body  # resolved once sealed
    assert placed[-1][1] == placed[7][1]  # the repeat is referenced, not packed twice
    assert stager.new_chunks == len(bodies) == sum(len(c) for c in stager.pack_chunks.values())
    for cid, chunks in stager.pack_chunks.items():
        for chunk_id, offset, size in chunks:
            assert chunk_id == RING.content_id(hashlib.sha256(packs[cid][offset:offset + size]).hexdigest())

    known = {cid: (pack, offset) for pack, chunks in stager.pack_chunks.items() for cid, offset, _size in chunks}
    changed = [*bodies[:20], bodies[20] + b"one more guest", *bodies[21:]]
    stager2, placed2 = _bundles_packed(tmp_path / "r2", known, changed, pack_bytes=64 << 10)
    (new,) = stager2.new
    assert stager2.new_chunks == 1 and len(stager2.reused) == len(packs)
    assert [p for i, p in enumerate(placed2) if p != placed[i]] == [placed2[20]]
    packs[new.extra["content_id"]] = _read_pack(new)
    assert _reassemble(packs, placed2[20][1]) == changed[20]


def test_a_format_5_manifest_lists_packs_and_extents_and_counts_what_it_stored():
    a, b = "a" * 64, "b" * 64
    extents = (format.Extent(a, 0, 10), format.Extent(b, 5, 20), format.Extent(a, 0, 10))
    table = format.ChunkedObject(name="guests.copy", source="guests", plaintext_sha256="c" * 64, plaintext_size=40,
                                 extents=extents, chunk_count=4, rows=3, columns=("guest_id",), copy_format="binary")
    blobs = [_blob(a, 10), _blob(b, 30)]
    manifest = format.build_manifest(backup_id="b1", data_class="client_data", created_at="2026-01-01T00:00:00+00:00",
                                     snapshot_at=None, source_schema="wedsync", labels=(), reason=None, prefix="p/x",
                                     lock_until=None, retain_until=None, objects=[table], blobs=blobs, tables={},
                                     stored_blob_keys=[blobs[1].key], chunks_packed=3)
    stored = manifest.to_json()["objects"][0]
    assert stored["packs"] == [a, b] and stored["extents"] == [[0, 0, 10], [1, 5, 20], [0, 0, 10]]
    assert "chunks" not in stored and stored["chunk_count"] == 4
    expected = {"chunks": 4, "chunks_stored": 3, "packs_stored": 1, "stored_objects": 1, "plaintext_bytes": 40}
    assert {k: manifest.totals[k] for k in expected} == expected
    read = format.Manifest.from_json(json.loads(manifest.body()))
    assert read.objects == (table,) and "pack_chunks" not in manifest.to_json()  # chunk ids: the catalog's
    pieces = [(p.blob.content_id, p.offset, p.size) for p in read.chunks_of(table)]
    assert pieces == [(a, 0, 10), (b, 5, 20), (a, 0, 10)]
    outside = dataclasses.replace(table, extents=(format.Extent(b, 5, 26),))
    with pytest.raises(format.FormatError, match="outside blob"):
        read.chunks_of(outside)
    for bad in (7, -1):  # no such pack
        with pytest.raises(format.FormatError, match="malformed chunked object"):
            format.entry_from_json({**stored, "extents": [[bad, 0, 10]]})


def test_a_chunked_reader_downloads_each_pack_once_however_its_extents_interleave(monkeypatch):
    """A backup after many days interleaves extents of many days' packs: each pack is fetched once, held in
    memory while among the last read, spilled to an anonymous scratch file while a later extent still needs it
    (no name in any directory: a SIGKILLed restore leaves no plaintext behind)."""
    from wedsync_dr import restore

    packs = {f"{i:064x}": random.randbytes(50_000) for i in range(6)}
    blobs = {cid: _blob(cid, len(data)) for cid, data in packs.items()}
    order = list(packs) * 4  # p0 p1 ... p5 p0 p1 ...: more packs in turn than the reader holds
    pieces = [format.ChunkPiece(blobs[cid], 1000 * n, 700) for n, cid in enumerate(order)]
    fetched = []

    def fetch(blob):
        fetched.append(blob.content_id)
        return packs[blob.content_id]

    spilled = []  # (the scratch file, its mode, where /proc says it is) at each spill
    real_spill = restore._ChunkedReader._spill

    def spill(self, key, data):
        real_spill(self, key, data)
        fd = self._scratch.fileno()
        spilled.append((self._scratch, os.fstat(fd).st_mode & 0o777, os.readlink(f"/proc/self/fd/{fd}")))

    monkeypatch.setattr(restore._ChunkedReader, "_spill", spill)
    with restore._ChunkedReader(pieces, fetch) as reader:
        buffered = io.BufferedReader(reader)  # (a BufferedReader closes its raw reader when it goes away)
        out = buffered.read()
    assert out == b"".join(packs[p.blob.content_id][p.offset:p.offset + p.size] for p in pieces)
    assert sorted(fetched) == sorted(packs)  # each once
    assert len(spilled) >= 2 and len({id(f) for f, _, _ in spilled}) == 1  # one scratch file for the object
    assert all(mode == 0o600 and where.endswith("(deleted)") for _, mode, where in spilled), spilled
    assert spilled[0][0].closed  # with the reader


class _Pack(bytearray):
    """A fetched pack that can be watched (a bytearray takes no weak reference, nor goes in a set)."""

    __hash__ = object.__hash__


@pytest.mark.parametrize("layout", ["interleaved", "in order"])
def test_a_chunked_reader_never_holds_more_than_its_packs_a_fetch_included(layout):
    """Memory is the bound the issue sets: when a pack is fetched, at most PACKS_HELD - 1 others are alive (room
    is made first), and a pack no later extent reads is let go at once -- read in order, none is alive."""
    import gc
    import weakref

    from wedsync_dr import restore

    packs = {f"{i:064x}": random.randbytes(20_000) for i in range(5)}
    blobs = {cid: _blob(cid, len(data)) for cid, data in packs.items()}
    order = list(packs) * 3 if layout == "interleaved" else [cid for cid in packs for _ in range(3)]
    pieces = [format.ChunkPiece(blobs[cid], 500 * n, 400) for n, cid in enumerate(order)]
    alive = weakref.WeakSet()
    alive_at_fetch = []

    def fetch(blob):
        gc.collect()
        alive_at_fetch.append(len(alive))
        pack = _Pack(packs[blob.content_id])
        alive.add(pack)
        return pack

    with restore._ChunkedReader(pieces, fetch) as reader:
        out = io.BufferedReader(reader, buffer_size=256).read()
    assert out == b"".join(packs[p.blob.content_id][p.offset:p.offset + p.size] for p in pieces)
    assert len(alive_at_fetch) == len(packs)  # each pack fetched once
    assert max(alive_at_fetch) == (restore.PACKS_HELD - 1 if layout == "interleaved" else 0), alive_at_fetch


class _NoDatabase:
    """A dry run's connection: the restore commits or rolls back, and touches nothing else."""

    autocommit = True

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass


def _serve_blobs(monkeypatch, plaintexts: dict[str, bytes]) -> list[str]:
    """Every cloud download of a restore served from `plaintexts` (by content id); returns the list of what was
    downloaded, in order."""
    from wedsync_dr import restore

    downloads = []

    def download(entry, order, stores, key_ring, consume, *, backup_id, savepoint=None):
        downloads.append(entry.content_id)
        return consume(io.BytesIO(plaintexts[entry.content_id])), []

    monkeypatch.setattr(restore, "with_failover", download)
    return downloads


def test_a_whole_class_of_bundles_is_restored_downloading_each_pack_once(monkeypatch):
    """Bundles are many to a pack: a restore of the class reads them in pack order and keeps the last pack for
    the next bundle, so each pack is downloaded once -- not once per bundle (~200 to an 8 MiB pack)."""
    from wedsync_dr import restore

    rng = random.Random(11)
    packs, objects = {}, []
    for p in range(3):
        bodies = [rng.randbytes(rng.randint(100, 900)) for _ in range(12)]
        cid = f"{p:064x}"
        packs[cid] = b"N" * 16 + b"".join(bodies)
        offset = 16
        for body in bodies:
            objects.append(format.ChunkedObject(
                name=f"wedding-{len(objects)}.bundle", source=f"wedding:{len(objects)}", wedding_id=len(objects),
                plaintext_sha256=hashlib.sha256(body).hexdigest(), plaintext_size=len(body), chunk_count=1,
                extents=(format.Extent(cid, offset, len(body)),)))
            offset += len(body)
    rng.shuffle(objects)  # the manifest lists bundles by wedding, not by pack
    manifest = format.build_manifest(backup_id="b1", data_class="critical_weddings",
                                     created_at="2026-01-01T00:00:00+00:00", snapshot_at=None, source_schema="wedsync",
                                     labels=(), reason=None, prefix="p/x", lock_until=None, retain_until=None,
                                     objects=objects, blobs=[_blob(c, len(d)) for c, d in packs.items()], tables={})
    downloads = _serve_blobs(monkeypatch, packs)
    report = restore.restore_tables(_NoDatabase(), manifest, {}, None, order=["aws"], target_schema="s",
                                    dry_run=True)
    assert report.objects == len(objects)  # every bundle read, and its sha256 checked
    assert sorted(downloads) == sorted(packs)


def test_a_format_4_bundle_backup_still_restores_whole_and_one_wedding_at_a_time(monkeypatch):
    """Until format 5 put bundles in packs, each wedding's bundle was a chunk blob of its own under its keyed content
    id (a format-4 manifest: `chunks` `[[content_id, size]]`, no extents). Such a backup, read back from its
    manifest's JSON, restores: the whole class (every bundle's blob downloaded once, its sections parsed, its
    sha256 checked) and one wedding alone (only its blob)."""
    from wedsync_dr import extract, restore

    rng = random.Random(4)
    bodies, written_sections, objects, blobs = {}, {}, [], []
    for wedding_id in range(1, 9):
        guests = b"".join(b"guest %d of %d\n" % (g, wedding_id) for g in range(rng.randint(1, 30)))
        events = b"".join(b"event %d\n" % e for e in range(rng.randint(0, 5)))
        body = (extract._section_header("guests", ["line"], guests.count(b"\n"), len(guests)) + guests
                + extract._section_header("timeline_events", ["line"], events.count(b"\n"), len(events)) + events)
        cid = hashlib.sha256(body).hexdigest()  # (a keyed content id in a real backup: any 64 hex digits here)
        bodies[cid] = body
        written_sections[cid] = [("guests", guests.count(b"\n"), guests),
                                 ("timeline_events", events.count(b"\n"), events)]
        blobs.append(_blob(cid, len(body)))
        objects.append(format.ChunkedObject(
            name=f"wedding-{wedding_id}.bundle", source=f"wedding:{wedding_id}", wedding_id=wedding_id,
            plaintext_sha256=hashlib.sha256(body).hexdigest(), plaintext_size=len(body),
            chunks=(format.ChunkRef(content_id=cid, size=len(body)),)))
    written = format.build_manifest(backup_id="b4", data_class="critical_weddings",
                                    created_at="2026-01-01T00:00:00+00:00", snapshot_at=None, source_schema="wedsync",
                                    labels=(), reason=None, prefix="p/x", lock_until=None, retain_until=None,
                                    objects=objects, blobs=blobs, tables={})
    raw = {**json.loads(written.body()), "format_version": 4}
    assert all("chunks" in o and "extents" not in o for o in raw["objects"])  # format 4's layout
    manifest = format.Manifest.from_json(raw)
    downloads = _serve_blobs(monkeypatch, bodies)
    report = restore.restore_tables(_NoDatabase(), manifest, {}, None, order=["aws"], target_schema="s",
                                    dry_run=True)
    assert report.objects == len(objects) and sorted(downloads) == sorted(bodies)
    for entry in manifest.objects:  # what a restore loads from each: its sections, as the bundle was written
        sections = restore.read_object(manifest, entry, ["aws"], {}, None,
                                       lambda s: [(h["table"], h["rows"], part.read())
                                                  for h, part in extract.read_bundle(s)],
                                       restore.RestoreReport("b4", "critical_weddings", "s", True, None))
        assert sections == written_sections[entry.chunks[0].content_id]
    downloads.clear()
    one = restore.restore_tables(_NoDatabase(), manifest, {}, None, order=["aws"], target_schema="s",
                                 wedding_id=5, dry_run=True)
    assert one.objects == 1 and downloads == [objects[4].chunks[0].content_id]
    with pytest.raises(restore.RestoreError, match="no bundle for wedding 99"):
        restore.restore_tables(_NoDatabase(), manifest, {}, None, order=["aws"], target_schema="s", wedding_id=99,
                               dry_run=True)


def test_the_chunk_index_finds_each_chunk_where_it_was_recorded():
    from wedsync_dr.extract import ChunkIndex

    rng = random.Random(3)
    places = {rng.randbytes(32).hex(): (f"pack{rng.randrange(500)}", rng.randrange(1 << 40)) for _ in range(5000)}
    index = ChunkIndex.of(places)
    assert len(index) == len(places)
    for chunk_id, place in places.items():
        assert index.get(bytes.fromhex(chunk_id)) == place
    assert index.get(rng.randbytes(32)) is None
    first = next(iter(places))
    index.add(bytes.fromhex(first), "elsewhere", 7, keep=True)  # a place it has is kept
    assert index.get(bytes.fromhex(first)) == places[first]
    index.add(first, "elsewhere", 7)
    assert index.get(bytes.fromhex(first)) == ("elsewhere", 7)


def test_content_digest_is_the_content_id_in_raw_bytes():
    digest = hashlib.sha256(b"a chunk").digest()
    assert RING.content_digest(digest) == bytes.fromhex(RING.content_id(digest.hex()))
    without = json.loads(RING.to_json())
    del without["dedup_key"]
    with pytest.raises(crypto.KeyUnavailableError, match="dedup_key"):
        crypto.KeyRing.from_json(without).content_digest(digest)
    with pytest.raises(ValueError, match="32 bytes"):
        RING.content_digest(digest[:31])


def test_a_pack_is_sparse_below_the_share_of_its_plaintext_the_newest_backup_uses():
    from wedsync_dr.backup import sparse_packs

    packs = [_blob(f"{i:064x}", 1000) for i in range(4)]
    used = {packs[0].content_id: 1000, packs[1].content_id: 250, packs[2].content_id: 249}  # packs[3]: unused
    assert sparse_packs(packs, used, 25) == {packs[2].content_id, packs[3].content_id}
    assert sparse_packs(packs, used, 100) == {p.content_id for p in packs[1:]}
    assert sparse_packs(packs, used, 0) == set()  # 0: never repack
