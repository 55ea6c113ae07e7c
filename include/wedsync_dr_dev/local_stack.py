"""The embedded local stack: a private PostgreSQL cluster and the three cloud emulators.

`make run` and `make test` start it under `.local/` (tests under their own directory), so a fresh
clone needs nothing already running on the machine. Every process is started in its own session and
recorded in `stack.json` with its PID and start time, so `stop()` signals only processes this stack
started (a recycled PID is never killed) and `start()` on a running stack reuses it.

Services, all bound to 127.0.0.1 on free ports:
- PostgreSQL from the machine's binaries (`initdb`/`pg_ctl`), run as `nobody` when we are root; or an
  existing server given by `WEDSYNC_DB_URL` (then nothing is started for it).
- moto server (S3), Azurite (Azure Blob, from npm), gcp-storage-emulator (GCS).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

from wedsync_dr.paths import REPO_ROOT

DEFAULT_STACK_DIR = REPO_ROOT / ".local" / "stack"

BUCKET = "wedsync-backups"
STAGING_BUCKET = "wedsync-staging"  # in the S3 emulator: the hand-off of tasks on hosts that share no disk
GCP_PROJECT = "wedsync-local"
SOURCE_DB = "wedsync"
CATALOG_DB = "wedsync_catalog"
# Azurite's documented development account; public, not a secret.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

AIRFLOW_PORT = 8080
PG_SUPERUSER = "postgres"
# Roles the product uses: the owner loads and restores data, the reader backs it up.
OWNER_ROLE = "wedsync_owner"
READER_ROLE = "wedsync_backup"
CATALOG_ROLE = "wedsync_catalog"
# Airflow's own metadata DB lives in the same cluster: several Airflow processes write to it at once,
# which SQLite serialises with "database is locked" errors under load.
AIRFLOW_ROLE = "airflow"
AIRFLOW_DB = "airflow"


class StackError(RuntimeError):
    """A local-stack service could not be started or reached."""


@dataclass
class Service:
    name: str
    pid: int
    port: int
    started: str  # /proc/<pid>/stat start time: tells our process from a recycled PID
    log: str

    def is_running(self) -> bool:
        return _proc_start_time(self.pid) == self.started


@dataclass
class StackState:
    directory: Path
    db_url: str = ""  # superuser URL of the server holding the source and catalog databases
    external_db: bool = False
    pg_data: str = ""
    airflow_port: int = AIRFLOW_PORT
    passwords: dict[str, str] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)

    @property
    def airflow_home(self) -> Path:
        return self.directory.parent / "airflow"

    @property
    def state_file(self) -> Path:
        return self.directory / "stack.json"

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        payload = {
            "db_url": self.db_url,
            "external_db": self.external_db,
            "pg_data": self.pg_data,
            "airflow_port": self.airflow_port,
            "passwords": self.passwords,
            "services": {name: vars(svc) for name, svc in self.services.items()},
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=2))
        tmp.chmod(0o600)  # holds database passwords
        tmp.replace(self.state_file)

    @classmethod
    def load(cls, directory: Path) -> StackState:
        state = cls(directory=directory)
        if state.state_file.exists():
            raw = json.loads(state.state_file.read_text())
            state.db_url = raw.get("db_url", "")
            state.external_db = raw.get("external_db", False)
            state.pg_data = raw.get("pg_data", "")
            state.airflow_port = raw.get("airflow_port", AIRFLOW_PORT)
            state.passwords = raw.get("passwords", {})
            state.services = {name: Service(**svc) for name, svc in raw.get("services", {}).items()}
        return state

    def port(self, service: str) -> int:
        return self.services[service].port

    def admin_url(self, database: str) -> str:
        """The superuser URL, on another database of the same server."""
        return urlsplit(self.db_url)._replace(path=f"/{database}").geturl()

    def role_url(self, role: str, database: str) -> str:
        """A libpq URL for one of the product's roles on the stack's server."""
        parts = urlsplit(self.db_url)
        return (
            f"postgresql://{role}:{quote(self.passwords[role], safe='')}@{parts.hostname}:{parts.port or 5432}"
            f"/{database}"
        )


# --------------------------------------------------------------------------- processes


def _proc_start_time(pid: int) -> str:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return ""
    if fields[0] == "Z":  # a zombie is as good as gone
        return ""
    return fields[19]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait_until(check: Callable[[], bool], what: str, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    tail = ""
    if log and log.exists():
        tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    raise StackError(f"{what} did not become ready within {timeout:.0f}s{tail}")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status < 500
    except urllib.error.HTTPError as err:
        return err.code < 500
    except OSError:
        return False


def _spawn(name: str, argv: list[str], directory: Path, env: dict[str, str] | None = None) -> Service:
    log = directory / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=directory,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # its own process group: stopped as a whole, survives `make`
        )
    return Service(name=name, pid=proc.pid, port=0, started=_proc_start_time(proc.pid), log=str(log))


def _terminate(service: Service, timeout: float = 10.0) -> None:
    """Stop one of our processes and its process group; never a PID that is no longer ours."""
    if not service.is_running():
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(service.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:  # reap it if it is our child (tests start and stop in one process)
                os.waitpid(service.pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if not service.is_running():
                return
            time.sleep(0.1)


# --------------------------------------------------------------------------- PostgreSQL


def _pg_bin(tool: str) -> str:
    for candidate in (shutil.which(tool), *sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{tool}"))):
        if candidate:
            return str(candidate)
    raise StackError(f"PostgreSQL binary {tool!r} not found: install the server package or set WEDSYNC_DB_URL")


def _as_postgres_user(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to `nobody` when we are root."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "nobody", "--", *argv]


def _traversable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents] if p.exists())


def _pg_data_dir(directory: Path) -> Path:
    """`<stack>/pg` when the unprivileged server user can reach it, else a private directory in /tmp.

    A clone inside a 0700 directory (e.g. `mktemp -d`) is not reachable by `nobody`; we do not loosen
    permissions of directories that are not ours.
    """
    if os.geteuid() != 0 or _traversable_by_others(directory):
        return directory / "pg"
    digest = hashlib.sha256(str(directory).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"wedsync-dr-pg-{digest}"


def _start_postgres(state: StackState) -> None:
    existing = state.services.get("postgres")
    if existing and existing.is_running():
        return
    data = Path(state.pg_data) if state.pg_data else _pg_data_dir(state.directory)
    state.pg_data = str(data)
    owner_is_nobody = os.geteuid() == 0
    if not (data / "PG_VERSION").exists():
        if data.exists():
            shutil.rmtree(data)
        data.mkdir(parents=True)
        state.passwords.update({role: secrets.token_urlsafe(18) for role in
                                (PG_SUPERUSER, OWNER_ROLE, READER_ROLE, CATALOG_ROLE, AIRFLOW_ROLE)})
        pwfile = data.parent / f".{data.name}.pw"
        pwfile.write_text(state.passwords[PG_SUPERUSER] + "\n")
        pwfile.chmod(0o600)
        if owner_is_nobody:
            shutil.chown(data, "nobody", "nogroup")
            shutil.chown(pwfile, "nobody", "nogroup")
        try:
            subprocess.run(
                _as_postgres_user([_pg_bin("initdb"), "-D", str(data), "-U", PG_SUPERUSER, "-A", "scram-sha-256",
                                   "--pwfile", str(pwfile), "-E", "UTF8", "--locale", "C.UTF-8", "--no-sync"]),
                check=True, capture_output=True, text=True,
            )
        except subprocess.CalledProcessError as err:
            raise StackError(f"initdb failed: {err.stderr.strip()}") from err
        finally:
            pwfile.unlink(missing_ok=True)
    port = free_port()
    log = data.with_name(data.name + ".log")  # beside the data: wherever `nobody` can write
    log.touch()
    if owner_is_nobody:
        shutil.chown(log, "nobody", "nogroup")
    options = (f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
               "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
    try:
        subprocess.run(
            _as_postgres_user([_pg_bin("pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60",
                               "start"]),
            check=True, capture_output=True, text=True,
        )
    except subprocess.CalledProcessError as err:
        raise StackError(f"pg_ctl start failed: {err.stdout.strip()} {err.stderr.strip()}") from err
    pid = int((data / "postmaster.pid").read_text().split()[0])
    state.services["postgres"] = Service("postgres", pid, port, _proc_start_time(pid), str(log))
    state.db_url = (f"postgresql://{PG_SUPERUSER}:{quote(state.passwords[PG_SUPERUSER], safe='')}"
                    f"@127.0.0.1:{port}/postgres")


def _stop_postgres(state: StackState) -> None:
    service = state.services.get("postgres")
    if not service or not service.is_running():
        return
    subprocess.run(_as_postgres_user([_pg_bin("pg_ctl"), "-D", state.pg_data, "-m", "fast", "-w", "stop"]),
                   capture_output=True, check=False)
    _terminate(service)  # only acts if pg_ctl did not stop it


def prepare_databases(state: StackState) -> None:
    """Create the roles and the three databases: source, catalog, Airflow metadata (idempotent)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(state.db_url, autocommit=True) as conn:
        for role in (OWNER_ROLE, READER_ROLE, CATALOG_ROLE, AIRFLOW_ROLE):
            password = state.passwords.setdefault(role, secrets.token_urlsafe(18))
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            # utility statements take no bind parameters: quote the password as a literal
            conn.execute(sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
                sql.SQL("ALTER" if exists else "CREATE"), sql.Identifier(role), sql.Literal(password)))
        # The backup role reads everything and can write nothing.
        conn.execute(f'GRANT pg_read_all_data TO "{READER_ROLE}"')
        conn.execute(f'ALTER ROLE "{READER_ROLE}" SET default_transaction_read_only = on')
        for database, owner in ((SOURCE_DB, OWNER_ROLE), (CATALOG_DB, CATALOG_ROLE), (AIRFLOW_DB, AIRFLOW_ROLE)):
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
                conn.execute(f'CREATE DATABASE "{database}" OWNER "{owner}"')
    from wedsync_dr import catalog

    with psycopg.connect(state.role_url(CATALOG_ROLE, CATALOG_DB), autocommit=True) as conn:
        catalog.ensure_schema(conn)  # the catalog's migrate step, as its own role


