"""The tag vocabulary of wedsync-dr DAGs: namespaced, enforced by tests/dags."""

from enum import StrEnum


class Tag(StrEnum):
    KIND_BACKUP = "kind/backup"
    KIND_EMERGENCY = "kind/emergency"
    KIND_RESTORE = "kind/restore"
    KIND_OPS = "kind/ops"
    TIER_CRITICAL = "tier/critical"
    PROJECT = "wedsync-dr"


def class_tag(data_class: str) -> str:
    return f"class/{data_class}"


def vocabulary(data_classes) -> set[str]:
    """Every tag a DAG may carry, given the policy's data class names."""
    return {str(t) for t in Tag} | {class_tag(c) for c in data_classes}
