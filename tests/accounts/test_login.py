"""Login and its rate limiting (django-axes, STEWARD_LOGIN_FAILURE_LIMIT failures per user name and address)."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.urls import reverse

pytestmark = pytest.mark.django_db


def _login(client, username: str, password: str, ip: str = "10.0.0.1"):
    return client.post(reverse("accounts:login"), {"username": username, "password": password}, REMOTE_ADDR=ip)


def test_login_page_and_successful_login_is_audited(client, admin, other_organisation):
    from accounts.services import membership_set
    from audit.models import AuditEvent
    from core.actors import Actor

    membership_set(organisation=other_organisation, user=admin.user, roles=["viewer"], actor=Actor.system())
    page = client.get(reverse("accounts:login"))
    assert page.status_code == 200 and b'name="password"' in page.content
    response = _login(client, admin.user.username, admin.password)
    assert response.status_code == 302
    assert client.get(reverse("accounts:api_key_list")).status_code == 200
    events = AuditEvent.objects.filter(action="user.logged_in", target_id=str(admin.user.pk))
    assert {e.organisation_id for e in events} == {admin.organisation.id, other_organisation.id}
    assert events[0].after == {"ip_address": "10.0.0.1"} and events[0].actor_label == "alice-admin"


def test_wrong_password_is_refused(client, admin):
    response = _login(client, admin.user.username, "wrong")
    assert response.status_code == 200
    assert response.context["form"].non_field_errors()
    assert client.get(reverse("accounts:api_key_list")).status_code == 302


def test_after_the_failure_limit_the_right_password_is_refused(client, admin, viewer):
    limit = settings.AXES_FAILURE_LIMIT
    assert limit >= 1
    for _ in range(limit - 1):
        assert _login(client, admin.user.username, "wrong").status_code == 200
    locked = _login(client, admin.user.username, "wrong")
    assert locked.status_code == 429
    assert b"Too many failed attempts" in locked.content
    right = _login(client, admin.user.username, admin.password)
    assert right.status_code == 429
    assert b"Too many failed attempts" in right.content
    assert "_auth_user_id" not in client.session
    from audit.models import AuditEvent

    assert not AuditEvent.objects.filter(action="user.logged_in", target_id=str(admin.user.pk)).exists()
    # Another user from the same address is not affected.
    other = _login(client, viewer.user.username, viewer.password)
    assert other.status_code == 302
    assert client.session["_auth_user_id"] == str(viewer.user.pk)


def test_logout_is_post_only(client, admin):
    _login(client, admin.user.username, admin.password)
    assert client.get(reverse("accounts:logout")).status_code == 405
    assert client.post(reverse("accounts:logout")).status_code == 302
    assert "_auth_user_id" not in client.session
