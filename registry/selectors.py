"""Reads from the prompt registry, including the proxy's hot path `aprompt_resolve`.

Resolution (organisation, name, label | version) -> version content is cached in process
(core.invalidation.LocalCache, namespace "registry"), dropped everywhere within the poll bound
after any label move, version or import. Rendering binds the variables on every call, with the
version's templates compiled once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass, field

from django.db import connections
from django.db.models import BooleanField, Exists, OuterRef, Q, QuerySet
from django.db.models.expressions import RawSQL

from accounts.models import Organisation
from core.db import aread
from core.errors import NotFound, ValidationFailed
from core.invalidation import LocalCache
from registry.experiments import Assignment, assignment_pick, experiment_running_for, thresholds_for
from registry.models import DEFAULT_LABEL, Label, LabelMove, PromotionRequest, PromotionStatus, Prompt, PromptVersion
from registry.rendering import CompiledVersion, arender, compiled_cache
from registry.services import REGISTRY_NAMESPACE


@dataclass(frozen=True)
class RenderedPrompt:
    prompt_id: int
    prompt_name: str
    version_id: int
    version_number: int
    label: str | None
    messages: list[dict]
    model: str | None
    params: dict = field(default_factory=dict)
    # Set when a running experiment on the label chose this version (registry.experiments).
    experiment: Assignment | None = None


@dataclass(frozen=True)
class _Split:
    """A running experiment on a label, cached with the label's resolution: no query per request."""

    experiment_id: int
    sticky_by: str
    thresholds: tuple[float, ...]
    arms: tuple[_Resolved, ...]
    names: tuple[str, ...]

    def pick(self, user: str | None, user_header: str | None) -> tuple[_Resolved, Assignment]:
        index, sticky = assignment_pick(
            experiment_id=self.experiment_id,
            thresholds=self.thresholds,
            sticky_by=self.sticky_by,
            user=user,
            user_header=user_header,
        )
        return self.arms[index], Assignment(self.experiment_id, self.names[index], sticky)


@dataclass(frozen=True)
class _Resolved:
    prompt_id: int
    prompt_name: str
    version_id: int
    version_number: int
    label: str | None
    model: str | None
    params: dict
    compiled: CompiledVersion
    split: _Split | None = None


@dataclass(frozen=True)
class _Missing:
    """A cached miss, so a flood of requests for an unknown prompt does not hit the database."""

    code: str
    message: str
    param: str


_resolved = LocalCache(REGISTRY_NAMESPACE, max_entries=20_000)


def _reference(name: str, label: str | None, version: int | None) -> tuple[str, object]:
    if not isinstance(name, str) or not name or len(name) > 100:
        raise ValidationFailed("prompt.name must be a prompt name.", param="prompt.name")
    if label is not None and version is not None:
        raise ValidationFailed("Give a prompt label or a version number, not both.", param="prompt.label")
    if version is not None:
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValidationFailed("prompt.version must be a positive integer.", param="prompt.version")
        return ("version", version)
    if label is None:
        label = DEFAULT_LABEL
    if not isinstance(label, str) or not label:
        raise ValidationFailed("prompt.label must be a label name.", param="prompt.label")
    return ("label", label)


def _resolve_load(organisation_id: int, name: str, kind: str, ref) -> _Resolved | _Missing:
    prompt = Prompt.objects.filter(organisation_id=organisation_id, name=name).only("id", "name").first()
    if prompt is None:
        return _Missing("prompt_not_found", f"No prompt named {name!r}.", "prompt.name")
    if kind == "label":
        label = Label.objects.filter(prompt=prompt, name=ref).select_related("version").first()
        if label is None:
            return _Missing("label_not_found", f"Prompt {name!r} has no label {ref!r}.", "prompt.label")
        version = label.version
    else:
        version = PromptVersion.objects.filter(prompt=prompt, number=ref).first()
        if version is None:
            return _Missing("version_not_found", f"Prompt {name!r} has no version {ref}.", "prompt.version")
    resolved = _resolved_of(prompt, version, ref if kind == "label" else None)
    if kind == "label":
        experiment = experiment_running_for(prompt_id=prompt.id, label=ref, control_version_id=version.id)
        if experiment is not None:
            variants = sorted(experiment.variants.all(), key=lambda v: v.position)
            split = _Split(
                experiment_id=experiment.id,
                sticky_by=experiment.sticky_by,
                thresholds=thresholds_for(v.weight for v in variants),
                arms=tuple(_resolved_of(prompt, v.version, ref) for v in variants),
                names=tuple(v.name for v in variants),
            )
            resolved = dataclasses.replace(resolved, split=split)
    return resolved


def _resolved_of(prompt: Prompt, version: PromptVersion, label: str | None) -> _Resolved:
    compiled = compiled_cache.get_or_compile(
        version_id=version.id, content_hash=version.content_hash, messages=version.messages, variables=version.variables
    )
    return _Resolved(
        prompt_id=prompt.id,
        prompt_name=prompt.name,
        version_id=version.id,
        version_number=version.number,
        label=label,
        model=version.model or None,
        params=dict(version.params),
        compiled=compiled,
    )


