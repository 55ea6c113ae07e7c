"""Asset restore targets: never the live asset store (or around it), never a directory that holds files."""

from __future__ import annotations

import pytest

from wedsync_dr.requests import InvalidRequest, RestoreError
from wedsync_dr.restore import RestoreTargetError, check_asset_target


def test_an_asset_restore_never_writes_into_or_around_the_live_store(tmp_path):
    live = tmp_path / "assets"
    (live / "weddings").mkdir(parents=True)
    for target in (live, live / "weddings", live / "new-subdir", tmp_path):
        with pytest.raises(RestoreTargetError, match="overlaps"):
            check_asset_target(target, str(live))


def test_an_asset_restore_needs_a_new_or_empty_directory(tmp_path):
    check_asset_target(tmp_path / "new", str(tmp_path / "assets"))
    (tmp_path / "empty").mkdir()
    check_asset_target(tmp_path / "empty", None)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "dag.py").write_text("")
    with pytest.raises(RestoreTargetError, match="not an empty directory") as refused:
        check_asset_target(tmp_path / "used", None)
    assert isinstance(refused.value, InvalidRequest)  # the requester's to fix: never pages


def test_asset_paths_cannot_escape_the_target(tmp_path):
    from wedsync_dr.restore import safe_target_path

    assert safe_target_path(tmp_path, "weddings/1/a.jpg") == tmp_path / "weddings" / "1" / "a.jpg"
    for evil in ("../etc/passwd", "/etc/passwd", "weddings/../../x", "a\\..\\b", ""):
        with pytest.raises(RestoreError):
            safe_target_path(tmp_path, evil)
    (tmp_path / "link").symlink_to("/etc")
    with pytest.raises(RestoreError):
        safe_target_path(tmp_path, "link/passwd")
