"""Envelope keys: the key ring, rotation and retirement, fail-closed loading, and no key material anywhere."""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
import logging
import os
import pickle
import traceback

import pytest

from wedsync_dr import crypto

AD = crypto.associated_data("client_data-20260101T000000Z-abc123", "guests.copy.zst.tink")


def _ring_json(**overrides) -> str:
    document = {"primary": "k2026a", "keys": {"k2026a": base64.b64encode(os.urandom(32)).decode()}}
    return json.dumps(document | overrides)


def _encrypt(data: bytes, key) -> bytes:
    out = io.BytesIO()
    crypto.encrypt_stream(io.BytesIO(data), out, key, AD)
    return out.getvalue()


def _decrypt(blob: bytes, key) -> bytes:
    out = io.BytesIO()
    crypto.decrypt_stream(io.BytesIO(blob), out, key, AD, object_name="guests.copy.zst.tink")
    return out.getvalue()


# ----------------------------------------------------------------------------- the key ring document


def test_key_ring_json_round_trip():
    ring = crypto.KeyRing.generate(["k2025a", "k2026a"])
    loaded = crypto.KeyRing.from_json(ring.to_json())
    assert (loaded.primary_id, loaded.key_ids, loaded.retired_ids) == ("k2026a", ["k2025a", "k2026a"], [])
    assert loaded.unwrap(ring.wrap(data_key := ring.new_data_key())) == data_key
    assert crypto.KeyRing.from_json(json.loads(ring.to_json())).primary_id == "k2026a"  # a parsed mapping too


@pytest.mark.parametrize("document", [
    "", "not json", "[]", '{"primary": "k1"}', '{"keys": {}}', '{"primary": "k1", "keys": {}}',
    _ring_json(primary="k-missing"),
    _ring_json(keys={"k2026a": "not base64!"}),
    _ring_json(keys={"k2026a": base64.b64encode(os.urandom(16)).decode()}),  # AES-128 is not enough
    _ring_json(keys={"bad id with spaces": base64.b64encode(os.urandom(32)).decode()}),
    _ring_json(retired=["k2026a"]),  # the primary cannot be retired
    _ring_json(retired=["k-unknown"]),
    _ring_json(retired="k2026a"),
    _ring_json(previous_dedup_keys=[base64.b64encode(os.urandom(32)).decode()]),  # no dedup_key to replace it
    _ring_json(dedup_key=base64.b64encode(os.urandom(32)).decode(), previous_dedup_keys="not a list"),
    _ring_json(dedup_key=base64.b64encode(os.urandom(32)).decode(),
               previous_dedup_keys=[base64.b64encode(os.urandom(16)).decode()]),
])
def test_malformed_key_rings_are_refused_without_echoing_them(document):
    with pytest.raises(crypto.KeyUnavailableError) as caught:
        crypto.KeyRing.from_json(document)
    for value in json.loads(document).get("keys", {}).values() if document.startswith("{") else []:
        assert value not in str(caught.value)
    assert caught.value.__context__ is None  # no chained parser error carries the document along


# ----------------------------------------------------------------------------- rotation and retirement


def test_rotation_old_objects_still_open_new_ones_use_the_new_primary():
    ring_2025 = crypto.KeyRing.generate(["k2025a"])
    old_key = ring_2025.new_data_key()
    old_wrapped = ring_2025.wrap(old_key)
    old_blob = _encrypt(b"an old wedding", old_key)

    rotated = crypto.KeyRing.from_json(ring_2025.with_new_key("k2026a").to_json())  # as stored after rotation
    assert rotated.primary_id == "k2026a" and rotated.key_ids == ["k2025a", "k2026a"]
    assert _decrypt(old_blob, rotated.unwrap(old_wrapped)) == b"an old wedding"
    new_key = rotated.new_data_key()
    assert rotated.wrap(new_key).kek_id == "k2026a"
    assert rotated.unwrap(rotated.wrap(new_key)) == new_key

    retired = crypto.KeyRing.from_json(rotated.retire("k2025a").to_json())
    assert retired.retired_ids == ["k2025a"] and retired.key_ids == ["k2025a", "k2026a"]  # kept, not used
    with pytest.raises(crypto.KeyUnavailableError, match="guests.copy.zst.tink: .*'k2025a' is retired"):
        retired.unwrap(old_wrapped, object_name="guests.copy.zst.tink")
    assert retired.unwrap(rotated.wrap(new_key)) == new_key  # the primary's objects are unaffected


