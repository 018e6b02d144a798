"""The policy pages: the list (with where each policy applies), a policy's page (its filters with their
false-positive rates, actions, attachments, recent holds), the editor, the attach form and the
organisation's redacted-logging switch.

Admins change policies; prompt engineers and reviewers look. Writes go through
safety.policy_services; full pages use POST-redirect-GET; the editor adds filter entries with htmx
(or, without JavaScript, by posting the form's "Add" button, which re-renders without saving).
"""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.permissions import role_required
from accounts.roles import Role
from core.errors import ApplicationError
from safety.models import PolicyAttachment, SafetyPolicy
from safety.policy_forms import (
    AttachForm,
    FilterEntryRow,
    PolicyForm,
    SafetySettingsForm,
    action_rows,
    editor_parse,
    entry_row,
)
from safety.policy_selectors import (
    attachment_get,
    attachment_targets,
    attachments_list,
    filter_catalogue_public,
    policies_list,
    policy_false_positive_rates,
    policy_get,
    policy_recent_holds,
    safety_settings_get,
)
from safety.policy_services import (
    policy_attach,
    policy_create,
    policy_delete,
    policy_detach,
    policy_update,
    safety_settings_update,
)
from safety.policy_validation import ACTIONS, DEFAULTS, DIRECTIONS, PolicyInvalid, policy_validate

READERS = (Role.ADMIN, Role.PROMPT_ENGINEER, Role.REVIEWER)
FORM_FIELDS = tuple(PolicyForm.base_fields)


def _policy_or_404(request, policy_id: int) -> SafetyPolicy:
    try:
        return policy_get(organisation=request.org.organisation, policy_id=policy_id)
    except SafetyPolicy.DoesNotExist:
        raise Http404 from None


def _catalogue() -> dict[str, dict]:
    return {entry["name"]: entry for entry in filter_catalogue_public()}


def _can_edit(request) -> bool:
    return request.org.has_role(Role.ADMIN)


# --- list and detail -------------------------------------------------------------------------


@require_GET
@role_required(*READERS)
def policy_list(request):
    organisation = request.org.organisation
    attached: dict[int, list] = {}
    for attachment in attachments_list(organisation=organisation):
        attached.setdefault(attachment.policy_id, []).append(attachment)
    rows = [{"policy": p, "attachments": attached.get(p.id, [])} for p in policies_list(organisation=organisation)]
    settings = safety_settings_get(organisation=organisation)
    context = {
        "rows": rows,
        "can_edit": _can_edit(request),
        "settings": settings,
        "settings_form": SafetySettingsForm(initial={"require_redacted_logging": settings.require_redacted_logging}),
    }
    return render(request, "safety/policy_list.html", context)


@require_GET
@role_required(*READERS)
def policy_detail(request, policy_id: int):
    policy = _policy_or_404(request, policy_id)
    rates = {row["filter"]: row for row in policy_false_positive_rates(policy=policy)}
    catalogue = _catalogue()
    filters = [
        {"entry": entry, "rate": rates.get(entry.get("filter")), "catalogue": catalogue.get(entry.get("filter"))}
        for entry in policy.filters
    ]
    retired = [row for name, row in rates.items() if name not in {e.get("filter") for e in policy.filters}]
    context = {
        "policy": policy,
        "filters": filters,
        "retired_rates": retired,
        "attachments": attachments_list(organisation=request.org.organisation, policy=policy),
        "holds": policy_recent_holds(policy=policy),
        "can_edit": _can_edit(request),
    }
    return render(request, "safety/policy_detail.html", context)


# --- editor ----------------------------------------------------------------------------------


def _initial(policy: SafetyPolicy | None) -> dict:
    if policy is None:
        return {field: DEFAULTS[field] for field in FORM_FIELDS if field in DEFAULTS}
    return {field: getattr(policy, field) for field in FORM_FIELDS}


def _errors_apply(form: PolicyForm, rows: list[FilterEntryRow], errors: dict[str, list[str]]) -> list[str]:
    """Put each service error beside its field or filter entry; return the actions' errors."""
    action_errors: list[str] = []
    for key, messages_ in errors.items():
        if key.startswith("filters["):
            index_text, _, rest = key.removeprefix("filters[").partition("]")
            index = int(index_text) if index_text.isdigit() else -1
            if 0 <= index < len(rows):
                sub = rest.lstrip(".").split(".", 1)[0] or "entry"
                rows[index].errors.setdefault(sub, []).extend(messages_)
                continue
        if key == "actions" or key.startswith("actions."):
            action_errors.extend(messages_)
        elif key in form.fields:
            for message in messages_:
                form.add_error(key, message)
        else:
            for message in messages_:
                form.add_error(None, message)
    return action_errors


def _entry_errors(form: PolicyForm, parsed) -> dict[str, list[str]]:
    """Besides the form's own errors, what the service would say of the filters and actions, so
    every mistake shows at once (a JSON typo in one entry does not hide a bad setting in another)."""
    errors = {key: list(messages_) for key, messages_ in parsed.errors.items()}
    deadline = form.cleaned_data.get("deadline_ms") if hasattr(form, "cleaned_data") else None
    fields = {"filters": parsed.entries, "actions": parsed.actions}
    if deadline:
        fields["deadline_ms"] = deadline
    try:
        policy_validate(fields)
    except PolicyInvalid as exc:
        for key, messages_ in exc.errors.items():
            if key.startswith(("filters", "actions")) and key not in errors:
                errors[key] = messages_
    return errors


