"""The abandoned-backup sweep's decisions (issue #18, item 2), offline: an in-memory catalog and clouds."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest

from wedsync_dr import abandoned, backup, catalog, format
from wedsync_dr.policy import load_policy
from wedsync_dr.storage import ObjectInfo, StorageError

POLICY = load_policy()
NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
DEAD_RUN = ("backup_client_data", "scheduled__dead")
LIVE_RUN = ("backup_client_data", "scheduled__live")


class FakeStore:
    """One cloud as a dict of key -> bytes; `broken` makes every call fail as an outage would."""

    def __init__(self, cloud: str, objects: dict[str, bytes] | None = None, broken: bool = False) -> None:
        self.cloud = cloud
        self.objects = dict(objects or {})
        self.broken = broken

    def _check(self, key: str) -> None:
        if self.broken:
            raise StorageError(self.cloud, key, "connection refused")

    def head(self, key: str) -> ObjectInfo | None:
        self._check(key)
        if key not in self.objects:
            return None
        return ObjectInfo(key, len(self.objects[key]), None, {}, {}, None)

    def read_bytes(self, key: str) -> bytes:
        self._check(key)
        return self.objects[key]

    def list(self, prefix: str):
        self._check(prefix)
        return [ObjectInfo(k, len(v), None, {}, {}, None) for k, v in sorted(self.objects.items())
                if k.startswith(prefix)]

    def delete(self, key: str) -> None:
        self._check(key)
        self.objects.pop(key, None)

    def delete_prefix(self, prefix: str) -> int:
        keys = [info.key for info in self.list(prefix)]
        for key in keys:
            self.delete(key)
        return len(keys)


class FakeCatalog:
    """backup_catalog.backups as a dict, behind the catalog functions the sweep calls."""

    def __init__(self, monkeypatch) -> None:
        self.rows: dict[str, dict] = {}
        self.recorded: list[tuple[str, str]] = []
        monkeypatch.setattr(catalog, "running_backups", self.running_backups)
        monkeypatch.setattr(catalog, "backup_statuses", self.backup_statuses)
        monkeypatch.setattr(catalog, "mark_abandoned", self.mark_abandoned)
        monkeypatch.setattr(catalog, "upsert_from_manifest", self.upsert_from_manifest)

    def add(self, backup_id: str, *, status: str = "running", age: dt.timedelta = dt.timedelta(hours=1),
            run: tuple[str, str] | None = DEAD_RUN) -> dict:
        data_class = backup_id.rsplit("-", 2)[0]
        started = NOW - age
        row = {"backup_id": backup_id, "data_class": data_class, "status": status, "started_at": started,
               "prefix": backup.backup_prefix(POLICY, data_class, backup_id, started),
               "dag_id": run[0] if run else None, "run_id": run[1] if run else None}
        self.rows[backup_id] = row
        return row

    def running_backups(self, _conn, prefix, data_classes=None):
        return [dict(r) for r in self.rows.values() if r["status"] == "running" and r["prefix"].startswith(prefix + "/")
                and (data_classes is None or r["data_class"] in data_classes)]

    def backup_statuses(self, _conn, backup_ids):
        return {i: self.rows[i]["status"] for i in backup_ids if i in self.rows}

    def mark_abandoned(self, _conn, backup_id, error):
        if self.rows[backup_id]["status"] != "running":
            return False
        self.rows[backup_id]["status"] = "abandoned"
        return True

    def upsert_from_manifest(self, _conn, manifest, cloud):
        self.rows[manifest.backup_id]["status"] = "degraded"
        self.recorded.append((manifest.backup_id, cloud))


@pytest.fixture
def staging_root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(POLICY.staging_dir_env, str(tmp_path / "staging"))
    return tmp_path / "staging"


@pytest.fixture
def cat(monkeypatch) -> FakeCatalog:
    return FakeCatalog(monkeypatch)


def _stage(backup_id: str, age: dt.timedelta = dt.timedelta(minutes=5)) -> Path:
    path = backup.staging_dir(POLICY, backup_id)
    path.mkdir(parents=True)
    (path / "clients.bin.zst").write_bytes(b"compressed plaintext")
    stamp = (NOW - age).timestamp()
    os.utime(path, (stamp, stamp))
    return path


def _clouds(objects: dict[str, bytes] | None = None, broken: tuple[str, ...] = ()) -> dict[str, FakeStore]:
    return {c: FakeStore(c, objects, broken=c in broken) for c in POLICY.cloud_names}


def _live(dag_id, run_id) -> bool:
    return (dag_id, run_id) == LIVE_RUN


def test_is_abandoned_asks_airflow_and_falls_back_to_the_run_timeout():
    row = {"started_at": NOW - dt.timedelta(hours=1), "dag_id": DEAD_RUN[0], "run_id": DEAD_RUN[1]}
    assert abandoned.is_abandoned(row, NOW, _live)
    assert not abandoned.is_abandoned({**row, "run_id": LIVE_RUN[1]}, NOW, _live)
    by_hand = {**row, "dag_id": None, "run_id": None}
    assert not abandoned.is_abandoned(by_hand, NOW, _live)  # no run to ask about: young is alive
    assert abandoned.is_abandoned({**by_hand, "started_at": NOW - dt.timedelta(hours=7)}, NOW, _live)
    old_live = {**row, "run_id": LIVE_RUN[1], "started_at": NOW - dt.timedelta(hours=7)}
    assert abandoned.is_abandoned(old_live, NOW, _live)  # nothing runs past the run timeout


def test_staging_is_orphaned_unless_running_or_young_without_a_row():
    assert abandoned.staging_is_orphaned("failed", dt.timedelta(0))
    assert abandoned.staging_is_orphaned("validated", dt.timedelta(0))
    assert not abandoned.staging_is_orphaned("running", dt.timedelta(days=3))
    assert not abandoned.staging_is_orphaned(None, dt.timedelta(hours=1))  # its row is being written
    assert abandoned.staging_is_orphaned(None, dt.timedelta(hours=7))


def test_a_dead_backup_loses_its_staging_and_its_objects_everywhere_but_never_a_shared_blob(staging_root, cat):
    dead = cat.add("client_data-20260601T110000Z-dead01")
    live = cat.add("client_data-20260601T113000Z-11fe01", run=LIVE_RUN)
    dead_dir, live_dir = _stage(dead["backup_id"]), _stage(live["backup_id"])
    blob = format.blob_key(POLICY.prefix, "ab" * 32)
    objects = {f"{dead['prefix']}/clients.bin.zst.tink": b"x", f"{dead['prefix']}/couples.bin.zst.tink": b"y",
               f"{live['prefix']}/clients.bin.zst.tink": b"z", blob: b"shared"}
    clouds = _clouds(objects)

    report = abandoned.sweep(POLICY, None, clouds, is_running=_live, now=NOW)

    assert report.abandoned == [dead["backup_id"]] and report.ok
    assert cat.rows[dead["backup_id"]]["status"] == "abandoned"
    assert cat.rows[live["backup_id"]]["status"] == "running"
    assert not dead_dir.exists() and live_dir.exists()
    for store in clouds.values():
        assert sorted(store.objects) == sorted([f"{live['prefix']}/clients.bin.zst.tink", blob])
    assert report.objects_deleted == {c: 2 for c in POLICY.cloud_names}


def test_a_prefix_over_the_blob_store_still_spares_the_blobs(monkeypatch):
    """Were the shared blobs ever to sit under a backup's prefix, deleting its objects would still spare them."""
    prefix = f"{POLICY.prefix}/assets/assets-20260601T110000Z-dead02"
    own, blob = f"{prefix}/asset-index.jsonl.zst.tink", f"{prefix}/blobs/ab/ab.tink"
    monkeypatch.setattr(format, "blobs_prefix", lambda _policy_prefix: f"{prefix}/blobs/")
    store = FakeStore("aws", {own: b"index", blob: b"shared"})
    assert abandoned._delete_own_objects(POLICY, store, prefix) == 1
    assert list(store.objects) == [blob]


