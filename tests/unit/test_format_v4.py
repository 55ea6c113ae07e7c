"""docs/FORMAT.md on chunked table objects (format 5: chunks in packs; format 4, each chunk a blob, still read),
checked without the stack: the documented chunker seed and parameters are the chunker's, pack and chunk keys,
associated data and compression are as written, every field of a chunked object is documented, and the by-hand
blocks reassemble a chunked object written by the library's own pieces, packed (format 5) or not (format 4).
(The file keeps the name of the format that brought chunked tables.)"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import random
import re

import pytest
import zstandard
from pyfastcdc import py as pure_fastcdc
from pyfastcdc.py.constants import GEAR, GEAR_LS

from tests.helpers import REPO, run_worked_example, worked_example
from wedsync_dr import backup, chunking, crypto, extract, format
from wedsync_dr.crypto.keys import CHUNKER_SEED_DOMAIN
from wedsync_dr.extract import SEGMENT_SIZE, ChunkStager, PackStager, _ChunkedSink, _PackedSink
from wedsync_dr.policy import DataClass

DOCUMENT = (REPO / "docs" / "FORMAT.md").read_text()
SECTION = "Chunked table objects (format 5: packs)"


def _section(title: str) -> str:
    start = DOCUMENT.index(f"### {title}")
    return DOCUMENT[start:DOCUMENT.index("\n#", start + 1)]


def _documented_seed(key_ring_json: str) -> int:
    """The seed as the document words it, from the key ring document alone."""
    dedup_key = base64.b64decode(json.loads(key_ring_json)["dedup_key"])
    digest = hmac.new(dedup_key, b"wedsync-dr chunker seed v1" + b"\x00", hashlib.sha256).digest()
    return (int.from_bytes(digest[:8], "big") >> 1) or 1


def _rows(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return b"".join(f"{i}\t{rng.choice(['Ann', 'Bo', 'Chidi'])}\t{rng.randbytes(rng.randint(8, 80)).hex()}\n".encode()
                    for i in range(n))


def test_the_documented_chunker_seed_is_the_key_rings():
    assert CHUNKER_SEED_DOMAIN == b"wedsync-dr chunker seed v1\x00"
    section = _section(SECTION)
    assert 'HMAC-SHA256(dedup_key, b"wedsync-dr chunker seed v1" \\|\\| 0x00)' in section
    assert "first 8 bytes" in section and ">> 1`, or 1 if that is 0" in section
    for _ in range(20):
        ring = crypto.KeyRing.generate(["k1"])
        seed = ring.chunker_seed()
        assert seed == _documented_seed(ring.to_json()) and 0 < seed < 1 << 63


@pytest.mark.parametrize("kib", [16, 64, 1024, 4096])
def test_the_documented_chunker_parameters_are_the_chunkers(kib):
    """min avg/4, max 4 x avg, normalised level 1, gear table XOR seed: an independent (pure-Python) FastCDC 2020
    built from the document's parameters cuts where the library's chunker does."""
    ring = crypto.KeyRing.generate(["k1"])
    avg = kib << 10
    cdc = chunking.chunker(ring, avg)
    assert (cdc.avg_size, cdc.min_size, cdc.max_size) == (avg, avg // 4, 4 * avg) and cdc.max_size <= 16 << 20
    seed = _documented_seed(ring.to_json())
    documented = pure_fastcdc.FastCDC(avg, min_size=avg // 4, max_size=4 * avg, normalized_chunking=1, seed=seed)
    assert list(documented.config.gear) == [g ^ seed for g in GEAR]
    assert list(documented.config.gear_ls) == [g ^ ((seed << 1) % (1 << 64)) for g in GEAR_LS]
    if kib > 64:
        return  # the pure-Python cutter is slow: the cuts are compared at the small averages
    data = _rows(6_000 * kib // 16, kib)

    def cuts(chunker) -> list[tuple[int, int]]:
        return [(c.offset, c.length) for c in chunker.cut_buf(data)]

    ours = cuts(cdc)
    assert len(ours) >= 20
    assert cuts(documented) == ours
    assert all(avg // 4 <= length <= 4 * avg for _offset, length in ours[:-1])
    other_level = pure_fastcdc.FastCDC(avg, min_size=avg // 4, max_size=4 * avg, normalized_chunking=2, seed=seed)
    unkeyed = pure_fastcdc.FastCDC(avg, min_size=avg // 4, max_size=4 * avg, normalized_chunking=1)
    assert cuts(other_level) != ours and cuts(unkeyed) != ours  # the comparison tells them apart


def test_chunk_keys_associated_data_and_compression_are_as_documented(tmp_path):
    ring = crypto.KeyRing.generate(["k1"])
    chunk = _rows(500, 3)
    cid = ring.content_id(hashlib.sha256(chunk).hexdigest())
    assert format.chunk_key("wedsync", cid) == f"wedsync/chunks/{cid[:2]}/{cid}.tink"
    assert "`<prefix>/chunks/<content_id[:2]>/<content_id>.tink`" in DOCUMENT
    blob = format.Blob(content_id=cid, key=format.chunk_key("wedsync", cid), compression="zstd",
                       plaintext_size=len(chunk), ciphertext_sha256="0" * 64, ciphertext_size=0, encryption={})
    assert blob.associated_data() == b"wedsync-dr/v1\x00assets-blob\x00" + cid.encode()
    # the content id of a chunk is an asset file's: HMAC-SHA256(dedup_key, domain || sha256(plaintext))
    dedup_key = base64.b64decode(json.loads(ring.to_json())["dedup_key"])
    assert cid == hmac.new(dedup_key, b"wedsync-dr content id v1\x00" + hashlib.sha256(chunk).digest(),
                           hashlib.sha256).hexdigest()
    # a chunk of its own (format 4, still read: a table chunk, or a bundle of an earlier release) is one zstd frame
    stager = ChunkStager(tmp_path, 3, ring.content_id, lambda c: format.chunk_key("wedsync", c))
    assert stager.add(memoryview(chunk)) == (cid, len(chunk))
    (staged,) = stager.new
    frame = zstandard.ZstdDecompressor().decompressobj()
    assert frame.decompress(open(staged.path, "rb").read()) == chunk and frame.eof and not frame.unused_data


def test_pack_keys_associated_data_and_compression_are_as_documented(tmp_path):
    """A pack: its chunks' plaintexts one after another, named (content id, key, AD) as any blob by the sha256 of
    that plaintext, compressed in zstd frames of at most 4 MiB like a table object; each chunk at its offset."""
    ring = crypto.KeyRing.generate(["k1"])
    plaintext = _rows(60_000, 5)
    assert len(plaintext) > SEGMENT_SIZE  # more than one frame
    stager = PackStager(tmp_path, 3, ring.content_id, lambda c: format.chunk_key("wedsync", c), {})
    default_kib = next(f.default for f in dataclasses.fields(DataClass) if f.name == "dedup_pack_kib")
    assert stager.pack_bytes == default_kib << 10 and f"default {default_kib}: 8 MiB" in _section(SECTION)
    sink = _PackedSink(stager, chunking.chunker(ring, 16 << 10))
    sink.write(plaintext)
    sink.close()
    (staged,) = stager.new  # under 8 MiB: one pack
    with open(staged.path, "rb") as f:
        compressed = f.read()
    frames = []
    while compressed:
        frame = zstandard.ZstdDecompressor().decompressobj()
        frames.append(frame.decompress(compressed))
        assert frame.eof
        compressed = frame.unused_data
    pack = b"".join(frames)
    assert len(frames) >= 2 and all(len(f) <= SEGMENT_SIZE for f in frames)
    cid = staged.extra["content_id"]
    dedup_key = base64.b64decode(json.loads(ring.to_json())["dedup_key"])
    assert cid == hmac.new(dedup_key, b"wedsync-dr content id v1\x00" + hashlib.sha256(pack).digest(),
                           hashlib.sha256).hexdigest()
    assert staged.extra["key"] == format.chunk_key("wedsync", cid) == f"wedsync/chunks/{cid[:2]}/{cid}.tink"
    blob = format.Blob(content_id=cid, key=staged.extra["key"], compression="zstd", plaintext_size=len(pack),
                       ciphertext_sha256="0" * 64, ciphertext_size=0, encryption={})
    assert blob.associated_data() == b"wedsync-dr/v1\x00assets-blob\x00" + cid.encode()
    # the pack is the object's new chunks in order: one extent; what the stager records of it (the catalog's
    # `pack_chunks`): each chunk once, in the pack's order, end to end, `size` bytes at `offset` with its own id
    nonce = extract.PACK_NONCE_BYTES
    assert "starts with 16 random bytes" in _section(SECTION) and nonce == 16
    assert pack[nonce:] == plaintext and sink.chunk_count > 100 and sink.extents == [[cid, nonce, len(plaintext)]]
    listed = stager.pack_chunks[cid]
    assert len(listed) == sink.chunk_count == stager.new_chunks
    assert sum(size for _c, _o, size in listed) == len(plaintext)
    assert [offset for _c, offset, _s in listed] == [nonce + sum(s for _c, _o, s in listed[:i])
                                                      for i in range(len(listed))]
    for chunk_id, offset, size in listed:
        assert chunk_id == ring.content_id(hashlib.sha256(pack[offset:offset + size]).hexdigest())
    # the same chunks packed again make another pack (the nonce): never the key of a stored one, nor a chunk's
    small = _rows(40, 6)
    ids = set()
    for attempt in range(2):
        (tmp_path / f"again-{attempt}").mkdir()
        again = PackStager(tmp_path / f"again-{attempt}", 3, ring.content_id, lambda c: format.chunk_key("w", c), {})
        sink = _PackedSink(again, chunking.chunker(ring, 16 << 10))
        sink.write(small)
        sink.close()
        ((pack_id, listed),) = again.pack_chunks.items()
        assert listed == [[ring.content_id(hashlib.sha256(small).hexdigest()), nonce, len(small)]]
        assert sink.extents == [[pack_id, nonce, len(small)]] and pack_id != listed[0][0]
        ids.add(pack_id)
    assert len(ids) == 2
    # in production each closed pack's chunks go to `on_pack` (the catalog) as it closes, and none stay in the stager
    recorded = []
    (tmp_path / "on-pack").mkdir()
    told = PackStager(tmp_path / "on-pack", 3, ring.content_id, lambda c: format.chunk_key("w", c), {},
                      pack_bytes=64 << 10, on_pack=lambda *args: recorded.append(args))
    sink = _PackedSink(told, chunking.chunker(ring, 16 << 10))
    sink.write(plaintext[:300_000])
    sink.close()
    assert len(recorded) == len(told.new) >= 2 and not told.pack_chunks
    assert [(cid, key) for cid, key, _chunks in recorded] == [(s.extra["content_id"], s.extra["key"]) for s in told.new]
    assert told.new_chunks == sink.chunk_count == sum(len(chunks) for _cid, _key, chunks in recorded)


def test_every_field_of_a_chunked_object_and_of_the_totals_is_documented():
    assert format.FORMAT_VERSION == 5 and "| `format_version` | `5`: this document." in DOCUMENT
    section = _section(SECTION)
    p, q = "p" * 64, "q" * 64
    extents = backup._chunk_layout({"extents": [[p, 0, 1], [q, 7, 5]], "chunk_count": 3})
    obj = format.ChunkedObject(name="guests.copy", source="guests", plaintext_sha256="0" * 64, plaintext_size=6,
                               copy_format="binary", **extents)
    stored = obj.to_json()
    assert stored["packs"] == [p, q] and stored["extents"] == [[0, 0, 1], [1, 7, 5]] and stored["chunk_count"] == 3
    assert "chunks" not in stored
    for field in stored:
        assert f"`{field}`" in section, field
    assert "each `[pack, offset, length]`" in section and "`length` bytes at `offset`" in section
    assert "each `[content_id, plaintext_size]`" in section  # format 4, still read
    example = json.loads(re.sub(r", \.\.\.\]", "]", re.search(r"```json\n(.*?)```", section, re.S).group(1))
                         .replace('"..."', '"x"'))
    assert set(example) == set(stored)
    assert all(len(e) == 3 and 0 <= e[0] < len(example["packs"]) for e in example["extents"])
    assert sum(length for _pack, _offset, length in example["extents"]) == example["plaintext_size"]
    assert example["chunk_count"] > len(example["extents"])
    # pack q stored by this backup (2 chunks), pack p an earlier one's; a new blob no extent uses is no pack
    blobs = [format.Blob(content_id=cid, key=format.chunk_key("p", cid), compression="zstd", plaintext_size=9,
                         ciphertext_sha256="0" * 64, ciphertext_size=0, encryption={}) for cid in (p, q, "r" * 64)]
    manifest = format.build_manifest(backup_id="b", data_class="c", created_at="2026-01-01T00:00:00+00:00",
                                     snapshot_at=None, source_schema="wedsync", labels=(), reason=None, prefix="p",
                                     lock_until=None, retain_until=None, objects=[obj], blobs=blobs, tables={},
                                     stored_blob_keys=[blobs[1].key, blobs[2].key], chunks_packed=2)
    body = manifest.to_json()
    assert "pack_chunks" not in body and not hasattr(manifest, "pack_chunks")
    assert "| `pack_chunks` |" not in DOCUMENT  # no manifest field: the catalog's
    assert "**Which chunks a pack holds** is in no manifest" in section and "(table `pack_chunks`, catalog" in section
    assert "`rebuild-catalog` does not recreate it" in section and "A restore never needs them" in section
    assert "`[chunk content id, offset, size]`" in section
    assert manifest.totals["chunks"] == 3 and manifest.totals["chunks_stored"] == 2 \
        and manifest.totals["packs_stored"] == 1 and manifest.totals["blobs_stored"] == 2
    for total in ("chunks", "chunks_stored", "packs_stored", "stored_objects", "blobs", "blobs_stored"):
        assert total in manifest.totals and f"`{total}`" in DOCUMENT, total


def _seal(directory, ring: crypto.KeyRing, staged) -> format.Blob:
    """A staged pack (or chunk) sealed as backup's encrypt step seals a blob, as downloaded: `<content id>.tink`."""
    cid = staged.extra["content_id"]
    data_key = ring.new_data_key()
    ad = crypto.associated_data(format.BLOB_AD_SCOPE, cid)
    stats = crypto.encrypt_file(staged.path, directory / f"{cid}.tink", data_key, ad, zstd_level=None)
    return format.Blob(content_id=cid, key=staged.extra["key"], compression="zstd",
                       plaintext_size=staged.plaintext_size, ciphertext_sha256=stats.ciphertext_sha256,
                       ciphertext_size=stats.ciphertext_size,
                       encryption=crypto.encryption_entry(ring.wrap(data_key), ad))


