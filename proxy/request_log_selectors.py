"""Reads for the request log's list, detail and API: keyset pages, opaque cursors, costs, stage order.

The log is paged by keyset on (started_at, id), newest first, within the organisation: a page is
"the `size` rows before (or after) this row", never an OFFSET and never a COUNT(*), so page 5,000
costs what page 1 does (bench/requestlog.py: p95 under 100 ms at 10 million rows, where the
COUNT(*) and OFFSET paginator took 330 ms for page 1 and 470 ms for page 5,000 at 3 million). Each
filter the list offers has an index ending in (started_at, id) (proxy.models.RequestLog.Meta).

started_at, not created_at: the consumer writes rows in batches after each request ended, and
after a PostgreSQL outage it writes the whole backlog at once, hours late; created_at would put
those requests at the time of the recovery. The price: a request that finishes after a reader
paged past its start appears behind the reader's position (the newest page shows it).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.core import signing
from django.db import connection
from django.db.models import Q

from accounts.models import Organisation
from core.errors import ValidationFailed
from proxy.models import RequestLog, RequestStatus
from proxy.ui_selectors import RequestLogFilters, request_logs_filtered

CURSOR_SALT = "proxy.request_log.cursor"
# The pipeline's stages in the order a request goes through them (proxy.pipeline, proxy.dispatch);
# hold_wait is the time a held request waited for a reviewer, inside its filter stage.
STAGE_ORDER = ("admit", "authenticate", "resolve_prompt", "pre_filters", "hold_wait", "reserve_budget",
               "call_upstream", "post_filters", "settle_cost", "log")  # fmt: skip
# Above this many requests of one status in 24 h the summary says "1000+": an exact count reads every
# index entry of the day (hundreds of milliseconds at a busy organisation's rate), and a capped one
# costs what it reads: 17-25 ms for 10,000 per status at 10 million rows, 4 ms for 1,000 (bench.requestlog).
RECENT_COUNT_CAP = 1_000


def request_counts_last_day(*, organisation: Organisation, now: dt.datetime) -> dict[str, int]:
    """Requests per status in the current hour and the 23 before it (exact, from RequestCountHourly:
    at most 24 rows per status, whatever the size of the log)."""
    from django.db.models import Sum

    from proxy.models import RequestCountHourly

    since = now.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=23)
    rows = (
        RequestCountHourly.objects.filter(organisation_id=organisation.pk, hour__gte=since)
        .values("status")
        .annotate(n=Sum("count"))
    )
    counts = dict.fromkeys(RequestStatus.values, 0)
    counts.update({row["status"]: int(row["n"]) for row in rows})
    return counts


class CursorInvalid(ValidationFailed):
    """A page cursor this server did not issue (altered, truncated or from another deployment)."""

    def __init__(self) -> None:
        super().__init__(
            "This page link is not valid (it was altered or cut short). Start again from the newest requests.",
            param="cursor",
        )


@dataclass(frozen=True)
class Cursor:
    """A position in the log: the row (started_at, id) to page from, and which way."""

    newer: bool
    started_at: dt.datetime
    id: int


def request_log_cursor_encode(*, log: RequestLog, newer: bool) -> str:
    """An opaque, signed token for the rows newer (or older) than `log`."""
    return signing.dumps([1 if newer else 0, log.started_at.isoformat(), log.id], salt=CURSOR_SALT, compress=False)


def request_log_cursor_decode(*, token: str) -> Cursor:
    """The position in `token`; CursorInvalid (400, param "cursor") unless this server signed it."""
    try:
        newer, started_at, row_id = signing.loads(token, salt=CURSOR_SALT)
        return Cursor(newer=bool(newer), started_at=dt.datetime.fromisoformat(started_at), id=int(row_id))
    except (signing.BadSignature, ValueError, TypeError):
        raise CursorInvalid() from None


@dataclass
class RequestLogPage:
    """One page of the log, newest first, with the cursors of its neighbours (None: nothing there)."""

    rows: list[RequestLog]
    newer: str | None
    older: str | None


def _first_page(qs, size: int) -> RequestLogPage:
    rows = list(qs[: size + 1])
    older = request_log_cursor_encode(log=rows[size - 1], newer=False) if len(rows) > size else None
    return RequestLogPage(rows=rows[:size], newer=None, older=older)


def request_log_page(
    *,
    organisation: Organisation,
    filters: RequestLogFilters | None = None,
    cursor: str | None = None,
    size: int = 50,
    defer: tuple[str, ...] = (),
) -> RequestLogPage:
    """A page of the organisation's log matching `filters`, from `cursor` (None: the newest rows),
    without the columns in `defer` (what the caller does not show: reading one later is a query).

    One query per page (two when paging newer reaches the newest rows: then the first page is
    served, full, rather than a short page of the few newest). Raises CursorInvalid."""
    qs = request_logs_filtered(organisation=organisation, filters=filters)
    if defer:
        qs = qs.defer(*defer)
    if not cursor:
        return _first_page(qs, size)
    at = request_log_cursor_decode(token=cursor)
    if at.newer:
        # Index range read upwards from the cursor; the redundant `started_at >= ...` bounds the range.
        after = Q(started_at__gt=at.started_at) | Q(started_at=at.started_at, id__gt=at.id)
        rows = list(qs.filter(after, started_at__gte=at.started_at).order_by("started_at", "id")[: size + 1])
        if len(rows) <= size:
            return _first_page(qs, size)
        rows = rows[:size][::-1]
        return RequestLogPage(
            rows=rows,
            newer=request_log_cursor_encode(log=rows[0], newer=True),
            older=request_log_cursor_encode(log=rows[-1], newer=False),
        )
    before = Q(started_at__lt=at.started_at) | Q(started_at=at.started_at, id__lt=at.id)
    rows = list(qs.filter(before, started_at__lte=at.started_at)[: size + 1])
    page_rows = rows[:size]
    if not page_rows:
        # Past the oldest row (those rows were deleted since): the page says so and links to the newest.
        return RequestLogPage(rows=[], newer=None, older=None)
    return RequestLogPage(
        rows=page_rows,
        newer=request_log_cursor_encode(log=page_rows[0], newer=True),
        older=request_log_cursor_encode(log=page_rows[-1], newer=False) if len(rows) > size else None,
    )


def request_log_recent_counts(
    *, organisation: Organisation, since: dt.datetime, cap: int = RECENT_COUNT_CAP
) -> dict[str, int]:
    """Requests per status started since `since`, each counted up to `cap` + 1 (more than `cap`:
    show "cap+"). One bounded index-only read per status, all in one statement (one round trip)."""
    table = RequestLog._meta.db_table
    # A LIMIT inside a FROM subquery, so that SQLite (make run's default) takes it too.
    where = "organisation_id = %s AND status = %s AND started_at >= %s"
    capped = f"(SELECT COUNT(*) FROM (SELECT 1 FROM {table} WHERE {where} LIMIT %s) AS capped)"  # noqa: S608
    since_param = connection.ops.adapt_datetimefield_value(since)
    params = []
    for status in RequestStatus.values:
        params += [organisation.pk, status, since_param, cap + 1]
    with connection.cursor() as cursor:
        cursor.execute("SELECT " + ", ".join([capped] * len(RequestStatus.values)), params)
        row = cursor.fetchone()
    return dict(zip(RequestStatus.values, (int(n) for n in row), strict=True))


def stage_timings_ordered(timings) -> list[tuple[str, float]]:
    """(stage, ms) in pipeline order; stages a later release adds come after, by name."""
    if not isinstance(timings, dict):
        return []
    order = {stage: n for n, stage in enumerate(STAGE_ORDER)}
    return sorted(
        ((str(stage), float(ms)) for stage, ms in timings.items() if isinstance(ms, int | float)),
        key=lambda item: (order.get(item[0], len(order)), item[0]),
    )


def request_logs_with_costs(*, organisation: Organisation, logs: list[RequestLog]) -> list[RequestLog]:
    """Give each log its ledger cost as `log.cost` (a billing.selectors.RequestCost, or None when
    the ledger has no line for it: a request refused before any attempt). One query for the page."""
    from billing.selectors import request_costs

    costs = request_costs(organisation_id=organisation.pk, request_ids=[log.request_id for log in logs])
    for log in logs:
        log.cost = costs.get(log.request_id)
    return logs
