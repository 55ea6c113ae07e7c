"""Requests for restores (DAG params, CLI flags): parsed and checked before anything is read or written.

The same `check_request` runs in the API server's trigger guard (plugins/wedsync_dr_plugin.py: a bad
request is answered HTTP 400 and no run exists), in the restore DAG's first task and in the CLI.
Kept free of heavy imports: the restore DAG's trigger form is built from it at parse time.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from dataclasses import dataclass, fields
from typing import Any

from wedsync_dr.policy import Policy

_BACKUP_TS = re.compile(r"-(\d{8}T\d{6}Z)-[0-9a-f]+$")


class InvalidRequest(ValueError):
    """A user's request (restore, emergency backup) is refused as given: nothing was read or written.

    A failure of this kind is a user error, never a critical alert (see `alerts.on_task_failure`).
    """


class RestoreError(RuntimeError):
    """A restore could not complete; the target was left untouched (or was never created)."""


class RestoreRequestError(RestoreError, InvalidRequest):
    """The restore request itself is invalid (the message says which field and why)."""


def classes_by_priority(policy: Policy) -> list[str]:
    """The policy's data classes, most urgent first (the order of every form's class choices)."""
    return sorted(policy.data_classes, key=lambda name: (-policy.data_classes[name].priority_weight, name))


TARGET_PATTERN = r"^(|in_place|[a-z_][a-z0-9_]{0,62}|/[A-Za-z0-9._/-]*)$"


@dataclass
class RestoreRequest:
    data_class: str
    backup_id: str = "latest"
    point_in_time: dt.datetime | None = None
    wedding_id: int | None = None
    target: str = ""  # "" = new schema/directory; "in_place"; a schema name; (assets) an absolute directory
    confirm: str = ""
    source_cloud: str = "auto"
    dry_run: bool = False

    @property
    def in_place(self) -> bool:
        return self.target == "in_place"


def check_request(policy: Policy, params: dict[str, Any]) -> RestoreRequest:
    """Everything a parameter schema cannot say, checked before anything is read or written.

    Raises RestoreRequestError naming the first problem.
    """
    unknown = sorted(set(params) - {f.name for f in fields(RestoreRequest)})
    if unknown:
        raise RestoreRequestError(f"unknown restore option(s) {', '.join(map(repr, unknown))}; the options are "
                                  f"{', '.join(f.name for f in fields(RestoreRequest))}")
    data_class = params.get("data_class")
    if data_class not in policy.data_classes:
        raise RestoreRequestError(f"unknown data_class {data_class!r}; choose one of "
                                  f"{', '.join(classes_by_priority(policy))}")
    pit = params.get("point_in_time") or None
    if pit is not None:
        try:
            pit = dt.datetime.fromisoformat(str(pit).replace("Z", "+00:00"))
        except ValueError:
            raise RestoreRequestError(f"point_in_time {params['point_in_time']!r} is not an ISO 8601 "
                                      "timestamp") from None
        if pit.tzinfo is None:
            pit = pit.replace(tzinfo=dt.UTC)
    backup_id = params.get("backup_id") or "latest"
    if backup_id != "latest" and not _BACKUP_TS.search(backup_id):
        raise RestoreRequestError(f"backup_id {backup_id!r} is neither 'latest' nor a wedsync-dr backup id")
    if backup_id != "latest" and pit is not None:
        raise RestoreRequestError("give either backup_id or point_in_time, not both")
    target = params.get("target") or ""
    if not isinstance(target, str) or not re.match(TARGET_PATTERN, target) or ".." in target.split("/"):
        raise RestoreRequestError(f"target {target!r} is not allowed: leave it empty (a new schema or directory), "
                                  "or give 'in_place', a schema name, or (assets) an absolute directory "
                                  "without '..'")
    kind = policy.data_classes[data_class].kind
    if target.startswith("/") and kind != "assets":
        raise RestoreRequestError("a directory target is only for the assets class")
    if target == "in_place" and kind == "assets":
        raise RestoreRequestError("assets are never restored over the live asset store: give a target directory")
    if kind == "assets" and target and not target.startswith("/"):
        # A relative path would be resolved against whatever directory the worker happens to run in.
        raise RestoreRequestError(f"target {target!r}: assets restore into an absolute directory "
                                  "(e.g. /srv/restores/assets), or leave it empty for a new one")
    if kind == "assets" and target and not target.strip("/."):
        raise RestoreRequestError("target '/': give a directory below the filesystem root")
    if kind != "assets" and (target == policy.source_schema or target.startswith("pg_")):
        raise RestoreRequestError(f"target {target!r} is not a schema a restore may create: use 'in_place' to "
                                  "replace live data, or another name")
    confirm = params.get("confirm") or ""
    if target == "in_place" and confirm != f"RESTORE {data_class}":
        raise RestoreRequestError(f"in_place replaces live data: set confirm to exactly 'RESTORE {data_class}'")
    source = params.get("source_cloud") or "auto"
    if source != "auto" and source not in policy.cloud_names:
        raise RestoreRequestError(f"source_cloud {source!r} is not one of auto, {', '.join(policy.cloud_names)}")
    wedding_id = params.get("wedding_id")
    if wedding_id is not None and (not isinstance(wedding_id, int) or isinstance(wedding_id, bool)
                                   or wedding_id < 1):
        raise RestoreRequestError(f"wedding_id {wedding_id!r} must be a positive integer")
    if wedding_id is not None and target == "in_place" and kind == "tables":
        raise RestoreRequestError(f"{data_class} stores whole tables: one wedding is restored into a new schema, "
                                  "never in place (leave target empty and copy the rows you need from there)")
    return RestoreRequest(data_class, backup_id, pit, wedding_id, target, confirm, source,
                          bool(params.get("dry_run", False)))


def default_target(request: RestoreRequest, now: dt.datetime | None = None) -> str:
    """A new schema (or directory) name: two restores in the same second must not collide."""
    now = now or dt.datetime.now(dt.UTC)
    return f"restore_{request.data_class}_{now:%Y%m%d%H%M%S}_{secrets.token_hex(2)}"
