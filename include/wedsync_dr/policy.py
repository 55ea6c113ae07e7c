"""The backup policy (include/config/backup_policy.yaml): loaded, schema-checked, typed.

DAG files parse it on every DAG-processor loop, so loading is cheap (one small YAML file, no I/O
beyond it) and an invalid policy fails loudly as an import error naming the bad field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from wedsync_dr.paths import CONFIG_DIR

DEFAULT_POLICY_FILE = CONFIG_DIR / "backup_policy.yaml"
_IDENT = r"^[a-z_][a-z0-9_]*$"
_RETENTION = {
    "type": "object",
    "additionalProperties": False,
    "properties": {k: {"type": "integer", "minimum": 0}
                   for k in ("hourly_hours", "daily_days", "weekly_weeks", "monthly_months")},
}

# Every cloud request is bounded: a hung cloud costs one timeout per attempt, never the SDK's default minutes.
_TIMEOUTS = {"type": "object", "additionalProperties": False,
             "properties": {"connect_seconds": {"type": "number", "exclusiveMinimum": 0},
                            "read_seconds": {"type": "number", "exclusiveMinimum": 0}}}

# A daytime backup must not saturate the platform's uplink: per cloud, per process (storage/limits.py).
# Absent = unlimited. At least 1 KiB/s: a smaller figure is a unit mistake (MB meant), not a limit.
_LIMITS = {"type": "object", "additionalProperties": False,
           "properties": {"bytes_per_second": {"type": "integer", "minimum": 1024},
                          "concurrent_requests": {"type": "integer", "minimum": 1, "maximum": 256}}}

POLICY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["version", "source_schema", "prefix", "quorum", "clouds", "data_classes", "upload", "pools",
                 "emergency", "key_ring_conn_id"],
    "properties": {
        "version": {"const": 1},
        "source_schema": {"type": "string", "pattern": _IDENT},
        "prefix": {"type": "string", "pattern": r"^[a-z0-9][a-z0-9._-]*$"},
        "quorum": {"type": "integer", "minimum": 1},
        "staging_dir_env": {"type": "string"},
        "key_ring_conn_id": {"type": "string"},
        "zstd_level": {"type": "integer", "minimum": 1, "maximum": 19},
        "clouds": {
            "type": "array", "minItems": 1,
            "items": {
                "type": "object", "additionalProperties": False,
                "required": ["name", "kind", "conn_id", "bucket"],
                "properties": {
                    "name": {"type": "string", "pattern": _IDENT},
                    "kind": {"enum": ["s3", "azure_blob", "gcs"]},
                    "conn_id": {"type": "string", "minLength": 1},
                    "bucket": {"type": "string", "minLength": 3},
                    "options": {"type": "object"},
                    "timeouts": _TIMEOUTS,
                    "limits": _LIMITS,
                },
            },
        },
        "timeouts": _TIMEOUTS,
        "upload": {
            "type": "object", "additionalProperties": False,
            "required": ["retries", "retry_delay_seconds"],
            "properties": {
                "retries": {"type": "integer", "minimum": 0},
                "retry_delay_seconds": {"type": "number", "minimum": 0},
                "max_retry_delay_seconds": {"type": "number", "minimum": 0},
                "concurrency": {"type": "integer", "minimum": 1, "maximum": 64},
            },
        },
        "pools": {
            "type": "object",
            "additionalProperties": {
                "type": "object", "required": ["slots"],
                "properties": {"slots": {"type": "integer", "minimum": 1}, "description": {"type": "string"}},
            },
        },
        "immutability": {
            "type": "object", "additionalProperties": False,
            "required": ["mode", "days"],
            "properties": {
                "mode": {"enum": ["governance", "compliance"]},
                "days": {"type": "integer", "minimum": 0},
            },
        },
        "alerts": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "notifiers": {
                    "type": "array",
                    "items": {
                        "type": "object", "additionalProperties": False,
                        "required": ["kind", "conn_id"],
                        "properties": {
                            "kind": {"enum": ["smtp", "slack", "webhook"]},
                            "conn_id": {"type": "string", "minLength": 1},
                            "min_severity": {"enum": ["info", "warning", "critical"]},
                            "to": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                            "from_email": {"type": "string"},
                            "endpoint": {"type": "string"},
                        },
                        "allOf": [{"if": {"properties": {"kind": {"const": "smtp"}}}, "then": {"required": ["to"]}}],
                    },
                },
            },
        },
        "emergency": {
            "type": "object", "additionalProperties": False,
            "required": ["pool", "priority_weight", "min_retention_days"],
            "properties": {
                "pool": {"type": "string"},
                "priority_weight": {"type": "integer", "minimum": 1},
                "min_retention_days": {"type": "integer", "minimum": 1},
            },
        },
        "data_classes": {
            "type": "object", "minProperties": 1,
            "propertyNames": {"pattern": _IDENT},
            "additionalProperties": {
                "type": "object", "additionalProperties": False,
                "required": ["kind", "schedule", "rpo_minutes", "priority_weight", "pool", "retention", "description"],
                "properties": {
                    "description": {"type": "string"},
                    "kind": {"enum": ["tables", "wedding_bundles", "assets"]},
                    "schedule": {"type": "string"},
                    "rpo_minutes": {"type": "integer", "minimum": 1},
                    "priority_weight": {"type": "integer", "minimum": 1},
                    "pool": {"type": "string"},
                    "retention": _RETENTION,
                    "tables": {"type": "array", "minItems": 1, "items": {"type": "string", "pattern": _IDENT}},
                    "window_days": {"type": "integer", "minimum": 1},
                    "batch_size": {"type": "integer", "minimum": 1},
                    "source_env": {"type": "string"},
                    "immutable_days": {"type": "integer", "minimum": 0},
                    "part_size_mb": {"type": "number", "minimum": 0},
                    "extract_workers": {"type": "integer", "minimum": 1, "maximum": 32},
                    "dedup_chunk_kib": {"anyOf": [{"const": 0}, {"type": "integer", "minimum": 16, "maximum": 4096}]},
                    "dedup_pack_kib": {"type": "integer", "minimum": 16, "maximum": 262144},
                    "dedup_repack_below_percent": {"type": "integer", "minimum": 0, "maximum": 100},
                    "dedup_bundles": {"type": "boolean"},
                    "bundle_tables": {
                        "type": "object", "minProperties": 1, "propertyNames": {"pattern": _IDENT},
                        "additionalProperties": {
                            "type": "object", "additionalProperties": False, "required": ["wedding_key"],
                            "properties": {"wedding_key": {"type": "string"}, "join": {"type": "string"}},
                        },
                    },
                },
                "allOf": [
                    {"if": {"properties": {"kind": {"const": "tables"}}}, "then": {"required": ["tables"]}},
                    {"if": {"properties": {"kind": {"const": "wedding_bundles"}}},
                     "then": {"required": ["bundle_tables", "window_days"]}},
                    {"if": {"properties": {"kind": {"const": "assets"}}}, "then": {"required": ["source_env"]}},
                ],
            },
        },
    },
}


class PolicyError(ValueError):
    """The policy file is invalid; the message names the field."""


@dataclass(frozen=True)
class Cloud:
    name: str
    kind: str
    conn_id: str
    bucket: str
    options: dict[str, Any] = field(default_factory=dict)
    timeouts: dict[str, float] = field(default_factory=dict)  # connect_seconds / read_seconds (policy default)
    limits: dict[str, int] = field(default_factory=dict)  # bytes_per_second / concurrent_requests; {} = unlimited


@dataclass(frozen=True)
class BundleTable:
    name: str
    wedding_key: str
    join: str = ""


@dataclass(frozen=True)
class DataClass:
    name: str
    description: str
    kind: str  # tables | wedding_bundles | assets
    schedule: str
    rpo_minutes: int
    priority_weight: int
    pool: str
    retention: dict[str, int]
    tables: tuple[str, ...] = ()
    bundle_tables: tuple[BundleTable, ...] = ()
    window_days: int = 30
    batch_size: int = 200
    source_env: str = ""
    immutable_days: int | None = None  # None: the policy-wide `immutability.days`
    part_size_mb: float = 128  # tables larger than this are extracted in parts (0: never split)
    extract_workers: int = 2  # tables (or parts) copied at once: a COPY backend and a zstd stream each
    # tables classes: average content-defined chunk size (format 4: only changed chunks are stored); 0: one
    # object per table (part), every backup a full copy
    dedup_chunk_kib: int = 0
    # ... and how much chunk plaintext one stored pack gathers (format 5): fewer, larger objects per backup;
    # a restore holds a few packs in memory, and a pack is kept while any backup needs one of its chunks
    dedup_pack_kib: int = 8192
    # ... and when a pack stops being referenced: a pack the newest backup uses less of than this share of its
    # bytes is not referenced again -- its live chunks are stored anew, so the pack goes once the backups that
    # name it expire (0: every stored chunk is referenced wherever it lies; see backup._extract_deduplicated)
    dedup_repack_below_percent: int = 25
    # wedding_bundles classes: each bundle content-addressed, new ones packed together (format 5): an unchanged
    # wedding is not sent again
    dedup_bundles: bool = False

    @property
    def deduplicated(self) -> bool:
        """Whether the class's backups store content-addressed chunks in packs (format 5) instead of full copies."""
        return (self.kind == "tables" and self.dedup_chunk_kib > 0) or (
            self.kind == "wedding_bundles" and self.dedup_bundles)


