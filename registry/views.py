"""Web pages of the prompt registry: list, prompt page, editor, diff, playground, promotion, YAML."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from types import SimpleNamespace

from django.contrib import messages
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.permissions import role_required
from accounts.roles import Role
from core.errors import ApplicationError, NotFound
from registry import selectors, services
from registry.diffing import versions_diff
from registry.forms import DecisionForm, Draft, ImportForm, LabelMoveForm, PromptCreateForm, playground_values
from registry.models import PromotionRequest, PromotionStatus
from registry.playground import playground_backend, route_names
from registry.rendering import variables_detect
from registry.yaml_io import ImportResult, prompts_export, prompts_import

WRITERS = (Role.PROMPT_ENGINEER, Role.ADMIN)


def _prompt_or_404(request, prompt_name: str):
    try:
        return selectors.prompt_get(organisation=request.org.organisation, name=prompt_name)
    except NotFound:
        raise Http404("No such prompt") from None


def _version_or_404(prompt, number: int):
    try:
        return selectors.prompt_version_get(prompt=prompt, number=number)
    except NotFound:
        raise Http404("No such version") from None


def _can_write(request) -> bool:
    return request.org.has_role(*WRITERS)


# The prompt list's "Show" filter: its value in the URL -> prompts_list's `archived`.
ARCHIVED_FILTER = {
    "": selectors.ARCHIVED_EXCLUDE,
    "archived": selectors.ARCHIVED_ONLY,
    "all": selectors.ARCHIVED_INCLUDE,
}


@require_GET
@role_required()
def prompt_list(request):
    org = request.org.organisation
    q, tag, label, show = (request.GET.get(k, "").strip() for k in ("q", "tag", "label", "show"))
    if show not in ARCHIVED_FILTER:
        show = ""
    context = {
        "prompts": selectors.prompts_list(
            organisation=org, search=q, tag=tag, label=label, archived=ARCHIVED_FILTER[show]
        )[:500],
        "q": q,
        "tag": tag,
        "label": label,
        "show": show,
        "tags": selectors.prompt_tags(organisation=org),
        "labels": selectors.prompt_label_names(organisation=org),
        "can_write": _can_write(request),
    }
    if request.htmx:
        return render(request, "registry/partials/_prompt_rows.html", context)
    context["pending_promotions"] = selectors.promotion_requests(
        organisation=org, status=PromotionStatus.PENDING, names=request.org.allowed_prompts
    )[:100]
    return render(request, "registry/prompt_list.html", context)


@require_http_methods(["GET", "POST"])
@role_required(*WRITERS)
def prompt_create(request):
    form = PromptCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            prompt = services.prompt_create(
                organisation=request.org.organisation,
                name=data["name"],
                description=data["description"],
                tags=data["tags"],
                protected_labels=["production"] if data["protect_production"] else [],
                actor=request.org.actor,
                roles=request.org.roles,
            )
        except ApplicationError as exc:
            form.add_error("name" if exc.param == "name" else None, exc.message)
        else:
            return redirect("registry:version_edit", prompt_name=prompt.name)
    return render(request, "registry/prompt_create.html", {"form": form})


@require_GET
@role_required()
def prompt_detail(request, prompt_name: str):
    prompt = _prompt_or_404(request, prompt_name)
    versions = list(selectors.prompt_versions(prompt=prompt))
    labels = list(selectors.prompt_labels(prompt=prompt))
    labels_by_version: dict[int, list] = {}
    for label in labels:
        labels_by_version.setdefault(label.version_id, []).append(label)
    for version in versions:
        version.label_list = labels_by_version.get(version.id, [])
    label_names = [label.name for label in labels]
    extra = [n for n in prompt.protected_labels if n not in label_names]
    return render(
        request,
        "registry/prompt_detail.html",
        {
            "prompt": prompt,
            "versions": versions,
            "labels": labels,
            "label_choices": sorted({*label_names, *extra, "production", "staging"}),
            "history": selectors.label_history(prompt=prompt)[:100],
            "pending": selectors.pending_promotions(prompt=prompt),
            "can_write": _can_write(request),
            "can_approve": request.org.has_role(Role.PROMPT_ENGINEER) and not request.org.is_api_key,
            "is_admin": request.org.has_role(Role.ADMIN),
            "user_id": request.user.pk,
        },
    )


@require_http_methods(["GET", "POST"])
@role_required(*WRITERS)
def version_edit(request, prompt_name: str):
    """The editor. Shape changes (add/remove/reorder messages, detect variables) re-render the form
    with everything typed kept; `save` stores a new version or re-renders with the error."""
    prompt = _prompt_or_404(request, prompt_name)
    latest = selectors.prompt_version_latest(prompt=prompt)
    error = None
    if request.method == "GET":
        start = request.GET.get("from", "")
        base = _version_or_404(prompt, int(start)) if start.isdigit() else latest
        draft = Draft.from_version(base)
        # Pre-fill schema rows for names the templates use but the version does not declare.
        draft.detect_variables()
    else:
        draft = Draft.from_post(request.POST)
        op = request.POST.get("op", "save")
        if op == "save":
            # Names the templates use get a schema row (required text) so the schema is complete.
            draft.detect_variables()
            try:
                content = draft.content()
                version = services.prompt_version_create(
                    prompt=prompt,
                    commit_message=draft.commit_message,
                    actor=request.org.actor,
                    roles=request.org.roles,
                    **content,
                )
            except ApplicationError as exc:
                error = exc
            else:
                messages.success(request, f"Saved v{version.number}.")
                target = reverse("registry:prompt_detail", kwargs={"prompt_name": prompt.name})
                if request.htmx:
                    response = HttpResponse(status=204)
                    response["HX-Redirect"] = target
                    return response
                return redirect(target)
        else:
            draft.apply(op)
    context = {
        "prompt": prompt,
        "draft": draft,
        "latest": latest,
        "error": error,
        "detected": variables_detect([m["content"] for m in draft.messages]),
        # Offered, not imposed: a model that has no route yet may still be named.
        "route_names": route_names(organisation=prompt.organisation),
    }
    if request.htmx:
        return render(request, "registry/partials/_editor.html", context)
    return render(request, "registry/version_edit.html", context, status=400 if error else 200)


def _playground_specs(version) -> list[dict]:
    declared = [dict(v) for v in version.variables]
    names = {v["name"] for v in declared}
    used = variables_detect([m["content"] for m in version.messages])
    return declared + [
        {"name": n, "type": "string", "required": True, "undeclared": True} for n in used if n not in names
    ]


@require_http_methods(["GET", "POST"])
@role_required()
def version_detail(request, prompt_name: str, version_number: int):
    """A version with its playground: fill variables, see the rendered messages (POST renders)."""
    prompt = _prompt_or_404(request, prompt_name)
    version = _version_or_404(prompt, version_number)
    specs = _playground_specs(version)
    rendered, error = None, None
    if request.method == "POST":
        try:
            values = playground_values(data=request.POST, specs=specs)
            rendered = selectors.prompt_version_render(version=version, variables=values)
        except ApplicationError as exc:
            error = exc
    ran = _run_taken(request, prompt, version) if request.method == "GET" else None
    for spec in specs:
        spec["value"] = ran["values"].get(spec["name"], "") if ran else request.POST.get(f"var_{spec['name']}", "")
    context = {
        "prompt": prompt,
        "version": version,
        "labels": [label for label in selectors.prompt_labels(prompt=prompt) if label.version_id == version.id],
        "specs": specs,
        "rendered": rendered,
        "error": error,
        "can_write": _can_write(request),
        "result": ran["result"] if ran else None,
        "run_error": ran["run_error"] if ran else None,
    }
    if request.htmx:
        return render(request, "registry/partials/_playground_result.html", context)
    return render(request, "registry/version_detail.html", context)


def _run_error(result) -> str:
    """The pipeline's error as a prompt engineer should read it in the playground."""
    if result.error_code == "model_not_found":
        return f"No route for model {result.model}: create one under Models."
    message = result.error_message or f"the request failed (HTTP {result.http_status})"
    if any(attempt["status"] == "error" for attempt in result.attempts):
        return f"The model's upstream failed: {message}"
    return message


