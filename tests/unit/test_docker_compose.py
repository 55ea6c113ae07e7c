"""docker-compose.yml, Dockerfile and .env.example hold together (the multi-node picture).

No Docker engine is needed: the files are parsed and checked against each other, against the repository,
against the local stack's names (roles, databases, bucket, project) and against the pins in
requirements.txt, requirements.lock and package.json.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from wedsync_dr_dev import local_stack

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"

AIRFLOW_SERVICES = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                    "airflow-worker", "airflow-init"}
EXPECTED_SERVICES = AIRFLOW_SERVICES | {"postgres", "redis", "wedsync-db", "s3", "azure", "gcs"}
ONE_SHOT = {"airflow-init"}
EMULATORS = {"s3", "azure", "gcs"}
# What each long-running service's health check must run.
HEALTH_PROBES = {
    "airflow-apiserver": "/api/v2/monitor/health",
    "airflow-scheduler": "localhost:8974/health",
    "airflow-dag-processor": "airflow jobs check --job-type DagProcessorJob",
    "airflow-triggerer": "airflow jobs check --job-type TriggererJob",
    "airflow-worker": "inspect ping",
    "postgres": "pg_isready",
    "wedsync-db": "pg_isready",
    "redis": "redis-cli ping",
    "s3": "http://127.0.0.1:5000/",
    "azure": "http://127.0.0.1:10000/",
    "gcs": "http://127.0.0.1:9023/",
}
CODE_MOUNTS = {"/opt/airflow/dags": "./dags", "/opt/airflow/plugins": "./plugins",
               "/opt/airflow/include": "./include", "/opt/airflow/logs": "./logs"}

# `$$` (a literal dollar), `${NAME}`, `${NAME:-default}`, `${NAME-default}`, `${NAME:?error}`, `${NAME?error}`, `$NAME`
_INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_]\w*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_]\w*)")


# ----------------------------------------------------------------------------- loading


@cache
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, dict]:
    return compose()["services"]


@cache
def env_example() -> dict[str, str]:
    """NAME=value lines of .env.example, quotes removed as docker compose removes them."""
    values: dict[str, str] = {}
    for number, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_]\w*", name), f".env.example:{number} is not NAME=value: {line!r}"
        assert name not in values, f".env.example defines {name} twice"
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name] = value
    return values


def interpolate(text: str, env: dict[str, str]) -> str:
    """Docker compose's variable substitution (for `:?` an empty value is kept: placeholders are empty)."""

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group(1) or match.group(4), match.group(2), match.group(3)
        value = env.get(name)
        if (op == ":-" and not value) or (op == "-" and value is None):
            return arg
        assert value is not None, f"${{{name}}} has no value and no default"
        return value

    return _INTERPOLATION.sub(replace, text)


def strings(node) -> list[str]:
    """Every key and scalar in a loaded YAML document, as compose interpolates them."""
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in (*strings(key), *strings(value))]
    if isinstance(node, list):
        return [s for item in node for s in strings(item)]
    return [node] if isinstance(node, str) else []


def referenced_variables() -> set[str]:
    return {m.group(1) or m.group(4) for text in strings(compose()) for m in _INTERPOLATION.finditer(text)
            if m.group(0) != "$$"}


def environment(service: str) -> dict[str, str]:
    """A service's environment with .env.example's values substituted."""
    return {key: interpolate(str(value), env_example()) for key, value in services()[service]["environment"].items()}


def connection(service: str, conn_id: str) -> dict:
    raw = environment(service)[f"AIRFLOW_CONN_{conn_id.upper()}"]
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        pytest.fail(f"AIRFLOW_CONN_{conn_id.upper()} on {service} is not valid JSON ({err}): {raw}")


def mounts(service: str) -> dict[str, str]:
    """Container path -> source (./host/path or a named volume)."""
    result = {}
    for entry in services()[service].get("volumes", []):
        source, target, *_ = entry.split(":")
        result[target] = source
    return result


