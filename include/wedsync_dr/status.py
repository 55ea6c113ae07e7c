"""What the status page and its JSON API show: read from the catalog (and the source, for critical weddings).

**Open alerts.** An alert in `backup_catalog.alerts` stays open until a later event clears it, so the page
never says "all good" over a problem nobody has seen resolved:

- `backup_failed` (subject: a class): a good (validated or degraded) backup of the class committed after it;
- `backup_degraded`: its backup repaired to validated (or deleted), or a validated backup of the class
  committed after it;
- `rpo_breach` (a class, or `wedding:<id>`): the class or wedding is within its RPO now (a wedding no longer
  critical — its date passed, it was cancelled — counts as cleared once the source says so);
- `drill_failed`: a passing drill of the class after it; `verify_failed`: a passing full verification of the same
  backup in the same cloud after it; `cloud_health`: the cloud is healthy now;
- `task_failed` (`<dag_id>.<task_id>`): the same task succeeded since (Airflow's metadata, when the caller
  can read it), or for a backup task a good backup of its class committed since; with nothing to tell,
  24 hours after it was raised.

`info` alerts are never open; an acknowledged one (`POST /wedsync-dr/api/alerts/<id>/acknowledge`) is
closed with the earlier ones of its kind and subject. Alerts of one kind and subject show as one line with a
count (the monitor repeats an RPO breach every five minutes). Only the last 30 days are read. The overall
`ok` is false while any critical or warning alert is open, a class or critical wedding is past its RPO, a
cloud is unhealthy, or the source cannot be asked which weddings are critical.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from wedsync_dr.policy import Policy

ALERT_LOOKBACK = dt.timedelta(days=30)
OPEN_WITHOUT_EVIDENCE = dt.timedelta(hours=24)
RECENT = 10  # emergency runs, restores, verifications, alerts shown


@dataclass
class Evidence:
    """The later events the clearing rules read (see the module docstring)."""

    now: dt.datetime
    good_committed: dict[str, dt.datetime] = field(default_factory=dict)       # class -> newest finished_at
    validated_committed: dict[str, dt.datetime] = field(default_factory=dict)  # class -> newest finished_at
    backup_status: dict[str, str] = field(default_factory=dict)                # backup_id -> status now
    drill_passed: dict[str, dt.datetime] = field(default_factory=dict)         # class -> newest passing drill
    verification_passed: dict[tuple[str, str], dt.datetime] = field(default_factory=dict)  # (backup, cloud)
    cloud_healthy: dict[str, bool] = field(default_factory=dict)
    within_rpo: dict[str, bool] = field(default_factory=dict)                  # class / wedding:<id> -> now
    task_succeeded: dict[str, dt.datetime] = field(default_factory=dict)       # <dag>.<task> -> newest success
    weddings_known: bool = True                                                # the source said which are critical


def _after(when: dt.datetime | None, raised: dt.datetime) -> bool:
    return when is not None and when > raised


def _task_class(subject: str) -> str | None:
    """The data class a failed task backs up: `backup_<class>.<task>` or `emergency_backup.<class>.<task>`."""
    dag_id, _, rest = subject.partition(".")
    if dag_id == "emergency_backup" and "." in rest:
        return rest.split(".", 1)[0]
    return dag_id.removeprefix("backup_") if dag_id.startswith("backup_") else None


def alert_cleared(alert: dict[str, Any], evidence: Evidence) -> bool:
    """Whether a later event has cleared this alert (the rules of the module docstring)."""
    kind, subject, raised = alert["kind"], alert.get("subject") or "", alert["raised_at"]
    if kind == "backup_failed":
        return _after(evidence.good_committed.get(subject), raised)
    if kind == "backup_degraded":
        return (evidence.backup_status.get(alert.get("backup_id") or "") in ("validated", "deleted")
                or _after(evidence.validated_committed.get(subject), raised))
    if kind == "rpo_breach":
        if subject in evidence.within_rpo:
            return evidence.within_rpo[subject]
        return evidence.weddings_known if subject.startswith("wedding:") else True  # not critical / not a class
    if kind == "drill_failed":
        return _after(evidence.drill_passed.get(subject), raised)
    if kind == "verify_failed":
        cloud = (alert.get("details") or {}).get("cloud", "")
        return _after(evidence.verification_passed.get((alert.get("backup_id") or "", cloud)), raised)
    if kind == "cloud_health":
        return evidence.cloud_healthy.get(subject, True)  # a cloud no longer checked is no longer in use
    if kind == "task_failed" and (_after(evidence.task_succeeded.get(subject), raised)
                                  or _after(evidence.good_committed.get(_task_class(subject) or ""), raised)):
        return True
    return evidence.now - raised > OPEN_WITHOUT_EVIDENCE


def open_alerts(groups: list[dict[str, Any]], evidence: Evidence) -> list[dict[str, Any]]:
    """The groups (newest alert of a kind and subject) still open; critical first, then newest first."""
    found = [g for g in groups if g["severity"] != "info" and not alert_cleared(g, evidence)]
    found.sort(key=lambda g: g["raised_at"], reverse=True)
    found.sort(key=lambda g: g["severity"] != "critical")
    return found


def overall(status: dict[str, Any]) -> tuple[bool, list[str]]:
    """(ok, why not): what the page's headline says."""
    problems = []
    for severity in ("critical", "warning"):
        count = sum(1 for a in status["open_alerts"] if a["severity"] == severity)
        if count:
            problems.append(f"{count} open {severity} alert{'s' if count > 1 else ''}")
    for name, c in status["classes"].items():
        if not c["rpo_ok"]:
            age = "never backed up" if c["age_minutes"] is None else f"last good backup {hours(c['age_minutes'])} ago"
            problems.append(f"{name}: {age}, RPO {hours(c['rpo_minutes'])}")
    late = [w for w in status["critical_weddings"] if not w["rpo_ok"]]
    if late:
        problems.append(f"{len(late)} critical wedding{'s' if len(late) > 1 else ''} past the RPO")
    if not status["critical_weddings_known"]:
        problems.append("the source database did not answer: critical weddings not checked")
    problems += [f"cloud {cloud} is unhealthy" for cloud, h in status["cloud_health"].items() if not h["healthy"]]
    return not problems, problems


