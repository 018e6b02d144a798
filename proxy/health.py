"""Deployment health: the circuit state the hot path keeps in Redis, and the active check.

Passive health lives in proxy.admission's scripts (hash `stw:h:<deployment id>`: state closed |
open | half_open, consecutive `fails`, `until` in ms, `last_ok` / `last_fail`). The active check,
a periodic Celery task, calls each enabled deployment's `/models` (OpenAI-compatible kinds) and
feeds the outcome into the same circuit: a failing deployment opens its circuit without waiting
for client traffic to find out, and a recovered one is closed again.
"""

from __future__ import annotations

import logging
import time

import requests
from django.conf import settings

from core import egress
from core.health import CheckResult
from core.redis import redis_client
from proxy.admission import FINISH_LUA
from proxy.models import DeploymentKind

ACTIVE_KEY = "stw:hc:{}"
logger = logging.getLogger(__name__)


def deployment_health_snapshot(*, deployment_ids: list[int]) -> dict[int, dict]:
    """Circuit and last active-check state per deployment (for the UI and /readyz). One Redis round trip."""
    if not deployment_ids:
        return {}
    pipe = redis_client().pipeline(transaction=False)
    for deployment_id in deployment_ids:
        pipe.hgetall(f"stw:h:{deployment_id}")
        pipe.hgetall(ACTIVE_KEY.format(deployment_id))
    raw = pipe.execute()
    now_ms = int(time.time() * 1000)
    snapshot = {}
    for i, deployment_id in enumerate(deployment_ids):
        circuit = {k.decode(): v.decode() for k, v in raw[2 * i].items()}
        active = {k.decode(): v.decode() for k, v in raw[2 * i + 1].items()}
        state = circuit.get("state") or "closed"
        until = int(float(circuit.get("until") or 0))
        if state == "open" and until <= now_ms:
            state = "half_open"  # the next request will be the probe
        snapshot[deployment_id] = {
            # Nothing recorded yet (no request, no active check): the UI says "unknown", not "healthy".
            "known": bool(circuit or active),
            "state": state,
            "consecutive_failures": int(circuit.get("fails") or 0),
            "open_for_seconds": max(0.0, (until - now_ms) / 1000) if circuit.get("state") == "open" else 0.0,
            "last_ok_ms": int(float(circuit.get("last_ok") or 0)) or None,
            "last_failure_ms": int(float(circuit.get("last_fail") or 0)) or None,
            "active_check": {
                "ok": active.get("ok") == "1",
                "latency_ms": float(active["latency_ms"]) if "latency_ms" in active else None,
                "checked_at_ms": int(active["at"]) if "at" in active else None,
                "error": active.get("error", ""),
            }
            if active
            else None,
        }
    return snapshot


def deployment_check(deployment, *, timeout: float = 5.0) -> tuple[bool, float, str]:
    """One active probe of a deployment: (ok, latency_ms, error)."""
    from proxy.selectors import _credential_resolve

    if deployment.kind != DeploymentKind.OPENAI_COMPATIBLE or not deployment.api_base:
        return True, 0.0, "not checked (litellm deployment)"
    headers = {}
    api_key = _credential_resolve(deployment)
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    started = time.perf_counter()
    # Through the egress policy, and no redirect is followed: a check is a request to the address the
    # admin gave, and a redirect could send it (with the credentials) anywhere else.
    try:
        with egress.requests_session() as session:
            response = session.get(
                f"{deployment.api_base.rstrip('/')}/models", headers=headers, timeout=timeout, allow_redirects=False
            )
        latency = (time.perf_counter() - started) * 1000
        if response.is_redirect:
            return False, latency, f"HTTP {response.status_code}: redirect not followed"
        if response.status_code >= 500 or response.status_code == 429:
            return False, latency, f"HTTP {response.status_code}"
        if response.status_code in (401, 403):
            # Steward's credentials are refused: every request would fail. (A 404 only says this
            # server has no /models, which many OpenAI-compatible ones lack.)
            return False, latency, f"HTTP {response.status_code}: credentials refused"
        return True, latency, ""
    except (requests.RequestException, egress.EgressDenied) as exc:
        # The same words for every failure (the UI shows them): the detail is for the log.
        logger.warning("health check of deployment %s failed: %s", deployment.pk, exc)
        return False, (time.perf_counter() - started) * 1000, "could not be reached"


def deployments_check_all(*, timeout: float = 5.0) -> dict[int, bool]:
    """Probe every enabled deployment and feed the outcomes into the shared circuits. Idempotent."""
    from proxy.selectors import deployments_all

    client = redis_client()
    results = {}
    for deployment in deployments_all():
        if deployment.kind != DeploymentKind.OPENAI_COMPATIBLE:
            continue
        ok, latency, error = deployment_check(deployment, timeout=timeout)
        now_ms = int(time.time() * 1000)
        pipe = client.pipeline(transaction=False)
        pipe.delete(ACTIVE_KEY.format(deployment.id))
        pipe.hset(
            ACTIVE_KEY.format(deployment.id),
            mapping={"ok": "1" if ok else "0", "latency_ms": f"{latency:.1f}", "at": now_ms, "error": error},
        )
        pipe.expire(ACTIVE_KEY.format(deployment.id), int(settings.STEWARD_PROXY_HEALTH_CHECK_SECONDS * 4) + 60)
        circuit = client.hget(f"stw:h:{deployment.id}", "state")
        # A success only matters to a circuit that is not closed; a failure always counts.
        if not ok or circuit in (b"open", b"half_open"):
            pipe.eval(
                FINISH_LUA,
                0,
                now_ms,
                f"health-check-{now_ms}",
                "",
                0,
                deployment.id,
                "ok" if ok else "fail",
                0,
                settings.STEWARD_PROXY_CIRCUIT_FAILURES,
                int(settings.STEWARD_PROXY_CIRCUIT_COOLDOWN_SECONDS * 1000),
                "0",
            )
        pipe.execute()
        results[deployment.id] = ok
    return results


def readiness_check() -> CheckResult:
    """Non-critical /readyz detail: each deployment's circuit state."""
    from proxy.selectors import deployments_all

    try:
        deployments = deployments_all()
        snapshot = deployment_health_snapshot(deployment_ids=[d.id for d in deployments])
    except Exception as exc:
        return CheckResult("upstream_deployments", False, {"error": type(exc).__name__}, critical=False)
    detail = {f"{d.route.organisation_id}/{d.route.name}/{d.name}": snapshot[d.id]["state"] for d in deployments}
    ok = all(state == "closed" for state in detail.values())
    return CheckResult("upstream_deployments", ok, {"deployments": detail}, critical=False)
