"""`wedsync-dev backup run` in a terminal: Airflow's task-instance hooks drive one row per class and step."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import Screen
from wedsync_dr.console import DONE, FAILED, SKIPPED
from wedsync_dr.policy import load_policy
from wedsync_dr.storage.limits import shared_limits
from wedsync_dr_dev.progress import BackupSteps, step_task_ids

POLICY = load_policy()


class FakeTaskInstance:
    """What the hooks read of a RuntimeTaskInstance: ids and the run's XComs."""

    def __init__(self, task_id: str, xcoms: dict | None = None, dag_id: str = "backup_vendor_data") -> None:
        self.task_id, self.dag_id = task_id, dag_id
        self._xcoms = xcoms or {}

    def xcom_pull(self, task_ids: str):
        return self._xcoms.get(task_ids)


def _row(rows: list[str], start: str) -> str:
    (row,) = [r for r in rows if r.startswith(start)]
    return row


def test_every_class_gets_a_row_per_step_in_pipeline_order():
    assert step_task_ids(POLICY) == ["extract", "encrypt", "upload_to_aws", "upload_to_azure", "upload_to_gcp",
                                     "validate"]
    screen = Screen()
    BackupSteps(screen.board, POLICY, ["client_data", "vendor_data"])
    labels = [" ".join(row.split()[:3]) for row in screen.rows()]
    assert labels[:7] == ["client_data extract waiting", "client_data encrypt waiting", "client_data upload aws",
                          "client_data upload azure", "client_data upload gcp", "client_data validate waiting",
                          "vendor_data extract waiting"]


def test_an_upload_row_counts_its_own_clouds_uploads_toward_the_backups_size():
    screen = Screen()
    steps = BackupSteps(screen.board, POLICY, ["vendor_data"])
    xcoms = {"encrypt": {"ciphertext_bytes": 4_000_000, "objects": 6}}
    steps.on_task_instance_running(None, FakeTaskInstance("upload_to_azure", xcoms))
    aws, azure = shared_limits("aws"), shared_limits("azure")
    with screen.board.counting_transfers(steps.route):
        azure.pace("upload", 1_000_000)
        aws.pace("upload", 2_000_000)  # another cloud's bytes: not this row's
        azure.pace("download", 3_000_000)  # the copy being proven: not an upload
    assert "1.0 MB / 4.0 MB" in _row(screen.rows(), "vendor_data  upload azure")

    xcoms["upload_to_azure"] = {"bytes": 4_000_000, "objects": 6, "skipped_blobs": 0, "copy": "validated"}
    steps.on_task_instance_success(None, FakeTaskInstance("upload_to_azure", xcoms))
    row = _row(screen.rows(), "vendor_data  upload azure")
    assert "4.0 MB" in row and row.endswith("done  6 objects, copy validated")
    assert steps.route("aws", "upload") is None  # nothing runs now


def test_a_step_between_uploads_counts_every_byte_its_stores_move():
    screen = Screen()
    steps = BackupSteps(screen.board, POLICY, ["vendor_data"])
    steps.on_task_instance_running(None, FakeTaskInstance("validate"))
    assert steps.route("gcp", "download") == steps.route("aws", "upload") == "vendor_data/validate"


def test_results_failures_skips_and_tasks_that_never_ran_all_end_their_rows():
    screen = Screen()
    steps = BackupSteps(screen.board, POLICY, ["vendor_data"])
    extracted = {"extract": {"plaintext_bytes": 947_100, "rows": 824, "objects": 6}}
    steps.on_task_instance_running(None, FakeTaskInstance("extract"))
    steps.on_task_instance_success(None, FakeTaskInstance("extract", extracted))
    steps.on_task_instance_running(None, FakeTaskInstance("encrypt"))
    steps.on_task_instance_failed(None, FakeTaskInstance("encrypt"), RuntimeError("no key ring\nmore detail"))
    steps.on_task_instance_running(None, FakeTaskInstance("cleanup_staging"))  # the teardown has no row
    steps.settle("vendor_data", {"upload_to_aws": "upstream_failed", "upload_to_azure": "upstream_failed",
                                 "upload_to_gcp": "upstream_failed", "validate": "skipped",
                                 "cleanup_staging": "success"})
    board = screen.board
    assert [board.state(f"vendor_data/{t}") for t in step_task_ids(POLICY)] == [DONE, FAILED, FAILED, FAILED, FAILED,
                                                                                 SKIPPED]
    rows = screen.rows()
    assert _row(rows, "vendor_data  extract").endswith("done  824 rows, 6 objects") and "947.1 kB" in rows[0]
    assert _row(rows, "vendor_data  encrypt").endswith("failed  RuntimeError: no key ring")
    assert _row(rows, "vendor_data  upload gcp").endswith("failed  upstream failed")


def test_a_skipped_class_reads_skipped_and_an_unhealthy_clouds_upload_too():
    screen = Screen()
    steps = BackupSteps(screen.board, POLICY, ["assets"])
    steps.on_task_instance_running(None, FakeTaskInstance("extract", dag_id="backup_assets"))
    steps.on_task_instance_skipped(None, FakeTaskInstance("extract", dag_id="backup_assets"))
    steps.settle("assets", {})
    assert screen.board.unfinished() == []
    assert {screen.board.state(f"assets/{t}") for t in step_task_ids(POLICY)} == {SKIPPED}


def test_the_hooks_match_airflows_listener_spec():
    """Registered with the Task SDK's listener manager (what dag.test() calls), every hook is validated
    against Airflow's hookspecs, and it is gone again afterwards."""
    from airflow.sdk.listener import get_listener_manager

    steps = BackupSteps(Screen().board, POLICY, ["vendor_data"])
    manager = get_listener_manager()
    with steps.listening():
        assert manager.pm.is_registered(steps)
        manager.pm.check_pending()  # raises for a hook Airflow does not define
        hooks = {impl.name for impl in manager.pm.get_hookcallers(steps)}
        assert hooks == {"on_task_instance_running", "on_task_instance_success", "on_task_instance_failed",
                         "on_task_instance_skipped"}
    assert not manager.pm.is_registered(steps)


def test_importing_the_rows_does_not_import_airflow():
    """The CLI imports them before it has put Airflow's settings in place (Airflow reads them once, on import)."""
    code = "import sys, wedsync_dr_dev.progress, wedsync_dr_dev.cli; assert 'airflow' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
