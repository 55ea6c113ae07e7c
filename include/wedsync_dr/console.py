"""What a person at a terminal sees: one progress row per step, the full logs in a file.

In a terminal, `terminal_session(log_path)` prints where the logs go, then sends everything the process
writes to its stdout and stderr -- Airflow's and the library's log records, the SDKs' chatter -- to that
file, and shows a `StepBoard` instead: one row per step (waiting, running with bytes, rate and an ETA where
the size is known, then done / failed / skipped). The library's own warnings and errors still reach the
terminal, above the rows. When the session ends the terminal is given back, for the command's result.

Anywhere else (CI, a pipe, a file, Airflow's task logs) it changes nothing: the log records go where they
always went, one plain line each, and the board draws nothing. The library logs as it always does either
way; the board is fed by the storage layer's byte counts (`watch_transfers`) and by its caller.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressBar, ProgressColumn, Task, TaskID, TextColumn
from rich.text import Text

from wedsync_dr.report import human_bytes
from wedsync_dr.storage.limits import watch_transfers

WAITING, RUNNING, DONE, FAILED, SKIPPED = "waiting", "running", "done", "failed", "skipped"
_STATE_STYLES = {WAITING: "dim", RUNNING: "cyan", DONE: "green", FAILED: "bold red", SKIPPED: "yellow"}
MIN_RATE_SECONDS = 0.5  # a step shorter than this shows no average rate: it would be noise
TransferRoute = Callable[[str, str], "str | None"]  # (cloud, direction) -> the row that counts it, or None


def count(n: int, noun: str) -> str:
    """`1 object`, `2 objects`: a row's detail reads as a sentence."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def log_file_path(directory: Path, command: str, now: dt.datetime | None = None) -> Path:
    """`<directory>/<command>-<UTC timestamp>.log`: one file per run, sorted by time."""
    now = now or dt.datetime.now(dt.UTC)
    return directory / f"{command}-{now:%Y%m%dT%H%M%SZ}.log"


# --------------------------------------------------------------------------- the board


class StepBoard:
    """Rows of steps, keyed by the caller's names. Without a `Progress` (not a terminal) every call is a no-op,
    so the caller never asks where its output goes. Thread-safe: bytes arrive from transfer threads."""

    def __init__(self, progress: Progress | None = None) -> None:
        self._progress = progress
        self._rows: dict[str, TaskID] = {}
        self._states: dict[str, str] = {}
        self._lock = threading.RLock()

    @property
    def live(self) -> bool:
        return self._progress is not None

    def add(self, key: str, label: str) -> None:
        """A row that waits for its step to start (rows show in the order they are added)."""
        with self._lock:
            self._states[key] = WAITING
            if self._progress is not None and key not in self._rows:
                self._rows[key] = self._progress.add_task(label, start=False, total=None, state=WAITING, detail="")

    def start(self, key: str, total: int | None = None, detail: str = "") -> None:
        """The step is running; `total` (bytes) when known gives a bar and an ETA. Starting again restarts it
        (a retry counts from zero)."""
        with self._lock:
            self._check(key)
            self._states[key] = RUNNING
            if self._progress is None:
                return
            row = self._rows[key]
            if self._task(row).started:
                self._progress.reset(row, start=True, completed=0)
            else:
                self._progress.start_task(row)
            self._progress.update(row, state=RUNNING, ran=True, detail=detail, **({"total": total} if total else {}))

    def set_total(self, key: str, total: int) -> None:
        with self._lock:
            if self._progress is not None and key in self._rows and total:
                self._progress.update(self._rows[key], total=total)

    def advance(self, key: str, nbytes: int) -> None:
        """`nbytes` more done; a waiting row starts (bytes mean it runs), a finished one ignores them."""
        with self._lock:
            if self._states.get(key) == WAITING:
                self.start(key)
            if self._progress is not None and self._states.get(key) == RUNNING:
                self._progress.advance(self._rows[key], nbytes)

    def finish(self, key: str, state: str = DONE, *, completed: int | None = None, detail: str = "") -> None:
        """The step ended in `state`; `completed` (bytes) replaces what was counted when the step knows better."""
        if state not in (DONE, FAILED, SKIPPED):
            raise ValueError(f"a step finishes done, failed or skipped, not {state!r}")
        with self._lock:
            self._check(key)
            was = self._states[key]
            self._states[key] = state
            if self._progress is None:
                return
            row = self._rows[key]
            task = self._task(row)
            if completed is not None:
                done = int(completed)
            elif was in (WAITING, RUNNING):
                done = int(task.completed)
            else:  # finished again (to say more): what it had, its time unchanged
                done = int(task.fields.get("bytes_done", 0))
            self._progress.update(row, state=state, detail=detail, bytes_done=done)
            if state == DONE:  # a full bar, also for a step that moved no bytes; failed/skipped bars stay put
                self._progress.update(row, total=max(done, 1), completed=max(done, 1))
            if was in (WAITING, RUNNING):
                self._progress.stop_task(row)

    def state(self, key: str) -> str | None:
        return self._states.get(key)

    def abandon(self, detail: str) -> None:
        """The work stopped (an error, Ctrl-C): every running row ends failed; waiting rows stay waiting."""
        with self._lock:
            for key in [k for k, state in self._states.items() if state == RUNNING]:
                self.finish(key, FAILED, detail=detail)

    def unfinished(self) -> list[str]:
        """Rows still waiting or running, in the order they were added."""
        with self._lock:
            return [key for key, state in self._states.items() if state in (WAITING, RUNNING)]

    @contextmanager
    def counting_transfers(self, route: TransferRoute) -> Iterator[None]:
        """Meanwhile, every byte any store moves advances the row `route(cloud, direction)` names (None: none)."""
        if self._progress is None:
            yield
            return

        def count(cloud: str, direction: str, nbytes: int) -> None:
            key = route(cloud, direction)
            if key is not None:
                self.advance(key, nbytes)

        with watch_transfers(count):
            yield

    def _check(self, key: str) -> None:
        if key not in self._states:
            raise KeyError(f"no row {key!r}: add it first")

    def _task(self, row: TaskID) -> Task:
        return next(task for task in self._progress.tasks if task.id == row)


