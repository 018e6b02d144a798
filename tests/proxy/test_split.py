"""An experiment splits a label's live traffic in the proxy's prompt stage: sticky per end user, spread
across users, served from memory, recorded in the request log, and gone once the experiment stops."""

from __future__ import annotations

from collections import Counter

import pytest
import requests

from registry import selectors
from registry import services as registry
from registry.experiments import experiment_start, experiment_stop
from tests.helpers import SYSTEM, log_of, wait_until


@pytest.fixture
def split_prompt(organisation):
    prompt = registry.prompt_create(organisation=organisation, name="greeter", actor=SYSTEM)
    for text in ("Hello {{ who }}", "Howdy {{ who }}"):
        registry.prompt_version_create(
            prompt=prompt,
            messages=[{"role": "user", "content": text}],
            model="dev-small",
            params={},
            variables=[{"name": "who", "type": "string", "required": True}],
            commit_message=text,
            actor=SYSTEM,
        )
    registry.label_move(prompt=prompt, label="production", version=1, reason="ship", actor=SYSTEM)
    experiment = experiment_start(
        prompt=prompt,
        label="production",
        variants=[{"version": 1, "weight": 50}, {"version": 2, "weight": 50}],
        actor=SYSTEM,
    )
    return prompt, experiment


def _call(proxy, *, user=None, header=None):
    body = {"prompt": {"name": "greeter", "variables": {"who": "Ada"}}}
    if user is not None:
        body["user"] = user
    extra = {"x-steward-user": header} if header is not None else {}
    response = requests.post(f"{proxy.url}/chat/completions", json=body, headers=proxy.headers(**extra), timeout=10)
    assert response.status_code == 200, response.text
    return response


def _version(response) -> int:
    return int(response.headers["x-steward-prompt-version"].split(":")[1])


def test_same_user_same_version_different_users_spread_and_the_log_records_it(proxy, dev_upstream, split_prompt):
    _, experiment = split_prompt
    for user in ("alice", "bob", "carol"):
        assert len({_version(_call(proxy, user=user)) for _ in range(8)}) == 1
    # The header is a sticky key too (the fallback when the body names no user).
    assert len({_version(_call(proxy, header="dave")) for _ in range(8)}) == 1

    by_user = {f"user-{i}": _call(proxy, user=f"user-{i}") for i in range(60)}
    counts = Counter(_version(r) for r in by_user.values())
    # Binomial(60, 0.5): each side below 12 has a probability under 1e-5.
    assert counts[1] >= 12 and counts[2] >= 12, counts

    response = by_user["user-7"]
    row = log_of(response.headers["x-request-id"])
    served = _version(response)
    assert row.prompt_version_number == served and row.prompt_version_id is not None
    assert row.experiment_id == experiment.id and row.experiment_sticky is True
    assert row.experiment_variant == ("control" if served == 1 else "v2")
    assert response.headers["x-steward-experiment"] == f"{experiment.id}:{row.experiment_variant}"
    sent = dev_upstream.stats()["last_request"]
    assert sent["messages"][0]["content"] in ("Hello Ada", "Howdy Ada")

    anonymous = _call(proxy)
    assert log_of(anonymous.headers["x-request-id"]).experiment_sticky is False


def test_warm_split_reads_no_database(proxy, split_prompt, monkeypatch):
    from core.invalidation import _registry

    # Settle the invalidation poller first: a generation it has not seen yet (this test's own writes,
    # the previous test's clean Redis) would rightly drop the cache between the warm-up and the check.
    _registry.poll_once()
    _call(proxy, user="warm")  # loads the label and its split into the process's cache

    def refuse(*args, **kwargs):
        raise AssertionError("a warm prompt stage must not read the database")

    monkeypatch.setattr(selectors, "_resolve_load", refuse)
    monkeypatch.setattr(selectors, "experiment_running_for", refuse)
    monkeypatch.setattr(selectors, "aread", refuse)
    versions = {_version(_call(proxy, user=f"user-{i}")) for i in range(30)}
    assert versions == {1, 2}


def test_stopping_puts_every_user_back_on_the_control_within_two_seconds(proxy, split_prompt):
    _, experiment = split_prompt
    users = [f"user-{i}" for i in range(30)]
    on_variant = [u for u in users if _version(_call(proxy, user=u)) == 2]
    assert on_variant
    experiment_stop(experiment=experiment, actor=SYSTEM)

    def all_on_control() -> bool:
        return all(_version(_call(proxy, user=u)) == 1 for u in on_variant)

    wait_until(all_on_control, timeout=2.0, interval=0.1)
    response = _call(proxy, user=on_variant[0])
    assert "x-steward-experiment" not in response.headers
    assert log_of(response.headers["x-request-id"]).experiment_id is None


def test_an_experiment_stopped_in_another_process_reaches_this_proxy_within_two_seconds(proxy, split_prompt):
    """The stop runs in a separate Python process: only the Redis generation bump can tell this one."""
    import subprocess
    import sys

    from django.conf import settings

    from tests.helpers import subprocess_env

    _, experiment = split_prompt
    on_variant = [u for u in (f"user-{i}" for i in range(30)) if _version(_call(proxy, user=u)) == 2]
    assert on_variant
    code = (
        "import django; django.setup()\n"
        "from core.actors import Actor\n"
        "from registry.experiments import experiment_stop\n"
        "from registry.models import Experiment\n"
        f"experiment_stop(experiment=Experiment.objects.get(pk={experiment.id}), actor=Actor.system('elsewhere'))\n"
    )
    env = subprocess_env(DJANGO_SETTINGS_MODULE="config.settings")
    subprocess.run([sys.executable, "-c", code], env=env, cwd=settings.BASE_DIR, check=True, timeout=60)
    wait_until(lambda: all(_version(_call(proxy, user=u)) == 1 for u in on_variant), timeout=2.0, interval=0.1)
