"""Parallel claims on PostgreSQL: two reviewers, each on its own connection, never get the same
item; an expired lease returns the item to the queue."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection, connections, transaction
from django.utils import timezone

from accounts.roles import Role
from safety.models import ModerationItem
from safety.moderation import item_claim, item_decide
from tests.factories import PersonaFactory
from tests.safety.moderation_support import held, policy_make

pytestmark = pytest.mark.django_db(transaction=True)


def test_two_reviewers_claiming_in_parallel_never_get_the_same_item(organisation):
    assert connection.vendor == "postgresql"
    policy = policy_make(organisation)
    items = [held(organisation, policy) for _ in range(30)]
    reviewers = [
        PersonaFactory(username=f"reviewer-{i}", organisation=organisation, roles=[Role.REVIEWER]).user
        for i in range(2)
    ]
    claimed: dict[int, list[int]] = {0: [], 1: []}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def work(n: int) -> None:
        try:
            barrier.wait(5)
            while True:
                item = item_claim(organisation=organisation, reviewer=reviewers[n])
                if item is None:
                    return
                claimed[n].append(item.pk)
                item_decide(
                    organisation=organisation, public_id=item.public_id, reviewer=reviewers[n], action="approve"
                )
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert not set(claimed[0]) & set(claimed[1])
    assert sorted(claimed[0] + claimed[1]) == sorted(i.pk for i in items)
    assert claimed[0] and claimed[1]  # both worked the queue
    assert ModerationItem.objects.filter(status="approved").count() == 30


def test_a_claim_skips_a_row_another_transaction_is_claiming(organisation, reviewer):
    policy = policy_make(organisation)
    first = held(organisation, policy, priority=1)
    second = held(organisation, policy, priority=2)
    locked, release = threading.Event(), threading.Event()

    def hold_the_first_row() -> None:
        try:
            with transaction.atomic():
                ModerationItem.objects.select_for_update().get(pk=first.pk)
                locked.set()
                release.wait(10)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold_the_first_row)
    holder.start()
    assert locked.wait(10)
    try:
        # Does not wait for the lock and does not take the locked row.
        assert item_claim(organisation=organisation, reviewer=reviewer.user).pk == second.pk
    finally:
        release.set()
        holder.join(10)


def test_an_expired_lease_returns_the_item_to_the_queue(organisation, reviewer):
    other = PersonaFactory(username="walker", organisation=organisation, roles=[Role.REVIEWER]).user
    item = held(organisation)
    assert item_claim(organisation=organisation, reviewer=other).pk == item.pk
    assert item_claim(organisation=organisation, reviewer=reviewer.user) is None
    ModerationItem.objects.filter(pk=item.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    again = item_claim(organisation=organisation, reviewer=reviewer.user)
    assert again.pk == item.pk and again.lease_owner == reviewer.user
