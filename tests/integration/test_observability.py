"""What operators look at, from the real api-server: the Prometheus endpoint scraped and parsed with
prometheus_client's own parser, and the status page and both trigger forms rendered in headless Chromium --
the pictures in docs/ (the README's) are written by this test."""

from __future__ import annotations

import struct
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.browser import Chromium, chromium_binary
from tests.helpers import REPO, a_supplier_changed, http_json, run_dag
from wedsync_dr import backup, catalog, crypto, drill, format, health
from wedsync_dr.policy import load_policy
from wedsync_dr.wiring.backup_chain import build_backup_dag

POLICY = load_policy()
DOCS = REPO / "docs"
ARTIFACTS = REPO / "test-artifacts"


def _get(url: str, token: str | None = None) -> tuple[int, str, bytes]:
    """(status, content type, body)."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read()


def _scrape(url: str, token: str) -> dict[tuple[str, tuple], float]:
    status, content_type, body = _get(f"{url}/wedsync-dr/metrics", token)
    assert status == 200, body[:500]
    assert content_type.startswith("text/plain; version=0.0.4"), content_type
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


@pytest.fixture(scope="module")
def observed(airflow_api, stack):
    """Scrapes before and after one vendor_data backup (its DAG, with Airflow's stats recorded; a supplier changed,
    so it has a new pack to send), a restore drill and a round of canaries; the catalog's own record of them, and
    what each upload task reported sending."""
    from airflow.sdk.observability import stats

    url, token = airflow_api
    before = _scrape(url, token)
    sent = []
    with pytest.MonkeyPatch.context() as patch:
        for kind in ("incr", "gauge", "timing"):
            patch.setattr(stats, kind, lambda stat, value, *args, _kind=kind, tags=None, **kwargs: sent.append(
                (_kind, stat, value, tags)))
        with a_supplier_changed(stack):
            run = run_dag(build_backup_dag(POLICY, POLICY.data_classes["vendor_data"], doc_md="test"))
    assert run.state == "success"
    uploads = {ti.task_id.removeprefix("upload_to_"): ti.xcom_pull(task_ids=ti.task_id)
               for ti in run.get_task_instances() if ti.task_id.startswith("upload_to_")}
    with catalog.connect() as conn:
        newest = conn.execute(
            "SELECT backup_id, status, started_at, finished_at, object_count, ciphertext_bytes "
            "FROM backup_catalog.backups WHERE data_class = 'vendor_data' AND status IN ('validated', 'degraded') "
            "ORDER BY finished_at DESC LIMIT 1").fetchone()
        # what the backup stored itself (sent to each cloud): its new packs, as its manifest counts them
        stored = format.Manifest.from_json(catalog.backup(conn, newest[0])["manifest"]).totals
        drilled = drill.drill_class(POLICY, "vendor_data", conn, backup.stores(POLICY),
                                    crypto.KeyRing.from_connection(POLICY.key_ring_conn_id),
                                    catalog.db_connector("wedsync_db_owner"))
        health.record_checks(conn, [health.canary(s, POLICY) for s in backup.stores(POLICY).values()])
        clouds = {c: (healthy, latency, at) for c, healthy, _f, latency, at, _e in catalog.cloud_health(conn)}
    scraped_at = time.time()
    after = _scrape(url, token)
    return {"before": before, "after": after, "newest": newest, "drill": drilled, "clouds": clouds,
            "scraped_at": scraped_at, "sent": sent, "uploads": uploads, "stored": stored}


def test_the_metrics_endpoint_is_refused_without_credentials_like_every_other_route(airflow_api):
    url, token = airflow_api
    for credentials in (None, "forged"):
        refused = _get(f"{url}/wedsync-dr/metrics", credentials)[0]
        assert refused in (401, 403)
        assert refused == _get(f"{url}/wedsync-dr/api/status", credentials)[0]
    assert _get(f"{url}/wedsync-dr/metrics", token)[0] == 200


def test_last_success_and_age_follow_from_the_backup_just_taken(observed):
    after = observed["after"]
    backup_id, status, started_at, finished_at, _objects, _size = observed["newest"]
    assert status == "validated", backup_id
    assert _value(after, "wedsync_dr_catalog_up") == 1
    assert _value(after, "wedsync_dr_last_success_timestamp_seconds", data_class="vendor_data") == \
        finished_at.timestamp()
    age = _value(after, "wedsync_dr_backup_age_seconds", data_class="vendor_data")
    rpo = _value(after, "wedsync_dr_rpo_seconds", data_class="vendor_data")
    assert rpo == POLICY.data_classes["vendor_data"].rpo_minutes * 60
    assert started_at.timestamp() + age <= observed["scraped_at"] + 60  # measured at the scrape, from the start
    assert 0 <= age <= rpo and _value(after, "wedsync_dr_within_rpo", data_class="vendor_data") == 1


def test_counters_grow_by_what_the_backup_did(observed):
    before, after = observed["before"], observed["after"]
    uploads, stored = observed["uploads"], observed["stored"]

    def grew(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert grew("wedsync_dr_backups_total", data_class="vendor_data", status="validated") == 1
    assert grew("wedsync_dr_backups_total", data_class="vendor_data", status="failed") == 0
    assert stored["stored_objects"] >= 1 and stored["ciphertext_bytes"] > 0, stored  # the changed supplier's pack
    for cloud in POLICY.cloud_names:  # each cloud was sent what the backup stored: the day's new pack(s)
        assert (uploads[cloud]["objects"], uploads[cloud]["bytes"]) == (stored["stored_objects"],
                                                                        stored["ciphertext_bytes"]), uploads
        assert grew("wedsync_dr_uploaded_bytes_total", data_class="vendor_data", cloud=cloud) == \
            stored["ciphertext_bytes"]
        assert grew("wedsync_dr_uploaded_objects_total", data_class="vendor_data", cloud=cloud) == \
            stored["stored_objects"]
        assert grew("wedsync_dr_upload_duration_seconds_count", data_class="vendor_data", cloud=cloud) == 1
        assert _value(after, "wedsync_dr_last_upload_duration_seconds", data_class="vendor_data", cloud=cloud) > 0
    for step in ("extract", "encrypt", "validate"):
        assert grew("wedsync_dr_step_duration_seconds_count", data_class="vendor_data", step=step) == 1
        assert grew("wedsync_dr_step_duration_seconds_sum", data_class="vendor_data", step=step) == \
            pytest.approx(_value(after, "wedsync_dr_last_step_duration_seconds", data_class="vendor_data", step=step))


def test_drill_and_canaries_are_exposed_as_the_catalog_recorded_them(observed):
    before, after, drilled = observed["before"], observed["after"], observed["drill"]
    assert drilled["ok"] is True
    passed = ("wedsync_dr_drills_total", {"data_class": "vendor_data", "result": "passed"})
    assert _value(after, passed[0], **passed[1]) - _value(before, passed[0], **passed[1]) == 1
    assert _value(after, "wedsync_dr_drill_last_success", data_class="vendor_data") == 1
    assert _value(after, "wedsync_dr_drill_last_duration_seconds", data_class="vendor_data") == \
        pytest.approx(drilled["seconds"], abs=0.01)  # the drill's result rounds to 10 ms
    for cloud in POLICY.cloud_names:
        healthy, latency_ms, checked_at = observed["clouds"][cloud]
        assert healthy and _value(after, "wedsync_dr_cloud_healthy", cloud=cloud) == 1
        assert _value(after, "wedsync_dr_cloud_canary_latency_seconds", cloud=cloud) == latency_ms / 1000
        assert _value(after, "wedsync_dr_cloud_last_check_timestamp_seconds", cloud=cloud) == checked_at.timestamp()


def test_the_backup_tasks_sent_the_same_through_airflows_stats(observed):
    sent = {(kind, stat, tuple(sorted((tags or {}).items()))): value for kind, stat, value, tags in observed["sent"]}
    stored = observed["stored"]
    for cloud in POLICY.cloud_names:
        tags = (("cloud", cloud), ("data_class", "vendor_data"))
        assert sent["incr", "wedsync_dr.backup.upload.bytes", tags] == stored["ciphertext_bytes"] > 0
        assert sent["incr", "wedsync_dr.backup.upload.objects", tags] == stored["stored_objects"] >= 1
        assert sent["timing", "wedsync_dr.backup.upload.duration", tags].total_seconds() > 0
    vendor = (("data_class", "vendor_data"),)
    assert sent["incr", "wedsync_dr.backup.validated", vendor] == 1
    assert ("timing", "wedsync_dr.backup.extract.duration", vendor) in sent
    assert ("gauge", "wedsync_dr.backup.last_success_timestamp", vendor) in sent


# ----------------------------------------------------------------------------- screenshots (docs/*.png)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


def _assert_picture(data: bytes, width: int, min_height: int) -> None:
    """A PNG of the page: as wide as the window, at least as tall as asked, and not blank (a blank window
    compresses to a few kilobytes; a rendered page with text and tables to tens of them)."""
    shot_width, shot_height = _png_size(data)
    assert shot_width == width and shot_height >= min_height, (shot_width, shot_height)
    assert len(data) > 40_000, len(data)


@pytest.fixture(scope="module")
def browser(airflow_api):
    binary = chromium_binary()
    if not binary:
        pytest.skip("no Chromium on this machine (`make browser` installs Debian's as root, or apt-get install "
                    "chromium): the screenshots in docs/ were not regenerated")
    url, token = airflow_api
    deadline = time.monotonic() + 180
    while http_json("GET", f"{url}/api/v2/dags/restore", token=token)[0] != 200:  # parsed by the dag-processor
        assert time.monotonic() < deadline, "the restore DAG was not parsed"
        time.sleep(2)
    ARTIFACTS.mkdir(exist_ok=True)
    with Chromium(binary, ARTIFACTS / "chromium-profile", ARTIFACTS / "chromium.log") as chromium:
        yield chromium


def _signed_in_page(chromium: Chromium, airflow_api, width: int = 1280, height: int = 1000):
    """A tab holding the UI's session cookie (`_token`, as Airflow's login sets it) for the api-server."""
    url, token = airflow_api
    page = chromium.page(width, height)
    page.set_cookie(url, "_token", token)
    return page


def test_status_page_picture(observed, browser, airflow_api):
    """After a backup and a drill of every class (vendor_data's are the module's): the page as it is then."""
    url, token = airflow_api
    for name in sorted(set(POLICY.data_classes) - {"vendor_data"}):
        assert run_dag(build_backup_dag(POLICY, POLICY.data_classes[name], doc_md="test")).state == "success", name
    with catalog.connect() as conn:
        for name in sorted(set(POLICY.data_classes) - {"vendor_data"}):
            assert drill.drill_class(POLICY, name, conn, backup.stores(POLICY),
                                     crypto.KeyRing.from_connection(POLICY.key_ring_conn_id),
                                     catalog.db_connector("wedsync_db_owner"))["ok"] is True, name
    status = http_json("GET", f"{url}/wedsync-dr/api/status", token=token)[1]
    assert all(c["rpo_ok"] and c["last_drill"]["ok"] for c in status["classes"].values()), status["classes"]
    page = _signed_in_page(browser, airflow_api)
    page.goto(f"{url}/wedsync-dr/")
    page.wait_for("document.body && document.body.innerText.includes('Backups per data class')", what="status page")
    text = page.text()
    assert "Clouds" in text and "Critical weddings" in text
    assert ("all good" in text) is status["ok"] and ("attention needed" in text) is not status["ok"]
    for name in POLICY.data_classes:
        assert name in text
    height = min(page.content_height(), 3000)
    page.resize(1280, height)
    shot = page.screenshot(DOCS / "status-page.png")
    _assert_picture(shot, 1280, 1000)


TRIGGER_DIALOG = "[...document.querySelectorAll('[role=dialog]')].find(d => d.innerText.includes('Run Parameters'))"


def _trigger_form(page, url: str, dag_id: str) -> str:
    """Open the DAG's page in Airflow's UI and its Trigger dialog (the form of its Params); returns its text."""
    page.goto(f"{url}/dags/{dag_id}")
    page.wait_for("!!document.querySelector('[data-testid=trigger-dag-button]:not([disabled])')", 120,
                  f"the Trigger button of {dag_id}")
    page.evaluate("document.querySelector('[data-testid=trigger-dag-button]').click()")
    page.wait_for(f"!!({TRIGGER_DIALOG})", 60, f"the trigger form of {dag_id}")
    return page.evaluate(f"({TRIGGER_DIALOG}).innerText")


def _fill(page, param: str, text: str) -> None:
    """Type into a Param's field as a person would (real key input, so the form validates it)."""
    page.evaluate(f"document.querySelector('[role=dialog] [name=element_{param}]').focus()")
    page.send("Input.insertText", {"text": text})


