"""Pure decisions, without the stack: policy errors, cloud order for restores, manifest building."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
from pathlib import Path

import pytest
import yaml

from wedsync_dr import format
from wedsync_dr.policy import DEFAULT_POLICY_FILE, PolicyError, load_policy, parse_policy
from wedsync_dr.restore import cloud_order

RAW = yaml.safe_load(Path(DEFAULT_POLICY_FILE).read_text())


def _broken(change) -> dict:
    raw = copy.deepcopy(RAW)
    change(raw)
    return raw


@pytest.mark.parametrize(("change", "where"), [
    (lambda r: r.update(quorum=4), "quorum: 4 exceeds the 3 clouds"),
    (lambda r: r["clouds"].append(dict(r["clouds"][0])), "cloud names must be unique"),
    (lambda r: r["data_classes"]["vendor_data"].update(pool="nowhere"), "data_classes/vendor_data/pool"),
    (lambda r: r["clouds"][0].update(kind="ftp"), "clouds/0 (aws)/kind"),
    (lambda r: r["timeouts"].update(read_seconds=0), "timeouts/read_seconds"),
    (lambda r: r["data_classes"]["assets"].pop("source_env"), "data_classes/assets"),
    (lambda r: r.update(surprise=True), "(top level)"),
])
def test_an_invalid_policy_names_the_field(change, where):
    with pytest.raises(PolicyError, match="backup policy invalid") as refused:
        parse_policy(_broken(change))
    assert where in str(refused.value)


def test_a_cloud_inherits_the_policys_timeouts_and_may_set_its_own():
    raw = _broken(lambda r: r["clouds"][2].update(timeouts={"read_seconds": 90}))
    policy = parse_policy(raw)
    assert policy.cloud("aws").timeouts == {"connect_seconds": 5, "read_seconds": 30}
    assert policy.cloud("gcp").timeouts == {"connect_seconds": 5, "read_seconds": 90}


def test_restores_try_the_requested_cloud_then_healthy_ones_then_any():
    clouds = {"aws": object(), "azure": object(), "gcp": object()}
    assert cloud_order(clouds) == ["aws", "azure", "gcp"]
    assert cloud_order(clouds, "gcp") == ["gcp", "aws", "azure"]
    assert cloud_order(clouds, "auto", healthy=["gcp", "azure"]) == ["gcp", "azure", "aws"]
    assert cloud_order(clouds, "aws", healthy=["gcp"]) == ["aws", "gcp", "azure"]  # asked for wins over health
    assert cloud_order({"gcp": object()}, "aws", healthy=["azure"]) == ["gcp"]  # only the stores it was given


def test_a_manifest_lists_its_objects_and_every_blob_but_counts_only_what_it_stored():
    def blob(n: int) -> format.Blob:
        cid = hashlib.sha256(bytes([n])).hexdigest()
        # plaintext_sha256 set as a restore sets it from the index: the manifest must not carry it
        return format.Blob(content_id=cid, key=format.blob_key("p", cid), compression="none", plaintext_size=10,
                           ciphertext_sha256="a" * 64, ciphertext_size=50, compressed_size=10,
                           encryption={"kek_id": "k1"}, plaintext_sha256="b" * 64)
    index = format.DataObject(name="asset-index.jsonl.zst.tink", key="p/x/asset-index.jsonl.zst.tink",
                              source="asset-index", rows=3, compression="zstd", plaintext_sha256="c" * 64,
                              plaintext_size=300, compressed_size=100, ciphertext_sha256="d" * 64,
                              ciphertext_size=140, encryption={"kek_id": "k1"})
    stored, earlier = blob(1), blob(2)
    manifest = format.build_manifest(
        backup_id="media-20260101T000000Z-abcdef", data_class="media", created_at="2026-01-01T00:00:00+00:00",
        snapshot_at=None, source_schema="wedsync", labels=["emergency"], reason="r", prefix="p/x",
        lock_until="2026-01-08T00:00:00+00:00", retain_until="2026-04-01T00:00:00+00:00", objects=[index],
        blobs=[earlier, stored], tables={}, stored_blob_keys=[stored.key]).to_json()
    assert manifest["format_version"] == format.FORMAT_VERSION
    assert [b["key"] for b in manifest["blobs"]] == sorted([stored.key, earlier.key])
    assert all(set(b) == set(format.BLOB_FIELDS) for b in manifest["blobs"])  # no path, no plaintext hash
    assert manifest["totals"]["objects"] == 1 and manifest["totals"]["blobs"] == 2
    assert manifest["totals"]["blobs_stored"] == 1
    assert manifest["totals"]["ciphertext_bytes"] == 140 + 50  # the index and the one blob it stored
    assert manifest["snapshot_at"] == manifest["created_at"] and manifest["retain_until"].startswith("2026-04")
    assert format.Manifest.from_json(manifest).locked_until == dt.datetime(2026, 1, 8, tzinfo=dt.UTC)


def test_the_shipped_policy_loads():
    policy = load_policy()
    assert policy.quorum == 2 and set(policy.cloud_names) == {"aws", "azure", "gcp"}
    assert [c for c in policy.data_classes.values() if c.kind == "assets"]


def test_the_policy_rejects_an_email_notifier_without_recipients():
    raw = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    raw["alerts"]["notifiers"].append({"kind": "smtp", "conn_id": "mail"})
    with pytest.raises(PolicyError, match="alerts/notifiers/3"):
        parse_policy(raw)