def hours(minutes: float | None) -> str:
    """An age or RPO as the page shows it: `1.5 h`, `0.25 h`."""
    if minutes is None:
        return "-"
    value = minutes / 60
    return f"{value:.2f} h" if 0 < abs(value) < 1 else f"{value:.1f} h"


def _age_minutes(when: dt.datetime | None, now: dt.datetime) -> float | None:
    return round((now - when).total_seconds() / 60, 1) if when else None


def _age_hours(when: dt.datetime | None, now: dt.datetime) -> float | None:
    return round((now - when).total_seconds() / 3600, 2) if when else None


def _iso(when: dt.datetime | None) -> str | None:
    return when.isoformat() if when else None


def _backup_row(row, now: dt.datetime) -> dict[str, Any] | None:
    if row is None:
        return None
    backup_id, status, started, finished, ok, failed, labels, error = row
    return {"backup_id": backup_id, "status": status, "started_at": started.isoformat(), "finished_at": _iso(finished),
            "age_hours": _age_hours(started, now), "clouds_ok": ok, "clouds_failed": failed, "labels": labels,
            "error": error}


def collect(policy: Policy, catalog_conn, source_conn=None, now: dt.datetime | None = None,
            task_successes: Callable[[list[str]], dict[str, dt.datetime]] | None = None) -> dict[str, Any]:
    """Everything the page shows. `task_successes` maps `<dag_id>.<task_id>` subjects to their newest
    successful end (from Airflow's metadata DB; the API server passes it) to clear `task_failed` alerts."""
    from wedsync_dr import catalog

    now = now or dt.datetime.now(dt.UTC)
    evidence = Evidence(now=now)
    for name, good, validated in catalog.committed_times_by_class(catalog_conn):
        evidence.good_committed[name], evidence.validated_committed[name] = good, validated
    evidence.drill_passed = catalog.last_passed_drills(catalog_conn)

    classes = {}
    for name, data_class in sorted(policy.data_classes.items()):
        good = catalog.last_good_backup(catalog_conn, name)
        attempt = catalog.last_backup_attempt(catalog_conn, name)
        drill = catalog.last_drill(catalog_conn, name)
        verified = catalog.verifications(catalog_conn, data_class=name, limit=1)
        age = _age_minutes(good[2], now) if good else None
        classes[name] = {
            "rpo_minutes": data_class.rpo_minutes,
            "last_backup": _backup_row(good, now),  # the last good one (validated or degraded)
            "last_attempt": _backup_row(attempt, now),  # the newest, whatever its status (running, failed, ...)
            "age_minutes": age,
            "age_hours": None if age is None else round(age / 60, 2),
            "rpo_ok": age is not None and age <= data_class.rpo_minutes,
            "last_drill": {"at": drill[0].isoformat(), "ok": drill[1], "backup_id": drill[2], "cloud": drill[3],
                           "detail": drill[4]} if drill else None,
            "last_verification": verified[0] if verified else None,
        }
        evidence.within_rpo[name] = classes[name]["rpo_ok"]
    degraded = [{"backup_id": b, "data_class": c, "started_at": s.isoformat(), "clouds_failed": f}
                for b, c, s, f in catalog.degraded_backups(catalog_conn)]
    health = {c: {"healthy": h, "failures_in_a_row": f, "latency_ms": lat, "checked_at": at.isoformat(),
                  "error": err}
              for c, h, f, lat, at, err in catalog.cloud_health(catalog_conn)}
    evidence.cloud_healthy = {c: h["healthy"] for c, h in health.items()}

    weddings = []
    bundles = [dc for dc in policy.data_classes.values() if dc.kind == "wedding_bundles"]
    evidence.weddings_known = source_conn is not None or not bundles
    if source_conn is not None and bundles:
        rpo = bundles[0].rpo_minutes
        critical = source_conn.execute(
            f"SELECT wedding_id, wedding_date FROM {policy.source_schema}.weddings WHERE wedding_date BETWEEN "
            "(now() AT TIME ZONE 'UTC')::date AND (now() AT TIME ZONE 'UTC')::date + %s AND status <> 'cancelled' "
            "ORDER BY wedding_date, wedding_id", (bundles[0].window_days,)).fetchall()
        last = catalog.weddings_last_good_backup(catalog_conn, [w for w, _ in critical])
        for wid, date in critical:
            age = _age_minutes(last.get(wid), now)
            weddings.append({"wedding_id": wid, "wedding_date": date.isoformat(), "last_backup_at": _iso(last.get(wid)),
                             "age_minutes": age, "age_hours": None if age is None else round(age / 60, 2),
                             "rpo_minutes": rpo, "rpo_ok": age is not None and age <= rpo})
            evidence.within_rpo[f"wedding:{wid}"] = weddings[-1]["rpo_ok"]

    groups = catalog.unacknowledged_alert_groups(catalog_conn, now - ALERT_LOOKBACK)
    evidence.backup_status = catalog.backup_statuses(catalog_conn, [g["backup_id"] for g in groups if g["backup_id"]])
    # only a passing verification of EVERY object clears a failed one: a sample may miss the bad object
    evidence.verification_passed = catalog.full_verification_passes(
        catalog_conn, [g["backup_id"] for g in groups if g["kind"] == "verify_failed" and g["backup_id"]])
    failed_tasks = sorted({g["subject"] for g in groups if g["kind"] == "task_failed" and g["subject"]})
    if task_successes is not None and failed_tasks:
        evidence.task_succeeded = task_successes(failed_tasks)
    still_open = [{**g, "raised_at": g["raised_at"].isoformat(), "first_raised_at": g["first_raised_at"].isoformat(),
                   "age_hours": _age_hours(g["raised_at"], now)} for g in open_alerts(groups, evidence)]

    status = {"generated_at": now.isoformat(), "classes": classes, "open_alerts": still_open,
              "recent_alerts": _recent_alerts(catalog_conn, now), "degraded_backups": degraded,
              "cloud_health": health, "critical_weddings": weddings, "critical_weddings_known": evidence.weddings_known,
              "emergency_runs": _emergency_runs(catalog_conn, now), "restores": _restores(catalog_conn, now),
              "verifications": catalog.verifications(catalog_conn, limit=RECENT)}
    status["ok"], status["problems"] = overall(status)
    return status


