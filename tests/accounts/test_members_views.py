from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.models import Membership
from accounts.services import user_create
from audit.models import AuditEvent
from tests.helpers import login

pytestmark = pytest.mark.django_db


def test_adding_an_existing_user_by_name_only_invites_them(client, admin):
    # Members join by accepting an invitation (tests/accounts/test_invitations.py); the page adds nobody.
    newcomer = user_create(username="nina", password="x" * 20)
    login(client, admin)
    response = client.post(reverse("accounts:member_list"), {"username": "nina", "roles": ["reviewer", "viewer"]})
    assert response.status_code == 200
    assert not Membership.objects.filter(user=newcomer, organisation=admin.organisation).exists()
    page = response.content.decode()
    assert "Invitation created for nina" in page and "/accounts/invitations/accept/" in page
    assert AuditEvent.objects.filter(organisation=admin.organisation, action="invitation.created").exists()
    assert not AuditEvent.objects.filter(action="member.added", target_id=str(newcomer.pk)).exists()


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"username": "", "email": "", "roles": ["viewer"]}, None, "either an email address or a user name"),
        ({"email": "x@example.com", "username": "nina", "roles": ["viewer"]}, None, "either an email"),
        ({"email": "not-an-address", "roles": ["viewer"]}, "email", "valid email"),
        ({"username": "alice-admin", "roles": []}, "roles", "required"),
        ({"username": "alice-admin", "roles": ["owner"]}, "roles", "not one of the available choices"),
    ],
)
def test_invitation_errors_are_shown_on_the_form(client, admin, data, field, message):
    login(client, admin)
    response = client.post(reverse("accounts:member_list"), data)
    assert response.status_code == 200
    errors = response.context["form"].errors.get(field or "__all__", [])
    assert message in " ".join(errors)


def test_admin_changes_roles(client, admin, viewer):
    login(client, admin)
    membership = Membership.objects.get(user=viewer.user)
    url = reverse("accounts:member_edit", args=[membership.id])
    assert client.get(url).status_code == 200
    assert client.post(url, {"roles": ["prompt_engineer", "viewer"]}).status_code == 302
    membership.refresh_from_db()
    assert membership.roles == ["prompt_engineer", "viewer"]
    event = AuditEvent.objects.get(organisation=admin.organisation, action="member.roles_changed")
    assert event.before == {"roles": ["viewer"]}


def test_the_last_admin_cannot_drop_the_admin_role(client, admin):
    login(client, admin)
    membership = Membership.objects.get(user=admin.user)
    response = client.post(reverse("accounts:member_edit", args=[membership.id]), {"roles": ["viewer"]})
    assert response.status_code == 200
    assert "last admin" in str(response.context["form"].errors)
    membership.refresh_from_db()
    assert membership.roles == ["admin"]


def test_teams_list_and_create(client, admin):
    login(client, admin)
    assert client.post(reverse("accounts:team_list"), {"name": "Search"}).status_code == 302
    duplicate = client.post(reverse("accounts:team_list"), {"name": "search"})
    assert duplicate.status_code == 200
    assert "already exists" in str(duplicate.context["form"].errors)
    assert b"Search" in client.get(reverse("accounts:team_list")).content
    assert admin.organisation.teams.count() == 1


def test_non_admin_gets_403_and_outsider_404(client, reviewer, outsider, viewer):
    membership = Membership.objects.get(user=viewer.user)
    login(client, reviewer)
    for url in (reverse("accounts:member_list"), reverse("accounts:team_list")):
        assert client.get(url).status_code == 403
    assert client.post(reverse("accounts:member_edit", args=[membership.id]), {"roles": ["admin"]}).status_code == 403
    client.logout()
    login(client, outsider)
    assert client.get(reverse("accounts:member_edit", args=[membership.id])).status_code == 404
    assert client.post(reverse("accounts:member_edit", args=[membership.id]), {"roles": ["admin"]}).status_code == 404
    membership.refresh_from_db()
    assert membership.roles == ["viewer"]


def test_organisation_switcher(client, admin, other_organisation):
    from accounts.services import membership_set
    from core.actors import Actor

    membership_set(organisation=other_organisation, user=admin.user, roles=["viewer"], actor=Actor.system())
    login(client, admin)
    page = client.get(reverse("accounts:api_key_list")).content.decode()
    assert 'name="organisation_id"' in page and "Globex" in page
    response = client.post(reverse("accounts:organisation_switch"), {"organisation_id": other_organisation.id})
    assert response.status_code == 302
    # In Globex the user is only a viewer: the admin pages are now refused.
    assert client.get(reverse("accounts:api_key_list")).status_code == 403
    # Switching to an organisation the user does not belong to is ignored.
    stranger = other_organisation.__class__.objects.create(name="Initech", slug="initech")
    client.post(reverse("accounts:organisation_switch"), {"organisation_id": stranger.id})
    assert client.get(reverse("accounts:api_key_list")).status_code == 403
    client.post(reverse("accounts:organisation_switch"), {"organisation_id": admin.organisation.id})
    assert client.get(reverse("accounts:api_key_list")).status_code == 200
