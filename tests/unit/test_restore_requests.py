"""Restore requests: bad parameters are refused with a clear message before anything runs."""

import datetime as dt
import re

import pytest

from wedsync_dr.policy import load_policy
from wedsync_dr.requests import (
    TARGET_PATTERN,
    InvalidRequest,
    RestoreError,
    RestoreRequestError,
    check_request,
    classes_by_priority,
    default_target,
)

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
    ({"data_class": "assets", "target": "x"}, "absolute directory"),  # once wrote 77 MB into the worker's cwd
    ({"data_class": "assets", "target": "restores_2026"}, "absolute directory"),
    ({"data_class": "assets", "target": "/"}, "below the filesystem root"),
    ({"data_class": "assets", "target": "//."}, "below the filesystem root"),
    ({"data_class": "client_data", "target": "wedsync"}, "not a schema a restore may create"),  # the live one
    ({"data_class": "client_data", "target": "pg_temp"}, "not a schema a restore may create"),
    ({"data_class": "client_data", "tagret": "in_place"}, "unknown restore option"),
    ({"data_class": "client_data", "backup_id": "client_data-20261120T180000Z-ab12",
      "point_in_time": "2026-11-20T18:00:00Z"}, "not both"),
])
def test_bad_requests_are_refused_with_a_clear_message(params, message):
    with pytest.raises(RestoreRequestError, match=message) as refused:
        check_request(POLICY, params)
    # a user error (a warning, never a page), still a RestoreError for the CLI's one-line errors
    assert isinstance(refused.value, InvalidRequest) and isinstance(refused.value, RestoreError)


def test_the_trigger_forms_empty_fields_mean_the_defaults():
    """The form posts every param; target and confirm it leaves empty arrive as null."""
    request = check_request(POLICY, {"data_class": "critical_weddings", "backup_id": "latest", "point_in_time": None,
                                     "wedding_id": None, "target": None, "confirm": None, "source_cloud": "auto",
                                     "dry_run": False})
    assert (request.target, request.confirm, request.in_place) == ("", "", False)


def test_an_assets_restore_into_an_absolute_directory_is_accepted():
    assert check_request(POLICY, {"data_class": "assets", "target": "/srv/restores/assets"}).target == \
        "/srv/restores/assets"


def test_class_choices_put_the_most_urgent_first():
    order = classes_by_priority(POLICY)
    assert sorted(order) == sorted(POLICY.data_classes)
    assert order[0] == "critical_weddings" and order[-1] == "assets"
    weights = [POLICY.data_classes[name].priority_weight for name in order]
    assert weights == sorted(weights, reverse=True)


def test_in_place_with_the_exact_confirmation_is_accepted():
    request = check_request(POLICY, {"data_class": "client_data", "target": "in_place",
                                     "confirm": "RESTORE client_data"})
    assert request.in_place


def test_one_wedding_is_never_restored_in_place_from_whole_tables():
    with pytest.raises(RestoreError, match="never in place"):
        check_request(POLICY, {"data_class": "vendor_data", "wedding_id": 3, "target": "in_place",
                               "confirm": "RESTORE vendor_data"})
