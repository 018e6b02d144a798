import subprocess
import sys
import textwrap
import threading
import time

import pytest
from django.conf import settings
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from core.errors import NotFound, ValidationFailed
from registry import services
from registry.selectors import RenderedPrompt, aprompt_resolve, prompt_resolve
from tests.factories import PromptVersionFactory
from tests.helpers import SYSTEM, subprocess_env


@pytest.fixture
def labelled(prompt):
    PromptVersionFactory(
        prompt=prompt, variables=[{"name": "customer_name", "type": "string"}], params={"temperature": 0.2}
    )
    PromptVersionFactory(
        prompt=prompt,
        text="Dear {{ customer_name }}, about {{ question }} ({{ tries }} tries)"
        "{% for t in topics %} #{{ t }}{% endfor %}",
        params={"temperature": 0.5, "max_tokens": 64},
        variables=[
            {"name": "customer_name", "type": "string"},
            {"name": "question", "type": "string"},
            {"name": "tries", "type": "number", "default": 1},
            {"name": "topics", "type": "list", "required": False, "default": []},
        ],
    )
    services.label_move(prompt=prompt, label="production", version=1, reason="", actor=SYSTEM)
    services.label_move(prompt=prompt, label="staging", version=2, reason="", actor=SYSTEM)
    return prompt


@pytest.mark.django_db
def test_resolve_defaults_to_production_and_renders(labelled, organisation):
    rendered = prompt_resolve(organisation_id=organisation.id, name="support-reply", variables={"customer_name": "Ada"})
    assert isinstance(rendered, RenderedPrompt)
    assert (rendered.version_number, rendered.label, rendered.model) == (1, "production", "dev-small")
    assert rendered.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello Ada"}]
    assert rendered.params == {"temperature": 0.2}
    by_number = prompt_resolve(
        organisation_id=organisation.id,
        name="support-reply",
        version=2,
        variables={"customer_name": "Ada", "question": "refunds", "topics": ["a", "b"]},
    )
    assert by_number.label is None and by_number.params == {"temperature": 0.5, "max_tokens": 64}
    assert by_number.messages[1]["content"] == "Dear Ada, about refunds (1 tries) #a #b"


@pytest.mark.django_db
def test_resolve_errors_name_what_is_missing(labelled, organisation):
    org = organisation.id
    for kwargs, code in [
        ({"name": "nope"}, "prompt_not_found"),
        ({"name": "support-reply", "label": "canary"}, "label_not_found"),
        ({"name": "support-reply", "version": 9}, "version_not_found"),
    ]:
        with pytest.raises(NotFound) as exc:
            prompt_resolve(organisation_id=org, **kwargs)
        assert exc.value.code == code
    with pytest.raises(ValidationFailed) as exc:
        prompt_resolve(organisation_id=org, name="support-reply", label="staging", variables={})
    assert exc.value.code == "prompt_render_error" and exc.value.param == "prompt.variables"
    assert exc.value.extra["missing"] == ["customer_name", "question"]
    assert "customer_name" in exc.value.message and "question" in exc.value.message
    with pytest.raises(ValidationFailed) as exc:
        prompt_resolve(
            organisation_id=org,
            name="support-reply",
            label="staging",
            variables={"customer_name": "A", "question": "q", "tries": "many"},
        )
    assert "tries must be a number" in exc.value.message
    with pytest.raises(ValidationFailed):
        prompt_resolve(organisation_id=org, name="support-reply", label="staging", version=1)


@pytest.mark.django_db
def test_values_are_data_never_templates(labelled, organisation):
    evil = "{{ 7*7 }} {% for x in range(3) %}loop{% endfor %} {{ ''.__class__ }}"
    rendered = prompt_resolve(organisation_id=organisation.id, name="support-reply", variables={"customer_name": evil})
    assert rendered.messages[1]["content"] == "Hello " + evil


@pytest.mark.django_db
def test_sandbox_refuses_internals(prompt, organisation):
    PromptVersionFactory(prompt=prompt, text="{{ customer_name.__class__.__mro__ }}")
    with pytest.raises(ValidationFailed) as exc:
        prompt_resolve(
            organisation_id=organisation.id, name="support-reply", version=1, variables={"customer_name": "x"}
        )
    assert exc.value.code == "prompt_render_error"


