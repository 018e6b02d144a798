"""The keyed chain and its checkpoints against someone who can write the database.

Events are made through the running server's management API; the attacks are direct SQL with the
append-only triggers lifted, as a database administrator (or a stolen database credential) could.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from io import StringIO
from pathlib import Path

import pytest
import requests
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, connections

from audit.models import AuditChainHead, AuditEvent
from audit.services import GENESIS_HASH, audit_chain_verify, event_canonical, event_hash
from tests.helpers import append_only_lifted, record

CSRF = "c" * 32


def _api_post(server, client, persona, path: str, body: dict) -> requests.Response:
    client.force_login(persona.user)
    return requests.post(
        f"{server.url}{path}",
        json=body,
        cookies={"sessionid": client.cookies["sessionid"].value, "csrftoken": CSRF},
        headers={"X-CSRFToken": CSRF},
        timeout=10,
    )


def _verify(*args: str) -> str:
    out = StringIO()
    call_command("audit_verify", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def _checkpoint_file(tmp_path) -> str:
    out_dir = tmp_path / "shipped"
    out_dir.mkdir()
    call_command("audit_checkpoint", "--out", str(out_dir), stdout=StringIO(), stderr=StringIO())
    (path,) = out_dir.iterdir()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    return str(path)


def _rewrite_from(organisation_id: int, seq: int, *, digest, after: dict) -> None:
    """The recompute attack: edit event `seq`, then recompute it and every later link with `digest`
    (and the chain head), so the chain is consistent again under that digest."""
    events = list(AuditEvent.objects.filter(organisation_id=organisation_id).order_by("seq"))
    prev = GENESIS_HASH
    with append_only_lifted(), connection.cursor() as cursor:
        for event in events:
            if event.seq == seq:
                event.after = after
            if event.seq >= seq:
                event.prev_hash = prev
                event.hash = digest(event)
                cursor.execute(
                    "UPDATE audit_auditevent SET after = %s::jsonb, prev_hash = %s, hash = %s WHERE id = %s",
                    [json.dumps(event.after), event.prev_hash, event.hash, event.id],
                )
            prev = event.hash
    AuditChainHead.objects.filter(organisation_id=organisation_id).update(last_seq=events[-1].seq, last_hash=prev)


def event_hash_sha256(event: AuditEvent) -> str:
    """The plain digest the chain used to be made of: anyone can compute it."""
    return hashlib.sha256(event_canonical(event).encode()).hexdigest()


def _wrong_key_hmac(event: AuditEvent) -> str:
    return hmac.new(
        b"a guessed key that is not the audit key", event_canonical(event).encode(), hashlib.sha256
    ).hexdigest()


@pytest.fixture
def api_made_chain(client, admin, steward_server, monkeypatch):
    """acme's chain, grown through the HTTP API: three prompts created by the admin."""
    # The server thread's connection must close after each request, or the test database cannot be dropped.
    monkeypatch.setitem(connections.databases["default"], "CONN_MAX_AGE", 0)
    for name in ("greeting", "farewell", "escalation"):
        response = _api_post(steward_server, client, admin, "/api/v1/prompts/", {"name": name})
        assert response.status_code == 201, response.text
    events = AuditEvent.objects.filter(organisation=admin.organisation, action="prompt.created")
    assert events.count() == 3
    return admin.organisation


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "digest", [event_hash_sha256, _wrong_key_hmac], ids=["plain-sha256-recomputed", "wrong-key-recomputed"]
)
def test_recomputing_the_chain_after_an_edit_is_caught(api_made_chain, tmp_path, digest):
    organisation = api_made_chain
    checkpoints = _checkpoint_file(tmp_path)
    assert "checkpoint(s) matched" in _verify("--checkpoints", checkpoints)
    target = AuditEvent.objects.get(organisation=organisation, action="prompt.created", after__name="farewell")

    _rewrite_from(organisation.id, target.seq, digest=digest, after={"name": "farewell", "description": "forged"})

    # The forged chain is consistent under the digest the attacker used...
    stored = list(AuditEvent.objects.filter(organisation=organisation).order_by("seq"))
    assert all(digest(e) == e.hash for e in stored if e.seq >= target.seq)
    # ...but not under the audit key: the first edited event is named, with or without checkpoints.
    with pytest.raises(CommandError) as plain:
        _verify()
    assert f"organisation acme, event seq {target.seq} (id {target.id})" in str(plain.value)
    assert "row altered" in str(plain.value)
    with pytest.raises(CommandError, match=rf"organisation acme, event seq {target.seq} \(id {target.id}\)"):
        _verify("--checkpoints", checkpoints)