def container_ports(service: str) -> set[int]:
    return {int(str(entry).rsplit(":", 1)[-1].split("/")[0]) for entry in services()[service].get("ports", [])}


def probe(service: str) -> str:
    test = services()[service]["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else test


def script(service: str) -> str:
    """The shell script a service runs with `bash -c`."""
    command = services()[service]["command"]
    assert isinstance(command, list) and "-c" in command, f"{service} does not run a `bash -c` script"
    return command[command.index("-c") + 1]


def python_heredocs(shell: str) -> list[str]:
    return re.findall(r"<<'PY'\n(.*?)\nPY\n", shell, flags=re.S)


def lock_version(package: str) -> str:
    match = re.search(rf"^{re.escape(package)}==(\S+)$", (REPO / "requirements.lock").read_text(), flags=re.M)
    assert match, f"{package} is not pinned in requirements.lock"
    return match.group(1)


# ----------------------------------------------------------------------------- services and Airflow


def test_the_service_set_is_exactly_the_multi_node_picture():
    assert set(services()) == EXPECTED_SERVICES


def test_the_common_environment_runs_celery_on_redis_and_postgres():
    env = environment("airflow-scheduler")
    common = compose()["x-airflow-common"]["environment"]
    assert common["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert common["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"
    assert urlsplit(env["AIRFLOW__CELERY__BROKER_URL"]).scheme == "redis"
    assert urlsplit(env["AIRFLOW__CELERY__BROKER_URL"]).hostname == "redis"
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND"):
        assert urlsplit(env[key]).hostname == "postgres", key
    execution_api = urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert (execution_api.hostname, execution_api.port) == ("airflow-apiserver", 8080)
    assert execution_api.path == "/execution/"
    assert 8080 in container_ports("airflow-apiserver")
    # every component must share these, or what one signs or encrypts the others reject
    for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__CORE__FERNET_KEY"):
        assert re.fullmatch(rf"\$\{{{key}:\?[^}}]*\}}", common[key]), f"{key} must come from .env and be required"


def test_every_airflow_service_merges_the_common_anchor():
    root = yaml.compose(COMPOSE_FILE.read_text())
    top = {key.value: value for key, value in root.value}
    common_node = top["x-airflow-common"]
    common_env_node = next(value for key, value in common_node.value if key.value == "environment")
    service_nodes = {key.value: value for key, value in top["services"].value}
    for name in AIRFLOW_SERVICES:
        node = dict((key.value, value) for key, value in service_nodes[name].value)
        assert node.get("<<") is common_node, f"{name} does not merge *airflow-common"
        if "environment" in node:  # an own environment must start from the common one
            env_node = dict((key.value, value) for key, value in node["environment"].value)
            assert env_node.get("<<") is common_env_node, f"{name}'s environment does not merge *airflow-common-env"
    common = compose()["x-airflow-common"]
    for name in AIRFLOW_SERVICES:
        service = services()[name]
        assert (service["build"], service["image"]) == (common["build"], common["image"]), name
        assert common["environment"].items() <= service["environment"].items(), name
    others = EXPECTED_SERVICES - AIRFLOW_SERVICES
    assert not any(services()[name].get("image") == common["image"] for name in others)


def test_every_long_running_service_has_a_health_check_that_probes_it():
    for name in EXPECTED_SERVICES - ONE_SHOT:
        healthcheck = services()[name].get("healthcheck")
        assert healthcheck and not healthcheck.get("disable"), f"{name} has no health check"
        assert HEALTH_PROBES[name] in probe(name), f"{name}'s health check does not run {HEALTH_PROBES[name]!r}"


def test_depends_on_waits_for_healthy_services_and_a_finished_init():
    for name in AIRFLOW_SERVICES:
        depends = services()[name]["depends_on"]
        for infrastructure in ("postgres", "redis"):
            assert depends[infrastructure] == {"condition": "service_healthy"}, f"{name} -> {infrastructure}"
        if name not in ONE_SHOT:
            assert depends["airflow-init"] == {"condition": "service_completed_successfully"}, name
    init_depends = services()["airflow-init"]["depends_on"]
    for name in ("wedsync-db", *sorted(EMULATORS)):
        assert init_depends[name] == {"condition": "service_healthy"}, f"airflow-init -> {name}"
    for name, service in services().items():
        for target, spec in service.get("depends_on", {}).items():
            assert target in services(), f"{name} depends on unknown {target}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services()[target], f"{name} waits for {target}, which has no health check"


def test_code_and_logs_are_mounted_into_every_airflow_service():
    for name in AIRFLOW_SERVICES:
        assert CODE_MOUNTS.items() <= mounts(name).items(), name
    for target, source in CODE_MOUNTS.items():
        if target != "/opt/airflow/logs":
            assert (REPO / source).is_dir(), f"{source} is mounted but missing"


def test_the_asset_store_is_a_named_volume_mounted_where_tasks_run():
    env = environment("airflow-worker")
    path = env["WEDSYNC_ASSET_SOURCE"]
    source = mounts("airflow-worker").get(path)
    assert source in set(compose()["volumes"]), f"WEDSYNC_ASSET_SOURCE={path} is not on a named volume"
    assert mounts("airflow-init").get(path) == source  # airflow-init prepares its ownership


def test_workers_share_no_staging_disk_but_a_staging_bucket():
    """As on several hosts: no staging volume anywhere; the workers stage through a bucket they reach with
    their own connection, and airflow-init creates it (with its expiry rule) from the same URL."""
    from wedsync_dr import staging

    assert not [v for v in compose()["volumes"] if "staging" in v]
    for name, service in services().items():
        assert "WEDSYNC_STAGING_DIR" not in service.get("environment", {}), name
        assert not [t for t in mounts(name) if "staging" in t], name
    url = environment("airflow-worker")["WEDSYNC_STAGING_URL"]
    kind, bucket, _prefix, conn_id = staging.parse_url(url)
    assert kind == "s3" and bucket == "wedsync-staging"
    assert f"AIRFLOW_CONN_{conn_id.upper()}" in environment("airflow-worker")
    assert environment("airflow-init")["WEDSYNC_STAGING_URL"] == url
    assert "expire_staging_bucket" in " ".join(services()["airflow-init"]["command"])


def test_every_published_port_binds_to_loopback():
    published = []
    for name, service in services().items():
        for entry in service.get("ports", []):
            host_ip = entry.get("host_ip") if isinstance(entry, dict) else str(entry).split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {entry} beyond this machine"
            published.append(name)
    assert "airflow-apiserver" in published
    assert "127.0.0.1:8080:8080" in services()["airflow-apiserver"]["ports"]


# ----------------------------------------------------------------------------- .env.example


def test_every_variable_the_compose_file_uses_is_in_env_example_and_back():
    used, defined = referenced_variables(), set(env_example())
    assert used, "no ${VAR} found: the parser is broken"
    assert used - defined == set(), "used in docker-compose.yml but missing from .env.example"
    assert defined - used == set(), "in .env.example but unused by docker-compose.yml"


def test_each_env_example_variable_has_a_comment_and_no_real_secret():
    lines = ENV_EXAMPLE.read_text().splitlines()
    for index, line in enumerate(lines):
        if line and not line.startswith("#"):
            assert index and lines[index - 1].startswith("#"), f"no comment above {line.split('=')[0]}"
    for name in ("_AIRFLOW_WWW_USER_PASSWORD", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY",
                 "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW_DB_PASSWORD", "WEDSYNC_DB_SUPERUSER_PASSWORD",
                 "WEDSYNC_OWNER_PASSWORD", "WEDSYNC_BACKUP_PASSWORD", "WEDSYNC_CATALOG_PASSWORD"):
        assert env_example()[name] == "", f"{name} must be an empty placeholder (compose refuses to start on it)"
    keys = json.loads(env_example()["AIRFLOW_CONN_WEDSYNC_BACKUP_KEYS"])
    assert "REPLACE" in json.dumps(keys), "the key ring placeholder must not look like a usable key"
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()


# ----------------------------------------------------------------------------- connections


def test_database_connections_use_the_wedsync_db_roles():
    expected = {"wedsync_db": (local_stack.READER_ROLE, local_stack.SOURCE_DB, "WEDSYNC_BACKUP_PASSWORD"),
                "wedsync_db_owner": (local_stack.OWNER_ROLE, local_stack.SOURCE_DB, "WEDSYNC_OWNER_PASSWORD"),
                "wedsync_catalog": (local_stack.CATALOG_ROLE, local_stack.CATALOG_DB, "WEDSYNC_CATALOG_PASSWORD")}
    raw_common = compose()["x-airflow-common"]["environment"]
    db_env = services()["wedsync-db"]["environment"]
    init = compose()["configs"]["wedsync-db-init"]["content"]
    for conn_id, (role, database, password_var) in expected.items():
        conn = connection("airflow-worker", conn_id)
        assert conn["conn_type"] == "postgres"
        assert conn["host"] == "wedsync-db" and conn["port"] in container_ports("wedsync-db"), conn_id
        assert (conn["login"], conn["schema"]) == (role, database), conn_id
        # the connection and the role the database creates take their password from the same variable
        assert f"${{{password_var}" in raw_common[f"AIRFLOW_CONN_{conn_id.upper()}"], conn_id
        assert db_env[password_var].startswith(f"${{{password_var}"), password_var
        assert f"CREATE ROLE {role} LOGIN PASSWORD" in init, role
    assert db_env["POSTGRES_DB"] == local_stack.SOURCE_DB
    assert f"CREATE DATABASE {local_stack.CATALOG_DB} OWNER {local_stack.CATALOG_ROLE}" in init
    assert f"GRANT pg_read_all_data TO {local_stack.READER_ROLE}" in init


def test_cloud_connections_point_at_the_emulator_services():
    s3 = connection("airflow-worker", "backup_s3")
    endpoint = urlsplit(s3["extra"]["endpoint_url"])
    assert s3["conn_type"] == "aws" and endpoint.hostname == "s3" and endpoint.port in container_ports("s3")

    azure = connection("airflow-worker", "backup_azure")
    parts = dict(item.split("=", 1) for item in azure["extra"]["connection_string"].strip(";").split(";"))
    blob = urlsplit(parts["BlobEndpoint"])
    assert azure["conn_type"] == "wasb" and blob.hostname == "azure" and blob.port in container_ports("azure")
    assert blob.path == f"/{parts['AccountName']}" and parts["AccountName"] == local_stack.AZURITE_ACCOUNT

    gcs = connection("airflow-worker", "backup_gcs")
    assert gcs["conn_type"] == "google_cloud_platform"
    assert gcs["extra"] == {"is_anonymous": True, "project": local_stack.GCP_PROJECT}
    for name in ("airflow-worker", "airflow-init"):
        emulator = urlsplit(environment(name)["STORAGE_EMULATOR_HOST"])
        assert emulator.hostname == "gcs" and emulator.port in container_ports("gcs"), name


def test_the_key_ring_placeholder_has_the_library_s_shape_and_fails_closed():
    from wedsync_dr.crypto import KeyRing, KeyUnavailableError

    placeholder = connection("airflow-worker", "wedsync_backup_keys")
    with pytest.raises(KeyUnavailableError):
        KeyRing.from_json(placeholder["extra"])
    # the same shape with real key material is what KeyRing.from_connection reads
    generated = json.loads(KeyRing.generate(["kek-1"]).to_json())
    real = {**placeholder["extra"], "keys": generated["keys"], "dedup_key": generated["dedup_key"]}
    assert KeyRing.from_json(real).primary_id == placeholder["extra"]["primary"]
    assert KeyRing.from_json(real).has_dedup_key


def test_the_key_ring_reaches_the_workers_only():
    for name in AIRFLOW_SERVICES - {"airflow-worker"}:
        assert "AIRFLOW_CONN_WEDSYNC_BACKUP_KEYS" not in services()[name]["environment"], name


# ----------------------------------------------------------------------------- images and scripts


def test_dockerfile_builds_the_pinned_airflow_with_the_lock():
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.M | re.I)
    airflow_images = [image for image, _ in stages if image.startswith("apache/airflow:")]
    assert len(airflow_images) == 1, stages
    tag = re.fullmatch(r"apache/airflow:(\d+\.\d+\.\d+)-python(\d+\.\d+)", airflow_images[0])
    assert tag, airflow_images[0]
    pin = re.search(r"^apache-airflow==(\S+)", (REPO / "requirements.txt").read_text(), flags=re.M)
    assert pin and tag.group(1) == pin.group(1) == lock_version("apache-airflow")
    assert f'requires-python = ">={tag.group(2)},' in (REPO / "pyproject.toml").read_text()
    assert stages[-1][0] == airflow_images[0], "`docker build .` must build the Airflow image (the last stage)"
    assert re.search(r"pip install [^\n]*-r \S*requirements\.txt\s*\\?\s*-c \S*requirements\.lock", text)
    assert re.search(r"pip install [^\n]*--no-deps -e ", text), "the wedsync_dr library is not installed"
    names = {name for _, name in stages if name}
    for service in services().values():
        if "build" in service:
            assert service["build"]["target"] in names, service["build"]


def test_emulators_run_the_versions_the_local_stack_runs():
    assert services()["s3"]["image"] == f"motoserver/moto:{lock_version('moto')}"
    azurite = json.loads((REPO / "package.json").read_text())["dependencies"]["azurite"]
    assert services()["azure"]["image"] == f"mcr.microsoft.com/azure-storage/azurite:{azurite}"
    command = services()["azure"]["command"]
    assert command[0] == "azurite-blob" and {"--skipApiVersionCheck", "--disableTelemetry"} <= set(command)
    assert services()["gcs"]["image"].endswith(f":{lock_version('gcp-storage-emulator')}")


def test_wedsync_db_loads_the_schema_through_its_init_script():
    db = services()["wedsync-db"]
    assert db["image"] == "postgres:15"
    assert [c["target"] for c in db["configs"]] == ["/docker-entrypoint-initdb.d/10-wedsync.sh"]
    assert db["configs"][0]["source"] in compose()["configs"]
    schema_mount = {target: source for target, source in mounts("wedsync-db").items() if source.startswith("./")}
    assert schema_mount == {"/wedsync-sql/wedsync_schema.sql": "./include/sql/wedsync_schema.sql"}
    assert (REPO / "include/sql/wedsync_schema.sql").is_file()
    init = compose()["configs"]["wedsync-db-init"]["content"]
    assert "-c 'SET ROLE wedsync_owner' -f /wedsync-sql/wedsync_schema.sql" in init


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_embedded_scripts_are_valid_shell_and_python():
    shells = {"airflow-init": script("airflow-init"), "airflow-apiserver": script("airflow-apiserver"),
              "wedsync-db-init": compose()["configs"]["wedsync-db-init"]["content"]}
    for name, text in shells.items():
        text = interpolate(text, env_example())
        result = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
        assert result.returncode == 0, f"{name}: {result.stderr}"
    for name in ("airflow-init", "airflow-apiserver"):
        blocks = python_heredocs(script(name))
        assert blocks, f"{name} runs no Python"
        for block in blocks:
            compile(block, f"<{name}>", "exec")
    assert "ensure_pools(" in script("airflow-init") and "catalog.migrate()" in script("airflow-init")


def test_the_gcs_emulator_image_starts_the_emulator_as_the_local_stack_does():
    """Both with a listen queue long enough for concurrent uploads (see local_stack._GCS_EMULATOR_MAIN)."""
    entrypoint = next(line for line in DOCKERFILE.read_text().splitlines() if line.startswith("ENTRYPOINT"))
    assert json.loads(entrypoint.removeprefix("ENTRYPOINT")) == ["python", "-c", local_stack._GCS_EMULATOR_MAIN]
