"""DAG integrity: every DAG file imports cleanly, cheaply, and follows the house rules."""

from __future__ import annotations

import datetime as dt
import importlib.util
from pathlib import Path
from unittest import mock

import pytest

from wedsync_dr.policy import load_policy
from wedsync_dr.requests import classes_by_priority
from wedsync_dr.tags import Tag, vocabulary

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
PLUGIN = Path(__file__).resolve().parents[2] / "plugins" / "wedsync_dr_plugin.py"
POLICY = load_policy()
BACKUP_DAG_IDS = {f"backup_{name}" for name in POLICY.data_classes}
EXPECTED_DAG_IDS = BACKUP_DAG_IDS | {"restore", "emergency_backup", "backup_health", "backup_restore_drill",
                                     "backup_retention", "backup_repair", "backup_verify"}


# Retrying cannot change their outcome: a quorum decision, a parameter check, a drill or verification verdict.
NO_RETRY_TASKS = ({"validate", "check_request", "finish"} | {f"drill_{n}" for n in POLICY.data_classes}
                  | {f"verify_in_{c}" for c in POLICY.cloud_names})


def _forbidden(*_args, **_kwargs):
    raise AssertionError("DAG files must not look up connections or Variables at parse time")


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import BaseHook, Connection, Variable

    with mock.patch.object(BaseHook, "get_connection", _forbidden), \
            mock.patch.object(Connection, "get", _forbidden), mock.patch.object(Variable, "get", _forbidden):
        return DagBag(dag_folder=str(DAGS_DIR))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_expected_dag_ids(dagbag):
    assert BACKUP_DAG_IDS == {"backup_critical_weddings", "backup_vendor_data", "backup_client_data",
                              "backup_assets"}
    assert set(dagbag.dag_ids) == EXPECTED_DAG_IDS


@pytest.mark.parametrize("dag_id", sorted(EXPECTED_DAG_IDS))
def test_house_rules(dagbag, dag_id):
    dag = dagbag.dags.get(dag_id)
    assert dag.doc_md and "Runbook" in dag.doc_md
    assert set(dag.tags) <= vocabulary(POLICY.data_classes), set(dag.tags) - vocabulary(POLICY.data_classes)
    assert not dag.catchup
    for task in dag.tasks:
        assert task.owner == "wedsync-sre", task.task_id
        assert task.on_failure_callback, task.task_id
        name = task.task_id.rsplit(".", 1)[-1]  # pipelines may sit in a task group
        if not task.is_teardown and name not in NO_RETRY_TASKS and not name.startswith("upload_to_"):
            assert task.retries >= 2, task.task_id


def test_restore_form_has_a_titled_described_param_for_every_option(dagbag):
    params = dagbag.dags["restore"].params
    assert set(params) == {"data_class", "backup_id", "point_in_time", "wedding_id", "target", "confirm",
                           "source_cloud", "dry_run"}
    for name in params:
        param = params.get_param(name)
        assert param.schema.get("title") and param.description, name
    assert params.get_param("data_class").schema["enum"] == classes_by_priority(POLICY)
    assert params["data_class"] == "critical_weddings"  # the most urgent class first, not `assets`
    assert dagbag.dags["restore"].schedule is None


@pytest.mark.parametrize(("dag_id", "names"), [("restore", ["target", "confirm", "point_in_time", "wedding_id"]),
                                               ("emergency_backup", ["wedding_ids", "data_classes", "requested_by"])])
def test_optional_form_fields_are_nullable_and_empty(dagbag, dag_id, names):
    """The form makes a field whose type excludes null required: Trigger stayed disabled on target ''."""
    params = dagbag.dags[dag_id].params
    for name in names:
        param = params.get_param(name)
        assert "null" in list(param.schema["type"]) and param.value is None, name  # e.g. ["null", "string"]


def test_emergency_data_classes_is_a_multi_select_of_the_policys_classes(dagbag):
    schema = dagbag.dags["emergency_backup"].params.get_param("data_classes").schema
    assert schema["examples"] == schema["items"]["enum"] == classes_by_priority(POLICY)


