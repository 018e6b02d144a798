"""Reviewer pages: the moderation queue and one item, operable from the keyboard (static/js/moderation.js).

The queue page (admins and reviewers) lists items without their text; the item page, the only
page showing a held text, needs the reviewer role: an admin is not a reviewer unless they also
hold the role. Every form posts with CSRF; decisions redirect to the next item (POST-redirect-GET).
"""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from accounts.permissions import role_required
from accounts.roles import Role
from core.errors import ApplicationError, NotFound
from safety.models import ModerationItem, ModerationStatus, SafetyPolicy
from safety.moderation import (
    REASON_CODES,
    QueueFilters,
    finding_review_set,
    item_claim,
    item_decide,
    item_get,
    item_lease_take,
    item_proposed_text,
    item_release_lease,
    items_decide_bulk,
    lease_live,
)
from safety.moderation_selectors import finding_kinds, queue_items, queue_metrics
from safety.moderation_text import findings_for_display, segments_highlight

REVIEWER = Role.REVIEWER
QUEUE_READERS = (Role.ADMIN, Role.REVIEWER)
AGES = {"": "Any age", "300": "Older than 5 min", "3600": "Older than 1 hour", "86400": "Older than 1 day"}
FILTER_KEYS = ("policy", "priority", "age", "kind")


def _filters(params) -> tuple[QueueFilters, dict]:
    """Queue filters from a query string (or the hidden fields carrying it); bad values are ignored."""
    raw = {k: (params.get(k) or "").strip() for k in FILTER_KEYS}

    def number(value: str, low: int, high: int) -> int | None:
        return int(value) if value.isdigit() and low <= int(value) <= high else None

    filters = QueueFilters(
        policy_id=number(raw["policy"], 1, 2**62),
        priority=number(raw["priority"], 1, 4),
        finding_kind=raw["kind"][:60],
        min_age_seconds=number(raw["age"], 1, 10**8),
    )
    return filters, {k: v for k, v in raw.items() if v}


def _queue_url(query: dict) -> str:
    base = reverse("safety:home")
    return f"{base}?{urlencode(query)}" if query else base


def _item_url(item: ModerationItem, query: dict) -> str:
    base = reverse("safety:item_detail", args=[item.public_id])
    return f"{base}?{urlencode(query)}" if query else base


@require_GET
@role_required(*QUEUE_READERS)
def queue(request):
    org = request.org.organisation
    filters, query = _filters(request.GET)
    items = list(queue_items(organisation=org, filters=filters)[:200])
    now = timezone.now()
    for item in items:
        item.kinds = sorted({str(f.get("kind", "")) for f in item.findings or [] if isinstance(f, dict)})
        item.leased = lease_live(item, now)
    context = {
        "items": items,
        "query": query,
        "query_string": urlencode(query),
        "policies": SafetyPolicy.objects.filter(organisation=org).order_by("name").values("id", "name"),
        "kinds": finding_kinds(organisation=org),
        "ages": AGES,
        "priorities": (1, 2, 3, 4),
        "reasons": REASON_CODES,
        "is_reviewer": request.org.has_role(REVIEWER),
        "metrics": queue_metrics(organisation=org),
    }
    if request.htmx:
        return render(request, "safety/partials/_queue_rows.html", context)
    return render(request, "safety/queue.html", context)


@require_POST
@role_required(REVIEWER)
def queue_next(request):
    """Claim the most urgent item matching the queue's filters and open it."""
    filters, query = _filters(request.POST)
    try:
        item = item_claim(organisation=request.org.organisation, reviewer=request.user, filters=filters)
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect(_queue_url(query))
    if item is None:
        messages.info(request, "The queue is empty: nothing left to review.")
        return redirect(_queue_url(query))
    return redirect(_item_url(item, query))


