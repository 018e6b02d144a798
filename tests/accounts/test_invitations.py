"""Membership by invitation only: an admin offers, the invited person accepts through a one-time link.

No admin can attach an existing user of the installation to their organisation (and then read that
user's sign-in addresses in their audit trail), nor learn which user names exist.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from accounts.invitations import invitation_mail_send
from accounts.models import Invitation, Membership
from accounts.services import user_create
from audit.models import AuditEvent
from tests.helpers import ACTOR, login, wait_until

pytestmark = pytest.mark.django_db

INVITE = "/api/v1/invitations/"
PASSWORD = "a long enough pass phrase 42"


@pytest.fixture
def invite(client, django_capture_on_commit_callbacks):
    """POST an invitation. What the service defers to the commit (enqueueing the mail) is checked to be
    there and not run: `_mail` runs the task's body here, test_the_worker_mails_the_link runs a worker."""

    def post(**data):
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            response = client.post(INVITE, json.dumps(data), content_type="application/json")
        assert len(callbacks) == (1 if response.status_code == 202 else 0)
        return response

    return post


def _mail(response) -> bool:
    """What the worker does for this invitation (the sealed token, as the service enqueues it)."""
    from core.crypto import secret_encrypt

    body = response.json()
    token = body["link"].rstrip("/").rsplit("/", 1)[1]
    return invitation_mail_send(invitation_id=body["id"], sealed_token=secret_encrypt(token))


def _path(link: str) -> str:
    return "/" + link.split("/", 3)[3]


def _shape(body) -> object:
    """The structure of an answer without its values (ids, links and dates differ between calls)."""
    if isinstance(body, dict):
        return {k: _shape(v) for k, v in body.items()}
    return type(body).__name__


def test_inviting_an_existing_and_an_unknown_user_name_answers_alike(client, invite, admin, outsider):
    outsider.user.email = "oscar@globex.example"
    outsider.user.save()
    login(client, admin)
    known = invite(username="oscar-outsider", roles=["viewer"])
    unknown = invite(username="no-such-person", roles=["viewer"])
    assert known.status_code == unknown.status_code == 202
    assert _shape(known.json()) == _shape(unknown.json())
    assert {k: v for k, v in known.json().items() if k not in ("id", "link", "created_at", "expires_at")} == {
        "email": "",
        "username": "oscar-outsider",
        "roles": ["viewer"],
        "team_ids": [],
        "invited_by": "alice-admin",
    }
    # Nobody joined: the outsider is still a member of their own organisation only.
    assert list(Membership.objects.filter(user=outsider.user).values_list("organisation_id", flat=True)) == [
        outsider.organisation.id
    ]
    # The worker mails the existing user (the admin learns nothing from it); the token is stored hashed only.
    assert _mail(known) is True and _mail(unknown) is False
    assert [m.to for m in mail.outbox] == [["oscar@globex.example"]]
    token = known.json()["link"].rstrip("/").rsplit("/", 1)[1]
    assert token in mail.outbox[0].body
    assert not Invitation.objects.filter(token_hash__contains=token).exists()
    assert all(token not in json.dumps(e.after) for e in AuditEvent.objects.all())


def test_a_new_person_accepts_by_creating_an_account_in_the_organisation(client, invite, admin):
    login(client, admin)
    created = invite(email="Nina@Example.com", roles=["reviewer", "viewer"])
    assert created.status_code == 202 and created["Cache-Control"] == "no-store"
    assert _mail(created) is True
    [message] = mail.outbox
    assert message.to == ["nina@example.com"]
    link = re.search(r"http://\S+", message.body).group(0)
    assert link == created.json()["link"]
    pending = client.get(INVITE).json()["results"]
    assert [(i["email"], i["roles"]) for i in pending] == [("nina@example.com", ["reviewer", "viewer"])]
    client.logout()

    page = client.get(_path(link))
    assert page.status_code == 200 and b"Join Acme" in page.content and b"Create account and join" in page.content
    weak = client.post(_path(link), {"username": "nina", "password": "123", "password_again": "123"})
    assert weak.status_code == 200 and weak.context["form"].errors["password"]
    taken = client.post(_path(link), {"username": "alice-admin", "password": PASSWORD, "password_again": PASSWORD})
    assert "taken" in " ".join(taken.context["form"].errors["username"])
    joined = client.post(
        _path(link), {"username": "nina", "email": "nina@example.com", "password": PASSWORD, "password_again": PASSWORD}
    )
    assert joined.status_code == 302
    membership = Membership.objects.get(user__username="nina")
    assert membership.organisation == admin.organisation and membership.roles == ["reviewer", "viewer"]
    # Signed in as the new member, who now sees the organisation's prompts.
    assert client.get(reverse("registry:prompt_list")).status_code == 200
    actions = set(AuditEvent.objects.filter(organisation=admin.organisation).values_list("action", flat=True))
    assert {"invitation.created", "invitation.accepted", "member.added"} <= actions
    # One use only.
    client.logout()
    assert client.get(_path(link)).status_code == 404
    again = client.post(_path(link), {"username": "nina2", "password": PASSWORD, "password_again": PASSWORD})
    assert again.status_code == 404
    assert not Membership.objects.filter(user__username="nina2").exists()


