import pytest

from safety.demo import demo_seed
from safety.models import ModerationItem, SafetyPolicy
from safety.moderation import item_claim
from tests.helpers import SYSTEM

pytestmark = pytest.mark.django_db


def test_demo_seed_fills_the_queue_once(organisation, owner):
    lines = demo_seed(organisation=organisation, admin=owner.user, actor=SYSTEM)
    assert demo_seed(organisation=organisation, admin=owner.user, actor=SYSTEM) == lines
    assert "3 held output(s)" in lines[0]
    assert SafetyPolicy.objects.filter(organisation=organisation, name="demo-pii-review").count() == 1
    items = list(ModerationItem.objects.filter(organisation=organisation))
    assert len(items) == 3 and {i.status for i in items} == {"pending"}
    for item in items:
        for f in item.findings:  # the spans point at what they name
            assert item.held_text[f["start"] : f["end"]].strip()
    # The demo admin (every role) can start reviewing at once: the most urgent item first.
    assert item_claim(organisation=organisation, reviewer=owner.user).priority == 1