def _editor(request, policy: SafetyPolicy | None):
    catalogue = _catalogue()
    action_errors: list[str] = []
    if request.method != "POST":
        form = PolicyForm(initial=_initial(policy))
        entries = list(policy.filters) if policy else []
        rows = [entry_row(i, e, catalogue) for i, e in enumerate(entries)]
        actions = dict(policy.actions) if policy else {}
        kinds, lines = action_rows(entries, actions, catalogue)
    else:
        parsed = editor_parse(request.POST, catalogue)
        entries, rows, actions = parsed.entries, parsed.rows, parsed.actions
        kinds, lines = action_rows(entries, actions, catalogue)
        adding = request.POST.get("add")
        if adding:
            # The no-JavaScript way to add a filter: re-render with one more entry, nothing saved.
            new = {"filter": request.POST.get("add_filter", ""), "settings": {}}
            if new["filter"] in catalogue:
                entries.append(new)
                rows.append(entry_row(len(rows), new, catalogue))
                kinds, lines = action_rows(entries, actions, catalogue)
            data = {f: request.POST.get(f) for f in FORM_FIELDS}
            for flag in ("store_redacted_only", "is_active"):
                data[flag] = flag in request.POST
            form = PolicyForm(initial=data)
        else:
            form = PolicyForm(request.POST)
            if form.is_valid() and not parsed.errors:
                fields = {**form.cleaned_data, "filters": entries, "actions": actions}
                try:
                    if policy is None:
                        saved = policy_create(organisation=request.org.organisation, actor=request.org.actor, **fields)
                    else:
                        saved = policy_update(policy=policy, actor=request.org.actor, **fields)
                except PolicyInvalid as exc:
                    action_errors = _errors_apply(form, rows, exc.errors)
                except ApplicationError as exc:
                    form.add_error(exc.param if exc.param in form.fields else None, exc.message)
                else:
                    messages.success(request, f"Policy {saved.name} saved.")
                    return redirect("safety:policy_detail", policy_id=saved.id)
            else:
                action_errors = _errors_apply(form, rows, _entry_errors(form, parsed))
    context = {
        "form": form,
        "policy": policy,
        "rows": rows,
        "next_index": len(rows),
        "catalogue": sorted(catalogue.values(), key=lambda c: c["name"]),
        "action_kinds": kinds,
        "action_lines": lines,
        "action_errors": action_errors,
        "action_choices": ACTIONS,
        "directions": DIRECTIONS,
    }
    return render(request, "safety/policy_form.html", context)


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def policy_create_view(request):
    return _editor(request, None)


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def policy_edit(request, policy_id: int):
    return _editor(request, _policy_or_404(request, policy_id))


@require_GET
@role_required(Role.ADMIN)
def policy_filter_entry(request):
    """htmx: one new filter entry for the editor (and its kinds' action rows, swapped in out of band)."""
    catalogue = _catalogue()
    name = request.GET.get("add_filter", "")
    raw = request.GET.get("next", "0")
    index = int(raw) if raw.isdigit() and len(raw) < 5 else 0
    if name not in catalogue:
        raise Http404
    entry = {"filter": name, "settings": {}}
    kinds, _ = action_rows([entry], {}, catalogue)
    context = {
        "row": entry_row(index, entry, catalogue),
        "next_index": index + 1,
        "action_kinds": [k for k in kinds if k[0] != "*"],
        "action_choices": ACTIONS,
        "directions": DIRECTIONS,
    }
    return render(request, "safety/partials/_policy_filter_added.html", context)


@require_POST
@role_required(Role.ADMIN)
def policy_delete_view(request, policy_id: int):
    policy = _policy_or_404(request, policy_id)
    policy_delete(policy=policy, actor=request.org.actor)
    messages.success(request, f"Policy {policy.name} deleted; its targets fall back to the next policy.")
    return redirect("safety:policy_list")


# --- attachments -----------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def policy_attach_view(request, policy_id: int):
    policy = _policy_or_404(request, policy_id)
    organisation = request.org.organisation
    form = AttachForm(request.POST or None, targets=attachment_targets(organisation=organisation))
    if request.method == "POST" and form.is_valid():
        scope, target_id = form.cleaned_data["target"]
        try:
            policy_attach(
                organisation=organisation, policy=policy, scope=scope, target_id=target_id, actor=request.org.actor
            )
        except ApplicationError as exc:
            form.add_error("target", exc.message)
        else:
            messages.success(request, f"Policy {policy.name} attached.")
            return redirect("safety:policy_detail", policy_id=policy.id)
    context = {
        "policy": policy,
        "form": form,
        "attachments": attachments_list(organisation=organisation),
    }
    return render(request, "safety/policy_attach.html", context)


@require_POST
@role_required(Role.ADMIN)
def attachment_detach(request, attachment_id: int):
    try:
        attachment = attachment_get(organisation=request.org.organisation, attachment_id=attachment_id)
    except PolicyAttachment.DoesNotExist:
        raise Http404 from None
    policy_id = attachment.policy_id
    policy_detach(attachment=attachment, actor=request.org.actor)
    messages.success(request, "Detached.")
    return redirect("safety:policy_detail", policy_id=policy_id)


# --- settings --------------------------------------------------------------------------------


@require_POST
@role_required(Role.ADMIN)
def safety_settings_edit(request):
    form = SafetySettingsForm(request.POST)
    form.is_valid()  # a single checkbox: always valid
    settings = safety_settings_update(
        organisation=request.org.organisation,
        actor=request.org.actor,
        require_redacted_logging=bool(form.cleaned_data.get("require_redacted_logging")),
    )
    state = "required" if settings.require_redacted_logging else "no longer required"
    messages.success(request, f"Redacted logging is {state}.")
    return redirect("safety:policy_list")
