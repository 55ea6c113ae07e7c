"""Staging: where the tasks of one backup run hand each other their files. A location, not a directory.

- **Local** (the default): `$WEDSYNC_STAGING_DIR/<backup_id>/`. The tasks of a run share it because they share
  a host (LocalExecutor, one machine). Compressed plaintext waits there (0600) for `encrypt`, as it always has.
- **Object store**: `$WEDSYNC_STAGING_URL`, e.g. `s3://wedsync-staging/runs?conn_id=wedsync_staging` (also
  `gs://` and `az://` through the same storage adapters and Airflow connections). Every worker reaches it, so a
  task never assumes it runs on the host of the task before it (CeleryExecutor on several hosts, Kubernetes
  pods). Only ciphertext and plaintext-free JSON go there: `extract` seals each object on the worker that read
  it before handing it off (see `wedsync_dr.backup`). A staging bucket carries an expiry lifecycle rule.

Either way, a task makes and reads its files in its own `scratch` directory on its own host (0700) and removes
them itself; `remove` (the run's teardown, or the abandoned-run sweep) deletes what was staged, wherever it is.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from wedsync_dr.storage import ObjectStore, open_store

log = logging.getLogger(__name__)

STAGING_URL_ENV = "WEDSYNC_STAGING_URL"
# URL scheme -> storage adapter kind (the same adapters as the three clouds)
SCHEMES = {"s3": "s3", "gs": "gcs", "az": "azure_blob"}
EXPIRY_DAYS = 2  # the staging bucket's lifecycle rule: a killed run's leftovers go even if no sweep runs


class StagingError(ValueError):
    """A staging location that cannot be used (a malformed URL, an unknown scheme)."""


class Staging:
    """A run's hand-offs: files (`publish`, `local_copy`) and small JSON documents (`write_json`, `read_json`)."""

    remote = False

    def __init__(self, scratch_root: Path):
        self.scratch_root = scratch_root

    def scratch(self, backup_id: str) -> Path:
        """This task's private directory on its own host for the backup's files being made or read."""
        path = self.scratch_root / backup_id
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    def describe(self) -> str:
        raise NotImplementedError

    def publish(self, backup_id: str, path: Path, *, sha256: str | None = None) -> None:
        """Hand a finished file of `scratch(backup_id)` to the tasks that follow."""
        raise NotImplementedError

    @contextmanager
    def local_copy(self, backup_id: str, name: str) -> Iterator[Path]:
        """A readable path on this host for a staged file (removed afterwards if it had to be fetched)."""
        raise NotImplementedError
        yield  # pragma: no cover

    def open_read(self, backup_id: str, name: str):
        raise NotImplementedError

    def write_json(self, backup_id: str, name: str, value: Any) -> None:
        raise NotImplementedError

    def read_json(self, backup_id: str, name: str, default: Any = None) -> Any:
        raise NotImplementedError

    def remove(self, backup_id: str) -> bool:
        """Delete everything staged for the backup, and this host's scratch of it. Safe to call twice."""
        raise NotImplementedError

    def staged_backups(self) -> dict[str, dt.datetime]:
        """backup id -> when what is staged for it last changed (what the sweep judges)."""
        raise NotImplementedError


class LocalStaging(Staging):
    """One directory per backup on this host: staging and scratch are the same place."""

    def describe(self) -> str:
        return str(self.scratch_root)

    def publish(self, backup_id: str, path: Path, *, sha256: str | None = None) -> None:
        if path.parent != self.scratch_root / backup_id:
            raise StagingError(f"{path} is not in the staging directory of {backup_id}")

    @contextmanager
    def local_copy(self, backup_id: str, name: str) -> Iterator[Path]:
        yield self.scratch_root / backup_id / name

    def open_read(self, backup_id: str, name: str):
        return open(self.scratch_root / backup_id / name, "rb")

    def write_json(self, backup_id: str, name: str, value: Any) -> None:
        path = self.scratch(backup_id) / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(value, default=str))
        tmp.replace(path)

    def read_json(self, backup_id: str, name: str, default: Any = None) -> Any:
        path = self.scratch_root / backup_id / name
        if not path.exists():
            if default is not None:
                return default
            raise FileNotFoundError(f"{path}: not staged (did the task before run on another host? "
                                    f"set {STAGING_URL_ENV} for workers that share no disk)")
        return json.loads(path.read_text())

    def remove(self, backup_id: str) -> bool:
        path = self.scratch_root / backup_id
        existed = path.exists()
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():
            raise OSError(f"{path} could not be removed")
        return existed

    def staged_backups(self) -> dict[str, dt.datetime]:
        if not self.scratch_root.is_dir():
            return {}
        found = {}
        for path in self.scratch_root.iterdir():
            try:
                if path.is_dir():
                    found[path.name] = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
            except FileNotFoundError:  # its own run's teardown removed it meanwhile
                continue
        return found


