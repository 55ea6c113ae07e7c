"""The encryption layer: Tink-compatible streaming AES-256-GCM with envelope keys (docs/FORMAT.md).

Backup:  ring = KeyRing.from_connection(); key = ring.new_data_key(); wrapped = ring.wrap(key)
         ad = associated_data(backup_id, name)
         with ObjectEncryptor(file, key, ad) as out: out.write(...)   ->  out.stats
         manifest entry: stats fields + {"encryption": encryption_entry(wrapped, ad)}
Restore: key = ring.unwrap(WrappedKey.from_manifest(entry["encryption"]), object_name=name)
         decrypting_reader(file, key, associated_data(backup_id, name), object_name=name,
                           expected_sha256=entry["plaintext_sha256"], expected_size=entry["plaintext_size"])

Fails closed: no key ring or no usable key raises KeyUnavailableError before any byte is produced; any
failed verification raises DecryptionError (IntegrityError for a plaintext checksum mismatch) naming the
object. Key material never leaves as text.
"""

from wedsync_dr.crypto.errors import CryptoError, DecryptionError, IntegrityError, KeyUnavailableError
from wedsync_dr.crypto.keys import (
    DEFAULT_CONN_ID,
    DEFAULT_ENV_VAR,
    KEY_WRAP_ALGORITHM,
    DataKey,
    KeyEncryptionKey,
    KeyRing,
    WrappedKey,
)
from wedsync_dr.crypto.objects import (
    DEFAULT_ZSTD_LEVEL,
    DEFAULT_ZSTD_THREADS,
    DecryptStats,
    EncryptStats,
    ObjectEncryptor,
    associated_data,
    decrypt_file,
    decrypt_stream,
    decrypting_reader,
    encrypt_file,
    encrypt_stream,
    encryption_entry,
)
from wedsync_dr.crypto.streaming import FORMAT_NAME, SEGMENT_SIZE, DecryptingReader, EncryptingWriter

__all__ = [
    "DEFAULT_CONN_ID", "DEFAULT_ENV_VAR", "DEFAULT_ZSTD_LEVEL", "DEFAULT_ZSTD_THREADS", "FORMAT_NAME",
    "KEY_WRAP_ALGORITHM", "SEGMENT_SIZE", "CryptoError", "DataKey", "DecryptStats", "DecryptingReader",
    "DecryptionError", "EncryptStats", "EncryptingWriter", "IntegrityError", "KeyEncryptionKey", "KeyRing",
    "KeyUnavailableError", "ObjectEncryptor", "WrappedKey", "associated_data", "decrypt_file",
    "decrypt_stream", "decrypting_reader", "encrypt_file", "encrypt_stream", "encryption_entry",
]