@require_POST
@role_required(*WRITERS)
def version_run(request, prompt_name: str, version_number: int):
    """Run a version through the proxy pipeline as the organisation's playground key.

    Renders the run result partial (htmx), or without JavaScript keeps the result for one display on
    the version page it redirects to; failures of the request
    (missing variables, no route, budget, upstream) are shown in the result, never raised.
    """
    prompt = _prompt_or_404(request, prompt_name)
    version = _version_or_404(prompt, version_number)
    specs = _playground_specs(version)
    result, run_error = None, None
    try:
        values = playground_values(data=request.POST, specs=specs)
    except ApplicationError as exc:
        run_error = exc.message
    else:
        if not version.model:
            run_error = "This version names no model: edit it and choose one before running it."
        else:
            backend = playground_backend()
            principal = backend.key_ensure(organisation=request.org.organisation)
            try:
                result = backend.invoke(
                    principal=principal,
                    body={"prompt": {"name": prompt.name, "version": version.number, "variables": values}},
                )
            except ApplicationError as exc:
                run_error = exc.message
            else:
                if not result.ok:
                    run_error = _run_error(result)
    context = {"prompt": prompt, "version": version, "result": result, "run_error": run_error}
    if request.htmx:
        return render(request, "registry/partials/_playground_run_result.html", context)
    # Without JavaScript: POST-redirect-GET, so a reload shows the result instead of paying for another call.
    request.session[_run_session_key(prompt, version)] = {
        "result": None if result is None else {name: _json_safe(getattr(result, name)) for name in _RUN_FIELDS},
        "run_error": run_error,
        "values": {spec["name"]: request.POST.get(f"var_{spec['name']}", "") for spec in specs},
    }
    return redirect("registry:version_detail", prompt_name=prompt.name, version_number=version.number)