# --------------------------------------------------------------------------- emulators


def _node_bin(name: str) -> str:
    path = REPO_ROOT / "node_modules" / ".bin" / name
    if not path.exists():
        raise StackError(f"{path} is missing: run `npm ci` in {REPO_ROOT} (make does this)")
    return str(path)


# gcp-storage-emulator serves one connection at a time from a listen queue of 5 (socketserver's default):
# the 6th concurrent client's SYN is dropped and its connect times out, although the emulator would answer
# it within a second. Uploads send several small objects at once (backup.run_upload), as against a real
# cloud; a longer queue makes them wait their turn instead.
_GCS_EMULATOR_MAIN = ("import socketserver, sys; socketserver.TCPServer.request_queue_size = 128; "
                      "from gcp_storage_emulator.__main__ import main; sys.exit(main(sys.argv[1:]))")


def _venv_bin(name: str) -> str:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def _start_emulator(state: StackState, name: str, port: int | None = None) -> None:
    existing = state.services.get(name)
    if existing and existing.is_running():
        return
    port = port or free_port()
    data = state.directory / name
    data.mkdir(parents=True, exist_ok=True)
    if name == "s3":
        argv = [_venv_bin("moto_server"), "-H", "127.0.0.1", "-p", str(port)]
        ready = f"http://127.0.0.1:{port}/moto-api/"
        env = {}
    elif name == "azure":
        argv = [_node_bin("azurite-blob"), "--blobHost", "127.0.0.1", "--blobPort", str(port),
                "--location", str(data), "--skipApiVersionCheck", "--disableTelemetry", "--loose"]
        ready = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}?comp=list"
        env = {}
    elif name == "gcs":
        argv = [sys.executable, "-c", _GCS_EMULATOR_MAIN, "start", "--host", "127.0.0.1", "--port", str(port),
                "--default-bucket", BUCKET, "--quiet"]
        ready = f"http://127.0.0.1:{port}/storage/v1/b"
        env = {"STORAGE_BASE": str(data)}  # persists objects across restarts of `make run`
    else:
        raise ValueError(name)
    service = _spawn(name, argv, state.directory, env)
    service.port = port
    state.services[name] = service
    _wait_until(lambda: _http_ok(ready), f"{name} emulator on port {port}", 60, Path(service.log))