def _capture_dialog(page, path) -> bytes:
    """The whole dialog: the window is made as tall as the dialog's scroll area first."""
    height = page.evaluate(f"({TRIGGER_DIALOG}).parentElement.scrollHeight")
    page.resize(1280, min(max(int(height), 1000), 2400))
    time.sleep(0.5)  # one layout after the resize
    return page.screenshot(path)


def test_emergency_backup_trigger_form_picture(browser, airflow_api):
    url, _token = airflow_api
    page = _signed_in_page(browser, airflow_api)
    form = _trigger_form(page, url, "emergency_backup")
    for title in ("Reason", "Scope", "Wedding ids", "Data classes", "Requested by"):
        assert title in form, form
    assert "This field is required" in form  # the reason is required: Trigger stays off until it is given
    _fill(page, "reason", "Venue system outage 3 days before wedding 42")
    _fill(page, "requested_by", "sre-oncall")
    page.wait_for(f"!({TRIGGER_DIALOG}).innerText.includes('This field is required')", 20, "the reason accepted")
    _assert_picture(_capture_dialog(page, DOCS / "trigger-emergency-backup.png"), 1280, 1000)


def test_restore_trigger_form_picture(browser, airflow_api):
    url, _token = airflow_api
    page = _signed_in_page(browser, airflow_api)
    form = _trigger_form(page, url, "restore")
    for title in ("Data class", "Backup id", "Point in time", "Wedding id", "Target", "Confirm in-place restore",
                  "Source cloud", "Dry run"):
        assert title in form, form
    assert "This field is required" not in form  # the defaults are a valid restore (newest, into a new schema)
    _assert_picture(_capture_dialog(page, DOCS / "trigger-restore.png"), 1280, 1000)
