"""One listing instead of a HEAD per blob, where that is cheaper (offline): which new blobs (asset files, table
chunks) a cloud already holds, and the proof of the shared blobs a backup references -- a listing item may
prove a copy good, never bad, and a failed listing falls back to HEADs."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib

import pytest

from wedsync_dr import backup, format
from wedsync_dr.policy import load_policy
from wedsync_dr.storage import CloudUnavailable, ObjectInfo

PREFIX = "wedsync-dr-unit"


class CountingStore:
    """An object store of ObjectInfos that counts the requests it is asked; its listing items are what HEAD
    answers, locks included (as Azure's and GCS's)."""

    listing_has_checksums = True

    def __init__(self, cloud: str, infos: list[ObjectInfo], *, list_fails: bool = False):
        self.cloud = cloud
        self.list_page_size = 1000
        self.infos = {i.key: i for i in infos}
        self.list_fails = list_fails
        self.heads: list[str] = []
        self.listings: list[str] = []
        self.relocked: list[str] = []
        self.listed_items = 0

    def head(self, key: str) -> ObjectInfo | None:
        self.heads.append(key)
        return self.infos.get(key)

    def list(self, prefix: str):
        self.listings.append(prefix)
        if self.list_fails:
            raise CloudUnavailable(self.cloud, prefix, "listing refused")
        for key, info in sorted(self.infos.items()):
            if key.startswith(prefix):
                self.listed_items += 1
                yield info

    def extend_retention(self, key: str, retain_until) -> bool:
        self.relocked.append(key)
        if key in self.infos:
            self.infos[key] = dataclasses.replace(self.infos[key], retain_until=retain_until)
        return True


class S3LikeStore(CountingStore):
    """Listing items carry size and the MD5 of the bytes only: no metadata, no lock (S3's ListObjectsV2)."""

    listing_has_checksums = False
    listing_has_md5 = True

    written = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)

    def list(self, prefix: str):
        for info in super().list(prefix):
            yield dataclasses.replace(info, sha256=None, metadata={}, retain_until=None, updated=self.written)


def _stored_chunk(cid: str, retain_until: dt.datetime | None = None) -> ObjectInfo:
    return ObjectInfo(format.chunk_key(PREFIX, cid), 99, "ab" * 32,
                      {"content-id": cid, "wrapped-key": "d3JhcHBlZA==", "kek-id": "kek-1"}, {"md5": "00" * 16}, None,
                      retain_until)


def _candidates(n: int) -> dict[str, backup._Candidate]:
    ids = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]  # spread over the key shards
    return {cid: backup._Candidate(format.chunk_key(PREFIX, cid), 10, "cd" * 32, "zstd") for cid in ids}


@pytest.fixture
def proves_everything(monkeypatch):
    proved = []
    monkeypatch.setattr(backup, "_proves", lambda store, entry, key_ring, sha: proved.append((store.cloud, entry.key))
                        or True)
    return proved


def test_many_candidates_cost_one_listing_per_cloud_and_a_head_only_for_what_it_holds(proves_everything):
    candidates = _candidates(40)
    held = list(candidates)[7]
    aws = CountingStore("aws", [_stored_chunk(held), _stored_chunk("e" * 64)])  # and one no candidate is
    azure = CountingStore("azure", [])
    adopted = backup._adopt_stored_blobs(load_policy(), {"aws": aws, "azure": azure}, None, candidates)
    assert list(adopted) == [held] and adopted[held].key == format.chunk_key(PREFIX, held)
    assert aws.listings == azure.listings == [format.chunks_prefix(PREFIX)]
    assert aws.heads == [format.chunk_key(PREFIX, held)] and azure.heads == []
    assert proves_everything == [("aws", format.chunk_key(PREFIX, held))]  # still proven to decrypt


def test_few_candidates_or_a_large_listing_are_asked_for_by_head(proves_everything):
    few = _candidates(8)
    aws = CountingStore("aws", [_stored_chunk(next(iter(few)))])
    assert len(backup._adopt_stored_blobs(load_policy(), {"aws": aws}, None, few)) == 1
    assert aws.listings == [] and len(aws.heads) == 8
    many = _candidates(40)  # but the prefix holds 100,000 objects (101 pages): 40 HEADs are cheaper
    aws = CountingStore("aws", [])
    backup._adopt_stored_blobs(load_policy(), {"aws": aws}, None, many, stored_estimate=100_000)
    assert aws.listings == [] and len(aws.heads) == 40


def test_a_failed_listing_falls_back_to_a_head_per_candidate(proves_everything):
    candidates = _candidates(40)
    held = list(candidates)[-1]
    gcp = CountingStore("gcp", [_stored_chunk(held)], list_fails=True)
    adopted = backup._adopt_stored_blobs(load_policy(), {"gcp": gcp}, None, candidates)
    assert list(adopted) == [held] and gcp.listings and len(gcp.heads) == 40


def _shared_blob(cid: str, size: int = 99) -> format.Blob:
    return format.Blob(content_id=cid, key=format.chunk_key(PREFIX, cid), compression="zstd", plaintext_size=10,
                       ciphertext_sha256="ab" * 32, ciphertext_size=size, ciphertext_md5="00" * 16,
                       ciphertext_crc32c=None, encryption={})


