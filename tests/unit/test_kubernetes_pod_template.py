"""The KubernetesExecutor pod template, rendered the way the executor renders a task's pod (no cluster here).

The executor loads the template with the cncf.kubernetes provider's PodGenerator and merges it into the pod it
builds for each task instance; these tests do the same and check what every task pod then has.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from wedsync_dr import staging

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "pod-template.yaml"
pod_generator = pytest.importorskip("airflow.providers.cncf.kubernetes.pod_generator")


def _rendered():
    """A task pod as the executor makes it: its own pod for the task, reconciled with the template."""
    from kubernetes.client import ApiClient

    template = pod_generator.PodGenerator.deserialize_model_file(str(TEMPLATE))
    pod = pod_generator.PodGenerator.construct_pod(
        dag_id="backup_client_data", task_id="extract", pod_id="backup-client-data-extract", try_number=1,
        kube_image="wedsync-dr/airflow:3.3.2", date=None, run_id="manual__2026-12-02", map_index=-1,
        args=["python", "-m", "airflow.sdk.execution_time.execute_workload", "--json-string", "{}"],
        pod_override_object=None, base_worker_pod=template, namespace="wedsync", scheduler_job_id="1")
    return template, ApiClient().sanitize_for_serialization(pod)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def test_the_template_is_a_valid_pod_spec_with_no_field_the_api_would_drop():
    """Parsed into the Kubernetes client's V1Pod and written back, nothing is lost: a misspelt or misplaced
    field would vanish (the client ignores what the schema does not know)."""
    from kubernetes.client import ApiClient

    raw = yaml.safe_load(TEMPLATE.read_text())
    template = pod_generator.PodGenerator.deserialize_model_file(str(TEMPLATE))
    assert ApiClient().sanitize_for_serialization(template) == raw


def test_every_task_pod_runs_in_base_with_the_staging_bucket_and_its_own_scratch():
    _template, pod = _rendered()
    (base,) = [c for c in pod["spec"]["containers"] if c["name"] == "base"]
    env = {e["name"]: e.get("value") for e in base["env"]}
    assert base["args"][:3] == ["python", "-m", "airflow.sdk.execution_time.execute_workload"]  # the task runs
    kind, bucket, _prefix, conn_id = staging.parse_url(env["WEDSYNC_STAGING_URL"])
    assert kind == "s3" and bucket and conn_id == "wedsync_staging"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in base["volumeMounts"]}
    scratch = mounts[env["WEDSYNC_STAGING_DIR"]]
    assert "emptyDir" in volumes[scratch["name"]]  # this pod's own disk: nothing of a run is shared
    for mount in mounts.values():  # the only claim mounted is the asset source, read-only
        volume = volumes[mount["name"]]
        assert "emptyDir" in volume or (volume["persistentVolumeClaim"]["readOnly"] and mount["readOnly"]), mount
    assert base["resources"]["limits"]["memory"] and pod["spec"]["securityContext"]["runAsNonRoot"]
    assert base["securityContext"]["readOnlyRootFilesystem"] and not base["securityContext"]["allowPrivilegeEscalation"]
    assert pod["metadata"]["labels"]["dag_id"] == "backup_client_data"  # the executor's own labels merged in


def test_connections_and_the_key_ring_come_from_a_secrets_backend_not_the_pod_spec():
    _template, pod = _rendered()
    (base,) = [c for c in pod["spec"]["containers"] if c["name"] == "base"]
    env = {e["name"]: e.get("value") for e in base["env"]}
    assert env["AIRFLOW__SECRETS__BACKEND"].endswith("SecretsManagerBackend")
    assert not [name for name in env if name.startswith("AIRFLOW_CONN_")]  # no connection, no key, in the spec
    text = TEMPLATE.read_text()
    assert "dedup_key" not in text and '"keys"' not in text
    assert pod["spec"]["serviceAccountName"]  # how the pod reaches the secrets backend and the buckets