def restart_emulator(state: StackState, name: str) -> None:
    """Start a stopped emulator again on its old port (outage tests stop and restart clouds)."""
    service = state.services.pop(name)
    _terminate(service)
    _start_emulator(state, name, port=service.port)  # the same port keeps the connections valid
    state.save()
    _create_buckets(state, (name,))  # moto keeps nothing across a restart; the others may be stopped


def stop_service(state: StackState, name: str, *, kill: bool = False) -> None:
    """Stop one service (and its process group); `kill`: SIGKILL at once, as a host that dies would."""
    service = state.services[name]
    if kill and service.is_running():
        try:
            os.killpg(service.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
    _terminate(service)


def _create_buckets(state: StackState, services: tuple[str, ...] = ("s3", "azure", "gcs")) -> None:
    """Make the backup bucket of each named emulator ready; touches no other (it may be stopped)."""
    if "s3" in services:
        s3 = sdk_s3(state)
        if BUCKET not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            # Object Lock can only be enabled when a bucket is created (it turns on versioning): the policy's
            # `immutability` locks every backup object for some days.
            s3.create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
        if STAGING_BUCKET not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            from wedsync_dr.staging import expire_staging_bucket

            s3.create_bucket(Bucket=STAGING_BUCKET)  # workers that share no disk hand off through it
            expire_staging_bucket(s3, STAGING_BUCKET)
    if "azure" in services:
        from azure.core.exceptions import ResourceExistsError

        try:
            sdk_azure_container(state).create_container()
        except ResourceExistsError:
            pass
    if "gcs" in services:
        # The emulator creates BUCKET itself (--default-bucket), with GCS's default 7-day soft delete. It
        # rewrites one metadata file listing every object, soft-deleted ones too, on each write: with soft
        # delete on, every object tests and benchmarks ever deleted would slow every later upload down.
        bucket = sdk_gcs_bucket(state)
        bucket.reload()
        if int(bucket.soft_delete_policy.retention_duration_seconds or 0):
            bucket.soft_delete_policy.retention_duration_seconds = 0
            bucket.patch()


# The emulators' backup bucket through each cloud's own SDK, bypassing the product's storage layer: for
# preparing the stack, for tests that read back what the product wrote, and for the benchmark's anchors.


def sdk_s3(state: StackState):
    """A boto3 S3 client of the moto server (use with `Bucket=BUCKET`)."""
    import boto3

    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{state.port('s3')}", region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def sdk_azure_container(state: StackState):
    """The Azurite container BUCKET as an azure-storage-blob ContainerClient."""
    from azure.storage.blob import ContainerClient

    return ContainerClient.from_connection_string(azure_connection_string(state.port("azure")), BUCKET)


def sdk_gcs_bucket(state: StackState):
    """The GCS emulator's BUCKET as a google-cloud-storage Bucket (not loaded: call reload() for metadata)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project=GCP_PROJECT, credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": f"http://127.0.0.1:{state.port('gcs')}"})
    return client.bucket(BUCKET)


# --------------------------------------------------------------------------- connections


def azure_connection_string(port: int) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};")


def airflow_db_url(state: StackState) -> str:
    """SQLAlchemy URL of the stack's Airflow metadata DB (psycopg2 sync; Airflow derives asyncpg from it)."""
    parts = urlsplit(state.db_url)
    return (f"postgresql+psycopg2://{AIRFLOW_ROLE}:{quote(state.passwords[AIRFLOW_ROLE], safe='')}"
            f"@{parts.hostname}:{parts.port or 5432}/{AIRFLOW_DB}")


def _pg_conn(state: StackState, role: str, database: str) -> dict:
    parts = urlsplit(state.db_url)
    return {"conn_type": "postgres", "host": parts.hostname, "port": parts.port or 5432, "login": role,
            "password": state.passwords[role], "schema": database}


def demo_key_ring(state: StackState) -> dict:
    """The stack's demo key ring (generated once, kept in a 0600 file beside the stack state)."""
    from wedsync_dr.crypto import KeyRing

    path = state.directory / "keyring.json"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(KeyRing.generate(["demo-2026a"]).to_json())
    ring = json.loads(path.read_text())
    if "dedup_key" not in ring:  # a stack made before content ids were keyed: add its dedup key once
        ring["dedup_key"] = base64.b64encode(os.urandom(32)).decode()
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(ring))
        tmp.replace(path)
    return ring