def _recent_alerts(conn, now: dt.datetime) -> list[dict[str, Any]]:
    from wedsync_dr import catalog

    rows = catalog.recent_alerts(conn, RECENT * 2)
    return [{"alert_id": a, "raised_at": at.isoformat(), "age_hours": _age_hours(at, now), "severity": s, "kind": k,
             "subject": subj, "message": m, "backup_id": b, "acknowledged_at": _iso(ack), "acknowledged_by": by}
            for a, at, s, k, subj, m, b, ack, by in rows]


def _emergency_runs(conn, now: dt.datetime) -> list[dict[str, Any]]:
    from wedsync_dr import catalog

    rows = catalog.recent_emergency_runs(conn, RECENT)
    return [{"run_id": r, "requested_at": at.isoformat(), "age_hours": _age_hours(at, now), "finished_at": _iso(done),
             "reason": reason, "requested_by": by, "scope": scope, "classes": classes, "status": status,
             "coalesced_into": into, "clouds": clouds, "backup_ids": ids}
            for r, at, done, reason, by, scope, classes, status, into, clouds, ids in rows]


def _restores(conn, now: dt.datetime) -> list[dict[str, Any]]:
    from wedsync_dr import catalog

    rows = catalog.recent_restores(conn, RECENT)
    return [{"restore_id": i, "restored_at": at.isoformat(), "age_hours": _age_hours(at, now), "backup_id": b,
             "data_class": c, "target": t, "wedding_id": w, "dry_run": dry, "rows": n, "seconds": s,
             "failovers": len(f or []), "run_id": run}
            for i, at, b, c, t, w, dry, n, s, f, run in rows]


