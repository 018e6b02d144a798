"""The rows a benchmark run needs, created through the services in a throwaway organisation.

Each run gets its own organisation (`bench-<hex>`), an API key with limits far above what the run
sends (so the rate-limit stage runs but never refuses), budgets on the organisation and the key far
above what it spends (so the reserve and settle stages run), a route to the development upstream, and,
when the registry's services exist, a prompt for the "with prompt" scenario. `bench_teardown`
revokes the key and deletes the route; the organisation stays because its audit trail is
append-only by design.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from accounts.services import api_key_create, api_key_revoke, organisation_create
from core.actors import Actor

ACTOR = Actor.system("bench")
UNLIMITED = 1_000_000_000


@dataclass
class BenchTarget:
    organisation: object
    api_key: object
    secret: str
    route: object
    model: str
    prompt: dict | None  # the request's "prompt" object for the with-prompt scenario, if available
    prompt_note: str


def bench_setup(*, upstream_url: str, upstream_model: str = "dev-small", budgets: bool = True) -> BenchTarget:
    from proxy.services import deployment_create, route_create

    suffix = secrets.token_hex(4)
    organisation = organisation_create(name=f"Benchmark {suffix}", slug=f"bench-{suffix}", actor=ACTOR)
    created = api_key_create(
        organisation=organisation,
        name="bench",
        actor=ACTOR,
        rpm_limit=UNLIMITED,
        tpm_limit=UNLIMITED,
    )
    model = "bench-chat"
    route = route_create(organisation=organisation, name=model, actor=ACTOR)
    deployment_create(
        route=route,
        name="dev-upstream",
        model=upstream_model,
        api_base=upstream_url,
        actor=ACTOR,
        rpm_limit=UNLIMITED,
        tpm_limit=UNLIMITED,
    )
    if budgets:
        _budgets_setup(organisation=organisation, api_key=created.api_key)
    prompt, note = _prompt_setup(organisation=organisation, model=model)
    return BenchTarget(
        organisation=organisation,
        api_key=created.api_key,
        secret=created.secret,
        route=route,
        model=model,
        prompt=prompt,
        prompt_note=note,
    )


def _budgets_setup(*, organisation, api_key) -> None:
    """Budgets far above what a run spends, on the organisation and the key: the reserve and settle
    stages then do their real work (one Lua script each, over two budgets) on every request."""
    from decimal import Decimal

    from billing.services import budget_create

    for name, scope, extra in [("bench org", "organisation", {}), ("bench key", "api_key", {"api_key_id": api_key.pk})]:
        budget_create(
            organisation=organisation, actor=ACTOR, name=name, scope=scope, amount=Decimal("1000000"), period="day",
            **extra,
        )  # fmt: skip


def _prompt_setup(*, organisation, model: str) -> tuple[dict | None, str]:
    """A prompt whose version 1 (labelled "bench") targets the bench route, for the with-prompt scenario."""
    try:
        from registry.services import label_move, prompt_create, prompt_version_create
    except ImportError as exc:
        return None, f"registry services not available ({exc})"
    prompt = prompt_create(organisation=organisation, name="bench-summary", actor=ACTOR)
    version = prompt_version_create(
        prompt=prompt,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Summarise {{ topic }} in one short sentence."},
        ],
        model=model,
        params={"max_tokens": 16},
        variables=[{"name": "topic", "type": "string", "required": True}],
        commit_message="bench",
        actor=ACTOR,
    )
    label_move(prompt=prompt, label="bench", version=version, reason="bench", actor=ACTOR)
    return {"name": "bench-summary", "label": "bench", "variables": {"topic": "the benchmark"}}, ""


def bench_teardown(target: BenchTarget) -> None:
    from proxy.models import ModelRoute
    from proxy.services import route_delete

    api_key_revoke(api_key=target.api_key, actor=ACTOR)
    route = ModelRoute.objects.filter(pk=target.route.pk).first()
    if route is not None:
        route_delete(route=route, actor=ACTOR)


# The default policy of `--policy default`: personal data redacted (and restored in the answer),
# prompt-injection heuristics blocking; the deterministic filters every organisation would start with.
# Streams in window mode, what a latency-sensitive service would choose (buffer holds every chunk
# until the whole answer has passed, so its time to first token is the stream's whole time).
DEFAULT_POLICY = {
    "filters": [{"filter": "pii"}, {"filter": "injection"}],
    "actions": {"prompt_injection": "block", "hidden_text": "block", "*": "redact"},
    "stream_mode": "window",
}


# `--policy input`: the same filters on the request only (what reaches the provider); answers stream
# at once, only the request's placeholders restored on the way.
INPUT_POLICY = {
    "filters": [{"filter": "pii", "directions": ["input"]}, {"filter": "injection", "directions": ["input"]}],
    "actions": {"prompt_injection": "block", "hidden_text": "block", "*": "redact"},
}
BENCH_POLICIES = {"default": DEFAULT_POLICY, "input": INPUT_POLICY}


def bench_policy_attach(*, target: BenchTarget, policy: str = "default") -> None:
    """Attach `policy` (a BENCH_POLICIES name) as the organisation's default: every key's requests run under it."""
    from safety.policy_services import policy_attach, policy_create

    if policy not in BENCH_POLICIES:
        raise ValueError(f"unknown bench policy {policy!r}")
    organisation = target.organisation
    stored = policy_create(organisation=organisation, actor=ACTOR, name=f"bench-org-{policy}", **BENCH_POLICIES[policy])
    policy_attach(organisation=organisation, policy=stored, scope="organisation", target_id=0, actor=ACTOR)


def bench_policy_key(*, target: BenchTarget, policy: str = "default") -> str:
    """A second key of the bench organisation with `policy` attached to it (the first key has none),
    so one run can load the same Steward with and without a policy. Returns its secret."""
    from safety.policy_services import policy_attach, policy_create

    if policy != "default":
        raise ValueError(f"unknown bench policy {policy!r}")
    organisation = target.organisation
    created = api_key_create(
        organisation=organisation, name="bench-policy", actor=ACTOR, rpm_limit=UNLIMITED, tpm_limit=UNLIMITED
    )
    stored = policy_create(organisation=organisation, actor=ACTOR, name="bench-default", **DEFAULT_POLICY)
    policy_attach(organisation=organisation, policy=stored, scope="api_key", target_id=created.api_key.pk, actor=ACTOR)
    return created.secret
