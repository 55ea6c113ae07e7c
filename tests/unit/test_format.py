"""The format module: keyed content ids, copy checks, lock extension, manifests of formats 2 and 3."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pytest

from wedsync_dr import crypto, format
from wedsync_dr.storage import ObjectInfo

SHA = hashlib.sha256(b"a couple's contract").hexdigest()


def test_content_ids_are_keyed_and_fail_closed_without_the_dedup_key():
    ring = crypto.KeyRing.generate(["k1"])
    other = crypto.KeyRing.generate(["k1"])
    content_id = ring.content_id(SHA)
    assert len(content_id) == 64 and content_id != SHA
    assert content_id == ring.content_id(SHA)  # deterministic: dedup works
    assert other.content_id(SHA) != content_id  # who lacks the key cannot compute (or confirm) it
    assert ring.with_new_key("k2").content_id(SHA) == content_id  # KEK rotation keeps the ids
    assert crypto.KeyRing.from_json(ring.to_json()).content_id(SHA) == content_id
    without = json.loads(ring.to_json())
    del without["dedup_key"]
    with pytest.raises(crypto.KeyUnavailableError, match="dedup_key"):
        crypto.KeyRing.from_json(without).content_id(SHA)
    assert json.loads(ring.to_json())["dedup_key"] not in repr(ring) + str(ring)


def _entry(**changes) -> format.DataObject:
    return format.DataObject(**{"key": "p/x", "name": "x", "source": "t", "compression": "zstd",
                                "plaintext_size": 5, "plaintext_sha256": SHA, "encryption": {"kek_id": "k1"},
                                "ciphertext_size": 10, "ciphertext_sha256": "a" * 64, "ciphertext_md5": "b" * 32,
                                "ciphertext_crc32c": "c" * 8, **changes})


def _blob(**changes) -> format.Blob:
    return format.Blob(**{"key": "p/assets/blobs/ff/" + "f" * 64 + ".tink", "content_id": "f" * 64,
                          "compression": "none", "plaintext_size": 5, "ciphertext_size": 10,
                          "ciphertext_sha256": "a" * 64, "encryption": {"kek_id": "k1", "wrapped_key": "d2s="},
                          **changes})


def _info(**changes):
    values = {"key": "p/x", "size": 10, "sha256": "a" * 64, "metadata": {}, "native": {"md5": "b" * 32},
              "updated": None, **changes}
    return ObjectInfo(**values)


def test_check_copy_judges_size_claim_and_every_native_checksum():
    assert format.check_copy(_info(), _entry()) is None
    assert format.check_copy(None, _entry()) == "missing"
    assert "size" in format.check_copy(_info(size=11), _entry())
    assert "sha256 metadata" in format.check_copy(_info(sha256="d" * 64), _entry())
    assert "native md5" in format.check_copy(_info(native={"md5": "e" * 32}), _entry())
    assert "native crc32c" in format.check_copy(_info(native={"crc32c": "0" * 8}), _entry())


def test_a_lock_shorter_than_the_backup_needs_is_extended_by_a_whole_period():
    until = dt.datetime(2026, 12, 9, tzinfo=dt.UTC)
    assert format.lock_needs_extending(_info(retain_until=None), until)
    assert format.lock_needs_extending(_info(retain_until=until - dt.timedelta(seconds=1)), until)
    assert not format.lock_needs_extending(_info(retain_until=until), until)
    assert not format.lock_needs_extending(_info(retain_until=None), None)  # an unlocked backup needs none
    assert format.extended_lock(until, 7) == until + dt.timedelta(days=7)


def test_a_shared_blob_is_written_locked_a_period_beyond_its_backup_and_anything_else_for_the_backup():
    until = dt.datetime(2026, 12, 9, tzinfo=dt.UTC)
    assert format.write_lock(_blob(), until, 7) == until + dt.timedelta(days=7)
    assert format.write_lock(_entry(), until, 7) == until
    assert format.write_lock(_blob(), None, 7) is None  # an unlocked backup locks nothing


def test_blobs_are_bound_to_their_content_id_and_data_objects_to_their_backup():
    assert _blob().associated_data("b-1") == crypto.associated_data("assets-blob", "f" * 64)
    legacy = format.entry_from_json({"blob": True, "plaintext_sha256": SHA, "name": "blob-x", **_json(_blob()),
                                     "content_id": None})
    assert legacy.associated_data("b-1") == crypto.associated_data("assets-blob", SHA)
    assert _entry(name="t.copy.zst.tink").associated_data("b-1") == crypto.associated_data("b-1", "t.copy.zst.tink")


def _json(entry) -> dict:
    return {k: v for k, v in entry.to_json().items() if k != "content_id"}


_HEAD = {"backup_id": "b-1", "data_class": "media", "prefix": "p/media/2026/01/01/b-1",
         "created_at": "2026-01-01T00:00:00+00:00"}


def test_format_2_and_3_manifests_name_every_blob_they_need():
    index, blob = _entry(name="asset-index.jsonl.zst.tink"), _blob(key="p/assets/blobs/aa/a.tink", content_id="a")
    v3 = format.Manifest.from_json({**_HEAD, "format_version": 3, "objects": [index.to_json()],
                                    "blobs": [blob.to_json()]})
    assert v3.referenced_blob_keys("p") == {"p/assets/blobs/aa/a.tink"}
    assert v3.entries == [index, blob]
    legacy = {**_json(_blob()), "name": "blob-x", "blob": True, "key": "k", "plaintext_sha256": "0" * 64}
    v2 = format.Manifest.from_json({**_HEAD, "format_version": 2, "objects": [_entry(name="i").to_json(), legacy],
                                    "referenced_blobs": [SHA]})
    assert v2.referenced_blob_keys("p") == {format.blob_key("p", SHA)}
    assert v2.objects == (_entry(name="i"),)
    assert [b.key for b in v2.blobs] == ["k"] and v2.blobs[0].content_id is None
    with pytest.raises(format.FormatError, match="newer release"):
        format.Manifest.from_json({"format_version": format.FORMAT_VERSION + 1, "backup_id": "x"})
    with pytest.raises(format.FormatError, match="prefix"):
        format.Manifest.from_json({k: v for k, v in _HEAD.items() if k != "prefix"})


def test_a_stored_manifest_is_written_back_as_it_was_read():
    """Repair copies a manifest to a cloud that lacks it: the same JSON as the others hold, older formats
    included, never re-serialised from the dataclass (which would add fields format 2 did not have)."""
    stored = {**_HEAD, "format_version": 2, "objects": [_entry().to_json()], "referenced_blobs": [SHA],
              "a_field_a_newer_minor_release_wrote": 1}
    manifest = format.Manifest.from_json(stored)
    assert manifest.to_json() is stored
    assert json.loads(manifest.body()) == stored


def test_a_new_manifest_round_trips_through_its_json():
    manifest = format.build_manifest(
        backup_id="b-1", data_class="media", created_at=_HEAD["created_at"], snapshot_at=None,
        source_schema="wedsync", labels=["emergency"], reason="r", prefix=_HEAD["prefix"],
        lock_until="2026-01-08T00:00:00+00:00", retain_until=None, objects=[_entry(columns=("a", "b"))],
        blobs=[_blob()], tables={"t": {"columns": []}}, stored_blob_keys=[_blob().key])
    again = format.Manifest.from_json(json.loads(manifest.body()))
    assert again == manifest  # every field, entries included (columns back as a tuple)
    assert again.locked_until == dt.datetime(2026, 1, 8, tzinfo=dt.UTC) and again.retain_until is None


def test_blob_metadata_names_no_plaintext():
    metadata = format.object_metadata("assets-1", _blob(content_id="c" * 64))
    assert metadata == {"backup-id": "assets-1", "kek-id": "k1", "wrapped-key": "d2s=", "content-id": "c" * 64,
                        "compression": "none"}


def test_a_copy_is_judged_by_the_checksums_the_cloud_computed():
    """Bit rot or a writer that kept our metadata: the cloud's own CRC32 (S3's default for a plain put) or a
    checksum the manifest cannot check at all gives it away; the sha256 claim alone never vouches."""
    entry = _entry(ciphertext_crc32="1234abcd", ciphertext_sha256_composite=None)
    assert format.check_copy(_info(native={"crc32": "1234abcd"}), entry) is None
    assert "native crc32" in format.check_copy(_info(native={"crc32": "00000000"}), entry)
    assert "rewritten" in format.check_copy(_info(native={"crc64nvme": "00"}), entry)
    assert format.check_copy(_info(native={}), entry) is None  # an emulator that computes nothing
    # S3's composite checksum of a multipart upload
    multipart = _entry(ciphertext_crc32="1234abcd", ciphertext_sha256_composite="ab" * 32 + "-3")
    assert format.check_copy(_info(native={"sha256_composite": "ab" * 32 + "-3"}), multipart) is None
    assert "native sha256_composite" in format.check_copy(_info(native={"sha256_composite": "cd" * 32 + "-3"}),
                                                           multipart)
    # entries written before CRC32 was recorded are judged by what they can check, never flagged for the rest
    assert format.check_copy(_info(native={"sha256_composite": "ab" * 32 + "-3"}), _entry()) is None


def test_the_composite_checksum_is_s3s_checksum_of_part_checksums(tmp_path):
    import hashlib as h
    import zlib

    from wedsync_dr.streams import CloudChecksumWriter

    data = bytes(range(256)) * 1000  # 256,000 bytes: parts of 100,000 + 100,000 + 56,000
    with open(tmp_path / "x", "wb") as f:
        sink = CloudChecksumWriter(f, 100_000)
        for start in range(0, len(data), 7_777):  # writes that straddle part boundaries
            sink.write(memoryview(data)[start:start + 7_777])
    parts = [h.sha256(data[i:i + 100_000]).digest() for i in range(0, len(data), 100_000)]
    assert sink.composite_sha256() == h.sha256(b"".join(parts)).hexdigest() + "-3"
    assert f"{sink.crc32:08x}" == f"{zlib.crc32(data):08x}"
    with open(tmp_path / "y", "wb") as f:
        small = CloudChecksumWriter(f, 100_000)
        small.write(data[:99_999])
    assert small.composite_sha256() is None  # one request: S3 reports the whole-object sha256
