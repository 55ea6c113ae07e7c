"""docs/FORMAT.md on chunked table objects (format 4), checked without the stack: the documented chunker seed and
parameters are the chunker's, chunk keys and associated data are as written, every field of a chunked object is
documented, and the by-hand blocks reassemble a chunked object written by the library's own pieces."""

from __future__ import annotations

import base64
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
from wedsync_dr import chunking, crypto, format
from wedsync_dr.crypto.keys import CHUNKER_SEED_DOMAIN
from wedsync_dr.extract import ChunkStager

DOCUMENT = (REPO / "docs" / "FORMAT.md").read_text()


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
    section = _section("Chunked table objects (format 4)")
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
    # staged as exactly one zstd frame
    stager = ChunkStager(tmp_path, 3, ring.content_id, lambda c: format.chunk_key("wedsync", c))
    assert stager.add(memoryview(chunk)) == (cid, len(chunk))
    (staged,) = stager.new
    frame = zstandard.ZstdDecompressor().decompressobj()
    assert frame.decompress(open(staged.path, "rb").read()) == chunk and frame.eof and not frame.unused_data


def test_every_field_of_a_chunked_object_and_of_the_totals_is_documented():
    assert format.FORMAT_VERSION == 4 and "| `format_version` | `4`: this document." in DOCUMENT
    section = _section("Chunked table objects (format 4)")
    obj = format.ChunkedObject(name="guests.copy", source="guests", plaintext_sha256="0" * 64, plaintext_size=1,
                               chunks=(format.ChunkRef(content_id="a" * 64, size=1),), copy_format="binary")
    for field in obj.to_json():
        assert f"`{field}`" in section, field
    example = json.loads(re.sub(r", \.\.\.\]", "]", re.search(r"```json\n(.*?)```", section, re.S).group(1))
                         .replace('"..."', '"x"'))
    assert set(example) == set(obj.to_json())
    manifest = format.build_manifest(backup_id="b", data_class="c", created_at="2026-01-01T00:00:00+00:00",
                                     snapshot_at=None, source_schema="wedsync", labels=(), reason=None, prefix="p",
                                     lock_until=None, retain_until=None, objects=[obj], blobs=[], tables={})
    for total in ("chunks", "chunks_stored", "stored_objects", "blobs", "blobs_stored"):
        assert total in manifest.totals and f"`{total}`" in DOCUMENT, total


def _chunked_backup(directory, ring: crypto.KeyRing, plaintext: bytes) -> dict:
    """A one-table format-4 backup written with the library's pieces (chunker, stager, Tink sealing, manifest),
    its chunks as downloaded files `<content id>.tink` in `directory`."""
    prefix = "wedsync"
    staging = directory / "staging"
    staging.mkdir()
    stager = ChunkStager(staging, 3, ring.content_id, lambda cid: format.chunk_key(prefix, cid))
    refs: list[tuple[str, int]] = []
    writer = chunking.ChunkingWriter(chunking.chunker(ring, 16 << 10), lambda view: refs.append(stager.add(view)))
    writer.write(plaintext)
    writer.close()
    blobs = []
    for staged in stager.new:
        cid = staged.extra["content_id"]
        data_key = ring.new_data_key()
        ad = crypto.associated_data(format.BLOB_AD_SCOPE, cid)
        stats = crypto.encrypt_file(staged.path, directory / f"{cid}.tink", data_key, ad, zstd_level=None)
        blobs.append(format.Blob(content_id=cid, key=staged.extra["key"], compression="zstd",
                                 plaintext_size=staged.plaintext_size, ciphertext_sha256=stats.ciphertext_sha256,
                                 ciphertext_size=stats.ciphertext_size,
                                 encryption=crypto.encryption_entry(ring.wrap(data_key), ad)))
    table = format.ChunkedObject(name="guests.copy", source="guests", rows=0, columns=("line",), copy_format="binary",
                                 plaintext_sha256=hashlib.sha256(plaintext).hexdigest(),
                                 plaintext_size=len(plaintext),
                                 chunks=tuple(format.ChunkRef(content_id=c, size=s) for c, s in refs))
    manifest = format.build_manifest(backup_id="byhand-20260101T000000Z-abc123", data_class="byhand",
                                     created_at="2026-01-01T00:00:00+00:00", snapshot_at=None, source_schema="wedsync",
                                     labels=(), reason=None, prefix=prefix, lock_until=None, retain_until=None,
                                     objects=[table], blobs=blobs, tables={},
                                     stored_blob_keys=[b.key for b in blobs])
    return json.loads(manifest.body())


def test_the_by_hand_blocks_reassemble_a_chunked_object_with_the_keks_alone(tmp_path):
    ring = crypto.KeyRing.generate(["k2025a"]).with_new_key("k2026a")
    half = _rows(8_000, 11)
    plaintext = half + half  # the second half cuts into the first half's chunks again: content ids recur
    manifest = _chunked_backup(tmp_path, ring, plaintext)
    (table,) = manifest["objects"]
    distinct = list(dict.fromkeys(cid for cid, _size in table["chunks"]))
    assert len(table["chunks"]) > len(distinct) >= 10
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    keks = json.loads(ring.to_json())
    del keks["dedup_key"]
    (tmp_path / "keyring.json").write_text(json.dumps(keks))
    script = worked_example("decrypt_object.py")
    assert "wedsync_dr" not in script
    (tmp_path / "decrypt_object.py").write_text(script)
    env = {"OBJECT": "guests.copy"}

    result = run_worked_example(tmp_path, "chunk-keys", env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "chunk-keys.txt").read_text().split() == [format.chunk_key("wedsync", c) for c in distinct]
    result = run_worked_example(tmp_path, "shell-chunks", env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "guests.copy: OK"
    assert (tmp_path / "guests.copy").read_bytes() == plaintext

    # a damaged chunk stops it (opened afresh: the opened chunks are removed first)
    for opened in tmp_path.glob("*.chunk"):
        opened.unlink()
    victim = tmp_path / f"{distinct[len(distinct) // 2]}.tink"
    damaged = bytearray(victim.read_bytes())
    damaged[100] ^= 1
    victim.write_bytes(bytes(damaged))
    result = run_worked_example(tmp_path, "shell-chunks", env)
    assert result.returncode != 0 and "ciphertext checksum differs" in result.stderr
