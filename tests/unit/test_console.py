"""The terminal's view of a run (wedsync_dr.console): step rows rendered by rich on a fake clock, nothing drawn
when the output is not a terminal, and a real pseudo-terminal session whose logs go to a file."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import Screen, run_in_terminal
from wedsync_dr.console import DONE, FAILED, SKIPPED, StepBoard, count, terminal_session
from wedsync_dr.storage.limits import shared_limits

REPO = Path(__file__).resolve().parents[2]


def _row(rows: list[str], label: str) -> str:
    (row,) = [r for r in rows if r.startswith(label)]
    return row


def test_rows_show_waiting_then_bytes_rate_and_eta_then_the_outcome():
    screen = Screen()
    board = screen.board
    board.add("extract", "vendor_data  extract   ")
    board.add("upload", "vendor_data  upload aws")
    board.add("validate", "vendor_data  validate  ")
    rows = screen.rows()
    assert _row(rows, "vendor_data  upload aws").endswith("waiting")

    board.start("extract")
    screen.now += 2
    board.finish("extract", completed=4_000_000, detail=count(824, "row"))
    board.start("upload", total=10_000_000)
    for _ in range(4):
        screen.now += 1
        board.advance("upload", 1_000_000)
    rows = screen.rows()
    assert _row(rows, "vendor_data  extract").split()[3:] == ["4.0", "MB", "2.0", "MB/s", "0:00:02", "done", "824",
                                                              "rows"]
    # 4 of 10 MB at 1 MB/s: 6 s to go
    assert _row(rows, "vendor_data  upload aws").split()[4:] == ["4.0", "MB", "/", "10.0", "MB", "1.0", "MB/s", "eta",
                                                                 "0:00:06", "running"]
    assert _row(rows, "vendor_data  validate").endswith("waiting")

    screen.now += 1
    board.finish("upload", completed=5_000_000)
    board.finish("validate", SKIPPED, detail="nothing to validate")
    final = screen.close()
    assert _row(final[-3:], "vendor_data  upload aws").split()[4:] == ["5.0", "MB", "1.0", "MB/s", "0:00:05", "done"]
    assert _row(final[-3:], "vendor_data  validate").split()[2:] == ["skipped", "nothing", "to", "validate"]


def test_a_running_step_of_unknown_size_shows_its_bytes_and_time_without_an_eta():
    screen = Screen()
    screen.board.add("restore", "restore client_data")
    screen.board.start("restore")
    screen.now += 3
    screen.board.advance("restore", 1_500_000)
    row = _row(screen.rows(), "restore client_data")
    assert "1.5 MB" in row and "eta" not in row and row.endswith("0:00:03 running")


def test_a_retried_step_counts_from_zero_and_a_failure_keeps_its_detail():
    screen = Screen()
    screen.board.add("u", "upload gcp")
    screen.board.start("u", total=1_000_000)
    screen.board.advance("u", 600_000)
    screen.board.finish("u", FAILED, detail="CloudUnavailable: gcp: timed out")
    assert _row(screen.rows(), "upload gcp").endswith("failed  CloudUnavailable: gcp: timed out")
    screen.board.start("u", total=1_000_000)  # the retry
    screen.board.advance("u", 100_000)
    assert "100.0 kB / 1.0 MB" in _row(screen.rows(), "upload gcp")


def test_bytes_a_store_moves_advance_the_row_the_route_names():
    screen = Screen()
    screen.board.add("aws", "verify in aws")
    screen.board.add("gcp", "verify in gcp")
    limits = shared_limits("console-test")
    with screen.board.counting_transfers(lambda cloud, direction: "aws" if direction == "download" else None):
        limits.pace("download", 2_000_000)  # any cloud's download counts on "aws" here
        limits.pace("upload", 7_000_000)  # uploads count nowhere
    limits.pace("download", 9_000_000)  # after the block: nobody counts
    rows = screen.rows()
    assert "2.0 MB" in _row(rows, "verify in aws") and _row(rows, "verify in aws").endswith("running")
    assert _row(rows, "verify in gcp").endswith("waiting")


def test_an_interrupted_run_fails_what_was_running_and_leaves_what_waited():
    screen = Screen()
    screen.board.add("a", "step a")
    screen.board.add("b", "step b")
    screen.board.start("a")
    screen.board.abandon("KeyboardInterrupt")
    assert screen.board.state("a") == FAILED and screen.board.state("b") == "waiting"
    assert screen.board.unfinished() == ["b"]
    assert _row(screen.rows(), "step a").endswith("failed  KeyboardInterrupt")


def test_a_board_without_a_terminal_draws_nothing_and_still_keeps_the_states():
    board = StepBoard()
    board.add("a", "step a")
    board.start("a", total=10)
    board.advance("a", 5)
    with board.counting_transfers(lambda cloud, direction: "a"):
        shared_limits("console-test").pace("download", 5)
    board.finish("a", DONE)
    assert not board.live and board.state("a") == DONE and board.unfinished() == []
    with pytest.raises(ValueError, match="done, failed or skipped"):
        board.finish("a", "running")
    with pytest.raises(KeyError, match="add it first"):
        board.start("nope")


def test_outside_a_terminal_a_session_changes_nothing(tmp_path, capsys):
    log_path = tmp_path / "logs" / "run.log"
    with terminal_session(log_path) as board:
        print("a plain line")
        board.add("a", "step a")
        board.start("a")
        board.finish("a")
    assert not board.live
    assert capsys.readouterr().out == "a plain line\n"  # no bars, no escape sequences, nothing added
    assert not log_path.exists()


_SESSION = textwrap.dedent("""
    import logging, subprocess, sys
    from pathlib import Path
    from wedsync_dr.console import terminal_session

    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(name)s %(message)s")
    with terminal_session(Path(sys.argv[1])) as board:
        board.add("upload", "upload to aws")
        board.start("upload", total=2_000_000)
        logging.getLogger("airflow.task").info("an Airflow record")
        logging.getLogger("wedsync_dr.restore").warning("restore of k from aws failed; trying the next cloud")
        print("printed by the library", flush=True)
        subprocess.run(["echo", "written by a subprocess"], check=True)
        board.advance("upload", 2_000_000)
        board.finish("upload", detail="3 objects")
    print("the command's result", flush=True)