@dataclass(frozen=True)
class Policy:
    source_schema: str
    prefix: str
    quorum: int
    clouds: tuple[Cloud, ...]
    data_classes: dict[str, DataClass]
    upload_retries: int
    upload_retry_delay_seconds: float
    upload_max_retry_delay_seconds: float
    pools: dict[str, dict[str, Any]]
    emergency_pool: str
    emergency_priority_weight: int
    emergency_min_retention_days: int
    key_ring_conn_id: str
    staging_dir_env: str = "WEDSYNC_STAGING_DIR"
    zstd_level: int = 3
    immutability_mode: str = "governance"
    immutability_days: int = 0
    notifiers: tuple[dict[str, Any], ...] = ()
    upload_concurrency: int = 8  # small objects in flight per cloud (uploads and validation checks)

    def lock_days(self, data_class: DataClass, at_least: int = 0) -> int:
        """How long a backup's objects are write-once in every cloud (0: not locked)."""
        days = self.immutability_days if data_class.immutable_days is None else data_class.immutable_days
        return max(days, at_least)

    def cloud(self, name: str) -> Cloud:
        for cloud in self.clouds:
            if cloud.name == name:
                return cloud
        raise KeyError(f"no cloud named {name!r} in the policy (have: {', '.join(self.cloud_names)})")

    @property
    def cloud_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.clouds)

    def staging_dir(self) -> Path:
        configured = os.environ.get(self.staging_dir_env)
        return Path(configured) if configured else Path("/tmp/wedsync-dr-staging")

    def with_overrides(self, **changes: Any) -> Policy:
        """A copy with some fields changed (tests use it to shorten retries)."""
        return replace(self, **changes)