def _s3_conn(state: StackState) -> dict:
    return {"conn_type": "aws", "login": "testing", "password": "testing",
            "extra": {"region_name": "us-east-1", "endpoint_url": f"http://127.0.0.1:{state.port('s3')}"}}


def connections(state: StackState) -> dict[str, dict]:
    """The Airflow connections of the local stack, by connection id."""
    return {
        "wedsync_backup_keys": {"conn_type": "generic", "extra": demo_key_ring(state)},
        "wedsync_db": _pg_conn(state, READER_ROLE, SOURCE_DB),
        "wedsync_db_owner": _pg_conn(state, OWNER_ROLE, SOURCE_DB),
        "wedsync_catalog": _pg_conn(state, CATALOG_ROLE, CATALOG_DB),
        "backup_s3": _s3_conn(state),
        "wedsync_staging": _s3_conn(state),  # the staging bucket ($WEDSYNC_STAGING_URL) of a multi-host setup
        "backup_azure": {"conn_type": "wasb",
                         "extra": {"connection_string": azure_connection_string(state.port("azure"))}},
        # GCSHook has no endpoint setting: anonymous credentials plus STORAGE_EMULATOR_HOST (see environment()).
        "backup_gcs": {"conn_type": "google_cloud_platform",
                       "extra": {"is_anonymous": True, "project": GCP_PROJECT}},
    }


