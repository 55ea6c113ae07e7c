"""A task failure pages on-call (critical), unless a user's request was refused: that is a warning."""

from types import SimpleNamespace

import pytest

from wedsync_dr import alerts
from wedsync_dr.emergency import EmergencyRequestError
from wedsync_dr.policy import load_policy
from wedsync_dr.requests import RestoreError, check_request


def _refused_restore() -> Exception:
    try:
        check_request(load_policy(), {"data_class": "assets", "target": "x"})
    except RestoreError as err:
        return err
    raise AssertionError("the request was accepted")


@pytest.mark.parametrize(("exception", "severity"), [
    (_refused_restore(), "warning"),
    (EmergencyRequestError("unknown wedding ids: 987654; nothing was backed up"), "warning"),
    (RestoreError("objects/1: no cloud delivered a valid copy"), "critical"),  # the restore itself failed
    (RuntimeError("encrypt did not finish"), "critical"),
    (None, "critical"),
])
def test_severity_follows_whose_problem_it_is(monkeypatch, exception, severity):
    sent = []
    monkeypatch.setattr(alerts, "alert", lambda **kwargs: sent.append(kwargs))
    alerts.on_task_failure({"ti": SimpleNamespace(dag_id="restore", task_id="check_request"), "run_id": "manual__1",
                            "exception": exception})
    assert [(a["severity"], a["kind"], a["subject"]) for a in sent] == [(severity, "task_failed",
                                                                         "restore.check_request")]
    assert str(exception) in sent[0]["message"]