def acknowledge(conn, alert_id: int, by: str) -> list[int] | None:
    """Close an alert and the earlier open ones of its kind and subject; None when there is no such alert."""
    from wedsync_dr import catalog

    row = catalog.alert_kind_subject(conn, alert_id)
    if row is None:
        return None
    return catalog.acknowledge_alerts(conn, by, row[0], row[1], alert_id)


def render_html(status: dict[str, Any], refresh_seconds: int = 60) -> str:
    """A small self-contained page, one table per concern, green / amber / red; it reloads itself."""
    from html import escape

    def cell(text: object, level: str = "", title: str = "") -> str:
        tip = f' title="{escape(title)}"' if title else ""
        return f'<td class="{level}"{tip}>{escape(str(text))}</td>'

    def ago(age_hours: float | None) -> str:
        return "-" if age_hours is None else f"{hours(age_hours * 60)} ago"

    def table(headers: list[str], rows: list[str], empty: str = "none") -> str:
        head = "".join(f"<th>{escape(h)}</th>" for h in headers)
        body = "".join(rows) or f'<tr><td colspan="{len(headers)}">{escape(empty)}</td></tr>'
        return f"<table><tr>{head}</tr>{body}</table>"

    def row(*cells: str) -> str:
        return "<tr>" + "".join(cells) + "</tr>"

    def attempt_cell(attempt: dict | None, good: dict | None) -> str:
        if not attempt:
            return cell("none", "bad")
        if good and attempt["backup_id"] == good["backup_id"]:
            return cell(f"{attempt['status']} (the last good one)")
        level = {"failed": "bad", "degraded": "warn"}.get(attempt["status"], "")
        return cell(f"{attempt['status']} {ago(attempt['age_hours'])}", level, title=attempt["error"] or "")

    def check_cell(what: str, passed: bool | None, when: str | None) -> str:
        if passed is None:
            return cell("never")
        return cell(f"{'passed' if passed else 'FAILED'} {what}{when[:16]}", "ok" if passed else "bad")

    level_of = {"critical": "bad", "warning": "warn", "info": ""}
    alerts = [row(cell(a["severity"], level_of[a["severity"]]), cell(a["kind"]), cell(a["subject"] or "-"),
                  cell(a["message"]), cell(ago(a["age_hours"])),
                  cell(a["count"] if a["count"] == 1 else f"{a['count']} since {a['first_raised_at'][:16]}"),
                  cell(a["alert_id"])) for a in status["open_alerts"]]
    classes = []
    for name, c in status["classes"].items():
        good = c["last_backup"] or {}
        level = "ok" if c["rpo_ok"] and good.get("status") == "validated" else ("warn" if c["rpo_ok"] else "bad")
        drill, verified = c["last_drill"] or {}, c["last_verification"] or {}
        classes.append(row(
            cell(name), attempt_cell(c["last_attempt"], c["last_backup"]), cell(good.get("status", "none"), level),
            cell(hours(c["age_minutes"])), cell(hours(c["rpo_minutes"])),
            cell(", ".join(good.get("clouds_ok", [])) or "-"), cell(", ".join(good.get("clouds_failed", [])) or "-"),
            check_cell("", drill.get("ok"), drill.get("at")),
            check_cell(f"in {verified.get('cloud')} ", verified.get("ok"), verified.get("verified_at"))))
    health = [row(cell(cloud), cell("healthy" if h["healthy"] else "UNHEALTHY", "ok" if h["healthy"] else "bad"),
                  cell(f"{h['latency_ms']:.0f} ms" if h["latency_ms"] is not None else "-"),
                  cell(h["checked_at"][:19]), cell(h["error"] or "")) for cloud, h in status["cloud_health"].items()]
    degraded = [row(cell(d["data_class"]), cell(d["backup_id"]), cell(", ".join(d["clouds_failed"]), "warn"))
                for d in status["degraded_backups"]]
    weddings = [row(cell(w["wedding_id"]), cell(w["wedding_date"]),
                    cell(w["last_backup_at"][:16] if w["last_backup_at"] else "never"),
                    cell(hours(w["age_minutes"]), "ok" if w["rpo_ok"] else "bad"), cell(hours(w["rpo_minutes"])))
                for w in status["critical_weddings"]]
    run_level = {"succeeded": "ok", "failed": "bad"}
    emergencies = [row(cell(r["requested_at"][:16]), cell(ago(r["age_hours"])),
                       cell(r["status"], run_level.get(r["status"], "")), cell(r["reason"]),
                       cell(r["requested_by"] or "-"), cell(", ".join(r["classes"])),
                       cell(", ".join(r["clouds"]) or "-"))
                   for r in status["emergency_runs"]]
    restores = [row(cell(r["restored_at"][:16]), cell(ago(r["age_hours"])), cell(r["data_class"]), cell(r["backup_id"]),
                    cell(r["target"] + (" (dry run)" if r["dry_run"] else "")), cell(r["wedding_id"] or "-"),
                    cell(f"{r['rows']:,}"), cell(r["failovers"], "warn" if r["failovers"] else ""))
                for r in status["restores"]]
    verifications = [row(cell(v["verified_at"][:16]), cell(v["backup_id"]), cell(v["cloud"]),
                         cell("passed" if v["ok"] else f"FAILED: {v['problem_count']} problems",
                              "ok" if v["ok"] else "bad"), cell(f"{v['objects_read']} of {v['objects_total']}"))
                     for v in status["verifications"]]
    weddings_note = "" if status["critical_weddings_known"] else \
        '<p class="bad">The source database did not answer: critical weddings could not be checked.</p>'
    problems = "".join(f"<li>{escape(p)}</li>" for p in status["problems"])
    overall = "ok" if status["ok"] else "bad"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{int(refresh_seconds)}">