def test_a_committed_backup_is_recorded_from_its_manifest_and_nothing_is_deleted(staging_root, cat):
    row = cat.add("vendor_data-20260601T110000Z-c0117d")
    staged = _stage(row["backup_id"])
    manifest = {"format_version": 3, "backup_id": row["backup_id"], "prefix": row["prefix"],
                "data_class": "vendor_data", "created_at": "2026-06-01T11:00:00+00:00"}
    objects = {f"{row['prefix']}/vendors.bin.zst.tink": b"v"}
    clouds = _clouds(objects)
    clouds["gcp"].objects[format.manifest_key(row["prefix"])] = json.dumps(manifest).encode()

    report = abandoned.sweep(POLICY, None, clouds, is_running=_live, now=NOW)

    assert report.recorded == [row["backup_id"]] and not report.abandoned
    assert cat.recorded == [(row["backup_id"], "gcp")] and cat.rows[row["backup_id"]]["status"] == "degraded"
    assert all(f"{row['prefix']}/vendors.bin.zst.tink" in s.objects for s in clouds.values())
    assert not staged.exists()  # plaintext goes whatever the outcome


def test_a_cloud_that_errors_is_reported_and_the_row_stays_running_until_every_cloud_is_clean(staging_root, cat):
    row = cat.add("client_data-20260601T110000Z-0ff11e")
    staged = _stage(row["backup_id"])
    key = f"{row['prefix']}/clients.bin.zst.tink"
    clouds = _clouds({key: b"x"}, broken=("azure",))

    first = abandoned.sweep(POLICY, None, clouds, is_running=_live, now=NOW)

    assert not first.ok and set(first.pending[row["backup_id"]]) == {"azure"}
    assert cat.rows[row["backup_id"]]["status"] == "running"
    assert not staged.exists()  # the plaintext did not wait for the cloud
    assert all(key in s.objects for s in clouds.values())  # azure might hold a manifest: nothing deleted yet

    clouds["azure"].broken = False
    second = abandoned.sweep(POLICY, None, clouds, is_running=_live, now=NOW)
    assert second.ok and second.abandoned == [row["backup_id"]]
    assert not any(key in s.objects for s in clouds.values())