def airflow_settings(airflow_home: Path, port: int = AIRFLOW_PORT) -> dict[str, str]:
    """Airflow configuration for one process family: SQLite metadata, LocalExecutor sized for 2 cores, loopback.

    SQLite suits a single process (`dag.test()` in the test session); `environment()` points the
    stack's Airflow components at PostgreSQL instead.
    """
    return {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(airflow_home / "passwords.json"),
    }


def environment(state: StackState) -> dict[str, str]:
    """Environment variables that point Airflow and the library at this stack."""
    env = airflow_settings(state.airflow_home, state.airflow_port)
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = airflow_db_url(state)
    env["PATH"] = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    # every Airflow process must share these, or tokens one signs the others reject
    env["AIRFLOW__API_AUTH__JWT_SECRET"] = state.passwords["airflow_jwt_secret"]
    env["AIRFLOW__CORE__FERNET_KEY"] = state.passwords["airflow_fernet_key"]
    env |= {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn) for conn_id, conn in connections(state).items()}
    env["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{state.port('gcs')}"
    env["WEDSYNC_STACK_DIR"] = str(state.directory)
    env["WEDSYNC_ASSET_SOURCE"] = str(state.directory / "assets")
    env["WEDSYNC_STAGING_DIR"] = str(state.directory / "staging")
    return env


def write_env_file(state: StackState) -> Path:
    path = state.directory / "stack.env"
    lines = [f"export {key}={_shell_quote(value)}" for key, value in sorted(environment(state).items())]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


# --------------------------------------------------------------------------- public API


def start(directory: Path = DEFAULT_STACK_DIR, db_url: str | None = None) -> StackState:
    """Start (or reuse) every service of the stack; returns its state. Idempotent."""
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    state = StackState.load(directory)
    state.passwords.setdefault("airflow_jwt_secret", secrets.token_urlsafe(32))
    state.passwords.setdefault("airflow_fernet_key", base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
    state.passwords.setdefault("airflow_admin", secrets.token_urlsafe(12))
    db_url = db_url if db_url is not None else os.environ.get("WEDSYNC_DB_URL", "")
    try:
        if db_url:
            state.db_url, state.external_db = db_url, True
        else:
            _start_postgres(state)
        state.save()
        for name in ("s3", "azure", "gcs"):
            _start_emulator(state, name)
            state.save()
        prepare_databases(state)
        _create_buckets(state)
    finally:
        state.save()
    write_env_file(state)
    return state


AIRFLOW_COMPONENTS = {
    "airflow-api-server": ["api-server"],
    # LocalExecutor runs tasks on this machine, where the API server reads their log files directly:
    # no log server, which would listen on every interface.
    "airflow-scheduler": ["scheduler", "--skip-serve-logs"],
    "airflow-dag-processor": ["dag-processor"],
    "airflow-triggerer": ["triggerer", "--skip-serve-logs"],
}


def migrate_airflow_db(state: StackState) -> None:
    """Create or upgrade the stack's Airflow metadata DB in its PostgreSQL, with the policy's pools (idempotent)."""
    state.airflow_home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **environment(state)}
    migrate = subprocess.run([_venv_bin("airflow"), "db", "migrate"], env=env, capture_output=True, text=True)
    if migrate.returncode:
        raise StackError(f"airflow db migrate failed: {migrate.stderr.strip()[-2000:]}")
    # The policy's pools (a task in a pool that does not exist is never scheduled), in that same DB.
    pools = subprocess.run([sys.executable, "-c", "from wedsync_dr import policy, pools; "
                            "pools.ensure_pools(policy.load_policy())"], env=env, capture_output=True, text=True)
    if pools.returncode:
        raise StackError(f"creating the policy's pools failed: {pools.stderr.strip()[-2000:]}")


def start_airflow(state: StackState, port: int | None = None, dags_paused: bool = False,
                  extra_env: dict[str, str] | None = None) -> str:
    """Start Airflow's api-server, scheduler, dag-processor and triggerer against the stack (idempotent).

    Returns the API's base URL. The `admin` user's password is in `<airflow home>/passwords.json`.
    `extra_env` configures them further (the Celery deployment's executor and broker).
    """
    if port is not None and not any(n in state.services for n in AIRFLOW_COMPONENTS):
        state.airflow_port = port
    env = {**environment(state), **(extra_env or {})}
    env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] = str(dags_paused)
    home = state.airflow_home
    home.mkdir(parents=True, exist_ok=True)
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({"admin": state.passwords["airflow_admin"]}))
    passwords.chmod(0o600)
    base_url = f"http://127.0.0.1:{state.airflow_port}"
    if all(state.services.get(n) and state.services[n].is_running() for n in AIRFLOW_COMPONENTS):
        return base_url
    if _port_open(state.airflow_port):
        raise StackError(f"port {state.airflow_port} is taken by another program: stop it or pick another port")
    migrate_airflow_db(state)
    airflow = _venv_bin("airflow")
    for name, args in AIRFLOW_COMPONENTS.items():
        existing = state.services.get(name)
        if not (existing and existing.is_running()):
            service = _spawn(name, [airflow, *args], state.directory, env)
            service.port = state.airflow_port if name == "airflow-api-server" else 0
            state.services[name] = service
    state.save()
    _wait_until(lambda: _http_ok(f"{base_url}/api/v2/monitor/health"), "Airflow API server", 120,
                Path(state.services["airflow-api-server"].log))
    return base_url


