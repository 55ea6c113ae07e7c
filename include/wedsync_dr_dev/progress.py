"""`wedsync-dev backup run` in a terminal: each backup DAG's steps as rows of a `StepBoard`.

The DAGs run in this process (`dag.test()`), so Airflow's task-instance listener hooks fire here: a step's
row starts when its task runs and ends with its result (the task's own XCom: bytes, rows, objects). While
a step runs, the bytes its stores move advance its row (`StepBoard.counting_transfers`); an upload's row
counts only the uploads to its own cloud, and has the backup's ciphertext size as its total, so it shows an
ETA. Tasks that never start (skipped by a trigger rule, upstream failed) are settled from the run's task
states when the DAG run ends. The library's logging is untouched: its records go to the log file.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pluggy

from wedsync_dr.console import DONE, FAILED, SKIPPED, StepBoard, count
from wedsync_dr.policy import Policy

# Airflow's own marker (`airflow.listeners.hookimpl` is this): importing this module must not import Airflow,
# whose settings are read once, on first import, and the CLI sets them after it has imported this
hookimpl = pluggy.HookimplMarker("airflow")
UPLOAD = "upload_to_"


def step_task_ids(policy: Policy) -> list[str]:
    """The task ids of a backup DAG that get a row, in pipeline order (the teardown gets none)."""
    return ["extract", "encrypt", *(f"{UPLOAD}{cloud}" for cloud in policy.cloud_names), "validate"]


def row_label(data_class: str, task_id: str, width: int) -> str:
    step = f"upload {task_id.removeprefix(UPLOAD)}" if task_id.startswith(UPLOAD) else task_id
    return f"{data_class:<{width}}  {step:<12}"


def _detail(task_id: str, result: Mapping[str, Any]) -> str:
    """What a finished step did, in a few words, from its XCom."""
    if task_id == "extract":
        return f"{count(result.get('rows') or 0, 'row')}, {count(result.get('objects') or 0, 'object')}"
    if task_id == "encrypt":
        return count(result.get("objects") or 0, "object")
    if task_id.startswith(UPLOAD):
        skipped = result.get("skipped_blobs") or 0
        return (count(result.get("objects") or 0, "object") + (f", {skipped} already there" if skipped else "")
                + (f", copy {result['copy']}" if result.get("copy") else ""))
    if task_id == "validate":
        return f"{result.get('status', '')} in {', '.join(result.get('clouds_ok') or []) or 'no cloud'}"
    return ""


def _result_bytes(task_id: str, result: Mapping[str, Any]) -> int | None:
    key = {"extract": "plaintext_bytes", "encrypt": "ciphertext_bytes"}.get(task_id)
    if task_id.startswith(UPLOAD):
        key = "bytes"
    value = result.get(key) if key else None
    return int(value) if isinstance(value, int | float) else None


class BackupSteps:
    """Airflow listener hooks (task-instance running / success / failed / skipped) that drive a board."""

    def __init__(self, board: StepBoard, policy: Policy, data_classes: list[str], width: int = 0) -> None:
        self.board = board
        self.task_ids = step_task_ids(policy)
        self._running: str | None = None  # the row of the task running now (dag.test runs one at a time)
        width = max(width, *map(len, data_classes))
        for name in data_classes:
            for task_id in self.task_ids:
                board.add(self.key(name, task_id), row_label(name, task_id, width))

    @staticmethod
    def key(data_class: str, task_id: str) -> str:
        return f"{data_class}/{task_id}"

    def _row(self, task_instance) -> str | None:
        data_class = str(task_instance.dag_id).removeprefix("backup_")
        return self.key(data_class, task_instance.task_id) if task_instance.task_id in self.task_ids else None

    def route(self, cloud: str, direction: str) -> str | None:
        """The row a transfer counts on: the running step's; an upload step counts only its own cloud's uploads."""
        running = self._running
        if running is None:
            return None
        task_id = running.split("/", 1)[1]
        if task_id.startswith(UPLOAD):
            return running if direction == "upload" and cloud == task_id.removeprefix(UPLOAD) else None
        return running

    # ------------------------------------------------------------------ Airflow's listener hooks

    @hookimpl
    def on_task_instance_running(self, previous_state, task_instance) -> None:
        row = self._row(task_instance)
        if row is None:
            return
        total = None
        if task_instance.task_id.startswith(UPLOAD):  # the backup's ciphertext: the most an upload sends
            encrypted = task_instance.xcom_pull(task_ids="encrypt") or {}
            total = encrypted.get("ciphertext_bytes")
        self.board.start(row, total=total)
        self._running = row

    @hookimpl
    def on_task_instance_success(self, previous_state, task_instance) -> None:
        row = self._row(task_instance)
        if row is None:
            return
        result = task_instance.xcom_pull(task_ids=task_instance.task_id)
        result = result if isinstance(result, Mapping) else {}
        self._running = None
        self.board.finish(row, DONE, completed=_result_bytes(task_instance.task_id, result),
                          detail=_detail(task_instance.task_id, result))

    @hookimpl
    def on_task_instance_failed(self, previous_state, task_instance, error) -> None:
        row = self._row(task_instance)
        if row is None:
            return
        self._running = None
        first_line = str(error or "").strip().splitlines()[0] if str(error or "").strip() else ""
        self.board.finish(row, FAILED, detail=f"{type(error).__name__}: {first_line}"[:100] if error else "")

    @hookimpl
    def on_task_instance_skipped(self, previous_state, task_instance) -> None:
        row = self._row(task_instance)
        if row is None:
            return
        self._running = None
        self.board.finish(row, SKIPPED)

    # ------------------------------------------------------------------ after the run

    def settle(self, data_class: str, states: Mapping[str, str | None]) -> None:
        """End the rows of tasks that never reported (skipped by a trigger rule, upstream failed), by state."""
        self._running = None
        for task_id in self.task_ids:
            row = self.key(data_class, task_id)
            if row not in self.board.unfinished():
                continue
            state = str(states.get(task_id) or "not run").removeprefix("TaskInstanceState.").lower()
            if state == "success":
                self.board.finish(row, DONE)
            elif state in ("failed", "upstream_failed"):
                self.board.finish(row, FAILED, detail=state.replace("_", " "))
            else:
                self.board.finish(row, SKIPPED, detail="" if state == "skipped" else state.replace("_", " "))

    @contextmanager
    def listening(self) -> Iterator[None]:
        """Registered with the Task SDK's listener manager (what `dag.test()` runs tasks with), meanwhile."""
        from airflow.sdk.listener import get_listener_manager

        manager = get_listener_manager()
        manager.add_listener(self)
        try:
            with self.board.counting_transfers(self.route):
                yield
        finally:
            manager.pm.unregister(self)