# What the playground's result partial reads from a run (proxy.invoke.InvokeResult), kept for one display.
_RUN_FIELDS = (
    "request_id", "status", "http_status", "text", "error_code", "model", "deployment", "prompt_tokens",
    "completion_tokens", "usage_estimated", "latency_ms", "upstream_ms", "cost", "cost_basis", "cost_reason",
    "currency", "cost_display",
)  # fmt: skip


def _json_safe(value):
    return str(value) if isinstance(value, Decimal) else value


def _run_session_key(prompt, version) -> str:
    return f"registry_playground_run:{prompt.pk}:{version.number}"


def _run_taken(request, prompt, version) -> dict | None:
    """The no-JavaScript run's result, removed from the session by its one display."""
    kept = request.session.pop(_run_session_key(prompt, version), None)
    if kept and kept["result"] is not None:
        kept["result"] = SimpleNamespace(**kept["result"])
    return kept


@require_GET
@role_required()
def version_diff(request, prompt_name: str):
    prompt = _prompt_or_404(request, prompt_name)
    numbers = list(selectors.prompt_versions(prompt=prompt).values_list("number", flat=True))
    if not numbers:
        raise Http404("No versions yet")
    a, b = request.GET.get("a", ""), request.GET.get("b", "")
    right_number = int(b) if b.isdigit() else numbers[0]
    left_number = int(a) if a.isdigit() else max(right_number - 1, 1)
    left, right = _version_or_404(prompt, left_number), _version_or_404(prompt, right_number)
    diff = versions_diff(left=selectors.version_as_dict(left), right=selectors.version_as_dict(right))
    return render(
        request,
        "registry/version_diff.html",
        {"prompt": prompt, "left": left, "right": right, "diff": diff, "numbers": numbers},
    )


