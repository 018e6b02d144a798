"""The login lock-out holds per user name whatever address a caller claims, and X-Forwarded-For is
believed only from STEWARD_TRUSTED_PROXIES (none by default), for the lock-out and the sign-in audit."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.urls import reverse

from audit.models import AuditEvent

pytestmark = pytest.mark.django_db


def _login(client, username: str, password: str, *, remote: str = "127.0.0.1", forwarded: str | None = None):
    extra = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return client.post(reverse("accounts:login"), {"username": username, "password": password}, **extra)


def _lock(client, username: str) -> None:
    for attempt in range(settings.AXES_FAILURE_LIMIT):
        _login(client, username, "wrong", forwarded=f"203.0.113.{attempt}")


@pytest.mark.parametrize("trusted", [(), ("127.0.0.1/32",)], ids=["no-trusted-proxy", "behind-trusted-proxy"])
def test_a_new_address_does_not_reset_the_lock_of_a_user_name(client, settings, admin, trusted):
    settings.STEWARD_TRUSTED_PROXIES = trusted
    _lock(client, admin.user.username)
    # The right password from a "new" client, whether claimed in the header or a real other address
    # (as a proxy that rewrites the client address, such as uvicorn's default, would present it).
    for remote, forwarded in (("127.0.0.1", "198.51.100.77"), ("192.0.2.10", None), ("192.0.2.11", "192.0.2.12")):
        response = _login(client, admin.user.username, admin.password, remote=remote, forwarded=forwarded)
        assert response.status_code == 429, (remote, forwarded)
        assert b"Too many failed attempts" in response.content
        assert "_auth_user_id" not in client.session
    assert not AuditEvent.objects.filter(action="user.logged_in").exists()


def test_forwarded_header_is_ignored_unless_the_peer_is_a_trusted_proxy(client, settings, admin):
    settings.STEWARD_TRUSTED_PROXIES = ()
    assert _login(client, admin.user.username, admin.password, forwarded="198.51.100.1").status_code == 302
    client.logout()
    settings.STEWARD_TRUSTED_PROXIES = ("127.0.0.0/8", "10.0.0.0/8")
    # The right-most address that is not a trusted proxy: what the client wrote left of it may be forged.
    chain = "6.6.6.6, 198.51.100.2, 10.1.2.3"
    assert _login(client, admin.user.username, admin.password, forwarded=chain).status_code == 302
    client.logout()
    # A peer that is not a trusted proxy cannot pass an address on.
    assert (
        _login(client, admin.user.username, admin.password, remote="192.0.2.50", forwarded="6.6.6.6").status_code == 302
    )
    addresses = [
        e.after["ip_address"]
        for e in AuditEvent.objects.filter(action="user.logged_in", organisation=admin.organisation).order_by("id")
    ]
    assert addresses == ["127.0.0.1", "198.51.100.2", "192.0.2.50"]


def test_a_locked_user_name_does_not_lock_other_users(client, admin, viewer):
    _lock(client, admin.user.username)
    assert _login(client, viewer.user.username, viewer.password).status_code == 302


_ECHO_APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = (scope["client"] or ["-"])[0].encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
"""


@pytest.mark.parametrize(
    ("trusted", "seen"), [((), "127.0.0.1"), (("127.0.0.1/32",), "198.51.100.9")], ids=["default", "trusted"]
)
def test_make_run_believes_forwarded_headers_only_from_trusted_proxies(tmp_path, trusted, seen):
    """uvicorn as `make run` starts it: by its own default it believes X-Forwarded-For from 127.0.0.1,
    so any local process could pose as any client; `make run` passes STEWARD_TRUSTED_PROXIES instead."""
    import os
    import subprocess
    import sys

    import requests

    from core.management.commands.run_stack import forwarded_headers_args
    from tests.helpers import free_port, wait_for_port

    (tmp_path / "echo_client.py").write_text(_ECHO_APP)
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "echo_client:app", "--port", str(port), "--log-level", "warning"]
    env = {k: v for k, v in os.environ.items() if k != "FORWARDED_ALLOW_IPS"}
    server = subprocess.Popen([*command, *forwarded_headers_args(trusted)], cwd=tmp_path, env=env)
    try:
        wait_for_port(port)
        answer = requests.get(f"http://127.0.0.1:{port}/", headers={"X-Forwarded-For": "198.51.100.9"}, timeout=5)
        assert answer.text == seen
    finally:
        server.terminate()
        server.wait(10)
