"""Demo evaluations for `manage.py seed_demo`: a dataset of support questions, a suite, and a finished
regression run of support-reply v2 against production (v1), so a new user sees results at once.

The run's answers are written here (the seed runs without a proxy or a worker), but they are scored by
the real assertions and summarised by the real statistics, exactly as a run through the proxy would be.
Idempotent: re-running changes nothing once the demo run exists.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from evals.assertions import CellOutput, assertion_score, assertion_validate, cell_score
from evals.models import Cell, CellStatus, Dataset, Run, RunKind, RunStatus, RunTrigger, Suite, Variant
from evals.services import dataset_create, dataset_version_create, run_summary_compute, suite_create
from registry.models import Label, Prompt

DEMO_PROMPT = "support-reply"
DATASET = "support-questions"
SUITE = "support-reply-regression"
QUESTIONS = [
    ("Ada", "Where is my order?", "order"),
    ("Grace", "Can I get a refund for a broken kettle?", "refund"),
    ("Linus", "How do I reset my password?", "password"),
    ("Barbara", "Do you ship to Norway?", "ship"),
    ("Edsger", "My invoice shows the wrong address.", "invoice"),
    ("Donald", "Can I change my delivery date?", "delivery"),
    ("Margaret", "Is the warranty two years?", "warranty"),
    ("Ken", "How do I cancel my subscription?", "cancel"),
    ("Dennis", "The app crashes when I log in.", "log in"),
    ("Frances", "Can I pay by bank transfer?", "bank transfer"),
    ("Alan", "Where can I find my receipt?", "receipt"),
    ("Hedy", "Do you have a student discount?", "discount"),
    ("Katherine", "My parcel arrived damaged.", "damaged"),
    ("Tim", "Can I return an opened item?", "return"),
    ("Radia", "How long does a refund take?", "refund"),
    ("Annie", "Can I add a gift note?", "gift"),
    ("John", "Is there a phone number I can call?", "phone"),
    ("Mary", "My discount code does not work.", "code"),
    ("Alan K", "Can I order in bulk?", "bulk"),
    ("Sophie", "How do I delete my account?", "delete"),
]
CRITICAL = {"q02", "q15"}  # refunds: a reply that stops mentioning them must not reach production
ASSERTIONS = [
    {"type": "icontains", "name": "names-the-customer", "value": "{{expected}}", "weight": 1},
    {"type": "not-contains", "name": "no-apology-loop", "value": ["sorry sorry"], "weight": 1},
    {"type": "latency-at-most", "name": "fast-enough", "max_ms": 2000, "weight": 0.5},
]


def _answer(version_number: int, index: int, name: str, question: str, topic: str) -> str:
    """Deterministic demo replies: v2 is warmer and offers help, but forgets the name on a few items."""
    if version_number == 1:
        if index in (6, 11):
            return f"Thanks for asking about {topic}. We will look into it."
        return f"Hi {name}, about {topic}: here is what to do. {question.rstrip('?.')} is handled in your account page."
    if index in (3, 9, 16):
        return f"Hello! Happy to help with your {topic} question. Anything else I can do?"
    return f"Hello {name}! Happy to help with {topic}: here is what to do. Anything else I can do for you?"


def _assertions_valid() -> list[dict]:
    return [assertion_validate(spec) for spec in ASSERTIONS]


def _demo_run(*, organisation, prompt, suite, actor) -> Run:
    version = suite.dataset.versions.order_by("-number").first()
    items = list(version.items.order_by("position"))
    baseline = prompt.versions.get(number=1)
    candidate = prompt.versions.get(number=2)
    now = timezone.now()
    specs = _assertions_valid()
    with transaction.atomic():
        run = Run.objects.create(
            organisation=organisation,
            suite=suite,
            kind=RunKind.REGRESSION,
            prompt_id=prompt.id,
            prompt_name=prompt.name,
            dataset_version=version,
            status=RunStatus.RUNNING,
            trigger=RunTrigger.DEMO,
            repeats=1,
            concurrency=suite.concurrency,
            deadline=now + timedelta(seconds=suite.deadline_seconds),
            cells_total=len(items) * 2,
            created_by_label=actor.label,
            created_at=now - timedelta(minutes=3),
            started_at=now - timedelta(minutes=3),
        )
        total = Decimal(0)
        for position, (name, pv, is_baseline) in enumerate(
            [("baseline", baseline, True), ("candidate", candidate, False)]
        ):
            variant = Variant.objects.create(
                run=run,
                position=position,
                name=name,
                is_baseline=is_baseline,
                prompt_version_id=pv.id,
                prompt_version_number=pv.number,
                label="production" if is_baseline else "",
            )
            for index, item in enumerate(items):
                customer, question = item.variables["customer_name"], item.variables["question"]
                text = _answer(pv.number, index, customer, question, item.metadata.get("topic", ""))
                latency = 180.0 + 17 * ((index * 7 + position * 3) % 11)
                cost = Decimal("0.0000125") + Decimal("0.0000005") * position
                output = CellOutput(text=text, latency_ms=latency, cost_usd=cost, tokens=40)
                item_dict = {"variables": item.variables, "expected": item.expected, "metadata": item.metadata}
                outcomes = [assertion_score(spec, output, item_dict) for spec in specs]
                score, passed = cell_score(specs, outcomes, suite.pass_threshold)
                Cell.objects.create(
                    run=run,
                    variant=variant,
                    item=item,
                    status=CellStatus.DONE,
                    attempts=1,
                    output=text,
                    request_id=f"demo-{run.id}-{position}-{index}",
                    latency_ms=latency,
                    cost_usd=cost,
                    prompt_tokens=28,
                    completion_tokens=12,
                    outcomes=[o.__dict__ for o in outcomes],
                    score=score,
                    passed=passed,
                    finished_at=now,
                )
                total += cost
        run.cells_done = run.cells_total
        run.cost_usd = total
        run.status = RunStatus.COMPLETED
        run.finished_at = now
        run.save()
        run_summary_compute(run)
    return run


def demo_seed(*, organisation, admin, actor) -> list[str]:
    """Ensure the demo dataset, suite and finished run exist (after the registry's demo prompt)."""
    prompt = Prompt.objects.filter(organisation=organisation, name=DEMO_PROMPT).first()
    if prompt is None or not prompt.versions.filter(number=2).exists():
        return []
    dataset = Dataset.objects.filter(organisation=organisation, name=DATASET).first()
    if dataset is None:
        dataset = dataset_create(
            organisation=organisation, name=DATASET, description="Typical support questions.", actor=actor
        )
    if not dataset.versions.exists():
        items = [
            {
                "key": f"q{i + 1:02d}",
                "variables": {"customer_name": name, "question": question},
                "expected": name,
                "metadata": {"topic": topic},
                "critical": f"q{i + 1:02d}" in CRITICAL,
            }
            for i, (name, question, topic) in enumerate(QUESTIONS)
        ]
        dataset_version_create(dataset=dataset, items=items, note="demo", source="api", actor=actor)
    suite = Suite.objects.filter(organisation=organisation, name=SUITE).first()
    if suite is None:
        suite = suite_create(
            organisation=organisation,
            actor=actor,
            name=SUITE,
            description="Replies name the customer, stay calm and arrive quickly.",
            dataset=dataset,
            assertions=ASSERTIONS,
            pass_threshold=0.9,
            margin=0.1,
        )
    run = Run.objects.filter(organisation=organisation, suite=suite, trigger=RunTrigger.DEMO).first()
    if run is None:
        run = _demo_run(organisation=organisation, prompt=prompt, suite=suite, actor=actor)
    if not Label.objects.filter(prompt=prompt, name="production").exists():
        return []
    return [
        f"Evaluations: dataset {DATASET}, suite {SUITE}, and run #{run.id} (v2 against production, verdict "
        f"{run.verdict or 'n/a'}) at /evaluations/runs/{run.id}/",
    ]