def test_the_trigger_guard_checks_exactly_the_params_each_guarded_dag_has(dagbag):
    """The API server's guard builds each DAG's Params itself: they must be the DAG's own."""
    spec = importlib.util.spec_from_file_location("wedsync_dr_plugin_integrity", PLUGIN)
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    assert plugin.GUARDED_DAG_IDS == set(plugin.TriggerConfGuard.checks()) == {"restore", "emergency_backup"}
    for dag_id, (guard_params, _check) in plugin.TriggerConfGuard.checks().items():
        dag_params = dagbag.dags[dag_id].params
        assert set(guard_params) == set(dag_params), dag_id
        for name, param in guard_params.items():
            assert (param.schema, param.value) == (dag_params.get_param(name).schema,
                                                   dag_params.get_param(name).value), (dag_id, name)


def test_emergency_runs_every_class_pipeline_ahead_of_routine_work(dagbag):
    dag = dagbag.dags["emergency_backup"]
    params = dag.params
    assert not params.get_param("reason").has_value  # required: no default
    for name in POLICY.data_classes:
        extract = dag.get_task(f"{name}.extract")
        assert extract.upstream_task_ids == {"check_request"}
        assert extract.pool == POLICY.emergency_pool
        assert extract.priority_weight == POLICY.emergency_priority_weight
        assert extract.priority_weight > max(dc.priority_weight for dc in POLICY.data_classes.values())
        assert dag.get_task(f"{name}.upload_to_aws").retries <= 1  # never waits long on a cloud that is down
    assert dag.get_task("finish").upstream_task_ids == {f"{n}.validate" for n in POLICY.data_classes}


@pytest.mark.parametrize("name", sorted(POLICY.data_classes))
def test_backup_dag_shape_follows_the_policy(dagbag, name):
    data_class = POLICY.data_classes[name]
    dag = dagbag.dags.get(f"backup_{name}")
    uploads = {f"upload_to_{c}" for c in POLICY.cloud_names}
    assert set(dag.task_ids) == {"extract", "encrypt", "validate", "cleanup_staging"} | uploads
    assert dag.get_task("encrypt").upstream_task_ids == {"extract"}
    for upload in uploads:
        task = dag.get_task(upload)
        assert task.upstream_task_ids == {"encrypt"}
        assert task.retries == POLICY.upload_retries and task.retry_exponential_backoff
    validate = dag.get_task("validate")
    assert validate.upstream_task_ids == uploads
    assert validate.trigger_rule == "all_done"  # runs when one cloud failed: quorum decides
    assert [o.uri for o in validate.outlets] == [f"wedsync://backups/{name}"]
    assert dag.get_task("cleanup_staging").is_teardown
    assert dag.max_active_runs == 1
    for task in dag.tasks:
        if task.task_id != "cleanup_staging":
            assert task.pool == data_class.pool and task.priority_weight == data_class.priority_weight


def test_critical_weddings_outrank_bulk_work(dagbag):
    critical = dagbag.dags.get("backup_critical_weddings").get_task("extract")
    for name in ("vendor_data", "client_data", "assets"):
        bulk = dagbag.dags.get(f"backup_{name}").get_task("extract")
        assert critical.priority_weight > bulk.priority_weight
        assert critical.pool != bulk.pool
    assert Tag.TIER_CRITICAL in dagbag.dags.get("backup_critical_weddings").tags


def test_retry_backoff_is_exponential(dagbag):
    task = dagbag.dags.get("backup_vendor_data").get_task("extract")
    assert task.retry_exponential_backoff and task.max_retry_delay >= dt.timedelta(minutes=10)
    assert task.retry_delay == dt.timedelta(minutes=1)


def test_an_emergency_step_is_retried_within_seconds(dagbag):
    dag = dagbag.dags["emergency_backup"]
    for name in ("vendor_data", "client_data"):
        extract = dag.get_task(f"{name}.extract")
        assert extract.retries >= 1 and extract.retry_delay <= dt.timedelta(seconds=15), extract.retry_delay


def test_verify_form_chooses_a_backup_a_cloud_and_a_sample(dagbag):
    dag = dagbag.dags["backup_verify"]
    params = dag.params
    assert set(params) == {"data_class", "backup_id", "cloud", "sample", "seed"}
    for name in params:
        param = params.get_param(name)
        assert param.schema.get("title") and param.description, name
    assert params.get_param("data_class").schema["enum"] == sorted(POLICY.data_classes)
    assert params.get_param("cloud").schema["enum"] == ["all", *POLICY.cloud_names]
    assert params.get_param("sample").schema["exclusiveMinimum"] == 0 and params["sample"] == 1.0
    assert dag.schedule is None
    for cloud in POLICY.cloud_names:  # one verdict per cloud, each on its own
        assert dag.get_task(f"verify_in_{cloud}").upstream_task_ids == {"check_request"}
