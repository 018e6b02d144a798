"""YAML export and import of prompts with all their versions and labels, so teams can keep prompts in git.

Import is idempotent: versions already present with the same number must have the same content
hash, missing versions are appended in order, labels are created or moved. A protected label of a
prompt that existed before the import is never set or moved by it: the import opens a promotion
request instead (approved by another prompt engineer, as for a move in the UI), or, for an API key,
which can neither request nor approve promotions, refuses the file. Only a prompt the import itself
creates gets its labels as the file says. Anything that does not fit rejects the whole file; nothing
is half-written (one transaction).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import yaml
from django.db import transaction
from django.utils.dateparse import parse_datetime

from accounts.models import Organisation
from audit.actions import Action
from audit.services import audit_event_record
from core.actors import Actor, ActorType
from core.errors import Conflict, Forbidden, ValidationFailed
from core.invalidation import invalidate
from registry.content import content_hash, label_validate, name_validate, version_content_validate
from registry.models import Label, PromotionRequest, PromotionStatus, Prompt, PromptVersion
from registry.services import (
    REGISTRY_NAMESPACE,
    WRITER_ROLES,
    _label_set,
    _require_role,
    _tags_clean,
    promotion_request_create,
    prompt_create,
    prompt_version_create,
)

FORMAT_KEY = "steward_prompts"
FORMAT_VERSION = 1
MAX_IMPORT_BYTES = 20 * 1024 * 1024


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper, data: str):
    # Multi-line templates read best as literal blocks in git diffs.
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_presenter)


def prompt_export_data(*, prompt: Prompt) -> dict:
    versions = PromptVersion.objects.filter(prompt=prompt).order_by("number")
    labels = Label.objects.filter(prompt=prompt).select_related("version").order_by("name")
    return {
        "name": prompt.name,
        "description": prompt.description,
        "tags": list(prompt.tags),
        "protected_labels": list(prompt.protected_labels),
        "labels": {label.name: label.version.number for label in labels},
        "versions": [
            {
                "number": v.number,
                "hash": v.content_hash,
                "created_at": v.created_at.isoformat(),
                "author": v.author_label,
                "commit_message": v.commit_message,
                "model": v.model,
                "params": v.params,
                "variables": v.variables,
                "messages": v.messages,
            }
            for v in versions
        ],
    }


def prompts_export(*, prompts) -> str:
    """YAML text with every given prompt, all its versions and labels."""
    document = {FORMAT_KEY: FORMAT_VERSION, "prompts": [prompt_export_data(prompt=p) for p in prompts]}
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


@dataclass
class ImportResult:
    prompts_created: list[str] = field(default_factory=list)
    versions_created: list[str] = field(default_factory=list)
    labels_changed: list[str] = field(default_factory=list)
    prompts_updated: list[str] = field(default_factory=list)
    # Protected labels the file moves: opened as promotion requests, not moved.
    promotions_requested: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(
            self.prompts_created
            or self.versions_created
            or self.labels_changed
            or self.prompts_updated
            or self.promotions_requested
        )

    def as_dict(self) -> dict:
        return {
            "changed": self.changed,
            "prompts_created": self.prompts_created,
            "versions_created": self.versions_created,
            "labels_changed": self.labels_changed,
            "prompts_updated": self.prompts_updated,
            "promotions_requested": self.promotions_requested,
        }


def _bad(message: str, param: str = "file") -> ValidationFailed:
    return ValidationFailed(message, param=param, code="import_invalid")


def _parse(text: str | bytes) -> list[dict]:
    if isinstance(text, bytes):
        if len(text) > MAX_IMPORT_BYTES:
            raise _bad(f"The file is larger than {MAX_IMPORT_BYTES} bytes.")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _bad("The file is not UTF-8 text.") from exc
    if len(text) > MAX_IMPORT_BYTES:
        raise _bad(f"The file is larger than {MAX_IMPORT_BYTES} bytes.")
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _bad(f"The file is not valid YAML: {exc}") from exc
    if not isinstance(document, dict) or document.get(FORMAT_KEY) != FORMAT_VERSION:
        raise _bad(f"Not a Steward prompts file (expected '{FORMAT_KEY}: {FORMAT_VERSION}' at the top).")
    prompts = document.get("prompts")
    if not isinstance(prompts, list):
        raise _bad("'prompts' must be a list.")
    names = [p.get("name") if isinstance(p, dict) else None for p in prompts]
    if len(set(map(str, names))) != len(names):
        raise _bad("A prompt appears twice in the file.")
    return prompts


def _created_at(value) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    parsed = parse_datetime(str(value))
    if parsed is None:
        raise _bad(f"created_at {value!r} is not a date-time.")
    return parsed


def _protected_label_request(
    *, prompt: Prompt, label: str, target: PromptVersion, actor: Actor, roles, result: ImportResult
) -> None:
    """The file wants protected `label` of an existing prompt at `target`: ask for it, do not move it."""
    where = f"prompts[{prompt.name}]"
    if actor.type == ActorType.API_KEY:
        raise Forbidden(
            f"{prompt.name}: label {label!r} is protected; an API key cannot move it, nor request a promotion. "
            "A prompt engineer can import this file (the move becomes a promotion request).",
            code="api_key_forbidden",
            param=where,
        )
    pending = PromotionRequest.objects.filter(prompt=prompt, label=label, status=PromotionStatus.PENDING).first()
    if pending is not None:
        if pending.to_version_id == target.id:
            return  # asked already (an earlier import of this file): nothing new
        raise Conflict(
            f"{prompt.name}: a promotion of protected label {label!r} to another version is pending; "
            "decide it before importing this file.",
            code="import_conflict",
            param=where,
        )
    promotion_request_create(prompt=prompt, label=label, version=target, reason="import", actor=actor, roles=roles)
    result.promotions_requested.append(f"{prompt.name}:{label} -> v{target.number}")


def _import_one(
    *, organisation: Organisation, data: dict, actor: Actor, roles, result: ImportResult, names=None
) -> None:
    if not isinstance(data, dict):
        raise _bad("Each prompt must be a mapping.")
    name = name_validate(data.get("name"))
    where = f"prompts[{name}]"
    if names is not None and name not in names:
        # Refused before looking the name up, so a confined key learns nothing about other prompts.
        raise Forbidden(f"This API key may not import prompt {name!r} (not in its allowed_prompts).", param=where)
    versions = data.get("versions") or []
    labels = data.get("labels") or {}
    if not isinstance(versions, list) or not isinstance(labels, dict):
        raise _bad(f"{name}: 'versions' must be a list and 'labels' a mapping.", where)
    tags = _tags_clean(data.get("tags") or [])
    protected = sorted({label_validate(x) for x in data.get("protected_labels") or []})
    description = data.get("description") or ""

    prompt = Prompt.objects.select_for_update().filter(organisation=organisation, name=name).first()
    created_here = prompt is None
    if prompt is None:
        prompt = prompt_create(
            organisation=organisation,
            name=name,
            description=description,
            tags=tags,
            protected_labels=protected,
            actor=actor,
            roles=WRITER_ROLES,
        )
        result.prompts_created.append(name)
    else:
        wanted_protected = sorted(set(prompt.protected_labels) | set(protected))
        if wanted_protected != sorted(prompt.protected_labels) and actor.type == ActorType.API_KEY:
            raise Forbidden(
                f"{name}: the file protects labels this prompt does not protect; API keys cannot change "
                "label protection.",
                code="api_key_forbidden",
                param=where,
            )
        if (prompt.description, prompt.tags, prompt.protected_labels) != (description, tags, wanted_protected):
            before = {"description": prompt.description, "tags": prompt.tags, "protected": prompt.protected_labels}
            # Import may add label protection but never lift it: that stays an admin's decision.
            prompt.description, prompt.tags, prompt.protected_labels = description, tags, wanted_protected
            prompt.save(update_fields=["description", "tags", "protected_labels", "updated_at"])
            audit_event_record(
                organisation_id=organisation.id,
                actor=actor,
                action=Action.PROMPT_UPDATED,
                target_type="prompt",
                target_id=prompt.id,
                before=before,
                after={"description": description, "tags": tags, "protected": wanted_protected},
            )
            result.prompts_updated.append(name)

    existing = {v.number: v for v in PromptVersion.objects.filter(prompt=prompt)}
    for index, item in enumerate(sorted(versions, key=lambda v: v.get("number", 0) if isinstance(v, dict) else 0)):
        if not isinstance(item, dict) or not isinstance(item.get("number"), int) or isinstance(item["number"], bool):
            raise _bad(f"{name}: version {index + 1} needs an integer 'number'.", where)
        number = item["number"]
        content = version_content_validate(
            messages=item.get("messages"),
            model=item.get("model"),
            params=item.get("params"),
            variables=item.get("variables"),
        )
        computed = content.content_hash
        if item.get("hash") and item["hash"] != computed:
            raise _bad(f"{name} v{number}: the hash does not match the content (edited by hand?).", where)
        local = existing.get(number)
        if local is not None:
            if local.content_hash != computed:
                raise Conflict(
                    f"{name} v{number} differs from the version already stored here; nothing was imported.",
                    code="import_conflict",
                    param=where,
                )
            continue
        if number != prompt.latest_number + 1:
            raise Conflict(
                f"{name}: version {number} cannot follow v{prompt.latest_number}; versions must be consecutive.",
                code="import_conflict",
                param=where,
            )
        created = prompt_version_create(
            prompt=prompt,
            messages=content.messages,
            model=content.model,
            params=content.params,
            variables=content.variables,
            commit_message=str(item.get("commit_message") or ""),
            actor=actor,
            roles=WRITER_ROLES,
            created_at=_created_at(item.get("created_at")),
            author_label=str(item.get("author") or actor.label),
        )
        existing[number] = created
        result.versions_created.append(f"{name} v{number}")

    for label_name, number in sorted(labels.items()):
        label_name = label_validate(label_name)
        if number not in existing:
            raise _bad(f"{name}: label {label_name!r} points at v{number}, which is not in the file.", where)
        target = existing[number]
        current = Label.objects.filter(prompt=prompt, name=label_name).first()
        if current is not None and current.version_id == target.id:
            continue
        if not created_here and prompt.label_is_protected(label_name):
            _protected_label_request(
                prompt=prompt, label=label_name, target=target, actor=actor, roles=roles, result=result
            )
            continue
        _label_set(prompt=prompt, label=label_name, version=target, actor=actor, reason="import")
        result.labels_changed.append(f"{name}:{label_name} -> v{number}")


def prompts_import(
    *, organisation: Organisation, text: str | bytes, actor: Actor, roles=None, names=None
) -> ImportResult:
    """Import a file made by `prompts_export`. Idempotent; all-or-nothing (raises and stores nothing on any
    conflict or invalid content). Audited per prompt; invalidates resolve caches when anything changed.

    `names` (an API key's allowed_prompts) refuses a file naming any other prompt. Protected labels of
    existing prompts become promotion requests (Forbidden for API keys), see the module docstring."""
    _require_role(actor=actor, roles=roles, allowed=WRITER_ROLES, doing="Importing prompts")
    prompts = _parse(text)
    result = ImportResult()
    with transaction.atomic():
        for data in prompts:
            _import_one(organisation=organisation, data=data, actor=actor, roles=roles, result=result, names=names)
        if result.changed:
            audit_event_record(
                organisation_id=organisation.id,
                actor=actor,
                action=Action.PROMPT_IMPORTED,
                target_type="organisation",
                target_id=organisation.id,
                after=result.as_dict(),
            )
            invalidate(REGISTRY_NAMESPACE)
    return result


__all__ = ["ImportResult", "content_hash", "prompts_export", "prompts_import"]
