"""Demo prompt for `manage.py seed_demo`: support-reply with two versions, production (protected) and staging."""

from __future__ import annotations

from registry.models import Label, Prompt
from registry.services import _label_set, label_move, prompt_create, prompt_version_create

DEMO_PROMPT = "support-reply"
VARIABLES = [
    {"name": "customer_name", "type": "string", "required": True, "description": "Who wrote in"},
    {"name": "question", "type": "string", "required": True, "description": "Their question"},
    {"name": "tone", "type": "string", "required": False, "default": "friendly"},
]
VERSIONS = [
    {
        "commit_message": "First reply template",
        "params": {"temperature": 0.2, "max_tokens": 200},
        "messages": [
            {"role": "system", "content": "You are a support agent for Acme. Answer briefly."},
            {"role": "user", "content": "Customer {{ customer_name }} asks: {{ question }}"},
        ],
    },
    {
        "commit_message": "Warmer tone, offer follow-up",
        "params": {"temperature": 0.4, "max_tokens": 250},
        "messages": [
            {
                "role": "system",
                "content": "You are a {{ tone }} support agent for Acme. Answer briefly and offer help.",
            },
            {"role": "user", "content": "Customer {{ customer_name }} asks: {{ question }}"},
        ],
    },
]


def demo_seed(*, organisation, admin, actor) -> list[str]:
    """Ensure the demo prompt, its two versions and its labels exist. Idempotent: re-running changes nothing."""
    prompt = Prompt.objects.filter(organisation=organisation, name=DEMO_PROMPT).first()
    if prompt is None:
        prompt = prompt_create(
            organisation=organisation,
            name=DEMO_PROMPT,
            description="Replies to customer support questions.",
            tags=["support", "demo"],
            protected_labels=["production"],
            actor=actor,
        )
    for spec in VERSIONS[prompt.latest_number :]:
        prompt_version_create(prompt=prompt, model="dev-small", variables=VARIABLES, actor=actor, **spec)
    labels = dict(Label.objects.filter(prompt=prompt).values_list("name", "version__number"))
    if "production" not in labels:
        # Creating a protected label is not a move; the seed owns this prompt.
        _label_set(prompt=prompt, label="production", version=prompt.versions.get(number=1), actor=actor, reason="demo")
    if "staging" not in labels:
        label_move(prompt=prompt, label="staging", version=2, reason="demo", actor=actor)
    return [
        f"Prompt {DEMO_PROMPT}: v1 is production (protected), v2 is staging. Render it through the proxy:",
        '  curl -s "$STEWARD_URL/v1/chat/completions" -H "Authorization: Bearer $STEWARD_API_KEY" '
        "-H 'Content-Type: application/json' "
        f'-d \'{{"prompt": {{"name": "{DEMO_PROMPT}", "label": "production", '
        '"variables": {"customer_name": "Ada", "question": "Where is my order?"}}}\'',
    ]