def test_an_existing_user_signs_in_and_accepts(client, invite, admin, outsider):
    login(client, admin)
    link = invite(username="oscar-outsider", roles=["viewer"]).json()["link"]
    client.logout()
    anonymous = client.get(_path(link))
    assert b"Sign in" in anonymous.content
    signed_in = client.post(
        reverse("accounts:login") + f"?next={_path(link)}",
        {"username": "oscar-outsider", "password": outsider.password, "next": _path(link)},
    )
    assert signed_in.status_code == 302 and signed_in["Location"] == _path(link)
    assert b"Accept as oscar-outsider" in client.get(_path(link)).content
    assert not Membership.objects.filter(user=outsider.user, organisation=admin.organisation).exists()
    assert client.post(_path(link)).status_code == 302
    membership = Membership.objects.get(user=outsider.user, organisation=admin.organisation)
    assert membership.roles == ["viewer"]
    # Still a member of their own organisation too.
    assert Membership.objects.filter(user=outsider.user, organisation=outsider.organisation).exists()


def test_revoked_and_expired_links_do_not_work(client, invite, admin):
    login(client, admin)
    first = invite(email="a@example.com", roles=["viewer"]).json()
    second = invite(email="b@example.com", roles=["viewer"]).json()
    revoked = client.post(f"/api/v1/invitations/{first['id']}/revoke/")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert [i["email"] for i in client.get(INVITE).json()["results"]] == ["b@example.com"]
    Invitation.objects.filter(pk=second["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert client.get(INVITE).json()["results"] == []
    client.logout()
    for link in (first["link"], second["link"]):
        assert client.get(_path(link)).status_code == 404
        response = client.post(_path(link), {"username": "x", "password": PASSWORD, "password_again": PASSWORD})
        assert response.status_code == 404
    assert client.get(reverse("accounts:invitation_accept", args=["made-up-token"])).status_code == 404
    assert not Membership.objects.filter(user__username="x").exists()
    assert AuditEvent.objects.filter(action="invitation.revoked", target_id=str(first["id"])).exists()


def test_invitations_are_admin_only_and_per_organisation(client, invite, admin, viewer, outsider):
    login(client, admin)
    invitation = invite(email="a@example.com", roles=["viewer"]).json()
    client.logout()
    login(client, viewer)
    assert invite(email="c@example.com", roles=["admin"]).status_code == 403
    assert client.get(INVITE).status_code == 403
    client.logout()
    login(client, outsider)
    assert client.post(f"/api/v1/invitations/{invitation['id']}/revoke/").status_code == 404
    assert all(i["id"] != invitation["id"] for i in client.get(INVITE).json()["results"])
    assert Invitation.objects.get(pk=invitation["id"]).revoked_at is None


def test_admins_remove_members_but_not_the_last_admin(client, admin, viewer):
    login(client, admin)
    membership = Membership.objects.get(user=viewer.user, organisation=admin.organisation)
    assert client.delete(f"/api/v1/members/{membership.id}/").status_code == 204
    assert not Membership.objects.filter(pk=membership.id).exists()
    assert AuditEvent.objects.filter(action="member.removed", target_id=str(viewer.user.pk)).exists()
    own = Membership.objects.get(user=admin.user, organisation=admin.organisation)
    assert client.delete(f"/api/v1/members/{own.id}/").status_code == 409
    # The page does the same, after asking to confirm.
    confirm = client.get(reverse("accounts:member_remove", args=[own.id]))
    assert confirm.status_code == 200 and b"Remove <strong>alice-admin</strong>" in confirm.content
    assert Membership.objects.filter(pk=own.id).exists()
    page = client.post(reverse("accounts:member_remove", args=[own.id]), follow=True)
    assert b"last admin" in page.content
    assert Membership.objects.filter(pk=own.id).exists()


def test_another_organisations_admin_never_sees_a_users_sign_in_address(client, invite, admin, outsider):
    # Globex's member signs in from 10.9.8.7. Acme's admin tried to pull them in by user name, and
    # they did not accept: Acme's audit trail has no trace of the sign-in, Globex's has it.
    login(client, admin)
    assert invite(username="oscar-outsider", roles=["viewer"]).status_code == 202
    assert client.post("/api/v1/members/", {"username": "oscar-outsider", "roles": ["viewer"]}).status_code == 405
    client.logout()
    signed_in = client.post(
        reverse("accounts:login"),
        {"username": "oscar-outsider", "password": outsider.password},
        REMOTE_ADDR="10.9.8.7",
    )
    assert signed_in.status_code == 302
    client.logout()
    login(client, admin)
    trail = client.get("/api/v1/audit-events/", {"page_size": 500})
    assert trail.status_code == 200
    assert "10.9.8.7" not in trail.content.decode()
    assert not AuditEvent.objects.filter(organisation=admin.organisation, action="user.logged_in").exclude(
        actor_label="alice-admin"
    )
    [event] = AuditEvent.objects.filter(organisation=outsider.organisation, action="user.logged_in")
    assert event.after == {"ip_address": "10.9.8.7"}


def test_a_member_without_roles_sees_nothing_but_the_organisation_switcher(client, admin, other_organisation):
    from accounts.services import membership_set
    from core.actors import Actor

    user = user_create(username="rolf-noroles", password=PASSWORD)
    membership_set(organisation=admin.organisation, user=user, roles=[], actor=Actor.system("tests"))
    membership_set(organisation=other_organisation, user=user, roles=["viewer"], actor=Actor.system("tests"))
    client.force_login(user)
    session = client.session
    session["steward_organisation_id"] = admin.organisation.id
    session.save()
    assert client.get(reverse("registry:prompt_list")).status_code == 403
    assert client.get("/api/v1/prompts/").status_code == 403
    assert client.get(reverse("billing:home")).status_code == 403
    switched = client.post(reverse("accounts:organisation_switch"), {"organisation_id": other_organisation.id})
    assert switched.status_code == 302
    assert client.get(reverse("registry:prompt_list")).status_code == 200


@pytest.mark.django_db(transaction=True)
def test_the_worker_mails_the_link(client, admin, celery_worker_process):
    # dev mail backend: the console, i.e. the worker's log
    from pathlib import Path

    login(client, admin)
    response = client.post(
        INVITE, json.dumps({"email": "ward@example.com", "roles": ["viewer"]}), content_type="application/json"
    )
    assert response.status_code == 202
    link = response.json()["link"]
    log = Path(celery_worker_process.log_path)
    wait_until(lambda: "To: ward@example.com" in log.read_text(), timeout=30, context=lambda: log.read_text()[-3000:])
    # The link is in the mail (here the console) and nowhere else: not in the task's logged arguments.
    assert log.read_text().count(link.rsplit("/", 2)[1]) == 1


class _SmtpCatcher:
    """The smallest SMTP server that keeps what it is sent (a thread on a free port), so the SMTP
    path is checked through Django's real SMTP backend and the settings that choose it."""

    def __init__(self):
        import socket
        import threading

        self.messages: list[str] = []
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(1)
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        connection, _ = self.server.accept()
        with connection, connection.makefile("rb") as reader:

            def say(line: str) -> None:
                connection.sendall(line.encode() + b"\r\n")

            say("220 catcher")
            while line := reader.readline():
                command = line.decode().strip().upper()
                if command.startswith(("EHLO", "HELO")):
                    say("250 catcher")
                elif command == "DATA":
                    say("354 go on")
                    body = []
                    while (data := reader.readline()) not in (b".\r\n", b""):
                        body.append(data.decode())
                    self.messages.append("".join(body))
                    say("250 kept")
                elif command == "QUIT":
                    say("221 bye")
                    return
                else:
                    say("250 ok")


@pytest.mark.django_db(transaction=True)
def test_with_email_settings_the_link_goes_out_by_smtp(admin, settings):
    """EMAIL_HOST set: settings choose Django's SMTP backend and the worker's task mails the link
    (run in a child process, as the worker would, configured only through the environment)."""
    import subprocess
    import sys

    from accounts.invitations import invitation_create
    from core.crypto import secret_encrypt
    from tests.helpers import subprocess_env

    created = invitation_create(
        organisation=admin.organisation, roles=["viewer"], actor=ACTOR, email="smtp@example.com", invited_by=admin.user
    )
    token = created.link.rstrip("/").rsplit("/", 1)[1]
    catcher = _SmtpCatcher()
    code = (
        "import django; django.setup();"
        "from django.conf import settings; print(settings.EMAIL_BACKEND);"
        "from accounts.invitations import invitation_mail_send;"
        f"print(invitation_mail_send(invitation_id={created.invitation.id}, sealed_token={secret_encrypt(token)!r}))"
    )
    env = subprocess_env(
        DJANGO_SETTINGS_MODULE="config.settings",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=str(catcher.port),
        EMAIL_USE_TLS="false",
        SECRET_KEY=settings.SECRET_KEY,
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["django.core.mail.backends.smtp.EmailBackend", "True"]
    catcher.thread.join(10)
    [message] = catcher.messages
    assert "To: smtp@example.com" in message and created.link in message.replace("=\r\n", "")
