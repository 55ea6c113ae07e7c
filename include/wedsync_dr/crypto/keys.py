"""Envelope keys: a fresh 256-bit data key per object, wrapped by a key-encryption key (KEK) from a key ring.

Key ring JSON, read from the Airflow connection `wedsync_backup_keys` (its `extra`, or its `password` holding
the same JSON; any secrets backend that serves that connection works), or by `KeyRing.from_json` /
`KeyRing.from_env` for the break-glass CLI:

    {"primary": "k2026b",
     "keys": {"k2026a": "<base64 of 32 bytes>", "k2026b": "<base64 of 32 bytes>"},
     "retired": ["k2025a"],                        (optional)
     "dedup_key": "<base64 of 32 bytes>",          (needed by the assets class and deduplicated tables)
     "previous_dedup_keys": ["<base64>", ...]}     (optional: dedup keys that named older backups' blobs)

The dedup key is not a KEK: it keys the HMAC-SHA256 content ids of shared, content-addressed objects (asset
blobs, table chunks), so that a cloud holding them cannot confirm which known file one holds. It stays the
same across KEK rotations and, like the KEKs, never goes into a cloud. Replacing it (`with_new_dedup_key`)
costs one full upload of every blob -- new content ids, and new chunk boundaries, share nothing with the old
ones -- and the old key moves to `previous_dedup_keys`: a restore checks every blob against its content id,
and the blobs of backups taken before the change carry ids only the old key computes. Drop a previous key
only once no kept backup is older than the change.

The primary KEK wraps new data keys; every listed KEK unwraps, so rotation is: add a key, make it primary,
and old backups still open. Retiring a KEK is an explicit step: listed under `retired` it stays in the
secret (an operator can take it back) but unwraps nothing. Wrapping is AES key wrap (RFC 3394).

Raw key bytes never appear in a repr, a str, an exception, a log line, a pickle or XCom: only KEK ids and
wrapped keys leave this module. The one exception is `KeyRing.to_json`, which exists to write a key ring
into a secrets store or a 0600 file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from cryptography.hazmat.primitives import keywrap

from wedsync_dr.crypto.errors import DecryptionError, KeyUnavailableError

log = logging.getLogger(__name__)

KEY_BYTES = 32
KEY_WRAP_ALGORITHM = "aes-kw-rfc3394"
DEFAULT_CONN_ID = "wedsync_backup_keys"
DEFAULT_ENV_VAR = "WEDSYNC_KEY_RING"
# KEK ids travel in manifests and in object metadata headers: keep them short and header-safe.
KEK_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class SecretKey:
    """256 bits of key material that refuse to be shown, hashed or serialised (pickle, json, XCom)."""

    __slots__ = ("_material",)

    def __init__(self, material: bytes):
        if len(material) != KEY_BYTES:
            raise ValueError(f"a key must be {KEY_BYTES} bytes")
        self._material = bytes(material)

    def material(self) -> bytes:
        """The raw bytes, for the cipher only."""
        return self._material

    def __repr__(self) -> str:
        return f"<{type(self).__name__} (hidden)>"

    __str__ = __repr__

    def __reduce_ex__(self, protocol) -> NoReturn:
        raise TypeError(f"{type(self).__name__} cannot be pickled or copied: key material stays in memory")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and secrets.compare_digest(self._material, other._material)

    __hash__ = None  # type: ignore[assignment]  # a hash of key material is a fingerprint of it


class DataKey(SecretKey):
    """The per-object key that encrypts data (the Tink streaming key's raw value)."""


class KeyEncryptionKey(SecretKey):
    """A KEK of the key ring: wraps data keys."""


class DedupKey(SecretKey):
    """Keys the content ids of shared objects (HMAC-SHA256): who lacks it cannot compute or confirm one."""


CONTENT_ID_DOMAIN = b"wedsync-dr content id v1\x00"
CHUNKER_SEED_DOMAIN = b"wedsync-dr chunker seed v1\x00"


@dataclass(frozen=True)
class WrappedKey:
    """A data key wrapped by KEK `kek_id`: safe to store in manifests and object metadata (`to_manifest`)."""

    kek_id: str
    wrapped_key: bytes
    algorithm: str = KEY_WRAP_ALGORITHM

    def to_manifest(self) -> dict[str, str]:
        """The key fields of a manifest entry's `encryption` object (docs/FORMAT.md)."""
        return {"kek_id": self.kek_id, "wrapped_key": base64.b64encode(self.wrapped_key).decode(),
                "key_wrap": self.algorithm}

    @classmethod
    def from_manifest(cls, encryption: Mapping[str, Any]) -> WrappedKey:
        """From a manifest entry's `encryption` object; a malformed one means no usable key."""
        try:
            return cls(str(encryption["kek_id"]), base64.b64decode(encryption["wrapped_key"], validate=True),
                       str(encryption["key_wrap"]))
        except (KeyError, TypeError, binascii.Error):
            raise KeyUnavailableError("the manifest's encryption entry has no valid kek_id, wrapped_key and "
                                      "key_wrap") from None


class KeyRing:
    """KEKs by id: the primary wraps, every key that is not retired unwraps."""

    def __init__(self, keys: Mapping[str, KeyEncryptionKey], primary: str, retired: Iterable[str] = (),
                 dedup_key: DedupKey | None = None, previous_dedup_keys: Iterable[DedupKey] = ()):
        retired = frozenset(retired)
        if not keys:
            raise KeyUnavailableError("the key ring holds no key-encryption key")
        for kek_id in keys:
            if not KEK_ID_PATTERN.fullmatch(kek_id):
                raise KeyUnavailableError(f"invalid key id {kek_id[:64]!r}: letters, digits, '.', '_', '-'; "
                                          "64 at most")
        if primary not in keys:
            raise KeyUnavailableError(f"the key ring's primary key {primary!r} is not among its keys")
        if primary in retired:
            raise KeyUnavailableError(f"the key ring's primary key {primary!r} is retired")
        if unknown := retired - set(keys):
            raise KeyUnavailableError(f"retired key ids not in the key ring: {', '.join(sorted(unknown))}")
        self._keys = dict(keys)
        self.primary_id = primary
        self.retired_ids = sorted(retired)
        self._dedup_key = dedup_key
        self._previous_dedup_keys = tuple(previous_dedup_keys)
        if self._previous_dedup_keys and dedup_key is None:
            raise KeyUnavailableError("the key ring lists previous dedup keys but no dedup_key")

    def __repr__(self) -> str:
        return f"<KeyRing primary={self.primary_id!r} keys={self.key_ids!r} retired={self.retired_ids!r}>"

    __str__ = __repr__

    def __reduce_ex__(self, protocol) -> NoReturn:
        raise TypeError("a key ring cannot be pickled or copied: key material stays in memory")

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    # ------------------------------------------------------------------ data keys

    @staticmethod
    def new_data_key() -> DataKey:
        return DataKey(os.urandom(KEY_BYTES))

    def wrap(self, data_key: DataKey) -> WrappedKey:
        kek = self._keys[self.primary_id]
        return WrappedKey(self.primary_id, keywrap.aes_key_wrap(kek.material(), data_key.material()))

    # ------------------------------------------------------------------ content ids

    @property
    def has_dedup_key(self) -> bool:
        return self._dedup_key is not None

    def content_id(self, plaintext_sha256: str) -> str:
        """The keyed content id (64 hex digits) of a plaintext whose sha256 is given: HMAC-SHA256 under the
        dedup key of a domain tag and the digest. Fails closed without a dedup key."""
        return _content_id(self._required_dedup_key(), plaintext_sha256)

    def content_digest(self, sha256_digest: bytes) -> bytes:
        """`content_id` on raw bytes, both ways: the 32 bytes of the content id of a plaintext whose sha256 digest
        is given (the extract's per-chunk path: no hex text made or parsed for 65,000 chunks a GB)."""
        return _content_digest(self._required_dedup_key(), sha256_digest)

    def _required_dedup_key(self) -> DedupKey:
        if self._dedup_key is None:
            raise KeyUnavailableError("the key ring has no dedup_key: content-addressed objects (assets) need "
                                      "one; add \"dedup_key\": <base64 of 32 random bytes> to the key ring")
        return self._dedup_key

    def content_id_matches(self, plaintext_sha256: str, content_id: str) -> bool:
        """Whether `content_id` is the content id of that plaintext under the dedup key or a previous one (a
        blob stored before the dedup key was replaced). False without any dedup key."""
        if not isinstance(content_id, str) or not content_id.isascii():  # a damaged manifest: no match
            return False
        keys = (self._dedup_key, *self._previous_dedup_keys) if self._dedup_key is not None else ()
        return any(hmac.compare_digest(_content_id(key, plaintext_sha256), content_id) for key in keys)

    def chunker_seed(self) -> int:
        """The 64-bit seed of the content-defined chunker's gear table, from the dedup key: chunk boundaries
        then depend on a secret, so the sizes of stored chunks do not fingerprint known content (restic
        keys its chunker's polynomial per repository for the same reason). It must never change while
        backups are to deduplicate against each other, like the dedup key itself."""
        if self._dedup_key is None:
            raise KeyUnavailableError("the key ring has no dedup_key: deduplicated table backups need one; add "
                                      "\"dedup_key\": <base64 of 32 random bytes> to the key ring")
        digest = hmac.new(self._dedup_key.material(), CHUNKER_SEED_DOMAIN, hashlib.sha256).digest()
        # 63 bits: pyfastcdc also shifts the seed left by one within 64 bits; 0 would mean the unkeyed table
        return (int.from_bytes(digest[:8], "big") >> 1) or 1

    def unwrap(self, wrapped: WrappedKey, *, object_name: str | None = None) -> DataKey:
        """The data key, or a typed error naming the object (or the KEK when no object is given)."""
        what = object_name or f"a data key wrapped by {wrapped.kek_id!r}"
        if wrapped.algorithm != KEY_WRAP_ALGORITHM:
            raise KeyUnavailableError(f"{what}: unsupported key wrap {wrapped.algorithm!r}")
        if wrapped.kek_id in self.retired_ids:
            raise KeyUnavailableError(f"{what}: key-encryption key {wrapped.kek_id!r} is retired")
        kek = self._keys.get(wrapped.kek_id)
        if kek is None:
            raise KeyUnavailableError(f"{what}: key-encryption key {wrapped.kek_id!r} is not in the key ring "
                                      f"(have: {', '.join(self.key_ids)})")
        try:
            return DataKey(keywrap.aes_key_unwrap(kek.material(), wrapped.wrapped_key))
        except (keywrap.InvalidUnwrap, ValueError):
            raise DecryptionError(what, f"key unwrap with {wrapped.kek_id!r} failed (a different key under "
                                  "the same id, or an altered wrapped key)") from None

    # ------------------------------------------------------------------ rotation

    def with_new_key(self, kek_id: str) -> KeyRing:
        """Rotation: a fresh random KEK under `kek_id` becomes the primary; the others keep unwrapping."""
        if kek_id in self._keys:
            raise ValueError(f"key id {kek_id!r} is already in the key ring")
        new_key = KeyEncryptionKey(os.urandom(KEY_BYTES))
        return KeyRing({**self._keys, kek_id: new_key}, kek_id, self.retired_ids, self._dedup_key,
                       self._previous_dedup_keys)

    def with_new_dedup_key(self) -> KeyRing:
        """A fresh random dedup key; the current one becomes a previous key (it still checks older blobs)."""
        if self._dedup_key is None:
            raise ValueError("the key ring has no dedup key to replace")
        return KeyRing(self._keys, self.primary_id, self.retired_ids, DedupKey(os.urandom(KEY_BYTES)),
                       (self._dedup_key, *self._previous_dedup_keys))

    def retire(self, kek_id: str) -> KeyRing:
        """Backups whose data keys `kek_id` wrapped can no longer be opened (until it is taken back)."""
        if kek_id not in self._keys:
            raise ValueError(f"key id {kek_id!r} is not in the key ring")
        if kek_id == self.primary_id:
            raise ValueError("the primary key cannot be retired: rotate to a new primary first")
        return KeyRing(self._keys, self.primary_id, [*self.retired_ids, kek_id], self._dedup_key,
                       self._previous_dedup_keys)

    # ------------------------------------------------------------------ loading and saving

    @classmethod
    def generate(cls, ids: Iterable[str] = ("k1",)) -> KeyRing:
        """Random KEKs, the last id primary: for the local stack and tests."""
        ids = list(ids)
        if not ids:
            raise ValueError("at least one key id")
        return cls({i: KeyEncryptionKey(os.urandom(KEY_BYTES)) for i in ids}, ids[-1],
                   dedup_key=DedupKey(os.urandom(KEY_BYTES)))

    @classmethod
    def from_json(cls, document: str | Mapping[str, Any]) -> KeyRing:
        """The key ring JSON (text or an already parsed mapping). Errors never echo the input."""
        parsed = _parse_key_ring(document)
        if parsed is None:  # raised outside the parser's except: no chained exception quotes the input
            raise KeyUnavailableError('the key ring is not JSON of the form {"primary": id, "keys": {id: '
                                      'base64 of 32 bytes}, "retired": [id, ...]}')
        return cls(*parsed)

    @classmethod
    def from_env(cls, variable: str = DEFAULT_ENV_VAR) -> KeyRing:
        """The key ring JSON in an environment variable: the break-glass CLI's way in, without Airflow."""
        text = os.environ.get(variable)
        if not text:
            raise KeyUnavailableError(f"no key ring: ${variable} is not set")
        return cls.from_json(text)

    @classmethod
    def from_connection(cls, conn_id: str = DEFAULT_CONN_ID) -> KeyRing:
        """The key ring in an Airflow connection: environment variable, secrets backend or metadata DB.

        Airflow is imported here, not at module level, so the library imports without it. Airflow masks
        the connection's password and the values of its extra in task logs.
        """
        try:
            from airflow.sdk import BaseHook
        except ImportError:
            raise KeyUnavailableError("Airflow is not installed: use KeyRing.from_env or from_json") from None
        try:
            conn = BaseHook.get_connection(conn_id)
        except Exception as err:  # noqa: BLE001 - any failed look-up means: no key, fail closed
            # Only the type: a secrets backend's message may quote the connection it failed to parse.
            raise KeyUnavailableError(f"key ring connection {conn_id!r} is not available "
                                      f"({type(err).__name__})") from None
        extra = conn.extra_dejson
        document = extra if "keys" in extra else conn.password
        if not document:
            raise KeyUnavailableError(f"key ring connection {conn_id!r} holds no keys (neither in its extra "
                                      "nor in its password)")
        try:
            ring = cls.from_json(document)
        except KeyUnavailableError as err:
            raise KeyUnavailableError(f"key ring connection {conn_id!r}: {err}") from None
        log.info("key ring from connection %s: primary %s, keys %s, retired %s, dedup key %s", conn_id,
                 ring.primary_id, ring.key_ids, ring.retired_ids, "present" if ring.has_dedup_key else "absent")
        return ring

    def to_json(self) -> str:
        """The key ring WITH its raw keys, for writing it to a secrets store or a 0600 file. Nothing else."""
        keys = {kek_id: base64.b64encode(kek.material()).decode() for kek_id, kek in self._keys.items()}
        document: dict[str, Any] = {"primary": self.primary_id, "keys": keys}
        if self.retired_ids:
            document["retired"] = self.retired_ids
        if self._dedup_key is not None:
            document["dedup_key"] = base64.b64encode(self._dedup_key.material()).decode()
        if self._previous_dedup_keys:
            document["previous_dedup_keys"] = [base64.b64encode(k.material()).decode()
                                               for k in self._previous_dedup_keys]
        return json.dumps(document)


ParsedKeyRing = tuple[dict[str, KeyEncryptionKey], str, list[str], DedupKey | None, list[DedupKey]]


def _content_id(key: DedupKey, plaintext_sha256: str) -> str:
    return _content_digest(key, bytes.fromhex(plaintext_sha256)).hex()


def _content_digest(key: DedupKey, digest: bytes) -> bytes:
    if len(digest) != 32:
        raise ValueError("a sha256 digest is 32 bytes")
    # hmac.digest: OpenSSL's one-shot HMAC, ~1 us against ~4 for an hmac.new object (called once per table chunk)
    return hmac.digest(key.material(), CONTENT_ID_DOMAIN + digest, "sha256")


def _parse_key_ring(document: str | Mapping[str, Any]) -> ParsedKeyRing | None:
    """Keys, primary id and retired ids, or None for anything malformed (and no exception to quote it)."""
    try:
        raw = json.loads(document) if isinstance(document, str) else dict(document)
        keys = {str(i): KeyEncryptionKey(base64.b64decode(v, validate=True)) for i, v in raw["keys"].items()}
        retired = raw.get("retired", [])
        if not isinstance(retired, list):
            return None
        dedup = raw.get("dedup_key")
        dedup_key = DedupKey(base64.b64decode(dedup, validate=True)) if dedup is not None else None
        previous = raw.get("previous_dedup_keys", [])
        if not isinstance(previous, list):
            return None
        previous_keys = [DedupKey(base64.b64decode(k, validate=True)) for k in previous]
        return keys, str(raw["primary"]), [str(i) for i in retired], dedup_key, previous_keys
    except (ValueError, KeyError, TypeError, AttributeError):  # binascii.Error is a ValueError
        return None
