import pytest
from django.db import DatabaseError, connection, transaction

from audit.actions import Action
from audit.models import AuditEvent
from audit.services import GENESIS_HASH, Actor, audit_event_record, event_hash


@pytest.mark.django_db
def test_events_chain_by_hash(organisation):
    first = AuditEvent.objects.get(organisation=organisation, seq=1)
    second = audit_event_record(
        organisation_id=organisation.id,
        actor=Actor.system(),
        action=Action.TEAM_CREATED,
        target_type="team",
        target_id=1,
        after={"name": "x"},
    )
    assert first.prev_hash == GENESIS_HASH
    assert second.seq == 2
    assert second.prev_hash == first.hash
    stored = AuditEvent.objects.get(pk=second.pk)
    assert event_hash(stored) == stored.hash


@pytest.mark.django_db
def test_database_refuses_update_and_delete(organisation):
    event = AuditEvent.objects.filter(organisation=organisation).first()
    with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE audit_auditevent SET action = 'x' WHERE id = %s", [event.id])
    with pytest.raises(DatabaseError), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).delete()