def stop(directory: Path = DEFAULT_STACK_DIR) -> list[str]:
    """Stop every process the stack started; returns the names stopped."""
    state = StackState.load(directory.resolve())
    stopped = []
    # Airflow first (its tasks use the services), PostgreSQL last.
    for name, service in sorted(state.services.items(), key=lambda item: (not item[0].startswith("airflow"),
                                                                          item[0] == "postgres")):
        if service.is_running():
            if name == "postgres":
                _stop_postgres(state)
            else:
                _terminate(service)
            stopped.append(name)
    state.save()
    return stopped


def status(directory: Path = DEFAULT_STACK_DIR) -> dict[str, dict]:
    state = StackState.load(directory.resolve())
    return {name: {"pid": svc.pid, "port": svc.port, "running": svc.is_running()}
            for name, svc in state.services.items()}


def destroy(directory: Path) -> None:
    """Stop the stack and delete its data (used by the test session)."""
    state = StackState.load(directory.resolve())
    stop(directory)
    if state.pg_data:
        shutil.rmtree(state.pg_data, ignore_errors=True)
        Path(state.pg_data + ".log").unlink(missing_ok=True)
    shutil.rmtree(directory, ignore_errors=True)


# ----------------------------------------------------------------- CeleryExecutor (workers that share no disk)

CELERY_WORKERS = ("worker-a", "worker-b")


