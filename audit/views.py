from __future__ import annotations

from urllib.parse import urlencode

import orjson
from asgiref.sync import sync_to_async
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpResponseBadRequest, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from accounts.permissions import role_required
from accounts.roles import Role
from audit.forms import AuditEventFilterForm
from audit.selectors import (
    audit_event_public,
    audit_events_list,
    audit_target_names,
    audit_target_types,
    audit_verifications_list,
    target_name_expression,
)
from audit.services import audit_verification_request

PAGE_SIZE = 50


def _verifications_context(organisation) -> dict:
    verifications = audit_verifications_list(organisation=organisation)
    # While one is still pending or running, the partial polls itself until it settles.
    return {"verifications": verifications, "verifications_polling": any(not v.is_finished for v in verifications)}


def _filter_query(form: AuditEventFilterForm) -> str:
    return urlencode({k: v for k, v in form.data.items() if k in form.fields and v})


def _filter_form(request) -> AuditEventFilterForm:
    target_types = audit_target_types(organisation=request.org.organisation)
    return AuditEventFilterForm(request.GET or None, target_types=target_types)


@require_GET
@role_required(Role.ADMIN)
def event_list(request):
    """The audit trail with filters. htmx gets the filters and results (`audit-body`, so errors sit
    beside their filter and the target suggestions follow the type) or the results alone (paging)."""
    organisation = request.org.organisation
    form = _filter_form(request)
    if form.is_bound and not form.is_valid():
        page = None
    else:
        filters = form.filters() if form.is_bound else None
        # Each row names its target as its own event recorded it (the trail outlives its targets).
        events = audit_events_list(organisation=organisation, filters=filters).annotate(
            target_name=target_name_expression()
        )
        page = Paginator(events, PAGE_SIZE).get_page(request.GET.get("page"))
    chosen_type = form.cleaned_data.get("target_type", "") if form.is_bound and form.is_valid() else ""
    context = {
        "form": form,
        "page": page,
        "filter_query": _filter_query(form) if form.is_bound else "",
        "target_names": audit_target_names(organisation=organisation, target_type=chosen_type),
        **_verifications_context(organisation),
    }
    if request.htmx and request.htmx.target == "audit-results":
        return render(request, "audit/partials/_event_results.html", context)
    if request.htmx and request.htmx.target == "audit-body":
        return render(request, "audit/partials/_event_body.html", context)
    return render(request, "audit/event_list.html", context)


EXPORT_BATCH = 1000


async def _export_lines(events):
    """JSON Lines in keyset batches (newest first). An async iterator, because Django would read a
    sync one to the end into memory before sending anything under ASGI."""
    before_seq = None
    while True:
        batch_qs = events if before_seq is None else events.filter(seq__lt=before_seq)
        batch = await sync_to_async(list)(batch_qs[:EXPORT_BATCH])
        if not batch:
            return
        yield b"".join(orjson.dumps(audit_event_public(event)) + b"\n" for event in batch)
        before_seq = batch[-1].seq


@require_GET
@role_required(Role.ADMIN)
def event_export(request):
    """The filtered events as JSON Lines, streamed so a large trail never sits in memory."""
    form = AuditEventFilterForm(request.GET, target_types=audit_target_types(organisation=request.org.organisation))
    if not form.is_valid():
        return HttpResponseBadRequest(orjson.dumps({"errors": form.errors}), content_type="application/json")
    events = audit_events_list(organisation=request.org.organisation, filters=form.filters())
    response = StreamingHttpResponse(_export_lines(events), content_type="application/jsonl")
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    slug = request.org.organisation.slug
    response["Content-Disposition"] = f'attachment; filename="audit-{slug}-{stamp}.jsonl"'
    return response


@require_POST
@role_required(Role.ADMIN)
def verification_create(request):
    audit_verification_request(organisation=request.org.organisation, requested_by=request.user)
    messages.success(request, "Chain verification queued; its result appears below.")
    return redirect("audit:event_list")


@require_GET
@role_required(Role.ADMIN)
def verification_list(request):
    """The latest verifications (the page polls this partial while one is pending)."""
    return render(request, "audit/partials/_verifications.html", _verifications_context(request.org.organisation))
