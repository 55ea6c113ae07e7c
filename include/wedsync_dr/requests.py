"""Requests for restores (DAG params, CLI flags): parsed and checked before anything is read or written.

Kept free of heavy imports: the restore DAG's trigger form is built from it at parse time.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from dataclasses import dataclass
from typing import Any

from wedsync_dr.policy import Policy

_BACKUP_TS = re.compile(r"-(\d{8}T\d{6}Z)-[0-9a-f]+$")


class RestoreError(RuntimeError):
    """A restore could not complete; the target was left untouched (or was never created)."""


TARGET_PATTERN = r"^(|in_place|[a-z_][a-z0-9_]{0,62}|/[A-Za-z0-9._/-]*)$"


@dataclass
class RestoreRequest:
    data_class: str
    backup_id: str = "latest"
    point_in_time: dt.datetime | None = None
    wedding_id: int | None = None
    target: str = ""  # "" = new schema/directory; "in_place"; a schema name; an absolute directory (assets)
    confirm: str = ""
    source_cloud: str = "auto"
    dry_run: bool = False

    @property
    def in_place(self) -> bool:
        return self.target == "in_place"


def check_request(policy: Policy, params: dict[str, Any]) -> RestoreRequest:
    """Everything a parameter schema cannot say, checked before anything is read or written."""
    data_class = params.get("data_class")
    if data_class not in policy.data_classes:
        raise RestoreError(f"unknown data_class {data_class!r}; choose one of {', '.join(policy.data_classes)}")
    pit = params.get("point_in_time") or None
    if pit is not None:
        try:
            pit = dt.datetime.fromisoformat(str(pit).replace("Z", "+00:00"))
        except ValueError:
            raise RestoreError(f"point_in_time {params['point_in_time']!r} is not an ISO 8601 timestamp") from None
        if pit.tzinfo is None:
            pit = pit.replace(tzinfo=dt.UTC)
    backup_id = params.get("backup_id") or "latest"
    if backup_id != "latest" and not _BACKUP_TS.search(backup_id):
        raise RestoreError(f"backup_id {backup_id!r} is neither 'latest' nor a wedsync-dr backup id")
    if backup_id != "latest" and pit is not None:
        raise RestoreError("give either backup_id or point_in_time, not both")
    target = params.get("target") or ""
    if not re.match(TARGET_PATTERN, target) or ".." in target.split("/"):
        raise RestoreError(f"target {target!r} is not allowed: use '', 'in_place', a schema name, "
                           "or (assets) an absolute directory without '..'")
    kind = policy.data_classes[data_class].kind
    if target.startswith("/") and kind != "assets":
        raise RestoreError("a directory target is only for the assets class")
    if target == "in_place" and kind == "assets":
        raise RestoreError("assets are never restored over the live asset store: give a target directory")
    confirm = params.get("confirm") or ""
    if target == "in_place" and confirm != f"RESTORE {data_class}":
        raise RestoreError(f"in_place replaces live data: set confirm to exactly 'RESTORE {data_class}'")
    source = params.get("source_cloud") or "auto"
    if source != "auto" and source not in policy.cloud_names:
        raise RestoreError(f"source_cloud {source!r} is not one of auto, {', '.join(policy.cloud_names)}")
    wedding_id = params.get("wedding_id")
    if wedding_id is not None and (not isinstance(wedding_id, int) or wedding_id < 1):
        raise RestoreError(f"wedding_id {wedding_id!r} must be a positive integer")
    return RestoreRequest(data_class, backup_id, pit, wedding_id, target, confirm, source,
                          bool(params.get("dry_run", False)))


def default_target(request: RestoreRequest, now: dt.datetime | None = None) -> str:
    """A new schema (or directory) name: two restores in the same second must not collide."""
    now = now or dt.datetime.now(dt.UTC)
    return f"restore_{request.data_class}_{now:%Y%m%d%H%M%S}_{secrets.token_hex(2)}"