class ObjectStoreStaging(Staging):
    """A staging bucket: `<prefix>/<backup_id>/<name>`; each task's scratch stays on its own host."""

    remote = True

    def __init__(self, store: ObjectStore, prefix: str, scratch_root: Path, url: str):
        super().__init__(scratch_root)
        self.store, self.prefix, self.url = store, prefix.strip("/"), url

    def describe(self) -> str:
        return self.url

    def _key(self, backup_id: str, name: str = "") -> str:
        return f"{self.prefix}/{backup_id}/{name}" if self.prefix else f"{backup_id}/{name}"

    def publish(self, backup_id: str, path: Path, *, sha256: str | None = None) -> None:
        """Upload the file (streamed, multipart when large) and remove it from this host."""
        self.store.put_file(self._key(backup_id, path.name), path, sha256=sha256 or _sha256_of(path),
                            metadata={"backup-id": backup_id})
        path.unlink()

    @contextmanager
    def local_copy(self, backup_id: str, name: str) -> Iterator[Path]:
        path = self.scratch(backup_id) / name
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                self.store.download_to(self._key(backup_id, name), out)
            yield path
        finally:
            path.unlink(missing_ok=True)

    def open_read(self, backup_id: str, name: str):
        return self.store.open_read(self._key(backup_id, name))

    def write_json(self, backup_id: str, name: str, value: Any) -> None:
        self.store.put_bytes(self._key(backup_id, name), json.dumps(value, default=str).encode(),
                             metadata={"backup-id": backup_id}, content_type="application/json")

    def read_json(self, backup_id: str, name: str, default: Any = None) -> Any:
        key = self._key(backup_id, name)
        if default is not None and self.store.head(key) is None:
            return default
        return json.loads(self.store.read_bytes(key))

    def remove(self, backup_id: str) -> bool:
        removed = self.store.delete_prefix(self._key(backup_id))
        shutil.rmtree(self.scratch_root / backup_id, ignore_errors=True)
        return removed > 0

    def staged_backups(self) -> dict[str, dt.datetime]:
        found: dict[str, dt.datetime] = {}
        for info in self.store.list(f"{self.prefix}/" if self.prefix else ""):
            backup_id = info.key[len(self.prefix) + 1 if self.prefix else 0:].split("/", 1)[0]
            changed = info.updated or dt.datetime.now(dt.UTC)  # unknown: as young as can be
            found[backup_id] = max(found.get(backup_id, changed), changed)  # the youngest file speaks for the run
        return found


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def parse_url(url: str) -> tuple[str, str, str, str]:
    """(adapter kind, bucket, key prefix, Airflow connection id) of a staging URL."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise StagingError(f"{STAGING_URL_ENV}={url!r}: the scheme must be one of "
                           f"{', '.join(s + '://' for s in SCHEMES)}")
    if not parts.netloc:
        raise StagingError(f"{STAGING_URL_ENV}={url!r}: no bucket (e.g. s3://wedsync-staging/runs?conn_id=...)")
    conn_ids = parse_qs(parts.query).get("conn_id")
    if not conn_ids:
        raise StagingError(f"{STAGING_URL_ENV}={url!r}: name the Airflow connection with ?conn_id=...")
    return SCHEMES[parts.scheme], parts.netloc, parts.path.strip("/"), conn_ids[0]


def for_policy(policy) -> Staging:
    """The policy's staging: the bucket of `$WEDSYNC_STAGING_URL` when set, else the local directory."""
    url = os.environ.get(STAGING_URL_ENV)
    if not url:
        return LocalStaging(policy.staging_dir())
    kind, bucket, prefix, conn_id = parse_url(url)
    timeouts = {"connect_timeout": 5, "read_timeout": 60}
    store = open_store("staging", kind, conn_id, bucket, **timeouts)
    return ObjectStoreStaging(store, prefix, policy.staging_dir(), url)


def expire_staging_bucket(s3_client, bucket: str, days: int = EXPIRY_DAYS) -> None:
    """The staging bucket's lifecycle rule (S3): objects expire after `days`, unfinished multipart uploads after
    one -- so a run killed before its teardown and missed by the sweep still leaves nothing for long."""
    s3_client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [{
        "ID": "wedsync-staging-expiry", "Status": "Enabled", "Filter": {"Prefix": ""},
        "Expiration": {"Days": days}, "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}]})
