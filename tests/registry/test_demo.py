import pytest

from registry.demo import demo_seed
from registry.models import Label, PromptVersion
from registry.selectors import prompt_resolve
from tests.helpers import SYSTEM

pytestmark = pytest.mark.django_db


def test_demo_seed_is_idempotent_and_resolvable(organisation, admin):
    lines = demo_seed(organisation=organisation, admin=admin.user, actor=SYSTEM)
    assert demo_seed(organisation=organisation, admin=admin.user, actor=SYSTEM) == lines
    assert any('"prompt": {"name": "support-reply"' in line for line in lines)
    assert PromptVersion.objects.count() == 2
    assert dict(Label.objects.values_list("name", "version__number")) == {"production": 1, "staging": 2}
    rendered = prompt_resolve(
        organisation_id=organisation.id,
        name="support-reply",
        label="staging",
        variables={"customer_name": "Ada", "question": "Where?"},
    )
    assert rendered.model == "dev-small"
    assert rendered.messages[0]["content"].startswith("You are a friendly support agent")
