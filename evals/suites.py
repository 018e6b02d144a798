"""Suites: a dataset plus weighted assertions, a pass threshold, repeats and the limits a run gets."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from django.db import transaction

from accounts.models import Organisation
from audit.actions import Action
from audit.services import audit_event_record
from core.actors import Actor
from core.errors import Conflict, ValidationFailed
from evals.assertions import REDUCERS, AssertionConfigError, assertion_validate
from evals.datasets import name_checked
from evals.models import Dataset, DatasetVersion, Suite

SUITE_FIELDS = (
    "name",
    "description",
    "dataset",
    "dataset_version",
    "assertions",
    "pass_threshold",
    "repeats",
    "reducer",
    "margin",
    "gating_metrics",
    "concurrency",
    "deadline_seconds",
    "cost_budget_usd",
    "schedule_prompt_id",
    "schedule_label",
    "schedule_minutes",
)
MAX_ASSERTIONS = 50
MAX_REPEATS = 20
MAX_CONCURRENCY = 200


def _number(fields: dict, name: str, low: float, high: float, *, integer: bool = False):
    value = fields[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
        raise ValidationFailed(f"{name} must be {'an integer' if integer else 'a number'}", param=name)
    if not low <= value <= high:
        raise ValidationFailed(f"{name} must be between {low:g} and {high:g}", param=name)
    return value


def suite_validate(*, organisation: Organisation, fields: dict) -> dict:
    """The fields, checked and normalised (assertions by evals.assertions.assertion_validate); ValidationFailed
    names the first bad field (for an assertion: `assertions[i].<field>`)."""
    unknown = set(fields) - set(SUITE_FIELDS)
    if unknown:
        raise ValidationFailed(f"unknown field {sorted(unknown)[0]!r}", param=sorted(unknown)[0])
    out = dict(fields)
    if "name" in out:
        out["name"] = name_checked(out["name"] if isinstance(out["name"], str) else "")
    if "dataset" in out:
        dataset = out["dataset"]
        if not isinstance(dataset, Dataset) or dataset.organisation_id != organisation.id:
            raise ValidationFailed("dataset must be a dataset of this organisation", param="dataset")
    if out.get("dataset_version") is not None:
        version = out["dataset_version"]
        dataset = out.get("dataset")
        if not isinstance(version, DatasetVersion) or (dataset is not None and version.dataset_id != dataset.id):
            raise ValidationFailed("dataset_version must be a version of the suite's dataset", param="dataset_version")
    if "assertions" in out:
        specs = out["assertions"]
        if not isinstance(specs, list) or not specs:
            raise ValidationFailed("assertions must be a non-empty list", param="assertions")
        if len(specs) > MAX_ASSERTIONS:
            raise ValidationFailed(f"at most {MAX_ASSERTIONS} assertions", param="assertions")
        normalised = []
        for i, spec in enumerate(specs):
            if not isinstance(spec, dict):
                raise ValidationFailed(f"assertions[{i}] must be an object", param=f"assertions[{i}]")
            try:
                normalised.append(assertion_validate(spec))
            except AssertionConfigError as exc:
                raise ValidationFailed(f"assertions[{i}].{exc}", param=f"assertions[{i}].{exc.field}") from None
        names = [s["name"] for s in normalised]
        if len(set(names)) != len(names):
            raise ValidationFailed("assertion names must be unique (set `name`)", param="assertions")
        out["assertions"] = normalised
    if "pass_threshold" in out:
        out["pass_threshold"] = float(_number(out, "pass_threshold", 0, 1))
    if "margin" in out:
        out["margin"] = float(_number(out, "margin", 0, 1))
    if "repeats" in out:
        _number(out, "repeats", 1, MAX_REPEATS, integer=True)
    if "concurrency" in out:
        _number(out, "concurrency", 1, MAX_CONCURRENCY, integer=True)
    if "deadline_seconds" in out:
        _number(out, "deadline_seconds", 10, 7 * 86400, integer=True)
    if "reducer" in out and out["reducer"] not in REDUCERS:
        raise ValidationFailed(f"reducer must be one of {', '.join(REDUCERS)}", param="reducer")
    if "gating_metrics" in out:
        metrics = out["gating_metrics"] or []
        if not isinstance(metrics, list) or not all(isinstance(m, str) and m for m in metrics):
            raise ValidationFailed("gating_metrics must be a list of metric names", param="gating_metrics")
        out["gating_metrics"] = metrics
    if out.get("cost_budget_usd") is not None:
        try:
            budget = Decimal(str(out["cost_budget_usd"]))
        except InvalidOperation:
            raise ValidationFailed("cost_budget_usd must be a decimal", param="cost_budget_usd") from None
        if not budget.is_finite() or budget <= 0 or budget > Decimal("1000000"):
            raise ValidationFailed("cost_budget_usd must be between 0 and 1000000", param="cost_budget_usd")
        out["cost_budget_usd"] = budget
    if out.get("schedule_minutes") is not None:
        _number(out, "schedule_minutes", 5, 525_600, integer=True)
    return out


def _public(suite: Suite) -> dict:
    return {
        "name": suite.name,
        "dataset_id": suite.dataset_id,
        "dataset_version_id": suite.dataset_version_id,
        "assertions": suite.assertions,
        "pass_threshold": suite.pass_threshold,
        "repeats": suite.repeats,
        "reducer": suite.reducer,
        "margin": suite.margin,
        "concurrency": suite.concurrency,
        "cost_budget_usd": str(suite.cost_budget_usd) if suite.cost_budget_usd is not None else None,
    }


def suite_create(*, organisation: Organisation, actor: Actor, **fields) -> Suite:
    """A suite; `name`, `dataset` and `assertions` are required. Names are unique (Conflict). Audited."""
    for required in ("name", "dataset", "assertions"):
        if required not in fields:
            raise ValidationFailed(f"{required} is required", param=required)
    clean = suite_validate(organisation=organisation, fields=fields)
    with transaction.atomic():
        if Suite.objects.filter(organisation=organisation, name=clean["name"]).exists():
            raise Conflict(f"A suite named {clean['name']!r} already exists.", param="name")
        suite = Suite.objects.create(organisation=organisation, **clean)
        audit_event_record(
            organisation_id=organisation.id,
            actor=actor,
            action=Action.SUITE_CREATED,
            target_type="suite",
            target_id=suite.id,
            after=_public(suite),
        )
    return suite


def suite_update(*, suite: Suite, actor: Actor, **fields) -> Suite:
    """Change any of SUITE_FIELDS (validated as on create). Runs already started keep what they pinned. Audited."""
    if "dataset" in fields and "dataset_version" not in fields and fields["dataset"] != suite.dataset:
        fields["dataset_version"] = None
    if "dataset_version" in fields and "dataset" not in fields:
        fields["dataset"] = suite.dataset
    clean = suite_validate(organisation=suite.organisation, fields=fields)
    with transaction.atomic():
        locked = Suite.objects.select_for_update().get(pk=suite.pk)
        before = _public(locked)
        if (
            "name" in clean
            and Suite.objects.filter(organisation_id=locked.organisation_id, name=clean["name"])
            .exclude(pk=locked.pk)
            .exists()
        ):
            raise Conflict(f"A suite named {clean['name']!r} already exists.", param="name")
        for key, value in clean.items():
            setattr(locked, key, value)
        locked.save()
        audit_event_record(
            organisation_id=locked.organisation_id,
            actor=actor,
            action=Action.SUITE_UPDATED,
            target_type="suite",
            target_id=locked.id,
            before=before,
            after=_public(locked),
        )
    return locked


def suite_delete(*, suite: Suite, actor: Actor) -> None:
    """Delete a suite that no run used (Conflict otherwise: runs keep their suite). Audited."""
    with transaction.atomic():
        if suite.runs.exists():
            raise Conflict("This suite has runs; it cannot be deleted.", param="suite")
        before = _public(suite)
        organisation_id, suite_id = suite.organisation_id, suite.id
        suite.delete()
        audit_event_record(
            organisation_id=organisation_id,
            actor=actor,
            action=Action.SUITE_DELETED,
            target_type="suite",
            target_id=suite_id,
            before=before,
        )