def test_a_listed_copy_that_matches_needs_no_head_and_one_that_does_not_is_asked_again():
    good, stale, absent = (hashlib.sha256(w).hexdigest() for w in (b"good", b"stale", b"absent"))
    store = CountingStore("gcp", [_stored_chunk(good), _stored_chunk(stale)])
    listed = {**store.infos, format.chunk_key(PREFIX, stale): dataclasses.replace(_stored_chunk(stale), size=1)}
    check = {cid: backup._check_and_lock(store, _shared_blob(cid), shared=True, lock_until=None, lock_days=1,
                                         listed=listed) for cid in (good, stale, absent)}
    assert check[good] is None and check[stale] is None  # the listing was stale: the object itself is fine
    assert check[absent].startswith("missing")
    assert store.heads == [format.chunk_key(PREFIX, stale), format.chunk_key(PREFIX, absent)]


def test_a_listing_that_runs_past_what_the_heads_would_cost_is_abandoned_for_heads(proves_everything):
    """The catalog's estimate can be far too low (it was lost; retention keeps old versions; other classes share
    the prefix): the listing stops once it has cost what a HEAD per candidate would, and HEADs answer."""
    candidates = _candidates(40)  # worth at most 5 pages
    held = list(candidates)[3]
    crowd = [_stored_chunk(hashlib.sha256(f"other {i}".encode()).hexdigest()) for i in range(6_000)]
    aws = CountingStore("aws", [_stored_chunk(held), *crowd])
    adopted = backup._adopt_stored_blobs(load_policy(), {"aws": aws}, None, candidates, stored_estimate=0)
    assert list(adopted) == [held]
    assert aws.listings and aws.listed_items <= 5 * 1000 + 1 and len(aws.heads) == 40


def test_a_listed_copy_locked_for_less_than_the_backup_is_relocked():
    now = dt.datetime.now(dt.UTC)
    short, long_enough, unlocked = (hashlib.sha256(w).hexdigest() for w in (b"short", b"long", b"unlocked"))
    infos = [_stored_chunk(short, now + dt.timedelta(days=1)), _stored_chunk(long_enough, now + dt.timedelta(days=90)),
             _stored_chunk(unlocked)]
    store = CountingStore("gcp", infos)
    for cid in (short, long_enough, unlocked):
        assert backup._check_and_lock(store, _shared_blob(cid), shared=True, lock_until=now + dt.timedelta(days=35),
                                      lock_days=35, listed=dict(store.infos)) is None
    assert store.heads == [] and store.relocked == [format.chunk_key(PREFIX, short), format.chunk_key(PREFIX, unlocked)]


def test_where_listings_show_no_lock_a_head_is_asked_only_for_a_lock_recorded_too_short():
    """S3: the listing proves each chunk's bytes (its MD5); the lock is the date the catalog recorded when the chunk
    was last seen by HEAD or locked. A chunk recorded as locked long enough costs no request; one recorded too
    short, or not at all, is asked by HEAD and re-locked if need be, and what was seen or set is to be recorded.
    A listed MD5 that does not match is asked by HEAD too (a listing never decides that a copy is bad), and so is
    a copy written after its lock was recorded (a fill or repair re-writes a copy, with a lock of its own)."""
    now = dt.datetime.now(dt.UTC)
    lock_until = now + dt.timedelta(days=7)
    names = ("long", "short", "unrecorded", "stale", "rewritten")
    ids = {name: hashlib.sha256(name.encode()).hexdigest() for name in names}
    days = {"long": 14, "short": 3, "unrecorded": 10, "stale": 30, "rewritten": 8}
    store = S3LikeStore("aws", [_stored_chunk(ids[n], now + dt.timedelta(days=d)) for n, d in days.items()])
    key = {name: format.chunk_key(PREFIX, cid) for name, cid in ids.items()}
    listed = {i.key: i for i in store.list(PREFIX)}
    listed[key["stale"]] = dataclasses.replace(listed[key["stale"]], native={"md5": "11" * 16})
    listed[key["rewritten"]] = dataclasses.replace(listed[key["rewritten"]], updated=now - dt.timedelta(hours=1))
    recorded_at = now - dt.timedelta(hours=2)  # after the copies were written (a day ago), before the re-write
    locks = backup._Locks({key[n]: (now + dt.timedelta(days=d), recorded_at)
                           for n, d in (("long", 14), ("short", 3), ("stale", 30), ("rewritten", 30))})
    for cid in ids.values():
        assert backup._check_and_lock(store, _shared_blob(cid), shared=True, lock_until=lock_until, lock_days=7,
                                      listed=listed, locks=locks) is None
    assert sorted(store.heads) == sorted([key["short"], key["unrecorded"], key["stale"], key["rewritten"]])
    assert store.relocked == [key["short"]]  # the only one the cloud showed locked for less than the backup
    assert locks.seen == {key["short"]: lock_until + dt.timedelta(days=7),
                          key["unrecorded"]: now + dt.timedelta(days=10), key["stale"]: now + dt.timedelta(days=30),
                          key["rewritten"]: now + dt.timedelta(days=8)}  # the HEAD's date, not the recorded 30
    store.heads.clear()  # without a lock to keep, the listing alone proves the copy
    assert backup._check_and_lock(store, _shared_blob(ids["unrecorded"]), shared=True, lock_until=None, lock_days=7,
                                  listed=listed, locks=None) is None
    assert store.heads == []


def test_a_catalog_that_cannot_answer_about_locks_costs_heads_not_the_backup(caplog):
    """The recorded lock dates save requests and never decide a check: a failing catalog means a HEAD for each
    blob (None), and a record that cannot be written is only logged."""

    class Broken:
        def execute(self, *args, **kwargs):
            raise OSError("catalog connection lost")

        def cursor(self):
            raise OSError("catalog connection lost")

    assert backup._recorded_locks(Broken(), "aws", ["k"]) is None
    backup._record_locks(Broken(), "aws", {"k": dt.datetime.now(dt.UTC)})
    assert "cannot read the recorded locks of aws" in caplog.text and "cannot record the locks" in caplog.text
