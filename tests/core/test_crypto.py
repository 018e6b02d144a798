"""Secrets at rest: keys derived with HKDF, older derivations still readable, and rotation to the
newest key (`manage.py secrets_rotate`) without losing a secret or the proxy's access upstream."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import subprocess
import sys

import pytest
import requests
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command

from billing.models import BillingSettings
from billing.services import billing_settings_update
from core.crypto import secret_decrypt, secret_encrypt, secret_is_current
from core.invalidation import invalidate
from proxy.models import Deployment
from proxy.services import ROUTES_NAMESPACE, deployment_create, route_create
from tests.helpers import ACTOR

WEBHOOK_SECRET = "a webhook signing secret, 16+"
UPSTREAM_KEY = "sk-upstream-key-0123456789"


def _legacy_fernet(material: str) -> Fernet:
    """How earlier versions made a key from a passphrase (or from SECRET_KEY): one SHA-256."""
    digest = hashlib.sha256(b"steward.proxy.credentials\x00" + material.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def _hkdf_fernet(material: str) -> Fernet:
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=b"steward.encryption-key.v1",
        info=b"steward secrets at rest: fernet key",
    )
    return Fernet(base64.urlsafe_b64encode(hkdf.derive(material.encode())))


def test_passphrases_are_stretched_with_hkdf_and_legacy_tokens_still_decrypt(settings):
    passphrase = "the operator's passphrase"
    settings.STEWARD_ENCRYPTION_KEY = passphrase
    token = secret_encrypt("new secret")
    assert _hkdf_fernet(passphrase).decrypt(token.encode()) == b"new secret"
    with pytest.raises(InvalidToken):
        _legacy_fernet(passphrase).decrypt(token.encode())
    assert secret_is_current(token)

    # Stored before the upgrade: under the SHA-256 key of the passphrase, or of SECRET_KEY (no key set).
    legacy = _legacy_fernet(passphrase).encrypt(b"old secret").decode()
    dev_legacy = _legacy_fernet(settings.SECRET_KEY).encrypt(b"old dev secret").decode()
    assert secret_decrypt(legacy) == "old secret" and not secret_is_current(legacy)
    assert secret_decrypt(dev_legacy) == "old dev secret" and not secret_is_current(dev_legacy)

    # A passphrase with a comma was a single key before keys could be listed.
    settings.STEWARD_ENCRYPTION_KEY = "first part,second part"
    assert secret_decrypt(_legacy_fernet("first part,second part").encrypt(b"comma").decode()) == "comma"
    assert _hkdf_fernet("first part").decrypt(secret_encrypt("x").encode()) == b"x"

    # A Fernet key is used as it is; a token under a key that is not configured does not decrypt.
    fernet_key = Fernet.generate_key().decode()
    settings.STEWARD_ENCRYPTION_KEY = fernet_key
    assert Fernet(fernet_key.encode()).decrypt(secret_encrypt("y").encode()) == b"y"
    assert secret_decrypt(_hkdf_fernet("some other key").encrypt(b"z").decode()) is None


def test_without_a_key_dev_derives_one_from_secret_key_with_hkdf(settings):
    settings.STEWARD_ENCRYPTION_KEY = None
    token = secret_encrypt("dev secret")
    assert _hkdf_fernet(settings.SECRET_KEY).decrypt(token.encode()) == b"dev secret"


def _stored(settings, *, key: str, organisation, api_base: str = "http://127.0.0.1:9/v1"):
    settings.STEWARD_ENCRYPTION_KEY = key
    route = route_create(organisation=organisation, name="r", actor=ACTOR)
    deployment = deployment_create(
        route=route,
        name="d",
        model="dev-small",
        api_base=api_base,
        credential_secret=UPSTREAM_KEY,
        actor=ACTOR,
    )
    billing_settings_update(
        organisation=organisation,
        actor=ACTOR,
        webhook_url="https://hooks.example.com/x",
        webhook_secret=WEBHOOK_SECRET,
    )
    return deployment


def _tokens(organisation) -> list[str]:
    return [
        *Deployment.objects.filter(route__organisation=organisation).values_list("credential_encrypted", flat=True),
        BillingSettings.objects.get(organisation=organisation).webhook_secret_encrypted,
    ]


def test_secrets_rotate_moves_every_secret_to_the_newest_key(settings, organisation):
    _stored(settings, key="key A", organisation=organisation)
    before = _tokens(organisation)
    settings.STEWARD_ENCRYPTION_KEY = "key B,key A"
    assert not any(secret_is_current(t) for t in before)

    out = io.StringIO()
    call_command("secrets_rotate", stdout=out)
    assert "deployment credentials: 1 re-encrypted, 0 already under the newest key" in out.getvalue()
    assert "webhook signing secrets: 1 re-encrypted, 0 already under the newest key" in out.getvalue()
    assert "Every stored secret is under the newest key." in out.getvalue()

    settings.STEWARD_ENCRYPTION_KEY = "key B"  # the old key removed
    after = _tokens(organisation)
    assert all(secret_is_current(t) for t in after)
    assert [secret_decrypt(t) for t in after] == [UPSTREAM_KEY, WEBHOOK_SECRET]

    # Idempotent: a second run rewrites nothing.
    out = io.StringIO()
    call_command("secrets_rotate", stdout=out)
    assert "deployment credentials: 0 re-encrypted, 1 already under the newest key" in out.getvalue()
    assert _tokens(organisation) == after


def test_secrets_no_key_decrypts_are_left_alone_and_the_command_fails(settings, organisation, other_organisation):
    deployment = _stored(settings, key="a key since removed", organisation=organisation)
    unreadable = deployment.credential_encrypted
    settings.STEWARD_ENCRYPTION_KEY = "key A"
    billing_settings_update(
        organisation=other_organisation,
        actor=ACTOR,
        webhook_url="https://hooks.example.com/y",
        webhook_secret=WEBHOOK_SECRET,
    )
    settings.STEWARD_ENCRYPTION_KEY = "key B,key A"
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError, match="2 secret"):
        call_command("secrets_rotate", stdout=out, stderr=err)
    assert f"deployment {deployment.pk} (r/d, organisation {organisation.pk})" in err.getvalue()
    assert f"organisation {organisation.pk}" in err.getvalue()
    deployment.refresh_from_db()
    assert deployment.credential_encrypted == unreadable  # left as it was
    other = BillingSettings.objects.get(organisation=other_organisation).webhook_secret_encrypted
    assert secret_is_current(other) and secret_decrypt(other) == WEBHOOK_SECRET


def test_the_proxy_authenticates_upstream_through_a_rotation(
    steward_server, global_prices, organisation, dev_upstream, api_key_factory, settings
):
    dev_upstream.control(api_key=UPSTREAM_KEY)  # the upstream answers 401 without this key
    _stored(settings, key="key A", organisation=organisation, api_base=dev_upstream.url)
    _, secret = api_key_factory()

    def call() -> int:
        invalidate(ROUTES_NAMESPACE)  # as a restart with the new configuration would
        response = requests.post(
            f"{steward_server.url}/v1/chat/completions",
            json={"model": "r", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {secret}"},
            timeout=30,
        )
        return response.status_code

    assert call() == 200
    settings.STEWARD_ENCRYPTION_KEY = "key B"  # removed too early: the key cannot be read
    assert call() >= 400
    settings.STEWARD_ENCRYPTION_KEY = "key B,key A"
    assert call() == 200
    call_command("secrets_rotate", stdout=io.StringIO())
    settings.STEWARD_ENCRYPTION_KEY = "key B"
    assert call() == 200


def test_prod_without_an_encryption_key_refuses_to_start(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "SECRET_KEY", "STEWARD_ENCRYPTION_KEY")
    }
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        STEWARD_VAR_DIR=str(tmp_path / "var"),
        STEWARD_ENV="prod",
        SECRET_KEY="s" * 50,
        DATABASE_URL="postgres://u@h/db",
        REDIS_URL="redis://h:6379/0",
        STEWARD_ALLOWED_HOSTS="steward.example.com",
        STEWARD_AUDIT_KEY="a" * 50,
    )
    script = "import django; django.setup(); from django.conf import settings; print(settings.STEWARD_ENCRYPTION_KEY)"

    def start(**extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", script],
            env={**env, **extra},
            cwd=django_settings.BASE_DIR,
            capture_output=True,
            text=True,
            timeout=60,
        )

    refused = start()
    assert refused.returncode != 0
    last_line = refused.stderr.strip().splitlines()[-1]
    assert last_line.startswith("django.core.exceptions.ImproperlyConfigured")
    assert "STEWARD_ENCRYPTION_KEY is required when STEWARD_ENV=prod" in last_line
    started = start(STEWARD_ENCRYPTION_KEY="new key, old key")
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "new key, old key"
