"""Restore requests: bad parameters are refused with a clear message before anything runs."""

import datetime as dt
import re

import pytest

from wedsync_dr.policy import load_policy
from wedsync_dr.requests import TARGET_PATTERN, RestoreError, check_request, default_target

POLICY = load_policy()


def test_defaults_make_a_new_schema_restore_of_the_latest_backup():
    request = check_request(POLICY, {"data_class": "client_data"})
    assert (request.backup_id, request.target, request.in_place, request.dry_run) == ("latest", "", False, False)


def test_default_targets_of_the_same_second_differ_and_are_valid_schema_names():
    now = dt.datetime(2026, 12, 1, 8, 55, 43, tzinfo=dt.UTC)
    for name in POLICY.data_classes:
        request = check_request(POLICY, {"data_class": name})
        names = {default_target(request, now) for _ in range(20)}
        assert len(names) > 1  # two restores in one second once collided on the schema name
        assert all(re.fullmatch(TARGET_PATTERN, n) and n.startswith(f"restore_{name}_20261201085543_") for n in names)


def test_point_in_time_is_parsed_as_utc():
    request = check_request(POLICY, {"data_class": "vendor_data", "point_in_time": "2026-11-20T18:00:00Z"})
    assert request.point_in_time == dt.datetime(2026, 11, 20, 18, tzinfo=dt.UTC)


@pytest.mark.parametrize(("params", "message"), [
    ({"data_class": "invoices"}, "unknown data_class"),
    ({"data_class": "client_data", "point_in_time": "last tuesday"}, "not an ISO 8601"),
    ({"data_class": "client_data", "target": "in_place"}, "RESTORE client_data"),
    ({"data_class": "client_data", "target": "in_place", "confirm": "RESTORE vendor_data"}, "RESTORE client_data"),
    ({"data_class": "assets", "target": "/srv/restore/../../etc"}, "not allowed"),
    ({"data_class": "assets", "target": "../outside"}, "not allowed"),
    ({"data_class": "assets", "target": "in_place", "confirm": "RESTORE assets"}, "never restored over"),
    ({"data_class": "client_data", "target": "/tmp/x"}, "only for the assets"),
    ({"data_class": "client_data", "backup_id": "yesterday"}, "neither 'latest'"),
    ({"data_class": "client_data", "source_cloud": "oracle"}, "source_cloud"),
    ({"data_class": "client_data", "wedding_id": 0}, "positive integer"),
])
def test_bad_requests_are_refused_with_a_clear_message(params, message):
    with pytest.raises(RestoreError, match=message):
        check_request(POLICY, params)


def test_in_place_with_the_exact_confirmation_is_accepted():
    request = check_request(POLICY, {"data_class": "client_data", "target": "in_place",
                                     "confirm": "RESTORE client_data"})
    assert request.in_place