""")


def test_in_a_terminal_the_logs_go_to_a_file_and_the_terminal_shows_rows_and_warnings(tmp_path):
    log_path = tmp_path / "logs" / "run.log"
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'include'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    returncode, shown = run_in_terminal([sys.executable, "-c", _SESSION, str(log_path)], env, timeout=120)
    assert returncode == 0, shown
    assert shown.index(f"logs: {log_path}") < shown.index("upload to aws") < shown.index("the command's result")
    assert "done  3 objects" in shown and "2.0 MB" in shown
    assert "warning: restore of k from aws failed; trying the next cloud" in shown  # still seen
    for logged in ("an Airflow record", "printed by the library", "written by a subprocess"):
        assert logged not in shown
    assert log_path.read_text().splitlines() == [
        "INFO airflow.task an Airflow record",
        "WARNING wedsync_dr.restore restore of k from aws failed; trying the next cloud",
        "printed by the library",
        "written by a subprocess",
    ]


def test_a_pipe_gets_plain_log_lines_and_no_log_file(tmp_path):
    log_path = tmp_path / "logs" / "run.log"
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'include'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run([sys.executable, "-c", _SESSION, str(log_path)], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "INFO airflow.task an Airflow record",
        "WARNING wedsync_dr.restore restore of k from aws failed; trying the next cloud",
        "printed by the library",
        "written by a subprocess",
        "the command's result",
    ]
    assert "\x1b" not in result.stdout + result.stderr and not log_path.exists()