def staging_url(state: StackState) -> str:
    """The stack's staging bucket (in the S3 emulator), as `$WEDSYNC_STAGING_URL` names it."""
    return f"s3://{STAGING_BUCKET}/runs?conn_id=wedsync_staging"


def worker_hostname() -> str:
    """`[core] hostname_callable` of the stack's Celery workers: each its own name, as on its own host (they
    share this machine's name), so the task instances record which worker ran them."""
    import socket

    return os.environ.get("WEDSYNC_WORKER_NAME") or socket.getfqdn()


def redis_server_available() -> bool:
    return shutil.which("redis-server") is not None


def _redis_server() -> str:
    found = shutil.which("redis-server")
    if not found:
        raise StackError("redis-server not found: `make test` installs Debian's redis-server package; elsewhere "
                         "install it (apt install redis-server, brew install redis)")
    return found


def _start_redis(state: StackState) -> None:
    existing = state.services.get("redis")
    if existing and existing.is_running():
        return
    port = free_port()
    data = state.directory / "redis"
    data.mkdir(parents=True, exist_ok=True)
    # loopback only, nothing kept on disk: the broker holds queued task messages, never data
    service = _spawn("redis", [_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(data), "--protected-mode", "yes"],
                     state.directory)
    service.port = port
    state.services["redis"] = service
    state.save()
    _wait_until(lambda: _port_open(port), "Redis", 20, Path(service.log))


def celery_environment(state: StackState) -> dict[str, str]:
    """What every Airflow process of the Celery deployment shares: the executor, the broker, the staging bucket."""
    parts = urlsplit(state.db_url)
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{state.port('redis')}/0",
        "AIRFLOW__CELERY__RESULT_BACKEND": (f"db+postgresql://{AIRFLOW_ROLE}:"
                                            f"{quote(state.passwords[AIRFLOW_ROLE], safe='')}@{parts.hostname}:"
                                            f"{parts.port or 5432}/{AIRFLOW_DB}"),
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
        "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
        # a worker that dies mid-task: its task instance stops heartbeating, is failed and retried elsewhere
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
        "WEDSYNC_STAGING_URL": staging_url(state),
    }


def start_celery_airflow(state: StackState, port: int | None = None, dags_paused: bool = False,
                         workers: tuple[str, ...] = CELERY_WORKERS) -> str:
    """Airflow with CeleryExecutor: Redis, api-server, scheduler, dag-processor, triggerer and one Celery worker
    per name, each with its own staging (scratch) and working directory, as if each were on its own host; the
    tasks hand each other their files through the staging bucket. Returns the API's base URL."""
    _start_redis(state)
    extra = celery_environment(state)
    url = start_airflow(state, port=port, dags_paused=dags_paused, extra_env=extra)
    airflow = _venv_bin("airflow")
    env = {**environment(state), **extra}
    for name in workers:
        service_name = f"celery-{name}"
        existing = state.services.get(service_name)
        if existing and existing.is_running():
            continue
        home = state.directory / "workers" / name
        (home / "staging").mkdir(parents=True, exist_ok=True, mode=0o700)
        worker_env = {**env, "WEDSYNC_WORKER_NAME": name, "WEDSYNC_STAGING_DIR": str(home / "staging"),
                      "AIRFLOW__CORE__HOSTNAME_CALLABLE": "wedsync_dr_dev.local_stack.worker_hostname",
                      "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "task-logs")}
        service = _spawn(service_name, [airflow, "celery", "worker", "--celery-hostname", f"{name}@%h",
                                        "--concurrency", "1", "--skip-serve-logs"], home, worker_env)
        state.services[service_name] = service
    state.save()
    return url


def wait_for_celery_workers(state: StackState, workers: tuple[str, ...] = CELERY_WORKERS,
                            timeout: float = 180) -> None:
    """Until every worker has connected to the broker and says it is ready."""
    for name in workers:
        log = Path(state.services[f"celery-{name}"].log)
        _wait_until(lambda log=log: log.exists() and " ready." in log.read_text(errors="replace"),
                    f"Celery {name}", timeout, log)


def celery_services(state: StackState) -> list[str]:
    return [name for name in ("redis", *(f"celery-{w}" for w in CELERY_WORKERS)) if name in state.services]
