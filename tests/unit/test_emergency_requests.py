"""Emergency requests: one schema for the trigger form, the API server's guard, the first task and the CLI."""

import pytest

from wedsync_dr.emergency import EmergencyRequestError, field_schemas, validate_conf, visible_text
from wedsync_dr.policy import load_policy
from wedsync_dr.requests import InvalidRequest, classes_by_priority

POLICY = load_policy()
REASON = "Venue system outage 3 days before the wedding"
FORM = {"reason": REASON, "scope": "all", "wedding_ids": None, "data_classes": None, "requested_by": None}


@pytest.mark.parametrize("reason", [
    " " * 12,
    "\t\n" * 6,
    "\u200b" * 12,                      # zero-width space
    "\u200b\u200c\u200d\u2060\ufeff" * 3,  # zero-width (non-)joiners, word joiner, BOM
    "\u00a0\u3000" * 6,                 # no-break and ideographic spaces
    "\u3164" * 12,                      # Hangul filler: a "letter" that shows nothing
    "ok" + "\u200b" * 10,               # 12 characters, 2 of them visible
    "a" + " " * 10 + "b",               # 12 characters, "a b" to a reader
])
def test_a_reason_of_whitespace_or_invisible_characters_is_refused(reason):
    assert len(reason) >= field_schemas(POLICY)["reason"]["minLength"]  # per field it would pass
    with pytest.raises(EmergencyRequestError, match="whitespace and invisible characters do not count"):
        validate_conf(POLICY, {**FORM, "reason": reason})


@pytest.mark.parametrize("reason", ["DB is down", "Перебой у площадки", "  padded but real reason  ", REASON])
def test_a_reason_a_reader_can_see_is_accepted(reason):
    assert validate_conf(POLICY, {**FORM, "reason": reason})["reason"] == reason  # kept as given


def test_visible_text_is_what_a_reader_sees():
    assert visible_text("\u200b a\u00a0\u00a0b\u2060 \n") == "a b"


@pytest.mark.parametrize(("conf", "message"), [
    ({**FORM, "data_classes": ["vendor_data"]}, "data_classes: only allowed when scope is 'classes'"),
    ({**FORM, "wedding_ids": [42]}, "wedding_ids: only allowed when scope is 'weddings'"),
    ({**FORM, "scope": "classes"}, "data_classes"),
    ({**FORM, "scope": "weddings", "data_classes": ["assets"], "wedding_ids": [1]}, "data_classes"),
    ({**FORM, "urgent": True}, "Additional properties"),
])
def test_the_forms_cross_field_mistakes_are_refused_not_guessed_at(conf, message):
    """The form posts scope `all` with classes still chosen: refused (400 at the guard), never widened."""
    with pytest.raises(EmergencyRequestError, match=message) as refused:
        validate_conf(POLICY, conf)
    assert isinstance(refused.value, InvalidRequest)


def test_the_form_offers_the_policys_classes_as_a_multi_select_most_urgent_first():
    schema = field_schemas(POLICY)["data_classes"]
    assert schema["examples"] == schema["items"]["enum"] == classes_by_priority(POLICY)
    assert schema["examples"][0] == "critical_weddings"
