"""The retention plan, without the stack: which backups the policy's GFS buckets keep and which go."""

from __future__ import annotations

import datetime as dt

from wedsync_dr import retention
from wedsync_dr.policy import load_policy

POLICY = load_policy()


def _history(now: dt.datetime) -> list[dict]:
    """Hourly backups for 3 days, then one a day back 100 days, plus an old emergency one and a failed one."""
    items = []
    for hours in range(0, 72):
        items.append({"backup_id": f"c-h{hours}", "data_class": "critical_weddings", "status": "validated",
                      "started_at": now - dt.timedelta(hours=hours, minutes=5), "labels": []})
    for days in range(3, 100):
        items.append({"backup_id": f"c-d{days}", "data_class": "critical_weddings", "status": "validated",
                      "started_at": now - dt.timedelta(days=days, hours=1), "labels": []})
    items.append({"backup_id": "c-emergency-80d", "data_class": "critical_weddings", "status": "validated",
                  "started_at": now - dt.timedelta(days=80, hours=7), "labels": ["emergency"]})
    items.append({"backup_id": "c-failed", "data_class": "critical_weddings", "status": "failed",
                  "started_at": now - dt.timedelta(days=2), "labels": []})
    items.append({"backup_id": "v-only", "data_class": "vendor_data", "status": "degraded",
                  "started_at": now - dt.timedelta(days=400), "labels": []})
    return items


def test_retention_keeps_exactly_what_the_policy_says():
    now = dt.datetime(2026, 11, 22, 12, tzinfo=dt.UTC)
    decided = retention.plan(POLICY, _history(now), now)
    kept = set(decided.keep)
    assert {f"c-h{h}" for h in range(48)} <= kept  # hourly_hours: 48
    late_hourly = {f"c-h{h}" for h in range(49, 72)} & kept  # past 48 h only a day's newest stays
    assert len(late_hourly) <= 2 and all(decided.keep[b] == ["daily"] for b in late_hourly)
    daily = {b for b in kept if b.startswith("c-d")}
    # one per day for 35 days (day 3's newest is an hourly backup of the same day)
    assert {f"c-d{d}" for d in range(4, 35)} <= daily and "c-d3" in decided.delete
    assert "c-emergency-80d" in kept and "emergency" in decided.keep["c-emergency-80d"]
    assert "c-failed" in decided.delete
    assert "v-only" in kept and decided.keep["v-only"] == ["newest good backup"]  # never the last one
    assert "c-d99" in decided.delete  # older than every bucket: 12 weeks = 84 days, 12 months keeps monthly
    monthly = [b for b, why in decided.keep.items() if why == ["monthly"]]
    assert monthly and all(int(b[3:]) > 35 for b in monthly)
    assert set(decided.delete).isdisjoint(kept)
