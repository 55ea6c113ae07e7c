"""What the status page and its JSON API show: read from the catalog (and the source, for critical weddings)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from wedsync_dr.policy import Policy


def _age_minutes(when: dt.datetime | None, now: dt.datetime) -> float | None:
    return round((now - when).total_seconds() / 60, 1) if when else None


def collect(policy: Policy, catalog_conn, source_conn=None, now: dt.datetime | None = None) -> dict[str, Any]:
    now = now or dt.datetime.now(dt.UTC)
    classes = {}
    for name, data_class in sorted(policy.data_classes.items()):
        row = catalog_conn.execute(
            "SELECT backup_id, status, started_at, clouds_ok, clouds_failed FROM backup_catalog.backups "
            "WHERE data_class = %s AND status IN ('validated', 'degraded') ORDER BY started_at DESC LIMIT 1",
            (name,)).fetchone()
        drill = catalog_conn.execute(
            "SELECT drilled_at, ok, backup_id, cloud, detail FROM backup_catalog.drills WHERE data_class = %s "
            "ORDER BY drilled_at DESC LIMIT 1", (name,)).fetchone()
        age = _age_minutes(row[2], now) if row else None
        classes[name] = {
            "rpo_minutes": data_class.rpo_minutes,
            "last_backup": {"backup_id": row[0], "status": row[1], "started_at": row[2].isoformat(),
                            "clouds_ok": row[3], "clouds_failed": row[4]} if row else None,
            "age_minutes": age,
            "rpo_ok": age is not None and age <= data_class.rpo_minutes,
            "last_drill": {"at": drill[0].isoformat(), "ok": drill[1], "backup_id": drill[2], "cloud": drill[3],
                           "detail": drill[4]} if drill else None,
        }
    degraded = [{"backup_id": b, "data_class": c, "started_at": s.isoformat(), "clouds_failed": f}
                for b, c, s, f in catalog_conn.execute(
                    "SELECT backup_id, data_class, started_at, clouds_failed FROM backup_catalog.backups "
                    "WHERE status = 'degraded' ORDER BY started_at DESC LIMIT 50")]
    health = {c: {"healthy": h, "failures_in_a_row": f, "latency_ms": lat, "checked_at": at.isoformat(),
                  "error": err}
              for c, h, f, lat, at, err in catalog_conn.execute(
                  "SELECT cloud, healthy, failures_in_a_row, last_latency_ms, checked_at, last_error "
                  "FROM backup_catalog.cloud_health ORDER BY cloud")}
    weddings = []
    bundles = [dc for dc in policy.data_classes.values() if dc.kind == "wedding_bundles"]
    if source_conn is not None and bundles:
        window = bundles[0].window_days
        critical = source_conn.execute(
            f"SELECT wedding_id, wedding_date FROM {policy.source_schema}.weddings WHERE wedding_date BETWEEN "
            "(now() AT TIME ZONE 'UTC')::date AND (now() AT TIME ZONE 'UTC')::date + %s AND status <> 'cancelled' "
            "ORDER BY wedding_date, wedding_id", (window,)).fetchall()
        last = dict(catalog_conn.execute(
            "SELECT o.wedding_id, max(b.started_at) FROM backup_catalog.backup_objects o JOIN backup_catalog.backups b "
            "USING (backup_id) WHERE b.status IN ('validated', 'degraded') AND o.wedding_id = ANY(%s) "
            "GROUP BY o.wedding_id", ([w for w, _ in critical],)).fetchall())
        for wid, date in critical:
            age = _age_minutes(last.get(wid), now)
            weddings.append({"wedding_id": wid, "wedding_date": date.isoformat(),
                             "last_backup_at": last[wid].isoformat() if wid in last else None,
                             "age_minutes": age, "rpo_ok": age is not None and age <= bundles[0].rpo_minutes})
    return {"generated_at": now.isoformat(), "classes": classes, "degraded_backups": degraded,
            "cloud_health": health, "critical_weddings": weddings,
            "ok": all(c["rpo_ok"] for c in classes.values()) and all(h["healthy"] for h in health.values())}


def render_html(status: dict[str, Any]) -> str:
    """A small self-contained page: one table per concern, green / amber / red."""
    from html import escape

    def cell(text: object, level: str = "") -> str:
        return f'<td class="{level}">{escape(str(text))}</td>'

    rows = []
    for name, c in status["classes"].items():
        last = c["last_backup"] or {}
        level = "ok" if c["rpo_ok"] and last.get("status") == "validated" else ("warn" if c["rpo_ok"] else "bad")
        drill = c["last_drill"]
        rows.append("<tr>" + cell(name) + cell(last.get("status", "none"), level)
                    + cell("-" if c["age_minutes"] is None else f"{c['age_minutes']:.0f} min")
                    + cell(f"{c['rpo_minutes']} min") + cell(", ".join(last.get("clouds_ok", [])) or "-")
                    + cell(", ".join(last.get("clouds_failed", [])) or "-")
                    + cell("never" if not drill else ("passed " if drill["ok"] else "FAILED ") + drill["at"][:16],
                           "" if not drill else ("ok" if drill["ok"] else "bad")) + "</tr>")
    health = "".join("<tr>" + cell(cloud) + cell("healthy" if h["healthy"] else "UNHEALTHY",
                                                 "ok" if h["healthy"] else "bad")
                     + cell(f"{h['latency_ms']:.0f} ms" if h["latency_ms"] is not None else "-")
                     + cell(h["checked_at"][:19]) + "</tr>" for cloud, h in status["cloud_health"].items())
    degraded = "".join("<tr>" + cell(d["data_class"]) + cell(d["backup_id"]) + cell(", ".join(d["clouds_failed"]),
                                                                                    "warn") + "</tr>"
                       for d in status["degraded_backups"]) or '<tr><td colspan="3">none</td></tr>'
    weddings = "".join("<tr>" + cell(w["wedding_id"]) + cell(w["wedding_date"])
                       + cell(w["last_backup_at"][:16] if w["last_backup_at"] else "never",
                              "ok" if w["rpo_ok"] else "bad") + "</tr>" for w in status["critical_weddings"])
    overall = "ok" if status["ok"] else "bad"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>wedsync-dr status</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 2rem; }}
th, td {{ border: 1px solid #ccc; padding: .35rem .7rem; text-align: left; }}
th {{ background: #f3f3f3; }}
.ok {{ background: #d9f2d9; }} .warn {{ background: #fff1c2; }} .bad {{ background: #f8d0d0; }}
</style></head><body>
<h1>wedsync-dr <span class="{overall}">&nbsp;{'all good' if status['ok'] else 'attention needed'}&nbsp;</span></h1>
<p>Generated {escape(status['generated_at'][:19])} UTC.</p>
<h2>Backups per data class</h2>
<table><tr><th>class</th><th>last backup</th><th>age</th><th>RPO</th><th>copies</th><th>missing</th>
<th>last drill</th></tr>{''.join(rows)}</table>
<h2>Clouds</h2><table><tr><th>cloud</th><th>health</th><th>latency</th><th>checked</th></tr>{health}</table>
<h2>Degraded backups</h2><table><tr><th>class</th><th>backup</th><th>missing in</th></tr>{degraded}</table>
<h2>Critical weddings</h2><table><tr><th>wedding</th><th>date</th><th>last backup</th></tr>{weddings}</table>
</body></html>"""
