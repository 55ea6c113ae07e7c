"""The policy's Airflow pools: a task in a pool that does not exist is never scheduled."""

from __future__ import annotations


def ensure_pools(policy) -> None:
    """Create or resize the policy's Airflow pools (in the metadata DB this process is configured for)."""
    from airflow.models.pool import Pool

    for name, spec in policy.pools.items():
        Pool.create_or_update_pool(name, slots=spec["slots"], description=spec.get("description", ""),
                                   include_deferred=False)