<title>wedsync-dr status</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 2rem; }}
th, td {{ border: 1px solid #ccc; padding: .35rem .7rem; text-align: left; }}
th {{ background: #f3f3f3; }}
.ok {{ background: #d9f2d9; }} .warn {{ background: #fff1c2; }} .bad {{ background: #f8d0d0; }}
</style></head><body>
<h1>wedsync-dr <span class="{overall}">&nbsp;{'all good' if status['ok'] else 'attention needed'}&nbsp;</span></h1>
<p>Generated {escape(status['generated_at'][:19])} UTC; this page reloads every {int(refresh_seconds)} s.</p>
{f'<ul>{problems}</ul>' if problems else ''}
<h2>Open alerts</h2>
{table(["severity", "kind", "subject", "message", "raised", "times", "alert id"], alerts)}
<h2>Backups per data class</h2>
{table(["class", "last attempt", "last good backup", "age", "RPO", "copies", "missing", "last drill",
        "last verification"], classes)}
<h2>Clouds</h2>{table(["cloud", "health", "latency", "checked", "last error"], health, "not checked yet")}
<h2>Critical weddings</h2>{weddings_note}
{table(["wedding", "date", "last backup", "age", "RPO"], weddings)}
<h2>Emergency runs</h2>
{table(["requested", "age", "status", "reason", "by", "classes", "clouds"], emergencies)}
<h2>Restores</h2>
{table(["restored", "age", "class", "backup", "target", "wedding", "rows", "failovers"], restores)}
<h2>Verifications</h2>{table(["verified", "backup", "cloud", "result", "objects read"], verifications)}
<h2>Degraded backups</h2>{table(["class", "backup", "missing in"], degraded)}
</body></html>"""