def test_a_new_dedup_key_names_new_blobs_and_still_recognises_the_old_ones():
    """The dedup key keys content ids and the chunker: a new one shares no id or boundary with the old, and
    the old stays as a previous key, which checks the ids of older backups' blobs but names nothing new."""
    ring = crypto.KeyRing.generate(["k1"])
    sha = hashlib.sha256(b"a wedding contract").hexdigest()
    old_id = ring.content_id(sha)
    rotated = crypto.KeyRing.from_json(ring.with_new_dedup_key().with_new_key("k2").to_json())  # as stored
    assert rotated.content_id(sha) != old_id and rotated.chunker_seed() != ring.chunker_seed()
    assert rotated.content_id_matches(sha, old_id) and rotated.content_id_matches(sha, rotated.content_id(sha))
    assert not ring.content_id_matches(sha, rotated.content_id(sha))  # the old ring knows no newer key
    assert not rotated.content_id_matches(hashlib.sha256(b"another file").hexdigest(), old_id)
    assert not rotated.content_id_matches(sha, None) and not rotated.content_id_matches(sha, "é" * 64)
    twice = rotated.with_new_dedup_key()
    assert twice.content_id_matches(sha, old_id) and twice.content_id_matches(sha, rotated.content_id(sha))
    forgotten = crypto.KeyRing.from_json({**json.loads(rotated.to_json()), "previous_dedup_keys": []})
    assert not forgotten.content_id_matches(sha, old_id)
    assert not crypto.KeyRing.generate(["k1"]).with_new_dedup_key().content_id_matches(sha, old_id)
    with pytest.raises(ValueError, match="no dedup key"):
        crypto.KeyRing.from_json(_ring_json()).with_new_dedup_key()


def test_rotation_and_retirement_refuse_mistakes():
    ring = crypto.KeyRing.generate(["k1", "k2"])
    with pytest.raises(ValueError):
        ring.with_new_key("k1")  # would replace a key that still opens backups
    with pytest.raises(ValueError):
        ring.retire("k2")  # the primary
    with pytest.raises(ValueError):
        ring.retire("k9")


def test_a_key_removed_from_the_ring_is_a_typed_error():
    ring = crypto.KeyRing.generate(["k1", "k2"])
    wrapped = crypto.WrappedKey("k0", ring.wrap(ring.new_data_key()).wrapped_key)
    with pytest.raises(crypto.KeyUnavailableError, match="'k0' is not in the key ring"):
        ring.unwrap(wrapped)


def test_wrong_kek_or_altered_wrapped_key_is_a_decryption_error_naming_the_object():
    ring_a, ring_b = crypto.KeyRing.generate(["k"]), crypto.KeyRing.generate(["k"])
    wrapped = ring_a.wrap(ring_a.new_data_key())
    with pytest.raises(crypto.DecryptionError, match="^cannot decrypt guests: key unwrap with 'k' failed"):
        ring_b.unwrap(wrapped, object_name="guests")
    altered = bytearray(wrapped.wrapped_key)
    altered[3] ^= 1
    with pytest.raises(crypto.DecryptionError):
        ring_a.unwrap(crypto.WrappedKey("k", bytes(altered)))
    with pytest.raises(crypto.KeyUnavailableError, match="unsupported key wrap"):
        ring_a.unwrap(crypto.WrappedKey("k", wrapped.wrapped_key, "aes-kwp-rfc5649"))


