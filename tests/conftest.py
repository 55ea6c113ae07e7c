"""Test-session wiring: Airflow settings for tests, and the real local stack started once per session.

The stack (PostgreSQL + S3/Azure/GCS emulators) lives in `.local/test/stack`, apart from the one
`make run` uses, and is stopped and deleted at the end of the session, pass or fail.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wedsync_dr_dev import local_stack

REPO = Path(__file__).resolve().parents[1]
# WEDSYNC_TEST_ROOT lets two focused test runs (e.g. two work trees' helpers) keep separate stacks.
TEST_ROOT = Path(os.environ.get("WEDSYNC_TEST_ROOT") or REPO / ".local" / "test")

# Airflow reads its configuration when first imported: set it before any test imports airflow.
os.environ.update(local_stack.airflow_settings(TEST_ROOT / "airflow"))
os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "INFO"
(TEST_ROOT / "airflow").mkdir(parents=True, exist_ok=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
        if "airflow_api" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.airflow_api)


@pytest.fixture(scope="session")
def stack():
    """The real local stack, with its AIRFLOW_CONN_* variables set in this process."""
    directory = TEST_ROOT / "stack"
    local_stack.destroy(directory)  # a previous run that was killed may have left data
    state = local_stack.start(directory)
    saved = dict(os.environ)
    os.environ.update(local_stack.environment(state))
    # This process imported Airflow with its SQLite metadata DB (for dag.test()); the stack's Airflow
    # components use the stack's PostgreSQL (local_stack.environment()).
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = saved["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    try:
        yield state
    finally:
        os.environ.clear()
        os.environ.update(saved)
        local_stack.destroy(directory)


@pytest.fixture(scope="session")
def demo_data(stack):
    """Demo data at test scale: 200 weddings, small asset files."""
    import datetime as dt

    import psycopg

    from wedsync_dr_dev import demo_data as demo

    asset_dir = Path(local_stack.environment(stack)["WEDSYNC_ASSET_SOURCE"])
    with psycopg.connect(stack.admin_url(local_stack.SOURCE_DB)) as conn:
        report = demo.load(conn, demo.Scale(weddings=200, seed=7, photos=12, documents=12, asset_size_scale=0.02),
                           asset_dir, today=dt.date.today(), owner=local_stack.OWNER_ROLE)
    return report


@pytest.fixture(scope="session")
def airflow_db(stack):
    """A migrated Airflow metadata DB (SQLite) with the policy's pools, for dag.test()."""
    import subprocess
    import sys

    from wedsync_dr.policy import load_policy
    from wedsync_dr.pools import ensure_pools

    airflow = Path(sys.executable).parent / "airflow"
    result = subprocess.run([str(airflow), "db", "migrate"], env=os.environ.copy(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    ensure_pools(load_policy())


class _SharedAirflow:
    """The Airflow components `airflow_api` started: kept from one module that uses them to the next (starting
    them costs ~30 s, and those modules share the stack's metadata DB anyway), stopped before any test that
    does not use them (`pytest_runtest_teardown`), so nothing scheduled runs behind that test's back."""

    def __init__(self):
        self.api: tuple[str, str] | None = None
        self.stack = None

    def stop(self) -> None:
        self.api = None
        for name in local_stack.AIRFLOW_COMPONENTS:
            if self.stack is not None and name in self.stack.services:  # (never started: nothing to stop)
                local_stack.stop_service(self.stack, name)


_SHARED_AIRFLOW = _SharedAirflow()


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    if _SHARED_AIRFLOW.api is not None and (nextitem is None
                                            or "airflow_api" not in getattr(nextitem, "fixturenames", ())):
        _SHARED_AIRFLOW.stop()


@pytest.fixture(scope="session")
def shared_airflow(stack):
    """`_SharedAirflow` for this session's stack. A fixture that needs other components (the Celery deployment)
    calls `stop()` first; the next `airflow_api` then starts them again."""
    _SHARED_AIRFLOW.stack = stack
    try:
        yield _SHARED_AIRFLOW
    finally:
        _SHARED_AIRFLOW.stop()


@pytest.fixture(scope="module")
def airflow_api(stack, demo_data, airflow_db, shared_airflow):
    """Airflow's components against the test stack (metadata in its PostgreSQL): (API URL, admin token)."""
    from tests.helpers import http_json, wait_for_dags  # here: helpers import the product, after Airflow's settings

    if shared_airflow.api is None:  # (whoever stops the components does so through `stop()`, which clears it)
        # Scheduled backups stay paused: only the DAGs a test drives run, and nothing runs behind its back.
        url = local_stack.start_airflow(stack, port=local_stack.free_port(), dags_paused=True)
        status, body = http_json("POST", f"{url}/auth/token",
                                 {"username": "admin", "password": stack.passwords["airflow_admin"]})
        assert status == 201, body
        shared_airflow.api = (url, body["access_token"])
    wait_for_dags(*shared_airflow.api, {"emergency_backup", "backup_health"}, timeout=180)
    return shared_airflow.api
