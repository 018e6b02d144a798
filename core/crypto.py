"""Encryption at rest for stored secrets: deployment credentials, webhook signing secrets (Fernet:
AES-128-CBC + HMAC-SHA256).

The key comes from STEWARD_ENCRYPTION_KEY (a Fernet key, or any passphrase, which is stretched
with SHA-256) and otherwise is derived from SECRET_KEY, so development works out of the box;
production sets its own key so SECRET_KEY can rotate without re-encrypting secrets.
"""

from __future__ import annotations

import base64
import functools
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


@functools.cache
def _fernet(material: str) -> Fernet:
    try:
        return Fernet(material.encode())
    except ValueError:
        # The label dates from when only credentials were encrypted; changing it would orphan every
        # secret already stored under a passphrase.
        digest = hashlib.sha256(b"steward.proxy.credentials\x00" + material.encode()).digest()
        return Fernet(base64.urlsafe_b64encode(digest))


def fernet() -> Fernet:
    return _fernet(settings.STEWARD_ENCRYPTION_KEY or settings.SECRET_KEY)


def secret_encrypt(plaintext: str) -> str:
    return fernet().encrypt(plaintext.encode()).decode()


def secret_decrypt(token: str) -> str | None:
    """The plaintext, or None when the token was encrypted under another key (rotated without re-encrypting)."""
    try:
        return fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        return None
