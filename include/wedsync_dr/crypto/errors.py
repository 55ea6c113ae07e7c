"""Typed errors of the encryption layer. Messages name objects and key ids, never key material."""


class CryptoError(Exception):
    """Base class: callers that only need to know "the encryption layer refused" catch this."""


class KeyUnavailableError(CryptoError):
    """No usable key. Raised before a single byte is encrypted, written or uploaded (fail closed)."""


class DecryptionError(CryptoError):
    """An object failed verification: wrong key, tampered, truncated, reordered, or wrong associated data.

    No plaintext of a segment is released before that segment's tag verified, but segments that verified
    were already handed on: a consumer that sees this error must discard everything it read from the
    stream (restores load into scratch targets and swap only after a clean end).
    """

    def __init__(self, object_name: str, reason: str):
        super().__init__(f"cannot decrypt {object_name}: {reason}")
        self.object_name = object_name
        self.reason = reason


class IntegrityError(DecryptionError):
    """The object decrypted, but its plaintext is not the one expected (sha256 or size differ).

    A subclass of DecryptionError because the consequence is the same: the plaintext must not be used,
    and another copy (another cloud) may be good.
    """