def _finish(
    found: _Resolved | _Missing, variables: dict | None, assignment: Assignment | None = None
) -> RenderedPrompt:
    if isinstance(found, _Missing):
        raise NotFound(found.message, code=found.code, param=found.param)
    return RenderedPrompt(
        prompt_id=found.prompt_id,
        prompt_name=found.prompt_name,
        version_id=found.version_id,
        version_number=found.version_number,
        label=found.label,
        messages=found.compiled.render(variables),
        model=found.model,
        # A copy: callers may merge overrides into it without touching the cache.
        params=dict(found.params),
        experiment=assignment,
    )


def prompt_resolve(
    *,
    organisation_id: int,
    name: str,
    label: str | None = None,
    version: int | None = None,
    variables: dict | None = None,
    user: str | None = None,
    user_header: str | None = None,
) -> RenderedPrompt:
    """Render prompt `name` at `label` (default "production") or at `version`.

    A label under a running experiment renders the version the end user's sticky key picks (`user`,
    the request's `user` field; `user_header`, its x-steward-user header; see registry.experiments),
    and the result's `experiment` says which arm it was.

    Archived prompts resolve like any other, by version and by label: archiving hides a prompt from
    lists and pickers, it never breaks the traffic that still uses it.

    Raises NotFound (prompt_not_found / label_not_found / version_not_found) or ValidationFailed
    (prompt_render_error, param prompt.variables, extra["missing"] lists every missing variable).
    """
    kind, ref = _reference(name, label, version)
    key = (organisation_id, name, kind, ref)
    found = _resolved.get(key)
    if found is None:
        epoch = _resolved.epoch()
        found = _resolve_load(organisation_id, name, kind, ref)
        _resolved.set(key, found, epoch=epoch)
    assignment = None
    if isinstance(found, _Resolved) and found.split is not None:
        found, assignment = found.split.pick(user, user_header)
    return _finish(found, variables, assignment)


async def aprompt_resolve(
    *,
    organisation_id: int,
    name: str,
    label: str | None = None,
    version: int | None = None,
    variables: dict | None = None,
    user: str | None = None,
    user_header: str | None = None,
) -> RenderedPrompt:
    """Async twin of `prompt_resolve`: no thread hop and no query when the version (and the label's
    experiment split, if any) is cached in process."""
    kind, ref = _reference(name, label, version)
    key = (organisation_id, name, kind, ref)
    found = _resolved.get(key)
    if found is None:
        epoch = _resolved.epoch()
        found = await aread(_resolve_load, organisation_id, name, kind, ref)
        _resolved.set(key, found, epoch=epoch)
    assignment = None
    if isinstance(found, _Resolved):
        if found.split is not None:
            found, assignment = found.split.pick(user, user_header)
        if found.compiled.loops:
            # Loops and macros may use their whole time limit (STEWARD_RENDER_TIME_LIMIT_MS): off the
            # event loop, so other requests are served meanwhile. Plain templates render inline (µs).
            return await arender(_finish, found, variables, assignment)
    return _finish(found, variables, assignment)


# --- pages and the management API ------------------------------------------------------------


ARCHIVED_EXCLUDE, ARCHIVED_INCLUDE, ARCHIVED_ONLY = "exclude", "include", "only"
ARCHIVED_CHOICES = (ARCHIVED_EXCLUDE, ARCHIVED_INCLUDE, ARCHIVED_ONLY)


def prompts_list(
    *,
    organisation: Organisation,
    search: str = "",
    tag: str = "",
    label: str = "",
    names: Collection[str] | None = None,
    archived: str = ARCHIVED_EXCLUDE,
) -> QuerySet[Prompt]:
    """The organisation's prompts; `names` (an API key's allowed_prompts) confines them further.

    Archived prompts are left out unless `archived` is "include" (with the others) or "only"; lists and
    pickers keep the default, so an archived prompt disappears from them while it still resolves."""
    if archived not in ARCHIVED_CHOICES:
        raise ValidationFailed(f"archived must be one of {', '.join(ARCHIVED_CHOICES)}.", param="archived")
    qs = Prompt.objects.filter(organisation=organisation).prefetch_related("labels__version")
    if archived == ARCHIVED_EXCLUDE:
        qs = qs.filter(archived_at__isnull=True)
    elif archived == ARCHIVED_ONLY:
        qs = qs.filter(archived_at__isnull=False)
    if names is not None:
        qs = qs.filter(name__in=list(names))
    if search:
        qs = qs.filter(Q(name__icontains=search) | Q(description__icontains=search))
    if tag:
        qs = _with_tag(qs, tag.strip().lower())
    if label:
        qs = qs.filter(Exists(Label.objects.filter(prompt=OuterRef("pk"), name=label)))
    return qs.order_by("name")