def test_a_sweep_for_one_class_spares_the_others_and_the_current_run(staging_root, cat):
    other = cat.add("vendor_data-20260601T110000Z-07e001", run=("backup_vendor_data", "scheduled__dead"))
    mine = cat.add("client_data-20260601T110000Z-0c0001", run=DEAD_RUN)
    previous = cat.add("client_data-20260601T113000Z-0c0002", run=("backup_client_data", "manual__now"))
    dirs = {r["backup_id"]: _stage(r["backup_id"]) for r in (other, mine, previous)}

    report = abandoned.sweep(POLICY, None, _clouds(), is_running=lambda _d, _r: False, now=NOW,
                             data_classes=["client_data"], current_run=("backup_client_data", "manual__now"))

    assert report.abandoned == [mine["backup_id"]]
    assert {i: p.exists() for i, p in dirs.items()} == {other["backup_id"]: True, mine["backup_id"]: False,
                                                        previous["backup_id"]: True}
    assert cat.rows[other["backup_id"]]["status"] == cat.rows[previous["backup_id"]]["status"] == "running"


def test_orphaned_staging_directories_go_and_the_others_stay(staging_root, cat):
    finished = cat.add("client_data-20260601T090000Z-f1a15d", status="failed")
    by_hand = cat.add("client_data-20260601T113000Z-ba4d00", run=None)  # running, no run recorded, young
    dirs = {"finished": _stage(finished["backup_id"]), "by_hand": _stage(by_hand["backup_id"]),
            "old_no_row": _stage("client_data-20260531T010000Z-01d000", age=dt.timedelta(hours=8)),
            "young_no_row": _stage("client_data-20260601T115900Z-0e3000")}
    repair_dir = staging_root / "repair"
    repair_dir.mkdir()

    report = abandoned.sweep(POLICY, None, _clouds(), is_running=lambda _d, _r: False, now=NOW)

    assert {name: path.exists() for name, path in dirs.items()} == {
        "finished": False, "by_hand": True, "old_no_row": False, "young_no_row": True}
    assert repair_dir.exists()  # not a backup's directory
    assert sorted(report.staging_removed) == sorted([finished["backup_id"], "client_data-20260531T010000Z-01d000"])
    assert not report.abandoned and cat.rows[by_hand["backup_id"]]["status"] == "running"