@require_POST
@role_required(*WRITERS)
def label_move(request, prompt_name: str):
    prompt = _prompt_or_404(request, prompt_name)
    form = LabelMoveForm(request.POST)
    if not form.is_valid():
        messages.error(
            request, "Choose a label and a version. " + " ".join(e for errs in form.errors.values() for e in errs)
        )
        return redirect("registry:prompt_detail", prompt_name=prompt.name)
    data = form.cleaned_data
    try:
        outcome = services.label_move_or_request(
            prompt=prompt,
            label=data["label"],
            version=data["version"],
            reason=data["reason"],
            actor=request.org.actor,
            roles=request.org.roles,
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        if isinstance(outcome, PromotionRequest):
            messages.success(
                request,
                f"Promotion of {outcome.label} to v{outcome.to_version.number} requested; "
                "another prompt engineer must approve it.",
            )
        else:
            messages.success(request, f"{outcome.label} now points at v{outcome.to_version.number}.")
    return redirect("registry:prompt_detail", prompt_name=prompt.name)


def _promotion_or_404(request, promotion_id: int):
    try:
        return selectors.promotion_request_get(organisation=request.org.organisation, request_id=promotion_id)
    except NotFound:
        raise Http404("No such promotion request") from None


@require_POST
@role_required(Role.PROMPT_ENGINEER)
def promotion_approve(request, promotion_id: int):
    promotion = _promotion_or_404(request, promotion_id)
    form = DecisionForm(request.POST)
    reason = form.cleaned_data["reason"] if form.is_valid() else ""
    try:
        move = services.promotion_request_approve(
            promotion=promotion, actor=request.org.actor, roles=request.org.roles, reason=reason
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Approved: {move.label} now points at v{move.to_version.number}.")
    return redirect("registry:prompt_detail", prompt_name=promotion.prompt.name)


@require_POST
@role_required(Role.PROMPT_ENGINEER)
def promotion_reject(request, promotion_id: int):
    promotion = _promotion_or_404(request, promotion_id)
    form = DecisionForm(request.POST)
    reason = form.cleaned_data["reason"] if form.is_valid() else ""
    try:
        services.promotion_request_reject(
            promotion=promotion, actor=request.org.actor, roles=request.org.roles, reason=reason
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Promotion of {promotion.label} rejected.")
    return redirect("registry:prompt_detail", prompt_name=promotion.prompt.name)


@require_POST
@role_required(Role.ADMIN)
def label_protection(request, prompt_name: str):
    prompt = _prompt_or_404(request, prompt_name)
    try:
        services.prompt_label_protection_set(
            prompt=prompt,
            label=request.POST.get("label", ""),
            protected=request.POST.get("protected") == "yes",
            actor=request.org.actor,
            roles=request.org.roles,
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
    return redirect("registry:prompt_detail", prompt_name=prompt.name)


@require_POST
@role_required(*WRITERS)
def prompt_archive(request, prompt_name: str):
    prompt = _prompt_or_404(request, prompt_name)
    try:
        services.prompt_archive(prompt=prompt, actor=request.org.actor, roles=request.org.roles)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(
            request, f"Archived {prompt.name}: hidden from lists; requests by version or label still resolve it."
        )
    return redirect("registry:prompt_detail", prompt_name=prompt.name)


@require_POST
@role_required(*WRITERS)
def prompt_unarchive(request, prompt_name: str):
    prompt = _prompt_or_404(request, prompt_name)
    try:
        services.prompt_unarchive(prompt=prompt, actor=request.org.actor, roles=request.org.roles)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Unarchived {prompt.name}: it is listed again.")
    return redirect("registry:prompt_detail", prompt_name=prompt.name)


@require_GET
@role_required()
def prompt_export(request, prompt_name: str):
    prompt = _prompt_or_404(request, prompt_name)
    response = HttpResponse(prompts_export(prompts=[prompt]), content_type="application/yaml; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{prompt.name}.yaml"'
    return response


@require_http_methods(["GET", "POST"])
@role_required(*WRITERS)
def prompt_import(request):
    form = ImportForm(request.POST or None, request.FILES or None)
    error = None
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["file"]
        text = upload.read() if upload else form.cleaned_data["text"]
        if not text:
            error = "Choose a file or paste its text."
        else:
            try:
                result = prompts_import(
                    organisation=request.org.organisation, text=text, actor=request.org.actor, roles=request.org.roles
                )
            except ApplicationError as exc:
                error = exc.message
            else:
                # POST-redirect-GET: a reload shows the outcome again rather than importing again.
                request.session[_IMPORT_SESSION_KEY] = dataclasses.asdict(result)
                return redirect("registry:prompt_import")
    kept = request.session.pop(_IMPORT_SESSION_KEY, None) if request.method == "GET" else None
    result = ImportResult(**kept) if kept else None
    return render(request, "registry/prompt_import.html", {"form": form, "result": result, "error": error})


_IMPORT_SESSION_KEY = "registry_import_result"