# --------------------------------------------------------------------------- how a row reads


def _is_waiting(task: Task) -> bool:
    return task.fields.get("state") == WAITING


def _bytes_done(task: Task) -> int:
    """The bytes of a row: a finished one keeps its true count (its bar may be padded to look full)."""
    if task.fields.get("state") == RUNNING:
        return int(task.completed)
    return int(task.fields.get("bytes_done", 0))


class _StepBar(BarColumn):
    """An empty bar while waiting (rich would pulse: that reads as busy), a pulse while running with no size."""

    def render(self, task: Task) -> ProgressBar:
        stopped_unsized = task.fields.get("state") in (FAILED, SKIPPED) and task.total is None
        if _is_waiting(task) or stopped_unsized:
            return ProgressBar(total=1, completed=0, width=self.bar_width, style=self.style)
        return super().render(task)


class _BytesColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        done = _bytes_done(task)
        if not done and not (task.fields.get("state") == RUNNING and task.total):  # no bytes (yet): nothing to say
            return Text("")
        if task.fields.get("state") == RUNNING and task.total:
            return Text(f"{human_bytes(done)} / {human_bytes(task.total)}", style="progress.download")
        return Text(human_bytes(done), style="progress.download")


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        state = task.fields.get("state")
        if state == RUNNING:
            speed = task.speed
        elif state != WAITING and task.elapsed and task.elapsed >= MIN_RATE_SECONDS:
            speed = _bytes_done(task) / task.elapsed
        else:
            speed = None
        return Text(f"{human_bytes(speed)}/s" if speed else "", style="progress.data.speed")


class _TimeColumn(ProgressColumn):
    """ETA while running with a known size (`eta 0:00:12`), else time elapsed; nothing while waiting."""

    def render(self, task: Task) -> Text:
        if not task.fields.get("ran") or task.elapsed is None:  # waiting, or finished without running
            return Text("")
        if task.fields.get("state") == RUNNING and task.total and task.time_remaining is not None:
            return Text(f"eta {_clock(task.time_remaining)}", style="progress.remaining")
        return Text(_clock(task.elapsed), style="progress.elapsed")


class _StateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        state = task.fields.get("state", WAITING)
        text = Text(state, style=_STATE_STYLES.get(state, ""))
        if task.fields.get("detail"):
            text.append(f"  {task.fields['detail']}", style="dim" if state != FAILED else "red")
        return text


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def new_progress(console: Console, *, get_time: Callable[[], float] | None = None, auto_refresh: bool = True
                 ) -> Progress:
    """The board's rich Progress on `console` (tests pass a fake clock and refresh by hand)."""
    return Progress(TextColumn("{task.description}"),
                    _StepBar(bar_width=24, complete_style="cyan", finished_style="green"),
                    _BytesColumn(), _RateColumn(), _TimeColumn(), _StateColumn(),
                    console=console, auto_refresh=auto_refresh, redirect_stdout=False, redirect_stderr=False,
                    **({"get_time": get_time} if get_time else {}))


# --------------------------------------------------------------------------- the session


class _TerminalEcho(logging.Handler):
    """The library's warnings and errors, printed above the rows (they are in the log file too)."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.WARNING)
        self._console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            style = "bold red" if record.levelno >= logging.ERROR else "yellow"
            self._console.print(Text(f"{record.levelname.lower()}: {record.getMessage()}", style=style))
        except Exception:  # noqa: BLE001 - logging must never break the work it reports on
            self.handleError(record)


def stdout_is_terminal() -> bool:
    try:
        return sys.stdout is not None and sys.stdout.isatty()
    except (AttributeError, ValueError):  # no stdout, or a closed one
        return False


@contextmanager
def terminal_session(log_path: Path, *, echo_logger: str = "wedsync_dr") -> Iterator[StepBoard]:
    """A live `StepBoard` on the terminal and the process's output in `log_path`; outside a terminal, a board
    that draws nothing and output left alone (and no log file)."""
    if not stdout_is_terminal():
        yield StepBoard()
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = open(os.dup(saved_out), "w", encoding="utf-8", errors="replace", buffering=1)
    try:  # measured on the terminal itself: fd 1 is about to be the log file
        width = os.get_terminal_size(saved_out).columns or None  # a pseudo-terminal may report 0: rich's default
    except OSError:
        width = None
    console = Console(file=terminal, width=width)
    console.print(Text.assemble(("logs: ", "dim"), str(log_path)))
    echo = _TerminalEcho(console)
    progress = new_progress(console)
    with open(log_path, "ab", buffering=0) as log_file:
        # fd level: Airflow's structlog writers hold their own reference to sys.stdout, and subprocesses and C
        # libraries write to the descriptors; all of it lands in the file
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
        logging.getLogger(echo_logger).addHandler(echo)
        progress.start()
        board = StepBoard(progress)
        try:
            yield board
        except BaseException as err:
            board.abandon(type(err).__name__)
            raise
        finally:
            progress.stop()
            logging.getLogger(echo_logger).removeHandler(echo)
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            terminal.close()