@pytest.mark.django_db(transaction=True)
def test_truncating_the_tail_is_caught_by_the_checkpoint(api_made_chain, tmp_path):
    organisation = api_made_chain
    checkpoints = _checkpoint_file(tmp_path)
    last = AuditEvent.objects.filter(organisation=organisation).order_by("-seq").first()
    keep = AuditEvent.objects.get(organisation=organisation, seq=last.seq - 2)
    with append_only_lifted():
        AuditEvent.objects.filter(organisation=organisation, seq__gt=keep.seq).delete()
    AuditChainHead.objects.filter(organisation=organisation).update(last_seq=keep.seq, last_hash=keep.hash)

    # Without the checkpoint the shortened chain is indistinguishable from a younger one.
    assert _verify().startswith(f"{keep.seq} events verified")
    with pytest.raises(CommandError) as caught:
        _verify("--checkpoints", checkpoints)
    message = str(caught.value)
    assert f"organisation acme, event seq {last.seq} (id {last.id})" in message
    assert f"chain ends at #{keep.seq} (events removed from the end?)" in message


@pytest.mark.django_db
def test_a_chain_rewritten_with_the_key_is_caught_by_the_checkpoint(chain, tmp_path):
    """Even someone holding the key (or re-running the service) cannot rewrite history that a
    shipped checkpoint covers."""
    checkpoints = _checkpoint_file(tmp_path)
    head = AuditEvent.objects.get(organisation=chain, seq=5)
    _rewrite_from(chain.id, 3, digest=event_hash, after={"n": "rewritten"})
    assert audit_chain_verify(organisation_ids=[chain.id]).ok
    # The checkpoint pins the head it signed; the rewrite changed every hash from #3 on, that one too.
    with pytest.raises(CommandError, match=rf"event seq 5 \(id {head.id}\): differs from the checkpoint"):
        _verify("--checkpoints", checkpoints)


@pytest.mark.django_db
def test_checkpoints_are_signed_per_organisation(chain, other_organisation, tmp_path):
    record(other_organisation, 2)
    path = _checkpoint_file(tmp_path)
    lines = [json.loads(line) for line in Path(path).read_text().splitlines()]
    assert {(line["organisation"], line["seq"], line["count"]) for line in lines} == {("acme", 5, 5), ("globex", 3, 3)}
    head = AuditEvent.objects.get(organisation=chain, seq=5)
    acme = next(line for line in lines if line["organisation"] == "acme")
    assert (acme["event_id"], acme["hash"]) == (head.id, head.hash)
    assert _verify("--checkpoints", path).endswith("2 checkpoint(s) matched\n")

    # A forged checkpoint (moved back to hide later events) does not verify without the key.
    forged = tmp_path / "forged.jsonl"
    acme["seq"] = 4
    forged.write_text(json.dumps(acme) + "\n")
    with pytest.raises(CommandError, match=r"checkpoint line 1 of .*signature does not verify for organisation acme"):
        _verify("--checkpoints", str(forged))


@pytest.mark.django_db
def test_checkpoint_refuses_to_sign_a_broken_chain(chain, other_organisation):
    record(other_organisation, 1)
    target = AuditEvent.objects.get(organisation=chain, seq=2)
    with append_only_lifted(), connection.cursor() as cursor:
        cursor.execute("""UPDATE audit_auditevent SET after = '{"n": 7}'::jsonb WHERE id = %s""", [target.id])
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError, match="1 chain"):
        call_command("audit_checkpoint", stdout=out, stderr=err)
    assert [json.loads(line)["organisation"] for line in out.getvalue().splitlines()] == ["globex"]
    assert f"BROKEN organisation=acme seq=2 id={target.id}" in err.getvalue()


@pytest.mark.django_db
def test_rekey_migration_moves_plain_chains_to_the_key_and_keeps_breaks(chain, other_organisation):
    """Migration 0004: an intact plain SHA-256 chain becomes a keyed one; a chain already broken
    under SHA-256 stays broken at the same event (re-keying does not launder it)."""
    import importlib

    from django.apps import apps

    migration = importlib.import_module("audit.migrations.0004_rekey_chain")
    record(other_organisation, 3)
    with connection.schema_editor(atomic=False) as editor:
        migration.unkey(apps, editor)
    for organisation in (chain, other_organisation):
        events = list(AuditEvent.objects.filter(organisation=organisation).order_by("seq"))
        assert all(event_hash_sha256(e) == e.hash for e in events)
        assert events[0].prev_hash == GENESIS_HASH and events[1].prev_hash == events[0].hash
    assert not audit_chain_verify().ok  # plain links no longer verify
    tampered = AuditEvent.objects.get(organisation=other_organisation, seq=3)
    with append_only_lifted(), connection.cursor() as cursor:
        cursor.execute("""UPDATE audit_auditevent SET after = '{"n": 70}'::jsonb WHERE id = %s""", [tampered.id])

    with connection.schema_editor(atomic=False) as editor:
        migration.rekey(apps, editor)

    assert audit_chain_verify(organisation_ids=[chain.id]).ok
    broken = audit_chain_verify(organisation_ids=[other_organisation.id])
    assert (broken.first_broken.seq, broken.first_broken.event_id) == (3, tampered.id)
    # The append-only triggers are back.
    from django.db import DatabaseError, transaction

    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=tampered.pk).delete()
