"""The organisation's webhook: one signed POST, shared by every notice Steward sends (budget
alerts here, moderation decisions from safety).

The receiver checks `X-Steward-Signature: sha256=HMAC(secret, "<timestamp>.<body>")` and rejects old
timestamps (replay). Callers keep their own delivery record and retry `WebhookTransientError`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable

from billing import models as m
from core.crypto import secret_decrypt

logger = logging.getLogger(__name__)

# A receiver gets this long to answer (a worker waits meanwhile); a slow one is retried with
# backoff by the caller's task, not waited for longer.
WEBHOOK_TIMEOUT_SECONDS = 5


class WebhookTransientError(Exception):
    pass


def webhook_signature(*, secret: str, timestamp: int, body: bytes) -> str:
    """HMAC-SHA256 over "<timestamp>.<body>", hex. Receivers reject old timestamps (replay)."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def organisation_webhook_configured(*, organisation_id: int) -> bool:
    return m.BillingSettings.objects.filter(organisation_id=organisation_id).exclude(webhook_url="").exists()


def organisation_webhook_post(*, organisation_id: int, body: bytes, what: str) -> str:
    """POST `body` (JSON) to the organisation's webhook, signed. Returns "sent", "failed" (a 4xx
    answer, an address the egress policy refuses, a secret that no longer decrypts: retrying cannot
    help) or "none" (no webhook configured). Raises WebhookTransientError for connection errors and
    5xx/429 answers. Call it outside any transaction: it waits on the network."""
    import requests

    from core import egress

    billing = m.BillingSettings.objects.filter(organisation_id=organisation_id).first()
    if not billing or not billing.webhook_url:
        return "none"
    secret = secret_decrypt(billing.webhook_secret_encrypted)
    if not secret:
        # Retrying cannot help: the key that encrypted the secret is gone until an admin sets it again.
        logger.error("%s: the webhook secret cannot be decrypted (encryption key changed); set it again", what)
        return "failed"
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "X-Steward-Timestamp": str(timestamp),
        "X-Steward-Signature": "sha256=" + webhook_signature(secret=secret, timestamp=timestamp, body=body),
        "User-Agent": "Steward-Webhook/1",
    }
    # Through the egress policy (the URL is an admin's; the check is on the address connected to).
    # A refused address is not retried: it stays refused until the URL or the policy changes.
    try:
        with egress.requests_session() as session:
            response = session.post(
                billing.webhook_url, data=body, headers=headers, timeout=WEBHOOK_TIMEOUT_SECONDS, allow_redirects=False
            )
    except egress.EgressDenied as exc:
        logger.warning("%s: webhook not sent: %s", what, exc)
        return "failed"
    except requests.RequestException as exc:
        raise WebhookTransientError(str(exc)) from exc
    if response.status_code >= 500 or response.status_code == 429:
        raise WebhookTransientError(f"webhook answered {response.status_code}")
    return "sent" if response.status_code < 300 else "failed"


def webhook_deliver_retrying(task, send: Callable[[], str], failed: Callable[[], None] | None = None) -> str:
    """Run `send()` inside the bound Celery `task`: a WebhookTransientError retries the task with
    exponential backoff (5 s doubling, at most 10 minutes); after the task's last retry `failed()`
    marks the delivery record and "failed" is returned."""
    try:
        return send()
    except WebhookTransientError as exc:
        if task.request.retries >= task.max_retries:
            if failed is not None:
                failed()
            return "failed"
        raise task.retry(exc=exc, countdown=min(2**task.request.retries * 5, 600)) from exc
