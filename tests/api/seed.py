"""What the contract runs find in the database: an organisation with a prompt (tagged, two versions,
a label), a model route with a deployment, a team, and an API key per persona. Run in the test's
process for PostgreSQL, and by `manage.py shell` in the SQLite server's environment."""

from __future__ import annotations

from accounts.roles import Role
from core.actors import Actor


def contract_seed() -> dict:
    """Returns {"tokens": {"admin": secret, "viewer": secret}, "fixed": {path parameter: value}}: bearer
    tokens of keys with those roles, and seeded objects for the runs' path parameters (another key
    for key_id, so that no run revokes the key it authenticates with)."""
    from accounts.services import api_key_create, organisation_create, team_create
    from proxy.services import deployment_create, route_create
    from registry.services import label_move, prompt_create, prompt_version_create

    actor = Actor.system("tests")
    organisation = organisation_create(name="Contract", slug="contract", actor=actor)
    team = team_create(organisation=organisation, name="Platform", actor=actor)
    prompt = prompt_create(
        organisation=organisation, name="greeting", actor=actor, tags=["support", "x"], description="Says hello"
    )
    for text in ("Hello {{ name }}", "Hi {{ name }}!"):
        version = prompt_version_create(
            prompt=prompt,
            messages=[{"role": "user", "content": text}],
            model="dev-small",
            params={"temperature": 0.2},
            variables=[{"name": "name", "type": "string"}],
            commit_message="seed",
            actor=actor,
        )
    label_move(prompt=prompt, label="production", version=version, reason="seed", actor=actor)
    route = route_create(organisation=organisation, name="dev-small", actor=actor)
    deployment = deployment_create(
        route=route, name="local", model="dev-small", api_base="http://127.0.0.1:9/v1", actor=actor
    )
    from safety.policy_services import policy_attach, policy_create

    policy = policy_create(organisation=organisation, name="default", actor=actor, actions={"*": "flag"})
    attachment = policy_attach(organisation=organisation, policy=policy, scope="organisation", target_id=0, actor=actor)
    spare = api_key_create(organisation=organisation, name="spare", team=team, actor=actor).api_key
    tokens = {}
    for persona, roles in (("admin", [Role.ADMIN]), ("viewer", [Role.VIEWER])):
        created = api_key_create(organisation=organisation, name=persona, team=team, roles=roles, actor=actor)
        tokens[persona] = created.secret
    fixed = {
        "prompt_name": prompt.name,
        "version_number": 1,
        "label_name": "staging",
        "route_id": route.id,
        "deployment_id": deployment.id,
        "key_id": spare.id,
        "api_key_id": spare.id,
        "policy_id": policy.id,
        "attachment_id": attachment.id,
    }
    return {"tokens": tokens, "fixed": fixed}