@require_POST
@role_required(REVIEWER)
def queue_bulk(request):
    _, query = _filters(request.POST)
    action = request.POST.get("action", "")
    try:
        outcome = items_decide_bulk(
            organisation=request.org.organisation,
            public_ids=request.POST.getlist("items"),
            reviewer=request.user,
            action=action,
            reason_code=request.POST.get("reason_code", ""),
            comment=request.POST.get("comment", ""),
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect(_queue_url(query))
    verb = "Approved" if action == "approve" else "Rejected"
    messages.success(request, f"{verb} {len(outcome.decided)} item(s).")
    for public_id, why in outcome.skipped.items():
        messages.warning(request, f"{public_id} skipped: {why}")
    return redirect(_queue_url(query))


def _item_or_404(request, public_id: str) -> ModerationItem:
    try:
        return item_get(organisation=request.org.organisation, public_id=public_id)
    except NotFound:
        raise Http404("No such moderation item") from None


def _neighbours(request, item: ModerationItem, filters: QueueFilters) -> tuple[str | None, str | None]:
    """Public ids of the previous and next pending items in queue order (j/k)."""
    ids = list(
        queue_items(organisation=request.org.organisation, filters=filters).values_list("public_id", flat=True)[:500]
    )
    if item.public_id not in ids:
        return None, ids[0] if ids else None
    at = ids.index(item.public_id)
    return (ids[at - 1] if at > 0 else None), (ids[at + 1] if at + 1 < len(ids) else None)


@require_GET
@role_required(REVIEWER)
def item_detail(request, public_id: str):
    item = _item_or_404(request, public_id)
    filters, query = _filters(request.GET)
    lease_error = None
    if item.status == ModerationStatus.PENDING:
        try:
            item = item_lease_take(organisation=request.org.organisation, public_id=public_id, reviewer=request.user)
        except ApplicationError as exc:
            lease_error = exc.message
    previous_id, next_id = _neighbours(request, item, filters)
    proposed = item_proposed_text(item) if item.status == ModerationStatus.PENDING else item.released_text
    approvals = list(item.decisions.filter(action__in=["approve", "edit"]).values_list("reviewer_label", flat=True))
    context = {
        "item": item,
        "segments": segments_highlight(item.held_text, item.findings or []),
        "findings": findings_for_display(item),
        "proposed": proposed,
        "approvals": approvals,
        "decisions": item.decisions.all(),
        "mine": item.lease_owner_id == request.user.pk and lease_live(item),
        "lease_error": lease_error,
        "reasons": REASON_CODES,
        "query": query,
        "query_string": urlencode(query),
        "previous_url": _item_url_by_id(previous_id, query),
        "next_url": _item_url_by_id(next_id, query),
        "queue_url": _queue_url(query),
    }
    return render(request, "safety/item_detail.html", context)


def _item_url_by_id(public_id: str | None, query: dict) -> str | None:
    if not public_id:
        return None
    base = reverse("safety:item_detail", args=[public_id])
    return f"{base}?{urlencode(query)}" if query else base


@require_POST
@role_required(REVIEWER)
def item_decide_view(request, public_id: str):
    item = _item_or_404(request, public_id)
    filters, query = _filters(request.POST)
    action = request.POST.get("action", "")
    try:
        decided = item_decide(
            organisation=request.org.organisation,
            public_id=item.public_id,
            reviewer=request.user,
            action=action,
            edited_text=request.POST.get("edited_text", "").replace("\r\n", "\n"),
            reason_code=request.POST.get("reason_code", ""),
            comment=request.POST.get("comment", ""),
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect(_item_url(item, query))
    if decided.status == ModerationStatus.PENDING:
        messages.success(request, f"Approval recorded on {decided.public_id}; a second reviewer must approve.")
    else:
        messages.success(request, f"{decided.public_id} {decided.status}.")
    # On to the next item: the keyboard flow never has to go back to the list.
    try:
        following = item_claim(organisation=request.org.organisation, reviewer=request.user, filters=filters)
    except ApplicationError:
        following = None
    if following is None:
        messages.info(request, "The queue is empty: nothing left to review.")
        return redirect(_queue_url(query))
    return redirect(_item_url(following, query))


@require_POST
@role_required(REVIEWER)
def item_release(request, public_id: str):
    item = _item_or_404(request, public_id)
    _, query = _filters(request.POST)
    item_release_lease(item=item, reviewer=request.user)
    messages.info(request, f"{item.public_id} is back in the queue.")
    return redirect(_queue_url(query))


@require_POST
@role_required(REVIEWER)
def finding_review(request, public_id: str, finding_index: int):
    item = _item_or_404(request, public_id)
    try:
        finding_review_set(
            item=item,
            reviewer=request.user,
            finding_index=finding_index,
            false_positive=request.POST.get("false_positive") == "1",
        )
    except ApplicationError as exc:
        return HttpResponse(exc.message, status=400)
    if request.htmx:
        return render(request, "safety/partials/_findings.html", {"item": item, "findings": findings_for_display(item)})
    return redirect(reverse("safety:item_detail", args=[item.public_id]))
