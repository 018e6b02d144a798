"""Demo routes on the development upstream (`make run` starts it), for `manage.py seed_demo`."""

from __future__ import annotations

from django.conf import settings

from proxy.models import ModelRoute
from proxy.services import deployment_create, route_create

DEMO_ROUTES = (
    # (public name, upstream model, fallbacks)
    ("dev-small", "dev-small", []),
    ("dev-large", "dev-large", ["dev-small"]),
    ("dev-embed", "dev-embed", []),
)


def demo_seed(*, organisation, admin, actor) -> list[str]:
    """Ensure dev-small, dev-large (falls back to dev-small) and dev-embed exist. Idempotent."""
    from billing.services import prices_seed

    # A deployment is enabled only for a priced model: the dev models' demo prices come first,
    # whichever app's demo runs before (billing's seeds the whole table).
    prices_seed(litellm=False)
    api_base = f"http://127.0.0.1:{settings.STEWARD_DEV_UPSTREAM_PORT}/v1"
    for name, upstream_model, fallbacks in DEMO_ROUTES:
        route = ModelRoute.objects.filter(organisation=organisation, name=name).first()
        if route is None:
            route = route_create(organisation=organisation, name=name, fallbacks=fallbacks, actor=actor)
        if not route.deployments.exists():
            deployment_create(route=route, name="dev-upstream", model=upstream_model, api_base=api_base, actor=actor)
    return [
        "Models dev-small, dev-large (falls back to dev-small) and dev-embed route to the development upstream.",
        "Try the proxy:",
        '  curl -s "$STEWARD_URL/v1/chat/completions" -H "Authorization: Bearer $STEWARD_API_KEY" '
        "-H 'Content-Type: application/json' "
        '-d \'{"model": "dev-small", "messages": [{"role": "user", "content": "Hello Steward"}]}\'',
        '  curl -sN "$STEWARD_URL/v1/chat/completions" -H "Authorization: Bearer $STEWARD_API_KEY" '
        "-H 'Content-Type: application/json' "
        '-d \'{"model": "dev-small", "stream": true, "messages": [{"role": "user", "content": "Hello Steward"}]}\'',
    ]