def _where(raw: dict[str, Any], path: list) -> str:
    """The schema error's location, a cloud named by its name as well as its index ("clouds/1 (azure)/...")."""
    if len(path) > 1 and path[0] == "clouds" and isinstance(path[1], int):
        cloud = raw["clouds"][path[1]]
        if isinstance(cloud, dict) and isinstance(cloud.get("name"), str):
            path[1] = f"{path[1]} ({cloud['name']})"
    return "/".join(str(p) for p in path) or "(top level)"


def parse_policy(raw: dict[str, Any]) -> Policy:
    try:
        jsonschema.validate(raw, POLICY_SCHEMA)
    except jsonschema.ValidationError as err:
        where = _where(raw, list(err.absolute_path))
        raise PolicyError(f"backup policy invalid at {where}: {err.message}") from None
    default_timeouts = {"connect_seconds": 5, "read_seconds": 30, **raw.get("timeouts", {})}
    clouds = tuple(Cloud(**{**c, "timeouts": {**default_timeouts, **c.get("timeouts", {})}}) for c in raw["clouds"])
    if len({c.name for c in clouds}) != len(clouds):
        raise PolicyError("backup policy invalid at clouds: cloud names must be unique")
    if raw["quorum"] > len(clouds):
        raise PolicyError(f"backup policy invalid at quorum: {raw['quorum']} exceeds the {len(clouds)} clouds")
    classes = {}
    for name, spec in sorted(raw["data_classes"].items()):
        spec = dict(spec)
        bundle = tuple(BundleTable(table, **b) for table, b in spec.pop("bundle_tables", {}).items())
        classes[name] = DataClass(name=name, tables=tuple(spec.pop("tables", ())), bundle_tables=bundle, **spec)
        if classes[name].pool not in raw["pools"]:
            raise PolicyError(f"backup policy invalid at data_classes/{name}/pool: unknown pool {spec['pool']!r}")
    upload = raw["upload"]
    emergency = raw["emergency"]
    immutability = raw.get("immutability", {"mode": "governance", "days": 0})
    return Policy(
        source_schema=raw["source_schema"], prefix=raw["prefix"], quorum=raw["quorum"], clouds=clouds,
        data_classes=classes, upload_retries=upload["retries"],
        upload_retry_delay_seconds=upload["retry_delay_seconds"],
        upload_max_retry_delay_seconds=upload.get("max_retry_delay_seconds", 600),
        pools=raw["pools"], emergency_pool=emergency["pool"], emergency_priority_weight=emergency["priority_weight"],
        emergency_min_retention_days=emergency["min_retention_days"], key_ring_conn_id=raw["key_ring_conn_id"],
        staging_dir_env=raw.get("staging_dir_env", "WEDSYNC_STAGING_DIR"), zstd_level=raw.get("zstd_level", 3),
        immutability_mode=immutability["mode"], immutability_days=immutability["days"],
        notifiers=tuple(raw.get("alerts", {}).get("notifiers", ())),
        upload_concurrency=upload.get("concurrency", Policy.upload_concurrency),
    )


@cache
def load_policy(path: Path | None = None) -> Policy:
    """The policy from `path`, `$WEDSYNC_POLICY_FILE`, or include/config/backup_policy.yaml."""
    path = path or Path(os.environ.get("WEDSYNC_POLICY_FILE", DEFAULT_POLICY_FILE))
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise PolicyError(f"cannot read backup policy {path}: {err}") from None
    return parse_policy(raw)
