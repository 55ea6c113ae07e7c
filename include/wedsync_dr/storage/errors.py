"""Typed storage errors: what the pipeline decides on (retry, fail over, alert) without knowing the SDK.

Each adapter translates its SDK's exceptions into these, so callers catch one family for every cloud.
Messages name the cloud and the key; they are passed through `redact()` because SDK messages can quote
request URLs, and a URL can carry a SAS signature or a presigned credential.
"""

from __future__ import annotations

import re

_SECRET_ASSIGNMENT = re.compile(
    r"(?i)\b(AccountKey|SharedAccessSignature|sig|signature|password|secret|token|credential|"
    r"X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|X-Goog-Signature|X-Goog-Credential)=[^;&\s'\"]+"
)
_URL_QUERY = re.compile(r"(https?://[^\s?'\"]+)\?[^\s'\"]*")
_MAX_MESSAGE = 400


def redact(text: str) -> str:
    """One line, bounded, with URL query strings and anything that looks like `secret=value` blanked out."""
    text = _URL_QUERY.sub(r"\1?<redacted>", text)
    text = _SECRET_ASSIGNMENT.sub(r"\1=<redacted>", text)
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


class StorageError(Exception):
    """A cloud could not do what was asked with one object (or prefix)."""

    def __init__(self, cloud: str, key: str, message: str) -> None:
        self.cloud = cloud
        self.key = key
        self.message = redact(message)
        super().__init__(f"{cloud}: {key}: {self.message}")

    def __reduce__(self):
        # the default pickling replays args=(formatted message,) into __init__, which takes three
        return type(self), (self.cloud, self.key, self.message)


class ObjectNotFound(StorageError):
    """The key does not exist in the cloud's bucket."""


class CloudUnavailable(StorageError):
    """The cloud cannot be reached or keeps failing (refused, DNS, timeout, 5xx after the SDK's retries).

    Transient by nature: the task retries with backoff, restore fails over to the next cloud.
    """


class CloudAuthError(CloudUnavailable):
    """The cloud refused our credentials: unusable until someone fixes the connection, so alert on it."""
