"""The hash chain: linking, the database refusing changes, tamper detection, concurrent writers."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, connections, transaction

from audit.actions import Action
from audit.models import AuditChainHead, AuditEvent
from audit.services import GENESIS_HASH, audit_chain_verify, audit_event_record, event_canonical, event_hash
from core.actors import Actor
from tests.helpers import append_only_lifted, record


def _verify_command(*args) -> str:
    from io import StringIO

    out = StringIO()
    call_command("audit_verify", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_events_chain_by_hash(organisation):
    first = AuditEvent.objects.get(organisation=organisation, seq=1)
    (second,) = record(organisation, 1, after={"name": "x", "when": 1.5})
    assert first.prev_hash == GENESIS_HASH
    assert second.seq == 2
    assert second.prev_hash == first.hash
    stored = AuditEvent.objects.get(pk=second.pk)
    assert event_hash(stored) == stored.hash
    # The hash covers the content: change one field and it no longer matches.
    stored.after = {"name": "y", "when": 1.5}
    assert event_hash(stored) != stored.hash
    assert '"prev_hash":"' + first.hash in event_canonical(second)


@pytest.mark.django_db
def test_unknown_action_is_refused(organisation):
    with pytest.raises(ValueError, match="unknown audit action"):
        audit_event_record(
            organisation_id=organisation.id, actor=Actor.system(), action="made.up", target_type="x", target_id=1
        )


@pytest.mark.django_db
def test_database_refuses_update_and_delete(chain):
    event = AuditEvent.objects.filter(organisation=chain).first()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE audit_auditevent SET action = 'x' WHERE id = %s", [event.id])
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).delete()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(organisation=chain).update(after={"x": 1})
    assert AuditEvent.objects.filter(organisation=chain).count() == 5


@pytest.mark.django_db
def test_intact_chains_verify(chain, other_organisation):
    record(other_organisation, 2)
    result = audit_chain_verify()
    assert result.ok
    assert result.events_checked == 5 + 3
    assert result.organisations_checked == 2
    assert _verify_command().startswith("8 events verified")
    assert _verify_command("--organisation", "globex").startswith("3 events verified")


@pytest.mark.django_db
def test_verify_unknown_organisation_is_an_error(chain):
    with pytest.raises(CommandError, match="No organisation with slug 'nope'"):
        _verify_command("--organisation", "nope")


@pytest.mark.django_db
def test_audit_verify_catches_an_altered_row(chain, other_organisation):
    record(other_organisation, 2)
    target = AuditEvent.objects.get(organisation=chain, seq=3)
    with append_only_lifted(), connection.cursor() as cursor:
        cursor.execute("""UPDATE audit_auditevent SET after = '{"n": 999}'::jsonb WHERE id = %s""", [target.id])
    with pytest.raises(CommandError) as excinfo:
        _verify_command()
    message = str(excinfo.value)
    assert "organisation acme" in message
    assert f"seq 3 (id {target.id})" in message
    assert "row altered" in message
    # Only the damaged chain is reported; the other organisation's still verifies.
    assert _verify_command("--organisation", "globex").startswith("3 events verified")


@pytest.mark.django_db
def test_audit_verify_catches_a_deleted_row(chain):
    removed = AuditEvent.objects.get(organisation=chain, seq=2)
    after = AuditEvent.objects.get(organisation=chain, seq=3)
    with append_only_lifted():
        AuditEvent.objects.filter(pk=removed.pk).delete()
    result = audit_chain_verify(organisation_ids=[chain.id])
    assert not result.ok
    assert (result.first_broken.seq, result.first_broken.event_id) == (3, after.id)
    assert "seq 2 missing" in result.first_broken.problem
    assert result.events_checked == 1
    with pytest.raises(CommandError, match=rf"seq 3 \(id {after.id}\): seq 2 missing"):
        _verify_command("--organisation", "acme")


@pytest.mark.django_db
def test_audit_verify_catches_the_last_row_deleted(chain):
    with append_only_lifted():
        AuditEvent.objects.filter(organisation=chain, seq=5).delete()
    result = audit_chain_verify(organisation_ids=[chain.id])
    assert not result.ok
    assert "chain head says #5 but the last event is #4" in result.first_broken.problem


@pytest.mark.django_db
def test_audit_verify_catches_a_row_inserted_out_of_order(chain):
    """An attacker slips a forged event in between #2 and #3: shifts the later rows up and writes a
    row whose own hash is valid and whose prev_hash links to #2. The original #3, now #4, no longer
    matches its hash (seq is hashed) and its prev_hash no longer points at its predecessor."""
    second = AuditEvent.objects.get(organisation=chain, seq=2)
    original_third = AuditEvent.objects.get(organisation=chain, seq=3)
    with append_only_lifted(), connection.cursor() as cursor:
        cursor.execute(
            "UPDATE audit_auditevent SET seq = seq + 1000 WHERE organisation_id = %s AND seq >= 3", [chain.id]
        )
        cursor.execute(
            "UPDATE audit_auditevent SET seq = seq - 999 WHERE organisation_id = %s AND seq > 1000", [chain.id]
        )
        forged = AuditEvent(
            organisation_id=chain.id,
            seq=3,
            created_at=second.created_at,
            actor_type="user",
            actor_id="1",
            actor_label="mallory",
            action=Action.API_KEY_CREATED,
            target_type="api_key",
            target_id="666",
            after={"name": "backdoor"},
            prev_hash=second.hash,
        )
        forged.hash = event_hash(forged)
        forged.save(force_insert=True)
    AuditChainHead.objects.filter(organisation=chain).update(last_seq=6)
    result = audit_chain_verify(organisation_ids=[chain.id])
    assert not result.ok
    assert (result.first_broken.seq, result.first_broken.event_id) == (4, original_third.id)
    assert "prev_hash does not match" in result.first_broken.problem
    with pytest.raises(CommandError, match=rf"seq 4 \(id {original_third.id}\)"):
        _verify_command()


@pytest.mark.django_db
def test_audit_verify_catches_a_row_appended_behind_the_writers_back(chain):
    """A row appended with a valid link but not through the service leaves the chain head behind."""
    last = AuditEvent.objects.get(organisation=chain, seq=5)
    forged = AuditEvent(
        organisation_id=chain.id,
        seq=6,
        created_at=last.created_at,
        actor_type="system",
        action=Action.TEAM_CREATED,
        target_type="team",
        target_id="9",
        prev_hash=last.hash,
    )
    forged.hash = event_hash(forged)
    forged.save(force_insert=True)
    result = audit_chain_verify(organisation_ids=[chain.id])
    assert not result.ok
    assert result.first_broken.seq == 6
    assert "chain head says #5 but the last event is #6" in result.first_broken.problem


@pytest.mark.django_db(transaction=True)
def test_audit_verify_command_exits_non_zero_in_a_real_process(organisation):
    """The real CLI: zero and a count when intact, non-zero naming the event when a row is altered."""
    from tests.helpers import subprocess_env

    record(organisation, 2)
    env = subprocess_env()
    command = [sys.executable, "manage.py", "audit_verify"]
    ok = subprocess.run(command, env=env, cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "3 events verified" in ok.stdout
    target = AuditEvent.objects.get(organisation=organisation, seq=2)
    with append_only_lifted(), connection.cursor() as cursor:
        cursor.execute("UPDATE audit_auditevent SET actor_label = 'someone-else' WHERE id = %s", [target.id])
    bad = subprocess.run(command, env=env, cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0
    assert f"organisation acme, event seq 2 (id {target.id})" in bad.stderr


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_do_not_fork_the_chain(organisation):
    threads_count, per_thread = 8, 25
    barrier = threading.Barrier(threads_count)
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        try:
            barrier.wait(10)
            for i in range(per_thread):
                with transaction.atomic():
                    audit_event_record(
                        organisation_id=organisation.id,
                        actor=Actor.system(f"writer-{index}"),
                        action=Action.TEAM_UPDATED,
                        target_type="team",
                        target_id=f"{index}-{i}",
                    )
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            connections.close_all()

    verifications = []
    writing = threading.Event()
    writing.set()

    def verifier() -> None:
        # Verifying while writers append must not report a false break (it reads one snapshot).
        try:
            while writing.is_set():
                verifications.append(audit_chain_verify(organisation_ids=[organisation.id]))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(threads_count)]
    checker = threading.Thread(target=verifier)
    checker.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    writing.clear()
    checker.join(60)
    assert not errors, errors
    assert verifications, "the verifier ran during the writes"
    assert all(v.ok for v in verifications), [v.first_broken for v in verifications if not v.ok][:3]
    assert len({v.events_checked for v in verifications}) > 1, "the verifier saw the chain grow"
    total = 1 + threads_count * per_thread
    seqs = list(AuditEvent.objects.filter(organisation=organisation).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, total + 1))
    head = AuditChainHead.objects.get(organisation=organisation)
    assert head.last_seq == total
    result = audit_chain_verify(organisation_ids=[organisation.id])
    assert result.ok, result.first_broken
    assert result.events_checked == total