def _with_tag(qs: QuerySet[Prompt], tag: str) -> QuerySet[Prompt]:
    connection = connections[qs.db]
    if connection.features.supports_json_field_contains:
        return qs.filter(tags__contains=[tag])
    # SQLite (make run's default database) has no JSON containment (Django raises NotSupportedError);
    # json_each walks the list instead. Same answer: tags are a flat list of lowercase strings.
    # The tag is a bound parameter; the rest of the SQL is constant (registry_prompt is Prompt's table).
    has_tag = RawSQL(
        'EXISTS (SELECT 1 FROM json_each("registry_prompt"."tags") WHERE json_each.value = %s)',
        [tag],
        output_field=BooleanField(),
    )
    return qs.alias(has_tag=has_tag).filter(has_tag=True)


def prompt_names(*, organisation: Organisation, names: Collection[str] | None = None) -> list[str]:
    """Names for prompt pickers: the organisation's prompts that are not archived, sorted."""
    qs = Prompt.objects.filter(organisation=organisation, archived_at__isnull=True)
    if names is not None:
        qs = qs.filter(name__in=list(names))
    return list(qs.order_by("name").values_list("name", flat=True))


def prompt_tags(*, organisation: Organisation) -> list[str]:
    tags: set[str] = set()
    for row in Prompt.objects.filter(organisation=organisation).values_list("tags", flat=True):
        tags.update(row or [])
    return sorted(tags)


def prompt_label_names(*, organisation: Organisation) -> list[str]:
    return sorted(set(Label.objects.filter(prompt__organisation=organisation).values_list("name", flat=True)))


def prompt_get(*, organisation: Organisation, name: str, names: Collection[str] | None = None) -> Prompt:
    """The prompt called `name`; NotFound also when `names` (a key's allowed_prompts) leaves it out, so a
    confined key cannot tell other prompts' names from missing ones."""
    if names is not None and name not in names:
        raise NotFound(f"No prompt named {name!r}.", code="prompt_not_found")
    prompt = Prompt.objects.filter(organisation=organisation, name=name).first()
    if prompt is None:
        raise NotFound(f"No prompt named {name!r}.", code="prompt_not_found")
    return prompt


def prompt_versions(*, prompt: Prompt) -> QuerySet[PromptVersion]:
    return PromptVersion.objects.filter(prompt=prompt).select_related("author").order_by("-number")


def prompt_version_get(*, prompt: Prompt, number: int) -> PromptVersion:
    version = PromptVersion.objects.filter(prompt=prompt, number=number).first()
    if version is None:
        raise NotFound(f"Prompt {prompt.name!r} has no version {number}.", code="version_not_found")
    return version


def prompt_version_latest(*, prompt: Prompt) -> PromptVersion | None:
    return PromptVersion.objects.filter(prompt=prompt).order_by("-number").first()


def prompt_labels(*, prompt: Prompt) -> QuerySet[Label]:
    return Label.objects.filter(prompt=prompt).select_related("version").order_by("name")


def label_history(*, prompt: Prompt, label: str | None = None) -> QuerySet[LabelMove]:
    qs = LabelMove.objects.filter(prompt=prompt).select_related("from_version", "to_version")
    if label:
        qs = qs.filter(label=label)
    return qs.order_by("-created_at", "-id")


def promotion_requests(
    *,
    organisation: Organisation,
    prompt: Prompt | None = None,
    status: str | None = None,
    names: Collection[str] | None = None,
) -> QuerySet[PromotionRequest]:
    qs = PromotionRequest.objects.filter(prompt__organisation=organisation).select_related(
        "prompt", "from_version", "to_version"
    )
    if names is not None:
        qs = qs.filter(prompt__name__in=list(names))
    if prompt is not None:
        qs = qs.filter(prompt=prompt)
    if status:
        qs = qs.filter(status=status)
    return qs.order_by("-created_at")


def promotion_request_get(
    *, organisation: Organisation, request_id: int, names: Collection[str] | None = None
) -> PromotionRequest:
    found = promotion_requests(organisation=organisation, names=names).filter(pk=request_id).first()
    if found is None:
        raise NotFound("No such promotion request.", code="promotion_not_found")
    return found


def pending_promotions(*, prompt: Prompt) -> QuerySet[PromotionRequest]:
    return promotion_requests(organisation=prompt.organisation, prompt=prompt, status=PromotionStatus.PENDING)


def prompt_version_render(*, version: PromptVersion, variables: dict | None) -> list[dict]:
    """Dry run: the rendered messages of `version` (no model call). Raises ValidationFailed like resolve."""
    compiled = compiled_cache.get_or_compile(
        version_id=version.id, content_hash=version.content_hash, messages=version.messages, variables=version.variables
    )
    return compiled.render(variables)


def version_as_dict(version: PromptVersion) -> dict:
    return {
        "messages": version.messages,
        "model": version.model,
        "params": version.params,
        "variables": version.variables,
    }


__all__ = ["RenderedPrompt", "aprompt_resolve", "prompt_resolve"]
