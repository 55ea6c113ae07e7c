"""Objects: associated data, the compress + encrypt pipeline and its stats, files, plaintext checks, the
worked example of docs/FORMAT.md (run for real, so the document cannot rot), and 2 GB in bounded memory."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import run_worked_example, worked_example
from wedsync_dr import crypto

REPO = Path(__file__).resolve().parents[2]
BACKUP_ID = "client_data-20260101T020000Z-3fa2c1"
AD = crypto.associated_data(BACKUP_ID, "guests.copy.zst.tink")


def guest_rows(count: int) -> bytes:
    return b"".join(b"%d,guest-%d@mail.example,attending,table %d\n" % (i, i * 7919 % 10007, i % 40)
                    for i in range(count))


@pytest.fixture
def key():
    return crypto.KeyRing.new_data_key()


# ----------------------------------------------------------------------------- associated data


def test_associated_data_encoding():
    assert crypto.associated_data("b-1", "guests.copy") == b"wedsync-dr/v1\x00b-1\x00guests.copy"
    assert crypto.associated_data("b", "gästeliste") == b"wedsync-dr/v1\x00b\x00g\xc3\xa4steliste"


def test_associated_data_is_unambiguous():
    assert crypto.associated_data("a", "bc") != crypto.associated_data("ab", "c")
    assert crypto.associated_data("a", "b\x01c") != crypto.associated_data("a\x01b", "c")
    for backup_id, name in [("a\x00b", "c"), ("a", "b\x00"), ("", "c"), ("a", "")]:
        with pytest.raises(ValueError):
            crypto.associated_data(backup_id, name)


@pytest.mark.parametrize(("backup_id", "name"), [
    (BACKUP_ID, "vendors.copy.zst.tink"),  # renamed
    ("client_data-20251231T020000Z-000000", "guests.copy.zst.tink"),  # swapped in from another backup
])
def test_a_swapped_or_renamed_object_fails(key, backup_id, name):
    out = io.BytesIO()
    crypto.encrypt_stream(io.BytesIO(b"contract"), out, key, AD)
    with pytest.raises(crypto.DecryptionError, match=f"cannot decrypt {name}"):
        crypto.decrypt_stream(io.BytesIO(out.getvalue()), io.BytesIO(), key,
                              crypto.associated_data(backup_id, name), object_name=name)


# ----------------------------------------------------------------------------- the pipeline


@pytest.mark.parametrize(("zstd_level", "zstd_threads"), [(3, 1), (3, 0), (1, 2), (10, 0), (None, 0)])
def test_object_encryptor_streams_and_reports_the_manifest_stats(key, zstd_level, zstd_threads):
    rows = guest_rows(50_000)
    out = io.BytesIO()
    with crypto.ObjectEncryptor(out, key, AD, zstd_level=zstd_level, zstd_threads=zstd_threads) as encryptor:
        for start in range(0, len(rows), 65536):  # the way COPY hands over data
            assert encryptor.write(rows[start:start + 65536]) == len(rows[start:start + 65536])
    stats = encryptor.stats
    blob = out.getvalue()
    assert stats == encryptor.close()  # closing twice returns the same stats
    assert (stats.plaintext_sha256, stats.plaintext_size) == (hashlib.sha256(rows).hexdigest(), len(rows))
    assert (stats.ciphertext_sha256, stats.ciphertext_size) == (hashlib.sha256(blob).hexdigest(), len(blob))
    if zstd_level is None:
        assert stats.compressed_size == len(rows)
    else:
        assert stats.compressed_size < len(rows) / 3
    segments = 1 + max(0, -(-(stats.compressed_size - 1_048_520) // 1_048_560))
    assert stats.ciphertext_size == 40 + stats.compressed_size + 16 * segments
    decrypted = crypto.decrypt_stream(io.BytesIO(blob), out := io.BytesIO(), key, AD, object_name="guests",
                                      decompress=zstd_level is not None)
    assert out.getvalue() == rows and decrypted == crypto.DecryptStats(stats.plaintext_sha256, len(rows))
    with pytest.raises(ValueError):
        encryptor.write(b"after close")


def test_reader_supports_readline_for_bundles(key):
    out = io.BytesIO()
    crypto.encrypt_stream(io.BytesIO(b'{"table": "guests"}\nrow 1\nrow 2\n'), out, key, AD)
    reader = crypto.decrypting_reader(io.BytesIO(out.getvalue()), key, AD, object_name="bundle")
    assert reader.readline() == b'{"table": "guests"}\n'
    assert reader.read() == b"row 1\nrow 2\n"


def test_sources_without_readinto_and_with_short_reads_work(key):
    class Trickle:
        def __init__(self, data: bytes):
            self._data = io.BytesIO(data)

        def read(self, size: int = -1) -> bytes:
            return self._data.read(min(size, 1000) if size > 0 else 1000)

    rows = guest_rows(30_000)
    blob = io.BytesIO()
    crypto.encrypt_stream(Trickle(rows), blob, key, AD)
    out = io.BytesIO()
    crypto.decrypt_stream(Trickle(blob.getvalue()), out, key, AD, object_name="guests")
    assert out.getvalue() == rows
    assert crypto.decrypting_reader(Trickle(blob.getvalue()), key, AD, object_name="guests").read() == rows


# ----------------------------------------------------------------------------- expected plaintext


def test_expected_plaintext_is_checked_at_the_end(key):
    rows = guest_rows(1000)
    blob = io.BytesIO()
    stats = crypto.encrypt_stream(io.BytesIO(rows), blob, key, AD)
    good = {"expected_sha256": stats.plaintext_sha256, "expected_size": stats.plaintext_size}
    reader = crypto.decrypting_reader(io.BytesIO(blob.getvalue()), key, AD, object_name="g", **good)
    assert reader.read() == rows
    for wrong in ({"expected_sha256": "ab" * 32}, {"expected_size": len(rows) + 1}):
        reader = crypto.decrypting_reader(io.BytesIO(blob.getvalue()), key, AD, object_name="guests", **wrong)
        with pytest.raises(crypto.IntegrityError, match="cannot decrypt guests: plaintext"):
            reader.read()
        with pytest.raises(crypto.DecryptionError):  # IntegrityError is one: restores retry another cloud
            crypto.decrypt_stream(io.BytesIO(blob.getvalue()), io.BytesIO(), key, AD, object_name="g",
                                  **wrong)


# ----------------------------------------------------------------------------- files


def test_files_are_private_and_appear_only_when_complete(key, tmp_path):
    rows = guest_rows(10_000)
    (tmp_path / "guests.copy").write_bytes(rows)
    stats = crypto.encrypt_file(tmp_path / "guests.copy", tmp_path / "guests.tink", key, AD)
    assert stat.S_IMODE((tmp_path / "guests.tink").stat().st_mode) == 0o600
    assert stats.ciphertext_sha256 == hashlib.sha256((tmp_path / "guests.tink").read_bytes()).hexdigest()

    decrypted = crypto.decrypt_file(tmp_path / "guests.tink", tmp_path / "guests.out", key, AD,
                                    object_name="guests", expected_sha256=stats.plaintext_sha256)
    assert (tmp_path / "guests.out").read_bytes() == rows and decrypted.plaintext_size == len(rows)
    assert stat.S_IMODE((tmp_path / "guests.out").stat().st_mode) == 0o600

    tampered = bytearray((tmp_path / "guests.tink").read_bytes())
    tampered[-1] ^= 1
    (tmp_path / "tampered.tink").write_bytes(bytes(tampered))
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt_file(tmp_path / "tampered.tink", tmp_path / "restored", key, AD, object_name="guests")
    with pytest.raises(crypto.IntegrityError):
        crypto.decrypt_file(tmp_path / "guests.tink", tmp_path / "restored", key, AD, object_name="guests",
                            expected_size=1)
    assert not (tmp_path / "restored").exists()  # no partial plaintext where a whole one is expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["guests.copy", "guests.out", "guests.tink",
                                                          "tampered.tink"]  # and no leftovers


# ----------------------------------------------------------------------------- docs/FORMAT.md runs


def test_the_worked_example_in_format_md_opens_an_object_without_wedsync_dr(tmp_path):
    """Extracts the worked example from docs/FORMAT.md and runs it: tink + cryptography + the zstd CLI."""
    script = worked_example("decrypt_object.py")
    assert "wedsync_dr" not in script

    # A backup as the library writes it: one object and its manifest, KEKs rotated once.
    ring = crypto.KeyRing.generate(["k2025a"]).with_new_key("k2026a")
    rows = guest_rows(60_000)
    data_key = ring.new_data_key()
    with open(tmp_path / "guests.copy.zst.tink", "wb") as sink:
        stats = crypto.encrypt_stream(io.BytesIO(rows), sink, data_key, AD)
    entry = {"name": "guests.copy.zst.tink",
             "key": f"wedsync/client_data/2026/01/01/{BACKUP_ID}/guests.copy.zst.tink",
             "compression": "zstd", "plaintext_sha256": stats.plaintext_sha256,
             "plaintext_size": stats.plaintext_size, "compressed_size": stats.compressed_size,
             "ciphertext_sha256": stats.ciphertext_sha256, "ciphertext_size": stats.ciphertext_size,
             "encryption": crypto.encryption_entry(ring.wrap(data_key), AD)}
    manifest = {"format_version": 1, "backup_id": BACKUP_ID, "objects": [entry]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "keyring.json").write_text(ring.to_json())
    (tmp_path / "decrypt_object.py").write_text(script)

    result = run_worked_example(tmp_path, "shell")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "guests.copy").read_bytes() == rows
    assert result.stdout.split()[0] == entry["plaintext_sha256"]

    # And the example fails loudly, not quietly, on a tampered object.
    blob = bytearray((tmp_path / "guests.copy.zst.tink").read_bytes())
    blob[1000] ^= 1
    (tmp_path / "guests.copy.zst.tink").write_bytes(bytes(blob))
    entry["ciphertext_sha256"] = hashlib.sha256(blob).hexdigest()  # as if the manifest were forged too
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    result = run_worked_example(tmp_path, "shell")
    assert result.returncode != 0


def test_worked_example_manifest_fields_match_the_library():
    document = (REPO / "docs" / "FORMAT.md").read_text()
    wrapped = crypto.KeyRing.generate(["k1"]).wrap(crypto.KeyRing.new_data_key())
    for field in crypto.encryption_entry(wrapped, AD):
        assert f"`{field}`" in document
    assert f'"{crypto.FORMAT_NAME}"' in document and f'"{crypto.KEY_WRAP_ALGORITHM}"' in document


# ----------------------------------------------------------------------------- memory

MEMORY_SCRIPT = textwrap.dedent("""
    import hashlib, io, os, random, sys, threading
    from wedsync_dr import crypto

    TOTAL = 2 * 10**9

    class GeneratedRows(io.RawIOBase):
        # CSV-like rows generated once into an 8 MB block and repeated: farther apart than zstd's window,
        # so every byte is compressed for real, and nothing of the 2 GB is ever held
        def __init__(self, total):
            rng = random.Random(7)
            self.block = memoryview(b"".join(
                b"%d,%d,guest-%d@mail.example,%s,table %d,%.2f\\n" % (
                    i, rng.getrandbits(40), rng.getrandbits(20), rng.choice([b"attending", b"declined"]),
                    rng.randrange(40), rng.random() * 500) for i in range(150_000)))
            self.left, self.offset = total, 0
        def readable(self):
            return True
        def readinto(self, buffer):
            count = min(len(buffer), self.left, len(self.block) - self.offset)
            buffer[:count] = self.block[self.offset:self.offset + count]
            self.offset = (self.offset + count) % len(self.block)
            self.left -= count
            return count

    # Encrypt into a pipe while decrypting from it: both directions stream at once.
    key = crypto.KeyRing.new_data_key()
    ad = crypto.associated_data("b-1", "rows.copy.zst.tink")
    read_fd, write_fd = os.pipe()
    result = {}
    def encrypt():
        with open(write_fd, "wb", buffering=0) as sink:
            result["stats"] = crypto.encrypt_stream(GeneratedRows(TOTAL), sink, key, ad)
    writer = threading.Thread(target=encrypt)
    writer.start()
    digest, size = hashlib.sha256(), 0
    with open(read_fd, "rb") as source:
        reader = crypto.decrypting_reader(source, key, ad, object_name="rows")
        while chunk := reader.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    writer.join()
    stats = result["stats"]
    assert stats.plaintext_size == size == TOTAL and stats.plaintext_sha256 == digest.hexdigest(), stats
    assert stats.compressed_size < TOTAL / 2, stats  # compressible, but not trivially
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking (large) pytest process
    hwm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print(hwm_kb // 1024)
""")


def test_two_gigabytes_stream_through_both_ways_in_bounded_memory():
    env = {**os.environ, "PYTHONPATH": str(REPO / "include")}
    result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    peak_mb = int(result.stdout.strip())
    assert peak_mb < 150, f"peak RSS {peak_mb} MB"