def _chunked_backup(directory, ring: crypto.KeyRing, plaintext: bytes, backup_id: str, *, packed: bool = True,
                    earlier: tuple[dict, dict] | None = None) -> tuple[dict, dict]:
    """A one-table backup written with the library's pieces (chunker, pack stager and sink, `backup._chunk_layout`,
    Tink sealing, manifest): format 5, its new chunks in packs of 64 KiB (several packs), the chunks of the packs
    of an `earlier` such backup referenced as the extract does (what its stager recorded of them, which the
    catalog keeps); or, `packed` False, format 4, each chunk a blob of its own. Its manifest and what its stager
    recorded of the packs it stored (pack content id -> [[chunk id, offset, size], ...]); its blobs are
    downloaded files `<content id>.tink` in `directory`."""
    prefix = "wedsync"
    staging = directory / f"staging-{backup_id}"
    staging.mkdir()
    key = lambda cid: format.chunk_key(prefix, cid)  # noqa: E731
    earlier_manifest, earlier_chunks = earlier or ({}, {})
    earlier_packs = {b["content_id"]: format.entry_from_json(b) for b in earlier_manifest.get("blobs", ())}
    if packed:
        known = {cid: (pack, offset) for pack, chunks in earlier_chunks.items() for cid, offset, _size in chunks}
        stager = PackStager(staging, 3, ring.content_id, key, known, pack_bytes=64 << 10)
        sink = _PackedSink(stager, chunking.chunker(ring, 16 << 10))
    else:
        stager = ChunkStager(staging, 3, ring.content_id, key)
        sink = _ChunkedSink(stager, chunking.chunker(ring, 16 << 10))
    for start in range(0, len(plaintext), 100_000):  # as COPY delivers it, in blocks
        sink.write(plaintext[start:start + 100_000])
    assert sink.close()[:2] == (hashlib.sha256(plaintext).hexdigest(), len(plaintext))
    blobs = [_seal(directory, ring, staged) for staged in stager.new]
    referenced = [earlier_packs[cid] for cid in stager.reused] if packed else []  # (format 4: repeats of its own)
    table = format.ChunkedObject(name="guests.copy", source="guests", rows=0, columns=("line",), copy_format="binary",
                                 plaintext_sha256=hashlib.sha256(plaintext).hexdigest(),
                                 plaintext_size=len(plaintext),
                                 **backup._chunk_layout({"extents": sink.extents, "chunk_count": sink.chunk_count}
                                                        if packed else {"chunks": sink.chunks}))
    manifest = format.build_manifest(backup_id=f"byhand-{backup_id}", data_class="byhand",
                                     created_at="2026-01-01T00:00:00+00:00", snapshot_at=None, source_schema="wedsync",
                                     labels=(), reason=None, prefix=prefix, lock_until=None, retain_until=None,
                                     objects=[table], blobs=[*blobs, *referenced],
                                     tables={}, stored_blob_keys=[b.key for b in blobs],
                                     chunks_packed=stager.new_chunks if packed else 0)
    body = json.loads(manifest.body())
    return (body, stager.pack_chunks) if packed else ({**body, "format_version": 4}, {})


