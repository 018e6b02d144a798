"""Encryption at rest for stored secrets: deployment credentials, webhook signing secrets (Fernet:
AES-128-CBC + HMAC-SHA256).

STEWARD_ENCRYPTION_KEY holds one key or several, comma-separated and newest first. Each is a Fernet
key (`Fernet.generate_key()`) or a passphrase, stretched into one with HKDF-SHA256. New secrets are
encrypted under the newest key; any configured key decrypts (MultiFernet), so keys rotate without
downtime: put the new key first, run `manage.py secrets_rotate`, then drop the old one.

Without STEWARD_ENCRYPTION_KEY (dev only; production refuses to start) the key is derived from
SECRET_KEY. Keys made the way earlier versions made them (one SHA-256 over the passphrase, or over
SECRET_KEY) stay as decrypt-only keys, so secrets stored before the upgrade keep working until
`secrets_rotate` moves them to the newest key.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.db.models import QuerySet

# Fixed, public labels: HKDF's salt and info separate Steward's derived keys from any other use of
# the same passphrase; they are not secrets and must never change (that would orphan every secret).
_HKDF_SALT = b"steward.encryption-key.v1"
_HKDF_INFO = b"steward secrets at rest: fernet key"
# The label of the legacy SHA-256 derivation dates from when only credentials were encrypted.
_LEGACY_LABEL = b"steward.proxy.credentials\x00"


def encryption_keys_parse(value: str | None) -> list[str]:
    """The configured keys, newest first (empty entries ignored)."""
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _fernet_key(material: str) -> bytes | None:
    """`material` itself when it is a Fernet key (32 url-safe base64 bytes), else None."""
    try:
        Fernet(material.encode())
    except ValueError:
        return None
    return material.encode()


def _derived(material: str) -> bytes:
    key = _fernet_key(material)
    if key is not None:
        return key
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=_HKDF_INFO)
    return base64.urlsafe_b64encode(hkdf.derive(material.encode()))


def _legacy(material: str) -> bytes | None:
    if _fernet_key(material) is not None:
        return None  # a Fernet key was used as is: nothing was derived from it
    return base64.urlsafe_b64encode(hashlib.sha256(_LEGACY_LABEL + material.encode()).digest())


@dataclass(frozen=True)
class Keyring:
    newest: Fernet  # encrypts
    all: MultiFernet  # decrypts: the newest first, then the older and legacy keys
    size: int


@functools.cache
def _keyring(configured: str | None, secret_key: str) -> Keyring:
    keys = encryption_keys_parse(configured)
    derived = [_derived(k) for k in keys]
    legacy = [_legacy(k) for k in keys]
    if configured and len(keys) > 1:
        # A passphrase with a comma in it was one key before keys could be listed.
        legacy.append(_legacy(configured.strip()))
    # Secrets stored before STEWARD_ENCRYPTION_KEY was set were encrypted under SECRET_KEY.
    derived.append(_derived(secret_key))
    legacy.append(_legacy(secret_key))
    ordered = list(dict.fromkeys(k for k in [*derived, *legacy] if k is not None))
    fernets = [Fernet(k) for k in ordered]
    return Keyring(newest=fernets[0], all=MultiFernet(fernets), size=len(fernets))


def keyring() -> Keyring:
    return _keyring(settings.STEWARD_ENCRYPTION_KEY, settings.SECRET_KEY)


def secret_encrypt(plaintext: str) -> str:
    return keyring().newest.encrypt(plaintext.encode()).decode()


def secret_decrypt(token: str) -> str | None:
    """The plaintext, or None when no configured key decrypts the token (its key was removed before rotating)."""
    try:
        return keyring().all.decrypt(token.encode()).decode()
    except InvalidToken:
        return None


def secret_is_current(token: str) -> bool:
    """Whether the token is encrypted under the newest key (nothing for `secret_rotate` to do)."""
    try:
        keyring().newest.decrypt(token.encode())
    except InvalidToken:
        return False
    return True


def secret_rotate(token: str) -> str | None:
    """The same secret encrypted under the newest key, or None when no configured key decrypts it."""
    try:
        return keyring().all.rotate(token.encode()).decode()
    except InvalidToken:
        return None


@dataclass
class RotationReport:
    """What one app's `*_secrets_rotate` service did. `unreadable` names the rows left as they were."""

    label: str
    rotated: int = 0
    current: int = 0
    changed_meanwhile: int = 0
    unreadable: list[str] = field(default_factory=list)


def secrets_reencrypt(
    *, queryset: QuerySet, field_name: str, label: str, describe: Callable[[dict], str], describe_fields: tuple = ()
) -> RotationReport:
    """Re-encrypt `field_name` (a Fernet token or "") of every row of `queryset` under the newest key.

    For the apps' `*_secrets_rotate` services. Each row is one compare-and-set UPDATE (its own
    transaction), so it is safe while the app runs: a row whose secret was changed meanwhile is left
    to that change (written under the newest key already). Idempotent: tokens already under the newest
    key are counted as current and not rewritten. Tokens no configured key decrypts stay as they
    are and are named in the report (`describe(row)`).
    """
    report = RotationReport(label=label)
    rows = list(queryset.exclude(**{field_name: ""}).values("pk", field_name, *describe_fields).order_by("pk"))
    for row in rows:
        token = row[field_name]
        if secret_is_current(token):
            report.current += 1
            continue
        rotated = secret_rotate(token)
        if rotated is None:
            report.unreadable.append(describe(row))
            continue
        changed = queryset.model._default_manager.filter(pk=row["pk"], **{field_name: token}).update(
            **{field_name: rotated}
        )
        if changed:
            report.rotated += 1
        else:
            report.changed_meanwhile += 1
    return report