def test_wrapped_keys_travel_through_the_manifest():
    ring = crypto.KeyRing.generate(["k1"])
    wrapped = ring.wrap(data_key := ring.new_data_key())
    entry = json.loads(json.dumps(crypto.encryption_entry(wrapped, AD)))
    assert entry == {"format": "tink-aes256-gcm-hkdf-1mb", "kek_id": "k1", "key_wrap": "aes-kw-rfc3394",
                     "wrapped_key": base64.b64encode(wrapped.wrapped_key).decode(),
                     "associated_data": base64.b64encode(AD).decode()}
    assert len(wrapped.wrapped_key) == 40  # RFC 3394: the 32-byte key plus one 8-byte block
    assert ring.unwrap(crypto.WrappedKey.from_manifest(entry)) == data_key
    with pytest.raises(crypto.KeyUnavailableError):
        crypto.WrappedKey.from_manifest({"kek_id": "k1", "wrapped_key": "%%%", "key_wrap": "aes-kw-rfc3394"})


# ----------------------------------------------------------------------------- loading, fail closed


def test_key_ring_from_an_airflow_connection_extra_or_password(monkeypatch):
    ring = crypto.KeyRing.generate(["a", "b"])
    monkeypatch.setenv("AIRFLOW_CONN_TEST_KEYS_EXTRA", json.dumps({"conn_type": "generic",
                                                                   "extra": json.loads(ring.to_json())}))
    monkeypatch.setenv("AIRFLOW_CONN_TEST_KEYS_PASSWORD", json.dumps({"conn_type": "generic",
                                                                      "password": ring.to_json()}))
    for conn_id in ("test_keys_extra", "test_keys_password"):
        loaded = crypto.KeyRing.from_connection(conn_id)
        assert loaded.primary_id == "b" and loaded.key_ids == ["a", "b"]
        assert loaded.unwrap(ring.wrap(data_key := ring.new_data_key())) == data_key


def test_key_ring_from_the_environment(monkeypatch):
    ring = crypto.KeyRing.generate(["k1"])
    monkeypatch.setenv("WEDSYNC_KEY_RING", ring.to_json())
    assert crypto.KeyRing.from_env().primary_id == "k1"
    monkeypatch.delenv("WEDSYNC_KEY_RING")
    with pytest.raises(crypto.KeyUnavailableError, match=r"\$WEDSYNC_KEY_RING is not set"):
        crypto.KeyRing.from_env()


@pytest.mark.parametrize("connection", [
    None,  # not defined anywhere
    {"conn_type": "generic"},  # defined, but holds no keys
    {"conn_type": "generic",  # the placeholder of .env.example
     "extra": {"primary": "kek-1", "keys": {"kek-1": "REPLACE-WITH-BASE64-OF-32-RANDOM-BYTES"}}},
])
def test_no_usable_key_ring_fails_before_a_byte_is_written(monkeypatch, tmp_path, connection):
    """The backup's order of work: key ring first, so a missing one stops the run before any output."""
    if connection is not None:
        monkeypatch.setenv("AIRFLOW_CONN_WEDSYNC_BACKUP_KEYS_TEST", json.dumps(connection))
    source = tmp_path / "guests.copy"
    source.write_bytes(b"1,Ada,attending\n" * 1000)
    target = tmp_path / "guests.copy.zst.tink"

    def backup_one_object():
        ring = crypto.KeyRing.from_connection("wedsync_backup_keys_test")
        data_key = ring.new_data_key()
        crypto.encrypt_file(source, target, data_key, AD)

    with pytest.raises(crypto.KeyUnavailableError, match="wedsync_backup_keys_test"):
        backup_one_object()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["guests.copy"]


def test_no_data_key_means_nothing_is_written(tmp_path):
    sink = io.BytesIO()
    for attempt in (lambda: crypto.encrypt_stream(io.BytesIO(b"plaintext"), sink, None, AD),
                    lambda: crypto.ObjectEncryptor(sink, b"\x00" * 32, AD),  # raw bytes are not a DataKey
                    lambda: crypto.encrypt_file(__file__, tmp_path / "x.tink", None, AD)):
        with pytest.raises(crypto.KeyUnavailableError):
            attempt()
    assert sink.getvalue() == b"" and list(tmp_path.iterdir()) == []
    source = io.BytesIO(b"ciphertext")
    with pytest.raises(crypto.KeyUnavailableError):
        crypto.decrypting_reader(source, None, AD, object_name="x")
    assert source.tell() == 0  # not even read


# ----------------------------------------------------------------------------- key material stays put