def _by_hand_directory(tmp_path, ring: crypto.KeyRing, manifest: dict) -> None:
    """The manifest, a key ring of the KEKs alone and the document's decrypt_object.py beside the blobs."""
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    keks = json.loads(ring.to_json())
    del keks["dedup_key"]
    (tmp_path / "keyring.json").write_text(json.dumps(keks))
    script = worked_example("decrypt_object.py")
    assert "wedsync_dr" not in script
    (tmp_path / "decrypt_object.py").write_text(script)


def test_the_by_hand_blocks_reassemble_a_chunked_object_with_the_keks_alone(tmp_path):
    """The second of two backups: its object's extents in a pack it stored and in the first backup's packs, its
    manifest alone (and the KEKs) reassembles it."""
    ring = crypto.KeyRing.generate(["k2025a"]).with_new_key("k2026a")
    half = _rows(8_000, 11)
    day1 = half + half  # the second half cuts into the first half's chunks again: content ids recur
    first, first_chunks = _chunked_backup(tmp_path, ring, day1, "1")
    cut = len(day1) // 3
    day2 = day1[:cut] + _rows(40, 99) + day1[cut:]  # a few rows inserted: the chunks around them change
    manifest, pack_chunks = _chunked_backup(tmp_path, ring, day2, "2", earlier=(first, first_chunks))
    assert first["format_version"] == manifest["format_version"] == 5
    assert "pack_chunks" not in first and "pack_chunks" not in manifest  # the catalog's, in no manifest
    assert set(first_chunks) == {b["content_id"] for b in first["blobs"]}
    assert first["totals"]["packs_stored"] == len(first_chunks) >= 2
    assert first["totals"]["chunks_stored"] == sum(len(c) for c in first_chunks.values())
    (table,) = manifest["objects"]
    packs, extents, totals = table["packs"], table["extents"], manifest["totals"]
    own = set(pack_chunks)
    assert own and own < set(packs) and len(set(packs)) == len(packs) >= 5  # its packs and the first's
    assert {b["content_id"] for b in manifest["blobs"]} == set(packs)  # every pack it needs, no other
    assert totals["packs_stored"] == totals["blobs_stored"] == len(own)
    assert totals["chunks"] == table["chunk_count"] > len(extents) >= 3  # adjacent chunks merged
    assert totals["chunks_stored"] == sum(len(c) for c in pack_chunks.values()) < 0.1 * totals["chunks"]
    assert all(len(e) == 3 for e in extents) and sum(e[2] for e in extents) == len(day2)
    assert sum(b["plaintext_size"] for b in first["blobs"]) < 0.6 * len(day1)  # the repeats referenced
    _by_hand_directory(tmp_path, ring, manifest)
    env = {"OBJECT": "guests.copy"}

    result = run_worked_example(tmp_path, "pack-keys", env)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == len(packs)
    assert (tmp_path / "pack-keys.txt").read_text().split() == [format.chunk_key("wedsync", c) for c in packs]
    result = run_worked_example(tmp_path, "shell-packs", env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "guests.copy: OK"
    assert (tmp_path / "guests.copy").read_bytes() == day2

    # what the stagers recorded (the catalog's `pack_chunks`), checked on the packs the by-hand blocks opened: every
    # chunk of each pack, in order, end to end after the nonce, each named by the content id of its bytes
    nonce = extract.PACK_NONCE_BYTES
    opened = {pack: chunks for pack, chunks in {**first_chunks, **pack_chunks}.items() if pack in packs}
    assert len(opened) == len(packs)  # the first's packs it references too
    for pack, chunks in opened.items():
        plaintext = (tmp_path / f"{pack}.pack").read_bytes()
        assert [offset for _cid, offset, _size in chunks] == [nonce + sum(c[2] for c in chunks[:i])
                                                             for i in range(len(chunks))]
        assert nonce + sum(size for _cid, _offset, size in chunks) == len(plaintext)
        for cid, offset, size in chunks:
            assert cid == ring.content_id(hashlib.sha256(plaintext[offset:offset + size]).hexdigest())

    # an extent said to reach past its pack's end stops it
    forged = json.loads(json.dumps(manifest))
    extent = forged["objects"][0]["extents"][1]
    extent[1] = next(b["plaintext_size"] for b in manifest["blobs"] if b["content_id"] == packs[extent[0]]) \
        - extent[2] + 1
    (tmp_path / "manifest.json").write_text(json.dumps(forged))
    result = run_worked_example(tmp_path, "shell-packs", env)
    assert result.returncode != 0 and "lie outside pack" in result.stderr, (result.stdout, result.stderr)
    assert "OK" not in result.stdout

    # a damaged pack stops it (opened afresh: the opened packs are removed first)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    for opened in tmp_path.glob("*.pack"):
        opened.unlink()
    victim = tmp_path / f"{packs[len(packs) // 2]}.tink"
    damaged = bytearray(victim.read_bytes())
    damaged[100] ^= 1
    victim.write_bytes(bytes(damaged))
    result = run_worked_example(tmp_path, "shell-packs", env)
    assert result.returncode != 0 and "ciphertext checksum differs" in result.stderr
    assert not (tmp_path / f"{packs[len(packs) // 2]}.pack").exists() and "OK" not in result.stdout


def test_the_by_hand_blocks_read_a_format_4_chunked_object_too(tmp_path):
    """No `packs` or `extents`: each chunk is a blob of its own, read whole (so also a deduplicated wedding
    bundle)."""
    ring = crypto.KeyRing.generate(["k1"])
    half = _rows(3_000, 12)
    plaintext = half + half
    manifest, _ = _chunked_backup(tmp_path, ring, plaintext, "1", packed=False)
    (table,) = manifest["objects"]
    assert not {"packs", "extents", "chunk_count"} & set(table) and "pack_chunks" not in manifest
    assert all(len(chunk) == 2 for chunk in table["chunks"])
    distinct = list(dict.fromkeys(cid for cid, _size in table["chunks"]))
    assert len(table["chunks"]) > len(distinct) >= 4
    _by_hand_directory(tmp_path, ring, manifest)
    env = {"OBJECT": "guests.copy"}

    result = run_worked_example(tmp_path, "pack-keys", env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "pack-keys.txt").read_text().split() == [format.chunk_key("wedsync", c) for c in distinct]
    result = run_worked_example(tmp_path, "shell-packs", env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "guests.copy: OK"
    assert (tmp_path / "guests.copy").read_bytes() == plaintext