@pytest.mark.django_db
def test_other_organisations_prompts_are_not_found(labelled, other_organisation):
    with pytest.raises(NotFound):
        prompt_resolve(organisation_id=other_organisation.id, name="support-reply", variables={"customer_name": "x"})


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_async_resolve_is_served_from_memory_once_warm(labelled, organisation, monkeypatch):
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from core.invalidation import _registry
    from registry import selectors

    args = {"organisation_id": organisation.id, "name": "support-reply"}
    # The fixture's label moves bumped the registry's generation; let this process see them now, or a
    # late poll would drop the entry the first call is about to cache.
    _registry.poll_once()
    # One executor thread, so the connection its cold load opens can be closed afterwards.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=1))
    try:
        first = await aprompt_resolve(**args, variables={"customer_name": "A"})
    finally:
        # The cold load ran on an executor thread; close its connection so the test database can be dropped.
        await asyncio.get_running_loop().run_in_executor(None, connections.close_all)

    def refuse(*a, **k):
        raise AssertionError("a warm resolve must not load from the database or hop threads")

    monkeypatch.setattr(selectors, "_resolve_load", refuse)
    monkeypatch.setattr(selectors, "aread", refuse)
    # Caches are only trusted while the invalidation poller has seen Redis within 1.5 s; on a loaded
    # CI machine its thread can be late, and then resolving rightly goes back to the database.
    _registry.poll_once()
    second = await aprompt_resolve(**args, variables={"customer_name": "B"})
    assert first.version_id == second.version_id and second.messages[1]["content"] == "Hello B"
    assert first.messages[1]["content"] == "Hello A"


@pytest.mark.django_db
def test_warm_sync_resolve_makes_no_query_and_a_move_is_seen_at_once_here(labelled, organisation):
    args = {"organisation_id": organisation.id, "name": "support-reply", "variables": {"customer_name": "A"}}
    assert prompt_resolve(**args).version_number == 1
    with CaptureQueriesContext(connection) as ctx:
        prompt_resolve(**args)
    assert ctx.captured_queries == []
    with pytest.raises(NotFound):
        prompt_resolve(**{**args, "label": "canary"})
    # invalidate() runs on commit; the test transaction never commits, so run the hooks ourselves.
    from django.test import TestCase

    with TestCase.captureOnCommitCallbacks(execute=True):
        services.label_move(prompt=labelled, label="canary", version=2, reason="", actor=SYSTEM)
    assert (
        prompt_resolve(
            **{**args, "label": "canary", "variables": {"customer_name": "A", "question": "q"}}
        ).version_number
        == 2
    )


RESOLVER = textwrap.dedent(
    """
    import sys, time, django
    django.setup()
    from registry.selectors import prompt_resolve
    last = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        number = prompt_resolve(organisation_id=int(sys.argv[1]), name="support-reply",
                                variables={"customer_name": "x", "question": "q"}).version_number
        if number != last:
            print(number, flush=True)
            last = number
        time.sleep(0.01)
    """
)


@pytest.mark.django_db(transaction=True)
def test_label_move_reaches_another_process_within_two_seconds(labelled, organisation):
    process = subprocess.Popen(
        [sys.executable, "-c", RESOLVER, str(organisation.id)],
        env=subprocess_env(DJANGO_SETTINGS_MODULE="config.settings"),
        cwd=settings.BASE_DIR,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline().strip() == "1"
        # The other process now serves production=v1 from memory.
        time.sleep(0.3)
        services.label_move(prompt=labelled, label="production", version=2, reason="go", actor=SYSTEM)
        moved = time.monotonic()
        result = {}

        def read():
            result["line"] = process.stdout.readline().strip()
            result["at"] = time.monotonic()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(5)
        assert result.get("line") == "2"
        assert result["at"] - moved < 2.0
    finally:
        process.kill()
        process.wait(5)


@pytest.mark.django_db(transaction=True)
def test_parallel_writers_get_distinct_consecutive_numbers(prompt):
    writers, per_writer = 6, 3
    barrier = threading.Barrier(writers)
    numbers, errors = [], []

    def write(w):
        try:
            barrier.wait()
            for i in range(per_writer):
                numbers.append(
                    PromptVersionFactory(prompt=prompt, text=f"writer {w} edit {i} {{{{ customer_name }}}}").number
                )
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(numbers) == list(range(1, writers * per_writer + 1))
    prompt.refresh_from_db()
    assert prompt.latest_number == writers * per_writer


@pytest.mark.django_db
@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": ["x"]},
        {"name": ""},
        {"name": "support-reply", "label": ["x"]},
        {"name": "support-reply", "version": "1"},
    ],
)
def test_malformed_references_are_validation_errors(organisation, kwargs):
    with pytest.raises(ValidationFailed):
        prompt_resolve(organisation_id=organisation.id, **kwargs)
