"""Emergency backup requests: one schema for the trigger form, the REST guard and the CLI.

The per-field rules are Airflow Params (checked by Airflow when a run is created: HTTP 400 / a form
error). `validate_conf` adds the rules that span fields -- `wedding_ids` exactly when scope is
`weddings`, `data_classes` exactly when scope is `classes` (the form's scope `all` with classes chosen is
refused, not guessed at) -- no unknown keys, and a reason that says something (whitespace and invisible
characters do not count). The API server's trigger guard (plugins/wedsync_dr_plugin.py) runs it on the
params a run would get, before the run exists, whether the caller sent a bearer token or the UI's
session cookie; the first task runs it again. What no schema can know (do these weddings exist?) fails
the first task with a message naming them: a user error, so a warning, never a critical alert.

Coalescing rule: an emergency run claims its scope (`scope_key`) in the catalog; a second trigger for a
scope that a running emergency run already covers -- the same scope, or any scope while an `all` run is
in flight -- does not back up again: its first task records the request against the running one and the
run ends as skipped. A claim older than `CLAIM_TTL` is considered abandoned (a crashed run) and is taken over.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import unicodedata
from typing import Any

import jsonschema

from wedsync_dr.policy import Policy
from wedsync_dr.requests import InvalidRequest, classes_by_priority

DAG_ID = "emergency_backup"
CLAIM_TTL = dt.timedelta(hours=6)
# Characters a reviewer cannot see, beyond whitespace: Unicode "format" (zero-width space/joiners, BOM,
# soft hyphen, ...) and "control" characters, and the blank-looking fillers that are letters or symbols.
_INVISIBLE_CATEGORIES = {"Cf", "Cc"}
_BLANK_FILLERS = {"\u115f", "\u1160", "\u2800", "\u3164", "\uffa0"}


class EmergencyRequestError(InvalidRequest):
    """The conf of an emergency trigger is invalid (the message says which field and why)."""


def visible_text(text: str) -> str:
    """`text` as a reader sees it: invisible characters dropped, runs of whitespace as one space, trimmed."""
    kept = "".join(ch for ch in text if ch.isspace() or (
        unicodedata.category(ch) not in _INVISIBLE_CATEGORIES and ch not in _BLANK_FILLERS))
    return " ".join(kept.split())


def field_schemas(policy: Policy) -> dict[str, dict[str, Any]]:
    """JSON schema per conf key: the DAG's Params use these, the request guard combines them."""
    classes = classes_by_priority(policy)
    return {
        "reason": {"type": "string", "minLength": 10, "maxLength": 500, "title": "Reason",
                   "description": "Why an emergency backup is needed now (10-500 characters); kept with the backup."},
        "scope": {"type": "string", "enum": ["all", "weddings", "classes"], "title": "Scope",
                  "description": "`all` data classes, specific `weddings` (their bundles), or chosen `classes`."},
        "wedding_ids": {"type": ["null", "array"], "items": {"type": "integer", "minimum": 1}, "minItems": 1,
                        "uniqueItems": True, "title": "Wedding ids",
                        "description": "Required when scope is `weddings`, and only then: the weddings to back "
                                       "up now, e.g. [101, 102]."},
        # `examples` makes the trigger form a multi-select of the classes instead of free text.
        "data_classes": {"type": ["null", "array"], "items": {"type": "string", "enum": classes}, "minItems": 1,
                         "uniqueItems": True, "examples": classes, "title": "Data classes",
                         "description": "Required when scope is `classes`, and only then: the classes to back "
                                        "up now."},
        "requested_by": {"type": ["null", "string"], "maxLength": 200, "title": "Requested by",
                         "description": "Who asked (person, ticket, or monitor)."},
    }


def conf_schema(policy: Policy) -> dict[str, Any]:
    """The whole conf, with the rules that span fields."""
    fields = {k: {kk: vv for kk, vv in v.items() if kk not in ("title", "description")}
              for k, v in field_schemas(policy).items()}
    present = {"type": "array"}
    absent = {"type": "null"}
    return {
        "type": "object",
        "required": ["reason"],
        "properties": fields,
        "additionalProperties": False,
        "allOf": [
            {"if": {"properties": {"scope": {"const": "weddings"}}, "required": ["scope"]},
             "then": {"required": ["wedding_ids"], "properties": {"wedding_ids": present}},
             "else": {"properties": {"wedding_ids": absent}}},
            {"if": {"properties": {"scope": {"const": "classes"}}, "required": ["scope"]},
             "then": {"required": ["data_classes"], "properties": {"data_classes": present}},
             "else": {"properties": {"data_classes": absent}}},
        ],
    }


def validate_conf(policy: Policy, conf: dict[str, Any]) -> dict[str, Any]:
    """The conf with defaults filled in, or EmergencyRequestError naming the first problem."""
    full = {"scope": "all", "wedding_ids": None, "data_classes": None, "requested_by": None, **(conf or {})}
    errors = sorted(jsonschema.Draft202012Validator(conf_schema(policy)).iter_errors(full),
                    key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = "/".join(str(p) for p in err.absolute_path) or "conf"
        if err.validator == "type" and err.validator_value == "null":
            message = f"only allowed when scope is '{'weddings' if where == 'wedding_ids' else 'classes'}'"
        else:
            message = err.message
        raise EmergencyRequestError(f"invalid emergency request: {where}: {message}")
    least = field_schemas(policy)["reason"]["minLength"]
    if len(visible_text(full["reason"])) < least:
        raise EmergencyRequestError(f"invalid emergency request: reason: say why in at least {least} characters; "
                                    "whitespace and invisible characters do not count")
    return full


def classes_in_scope(policy: Policy, request: dict[str, Any]) -> list[str]:
    if request["scope"] == "weddings":
        return [name for name, dc in policy.data_classes.items() if dc.kind == "wedding_bundles"]
    if request["scope"] == "classes":
        return sorted(request["data_classes"])
    return sorted(policy.data_classes)


def scope_key(request: dict[str, Any]) -> str:
    """A stable name for what a request covers (coalescing compares these)."""
    if request["scope"] == "all":
        return "all"
    values = request["wedding_ids"] if request["scope"] == "weddings" else request["data_classes"]
    digest = hashlib.sha256(json.dumps(sorted(values)).encode()).hexdigest()[:16]
    return f"{request['scope']}:{digest}"


def claim_scope(conn, key: str, run_id: str, reason: str) -> str | None:
    """Claim `key` for `run_id`; returns the run id already holding it (coalesce) or None (we hold it)."""
    from wedsync_dr import catalog

    return catalog.claim_emergency_scope(conn, key, run_id, reason, CLAIM_TTL)


def release_scope(conn, run_id: str) -> None:
    from wedsync_dr import catalog

    catalog.release_emergency_claim(conn, run_id)