def test_keys_refuse_pickling_copying_json_and_xcom():
    from airflow.sdk.serde import serialize

    ring = crypto.KeyRing.generate(["k1"])
    for secret in (ring.new_data_key(), crypto.KeyEncryptionKey(os.urandom(32)), ring):
        for attempt in (pickle.dumps, copy.copy, copy.deepcopy, json.dumps, serialize):
            with pytest.raises(TypeError):
                attempt(secret)
    with pytest.raises(TypeError):
        hash(ring.new_data_key())  # a hash would be a fingerprint of the key
    with pytest.raises(TypeError):
        bytes(ring.new_data_key())


def _forms(secret: bytes) -> list[str]:
    b64 = base64.b64encode(secret).decode()
    urlsafe = base64.urlsafe_b64encode(secret).decode()
    return [secret.hex(), secret.hex().upper(), b64, b64.rstrip("="), urlsafe, urlsafe.rstrip("="),
            repr(secret)[2:-1], secret.decode("latin-1"), base64.b32encode(secret).decode()]


def test_no_key_material_in_logs_reprs_or_errors(caplog, monkeypatch, tmp_path):
    """A whole cycle (load, wrap, encrypt, decrypt, unwrap) and its error paths: no key in any text."""
    caplog.set_level(logging.DEBUG)
    ring = crypto.KeyRing.generate(["k2025a", "k2026a"])
    kek_values = [base64.b64decode(v) for v in json.loads(ring.to_json())["keys"].values()]
    monkeypatch.setenv("AIRFLOW_CONN_LEAK_TEST_KEYS", json.dumps({"conn_type": "generic",
                                                                  "extra": json.loads(ring.to_json())}))
    ring = crypto.KeyRing.from_connection("leak_test_keys")
    data_key = ring.new_data_key()
    wrapped = ring.wrap(data_key)
    texts = [repr(ring), str(ring), repr(data_key), str(data_key), f"{data_key}", repr(wrapped),
             json.dumps(crypto.encryption_entry(wrapped, AD))]

    plaintext = tmp_path / "guests.copy"
    plaintext.write_bytes(b"1,Ada,attending\n" * 10_000)
    stats = crypto.encrypt_file(plaintext, tmp_path / "guests.tink", data_key, AD)
    crypto.decrypt_file(tmp_path / "guests.tink", tmp_path / "guests.out", ring.unwrap(wrapped), AD,
                        object_name="guests")
    texts.append(repr(stats))
    logging.getLogger("wedsync_dr").info("encrypted with %s, ring %s, key %r", wrapped, ring, data_key)

    tampered = bytearray((tmp_path / "guests.tink").read_bytes())
    tampered[60] ^= 1
    (tmp_path / "tampered.tink").write_bytes(bytes(tampered))
    def decrypt(name: str, ad: bytes = AD, **expected):
        crypto.decrypt_file(tmp_path / name, tmp_path / "t.out", data_key, ad, object_name="g", **expected)

    failures = [
        lambda: decrypt("tampered.tink"),
        lambda: decrypt("guests.tink", b"other"),
        lambda: decrypt("guests.tink", expected_sha256="00" * 32),
        lambda: crypto.KeyRing.generate(["k2026a"]).unwrap(wrapped, object_name="g"),
        lambda: ring.retire("k2025a").unwrap(crypto.WrappedKey("k2025a", wrapped.wrapped_key)),
        lambda: crypto.KeyRing.from_json(ring.to_json().replace('"keys"', '"kees"')),
        lambda: crypto.KeyRing.from_json(ring.to_json()[:-5]),
        lambda: pickle.dumps(data_key),
        lambda: pickle.dumps(ring),
    ]
    for failure in failures:
        try:
            failure()
        except Exception as err:  # every kind the layer raises
            logging.getLogger("wedsync_dr").exception("operation failed")
            texts.append("".join(traceback.format_exception(err)))
            texts.append(repr(err.__context__))
        else:
            pytest.fail("expected an error")
    texts += [record.getMessage() for record in caplog.records]
    texts += [caplog.text]
    haystack = "\n".join(texts)
    assert "cannot decrypt g" in haystack and "k2026a" in haystack  # the texts are there, just not keys
    for secret in [*kek_values, data_key.material()]:
        for form in _forms(secret):
            assert form not in haystack
