"""Experiments in the registry: the assignment hash, starting and stopping (validated, audited), and the
split cached with the label's resolution (no query per request, dropped when the experiment stops)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from django.db import connection
from django.test import TestCase
from django.test.utils import CaptureQueriesContext

from audit.models import AuditEvent
from core.actors import Actor
from core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from core.invalidation import _registry
from registry import services
from registry.experiments import (
    arm_index,
    assignment_pick,
    experiment_end,
    experiment_start,
    experiment_stop,
    split_point,
    thresholds_for,
)
from registry.models import ExperimentStatus
from registry.selectors import prompt_resolve
from tests.factories import PromptFactory, PromptVersionFactory
from tests.helpers import SYSTEM

pytestmark = pytest.mark.django_db


@pytest.fixture
def labelled(organisation):
    """support-reply v1 (production), v2 and v3."""
    prompt = PromptFactory(organisation=organisation, name="support-reply")
    PromptVersionFactory(prompt=prompt, text="One {{ customer_name }}")
    PromptVersionFactory(prompt=prompt, text="Two {{ customer_name }}")
    PromptVersionFactory(prompt=prompt, text="Three {{ customer_name }}")
    services.label_move(prompt=prompt, label="production", version=1, reason="seed", actor=SYSTEM)
    return prompt


def _start(prompt, weights=(50, 50), **kwargs):
    variants = [{"version": n + 1, "weight": w} for n, w in enumerate(weights)]
    return experiment_start(prompt=prompt, label="production", variants=variants, actor=SYSTEM, **kwargs)


# --- the pure assignment -------------------------------------------------------------------------


def test_split_point_is_stable_uniform_and_independent_between_experiments():
    assert split_point(7, "alice") == split_point(7, "alice")
    assert 0 <= split_point(7, "alice") < 1
    points = [split_point(7, f"user-{i}") for i in range(20_000)]
    # Ten equal buckets: a chi-square with 9 degrees of freedom stays below 27.9 (p = 0.001).
    counts = Counter(int(p * 10) for p in points)
    expected = len(points) / 10
    assert sum((counts[b] - expected) ** 2 / expected for b in range(10)) < 27.9
    # Another experiment puts the same users elsewhere: about half change sides of a 50/50 split.
    moved = sum((split_point(7, f"user-{i}") < 0.5) != (split_point(8, f"user-{i}") < 0.5) for i in range(2000))
    assert 850 < moved < 1150


def test_balance_of_2000_users_at_50_50_is_within_binomial_tolerance():
    thresholds = thresholds_for([50, 50])
    arms = Counter(
        assignment_pick(experiment_id=42, thresholds=thresholds, sticky_by="user", user=f"u{i}", user_header=None)[0]
        for i in range(2000)
    )
    # 4 standard deviations of Binomial(2000, 0.5): sqrt(2000 * 0.25) = 22.4.
    assert abs(arms[0] - 1000) < 4 * math.sqrt(500)


def test_uneven_weights_and_thresholds():
    assert thresholds_for([10, 30, 60]) == pytest.approx((0.1, 0.4, 1.0))
    assert arm_index((0.1, 0.4, 1.0), 0.0) == 0
    assert arm_index((0.1, 0.4, 1.0), 0.1) == 1
    assert arm_index((0.1, 0.4, 1.0), 0.99) == 2
    arms = Counter(arm_index(thresholds_for([10, 90]), split_point(1, str(i))) for i in range(5000))
    assert abs(arms[0] - 500) < 4 * math.sqrt(5000 * 0.1 * 0.9)


def test_sticky_key_order_and_the_random_fallback():
    thresholds = thresholds_for([50, 50])
    by_user = assignment_pick(experiment_id=1, thresholds=thresholds, sticky_by="user", user="a", user_header="b")
    by_header = assignment_pick(experiment_id=1, thresholds=thresholds, sticky_by="header", user="a", user_header="b")
    assert by_user == (arm_index(thresholds, split_point(1, "a")), True)
    assert by_header == (arm_index(thresholds, split_point(1, "b")), True)
    # The other key is the fallback; with neither, a random arm, recorded as not sticky.
    fallback = assignment_pick(experiment_id=1, thresholds=thresholds, sticky_by="user", user=None, user_header="b")
    assert fallback == by_header
    picks = [
        assignment_pick(experiment_id=1, thresholds=thresholds, sticky_by="user", user=None, user_header=None)
        for _ in range(200)
    ]
    assert {sticky for _, sticky in picks} == {False}
    assert {arm for arm, _ in picks} == {0, 1}


# --- services ------------------------------------------------------------------------------------


def test_start_validates_and_is_audited(labelled, prompt_engineer, viewer):
    with pytest.raises(ValidationFailed, match="add up to 100"):
        _start(labelled, weights=(50, 40))
    with pytest.raises(ValidationFailed, match="current version"):
        experiment_start(
            prompt=labelled,
            label="production",
            variants=[{"version": 2, "weight": 50}, {"version": 3, "weight": 50}],
            actor=SYSTEM,
        )
    with pytest.raises(ValidationFailed, match="twice"):
        experiment_start(
            prompt=labelled,
            label="production",
            variants=[{"version": 1, "weight": 50}, {"version": 1, "weight": 50}],
            actor=SYSTEM,
        )
    with pytest.raises(NotFound):
        experiment_start(
            prompt=labelled,
            label="production",
            variants=[{"version": 1, "weight": 50}, {"version": 9, "weight": 50}],
            actor=SYSTEM,
        )
    with pytest.raises(NotFound):
        experiment_start(prompt=labelled, label="canary", variants=[{"version": 1, "weight": 50}] * 2, actor=SYSTEM)
    with pytest.raises(ValidationFailed, match="Variant names"):
        experiment_start(
            prompt=labelled,
            label="production",
            variants=[{"version": 1, "weight": 50, "name": "A B"}, {"version": 2, "weight": 50}],
            actor=SYSTEM,
        )
    with pytest.raises(ValidationFailed, match="max_error_rate"):
        _start(labelled, max_error_rate=1.5)
    with pytest.raises(ValidationFailed, match="sticky_by"):
        _start(labelled, sticky_by="cookie")
    with pytest.raises(Forbidden):
        _start_as(labelled, viewer)

    experiment = _start_as(labelled, prompt_engineer, max_error_rate=0.2, max_latency_p95_ms=5000)
    assert experiment.status == ExperimentStatus.RUNNING and experiment.control_version.number == 1
    names = [(v.name, v.version.number, v.weight, v.is_control) for v in experiment.variants.order_by("position")]
    assert names == [("control", 1, 50, True), ("v2", 2, 50, False)]
    event = AuditEvent.objects.get(action="experiment.started", target_id=str(experiment.id))
    assert event.actor_label == prompt_engineer.user.username and event.after["variants"][1]["version"] == 2
    with pytest.raises(Conflict):
        _start(labelled)


def _start_as(prompt, persona, **kwargs):
    return experiment_start(
        prompt=prompt,
        label="production",
        variants=[{"version": 1, "weight": 50}, {"version": 2, "weight": 50}],
        actor=Actor.for_user(persona.user),
        roles=persona.roles,
        **kwargs,
    )


def test_stop_and_end_are_single_shot_and_audited(labelled):
    experiment = _start(labelled)
    assert experiment_end(experiment=experiment, reason="error rate", detail={"variant": "v2"}, actor=SYSTEM)
    assert not experiment_end(experiment=experiment, reason="again", detail={}, actor=SYSTEM)
    experiment.refresh_from_db()
    assert experiment.status == ExperimentStatus.ENDED and experiment.end_reason == "error rate"
    assert AuditEvent.objects.filter(action="experiment.ended", target_id=str(experiment.id)).count() == 1
    with pytest.raises(Conflict):
        experiment_stop(experiment=experiment, actor=SYSTEM)
    # The label may be split again once nothing runs on it.
    second = _start(labelled)
    experiment_stop(experiment=second, actor=SYSTEM, reason="enough")
    assert AuditEvent.objects.filter(action="experiment.stopped", target_id=str(second.id)).count() == 1
    assert labelled.labels.get(name="production").version.number == 1  # the label never moved


# --- the split in the resolution cache -------------------------------------------------------------


def test_resolve_serves_the_split_from_memory_and_drops_it_when_stopped(labelled, organisation):
    args = {"organisation_id": organisation.id, "name": "support-reply", "variables": {"customer_name": "A"}}
    with TestCase.captureOnCommitCallbacks(execute=True):
        experiment = _start(labelled)
    # The poller learns of the start's generation bump now rather than between the warm-up and the check
    # (and has seen Redis recently: caches are trusted only within 1.5 s of a poll).
    _registry.poll_once()
    served = {prompt_resolve(**args, user=f"user-{i}").version_number for i in range(40)}
    assert served == {1, 2}
    with CaptureQueriesContext(connection) as ctx:
        picks = [prompt_resolve(**args, user="alice") for _ in range(20)]
    assert ctx.captured_queries == []
    assert len({p.version_number for p in picks}) == 1
    assert picks[0].experiment.experiment_id == experiment.id and picks[0].experiment.sticky
    assert picks[0].experiment.variant == ("control" if picks[0].version_number == 1 else "v2")
    assert prompt_resolve(**args).experiment.sticky is False
    # A version asked for by number is never split.
    assert prompt_resolve(**{**args, "version": 2}).experiment is None

    with TestCase.captureOnCommitCallbacks(execute=True):
        experiment_stop(experiment=experiment, actor=SYSTEM)
    after = {prompt_resolve(**args, user=f"user-{i}").version_number for i in range(40)}
    assert after == {1}
    assert prompt_resolve(**args, user="alice").experiment is None


def test_moving_the_label_suspends_the_split(labelled, organisation):
    args = {"organisation_id": organisation.id, "name": "support-reply", "variables": {"customer_name": "A"}}
    with TestCase.captureOnCommitCallbacks(execute=True):
        _start(labelled)
        services.label_move(prompt=labelled, label="production", version=3, reason="promote", actor=SYSTEM)
    assert {prompt_resolve(**args, user=f"user-{i}").version_number for i in range(30)} == {3}
