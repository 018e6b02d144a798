from __future__ import annotations

import re

import pytest
from django.urls import reverse

from accounts.models import Invitation, Membership
from accounts.services import user_create
from audit.models import AuditEvent
from tests.helpers import login

pytestmark = pytest.mark.django_db


def test_adding_an_existing_user_by_name_only_invites_them(client, admin):
    # Members join by accepting an invitation (tests/accounts/test_invitations.py); the page adds nobody.
    newcomer = user_create(username="nina", password="x" * 20)
    login(client, admin)
    response = client.post(reverse("accounts:member_list"), {"username": "nina", "roles": ["reviewer", "viewer"]})
    invitation = Invitation.objects.get(organisation=admin.organisation)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('accounts:member_list')}?invitation={invitation.id}"
    assert not Membership.objects.filter(user=newcomer, organisation=admin.organisation).exists()
    shown = client.get(response["Location"])
    assert "no-store" in shown["Cache-Control"]
    page = shown.content.decode()
    assert "Invitation created for nina" in page and "/accounts/invitations/accept/" in page
    assert 'data-copy-target="#invitation-link"' in page
    link = re.search(r'id="invitation-link"[^>]*>([^<]+)<', page).group(1)
    # A reload shows the link no more (the session kept it for one display) and invites nobody else.
    again = client.get(response["Location"]).content.decode()
    assert link not in again and "already shown" in again
    assert Invitation.objects.filter(organisation=admin.organisation).count() == 1
    assert AuditEvent.objects.filter(organisation=admin.organisation, action="invitation.created").exists()
    assert not AuditEvent.objects.filter(action="member.added", target_id=str(newcomer.pk)).exists()


def test_invitation_with_teams_joins_them_on_accepting(client, admin):
    login(client, admin)
    client.post(reverse("accounts:team_list"), {"name": "Search"})
    client.post(reverse("accounts:team_list"), {"name": "Payments"})
    search = admin.organisation.teams.get(name="Search")
    response = client.post(
        reverse("accounts:member_list"), {"email": "nina@example.com", "roles": ["viewer"], "teams": [search.id]}
    )
    page = client.get(response["Location"]).content.decode()
    link = re.search(r'id="invitation-link"[^>]*>([^<]+)<', page).group(1)
    client.logout()
    path = "/" + link.split("/", 3)[3]
    invited = client.get(path)
    assert b"Search" in invited.content and b"Payments" not in invited.content
    assert invited.context["form"]["email"].value() == "nina@example.com"
    password = "a long enough pass phrase 42"
    joined = client.post(
        path, {"username": "nina", "email": "nina@example.com", "password": password, "password_again": password}
    )
    assert joined.status_code == 302
    membership = Membership.objects.get(user__username="nina")
    assert [t.name for t in membership.teams.all()] == ["Search"]
    accepted = AuditEvent.objects.get(action="invitation.accepted")
    assert accepted.after["teams"] == ["Search"]


def test_another_organisations_team_is_refused_on_the_invitation_form(client, admin, other_organisation):
    from accounts.services import team_create
    from core.actors import Actor

    theirs = team_create(organisation=other_organisation, name="Theirs", actor=Actor.system())
    login(client, admin)
    response = client.post(
        reverse("accounts:member_list"), {"email": "x@example.com", "roles": ["viewer"], "teams": [theirs.id]}
    )
    assert response.status_code == 200
    assert response.context["form"].errors["teams"]
    assert 'id="id_teams_error"' in response.content.decode()
    assert not Invitation.objects.exists()


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


def test_admin_changes_roles_and_teams(client, admin, viewer):
    login(client, admin)
    client.post(reverse("accounts:team_list"), {"name": "Search"})
    search = admin.organisation.teams.get(name="Search")
    membership = Membership.objects.get(user=viewer.user)
    url = reverse("accounts:member_edit", args=[membership.id])
    page = client.get(url)
    assert page.status_code == 200
    html = page.content.decode()
    # Both lists of checkboxes are fieldsets from the shared partial, each box inline with its label.
    assert html.count('<fieldset class="field-choices"><legend>') == 2
    assert '<label for="id_teams_0"><input type="checkbox" name="teams"' in html
    response = client.post(url, {"roles": ["prompt_engineer", "viewer"], "teams": [search.id]})
    assert response.status_code == 302
    membership.refresh_from_db()
    assert membership.roles == ["prompt_engineer", "viewer"]
    assert list(membership.teams.all()) == [search]
    event = AuditEvent.objects.get(organisation=admin.organisation, action="member.roles_changed")
    assert event.before == {"roles": ["viewer"]}
    teams_event = AuditEvent.objects.get(organisation=admin.organisation, action="member.teams_changed")
    assert (teams_event.before, teams_event.after["teams"]) == ({"teams": []}, ["Search"])
    assert "Search" in client.get(reverse("accounts:member_list")).content.decode()
    # Saving the same again changes and audits nothing; taking the team away is audited.
    client.post(url, {"roles": ["prompt_engineer", "viewer"], "teams": [search.id]})
    assert AuditEvent.objects.filter(action__startswith="member.").exclude(action="member.added").count() == 2
    client.post(url, {"roles": ["prompt_engineer", "viewer"]})
    assert not membership.teams.exists()


def test_removing_a_member_asks_first_and_takes_their_access(client, admin, viewer):
    membership = Membership.objects.get(user=viewer.user)
    login(client, admin)
    url = reverse("accounts:member_remove", args=[membership.id])
    assert url in client.get(reverse("accounts:member_list")).content.decode()
    confirm = client.get(url)
    assert confirm.status_code == 200 and b"lose access" in confirm.content
    assert Membership.objects.filter(pk=membership.id).exists()
    assert client.post(url).status_code == 302
    assert not Membership.objects.filter(pk=membership.id).exists()
    event = AuditEvent.objects.get(action="member.removed")
    assert event.before == {"username": viewer.user.username, "roles": ["viewer"]}
    client.logout()
    login(client, viewer)
    assert client.get(reverse("registry:prompt_list")).status_code == 403


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
    assert client.post(reverse("accounts:member_remove", args=[membership.id])).status_code == 403
    client.logout()
    login(client, outsider)
    assert client.get(reverse("accounts:member_edit", args=[membership.id])).status_code == 404
    assert client.post(reverse("accounts:member_edit", args=[membership.id]), {"roles": ["admin"]}).status_code == 404
    assert client.get(reverse("accounts:member_remove", args=[membership.id])).status_code == 404
    assert client.post(reverse("accounts:member_remove", args=[membership.id])).status_code == 404
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
