"""The request log at 10 million rows: its pages, filters, deep keyset pages and a request's page.

    DATABASE_URL=... REDIS_URL=... python -m bench.requestlog [--rows 10000000] [--samples 30]

Loads `--rows` request records (and one ledger line each, so the page's cost lookup reads a ledger
of the same size) into one organisation (slug "bench-requestlog", kept: its audit trail is
append-only) with `INSERT ... SELECT generate_series` in chunks of 250,000 rows, one transaction
each, so an interrupted load resumes where it stopped and a loaded database is reused as is (the
first run takes about ten minutes on two cores). Then it asks for each page through the real views
and the API (Django's test client: URL routing, middleware, session or token auth, form
validation, templates, DRF serializers), `--samples` times each after one warm-up call, and prints
p50/p95 per page against the 100 ms target. The "page 5,000" rows start from the cursor of the
250,001st newest row of their filter, as deep as page 5,000 of 50 rows was with OFFSET.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import secrets
import statistics
import sys
import time

CHUNK = 250_000
TARGET_MS = 100.0
DEEP_ROWS = 5_000 * 50
SLUG = "bench-requestlog"
SPAN = dt.timedelta(days=30)
MODELS = ("gpt-4o-mini", "claude-haiku", "llama-3.1-8b", "gpt-4o", "mistral-small", "gemini-flash")
PROMPTS = ("support-reply", "summarise-ticket", "classify-intent", "draft-email", "extract-fields")
KEYS = 20


def _setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    # As served in production: DEBUG keeps every query's SQL in memory and renders slower.
    os.environ.setdefault("STEWARD_DEBUG", "0")
    import django

    django.setup()


def _fixtures():
    """The organisation, its keys and prompts, and an admin member (created once, reused)."""
    from accounts.models import ApiKey, Organisation
    from accounts.services import api_key_create, organisation_create
    from core.actors import Actor
    from registry.models import Prompt
    from registry.services import prompt_create

    actor = Actor.system("bench.requestlog")
    organisation = Organisation.objects.filter(slug=SLUG).first() or organisation_create(
        name="Request log benchmark", slug=SLUG, actor=actor
    )
    for n in range(ApiKey.objects.filter(organisation=organisation).count(), KEYS):
        api_key_create(organisation=organisation, name=f"service-{n + 1:02d}", actor=actor)
    existing = set(Prompt.objects.filter(organisation=organisation).values_list("name", flat=True))
    for name in PROMPTS:
        if name not in existing:
            prompt_create(organisation=organisation, name=name, actor=actor)
    key_ids = list(ApiKey.objects.filter(organisation=organisation).order_by("id").values_list("id", flat=True))
    prompt_ids = dict(Prompt.objects.filter(organisation=organisation).values_list("name", "id"))
    return organisation, key_ids[:KEYS], [prompt_ids[name] for name in PROMPTS]


def _sql_case(expr: str, thresholds: list[tuple[int, str]], default: str) -> str:
    arms = " ".join(f"WHEN {expr} < {bound} THEN {value}" for bound, value in thresholds)
    return f"CASE {arms} ELSE {default} END"


def _chunk_sql() -> str:
    """One chunk of rows: pseudo-random but deterministic per row number (hashint8), so a resumed
    load writes what an uninterrupted one would have. Shares: models 40/25/15/10/5/5 %, status ok 95 %,
    error 3 %, rejected 1 %, cached 0.8 %, cancelled 0.2 %; 20 keys evenly; half the requests name one
    of 5 prompts (versions 1-5). Rows are spaced evenly over 30 days, ids in the same order."""
    model = _sql_case("hm", [(400, "'gpt-4o-mini'"), (650, "'claude-haiku'"), (800, "'llama-3.1-8b'"),
                             (900, "'gpt-4o'"), (950, "'mistral-small'")], "'gemini-flash'")  # fmt: skip
    status = _sql_case("hs", [(950, "'ok'"), (980, "'error'"), (990, "'rejected'"), (998, "'cached'")], "'cancelled'")
    http = _sql_case("hs", [(950, "200"), (980, "502"), (990, "429"), (998, "200")], "499")
    error_type = _sql_case("hs", [(950, "''"), (980, "'upstream_error'"), (990, "'rate_limited'")], "''")
    prompt_name = f"CASE WHEN hp < 500 THEN '' ELSE (ARRAY{list(PROMPTS)})[1 + hp % 5] END"
    # Built from this module's constants only; the values go in as parameters.
    return f"""
    WITH g AS (
        SELECT i,
               (hashint8(i) & 2147483647) % 1000 AS hm,
               (hashint8(i + 3000000000) & 2147483647) % 1000 AS hs,
               (hashint8(i + 6000000000) & 2147483647) % 1000 AS hp,
               (hashint8(i + 9000000000) & 2147483647) % {KEYS} AS hk,
               %(t0)s::timestamptz + i * %(step)s::interval AS at
        FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i
    ), rows AS (
        SELECT g.*, 'rlb-' || lpad(i::text, 10, '0') AS rid, {model} AS model, {status} AS status,
               {http} AS http, {error_type} AS error_type, {prompt_name} AS prompt_name,
               CASE WHEN hp < 500 THEN NULL ELSE 1 + (hp / 5) % 5 END AS version,
               CASE WHEN hp < 500 THEN NULL ELSE (%(prompt_ids)s::bigint[])[1 + hp % 5] END AS prompt_id,
               (%(key_ids)s::bigint[])[1 + hk] AS key_id,
               100 + hp % 900 AS tokens_in, 20 + hm % 300 AS tokens_out,
               200 + (hm * 7 + hs) % 1800 AS latency
        FROM g
    ), logs AS (
        INSERT INTO proxy_requestlog (
            request_id, organisation_id, api_key_id, endpoint, model, stream, deployment_id, deployment_name,
            prompt_id, prompt_name, prompt_version_number, status, http_status, error_type, error_message,
            cache_hit, started_at, latency_ms, overhead_ms, upstream_ms, timings, prompt_tokens,
            completion_tokens, cached_tokens, reasoning_tokens, usage_estimated, attempts, experiment_variant,
            safety, unsupported_citations, created_at)
        SELECT rid, %(org)s, key_id, 'chat', model, hs % 3 = 0, NULL, model || '-primary',
               prompt_id, prompt_name, version, status, http, error_type,
               CASE WHEN error_type = '' THEN '' ELSE 'The upstream answered 502' END,
               status = 'cached', at - latency * interval '1 millisecond', latency, 0.8, latency - 0.8,
               jsonb_build_object('admit', 0.01, 'authenticate', 0.05, 'resolve_prompt', 0.02,
                                  'pre_filters', 0.1, 'reserve_budget', 0.2, 'call_upstream', latency - 0.8,
                                  'post_filters', 0.1, 'settle_cost', 0.2, 'log', 0.03),
               tokens_in, tokens_out, 0, 0, false,
               jsonb_build_array(jsonb_build_object('n', 1, 'deployment', model || '-primary', 'model', model,
                                                    'status', status, 'http_status', http, 'latency_ms', latency)),
               '', '{{}}'::jsonb, 0, at
        FROM rows
    )
    INSERT INTO billing_usageline (
        request_id, attempt, organisation_id, api_key_id, prompt_id, prompt_name, prompt_version_number,
        model, status, cached, estimated, prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens,
        reasoning_tokens, cost, currency, basis, reason, started_at, recorded_at)
    SELECT rid, 1, %(org)s, key_id, prompt_id, prompt_name, version, model, status, status = 'cached', false,
           tokens_in, tokens_out, 0, 0, 0,
           CASE WHEN status = 'cached' THEN 0 ELSE (tokens_in * 15 + tokens_out * 60) / 100000000.0 END,
           'USD', CASE WHEN status = 'cached' THEN 'cached' WHEN model = 'gemini-flash' THEN 'no_price'
                       ELSE 'priced' END, '', at - latency * interval '1 millisecond', at
    FROM rows
    """.replace(" % ", " %% ")  # noqa: S608 (the modulo operator, not a placeholder)


def load(*, organisation, key_ids: list[int], prompt_ids: list[int], rows: int) -> None:
    """Insert rows 1..`rows` (those not there yet), a chunk per transaction; then VACUUM ANALYZE."""
    from django.db import connection, transaction

    from proxy.models import RequestLog

    def loaded() -> int:
        last = (
            RequestLog.objects.filter(request_id__startswith="rlb-")
            .order_by("-request_id")
            .values_list("request_id", flat=True)
            .first()
        )
        return int(last[4:]) if last else 0

    first_row = RequestLog.objects.filter(request_id="rlb-0000000001").values_list("created_at", flat=True).first()
    step = SPAN / rows
    t0 = (first_row - step) if first_row else (dt.datetime.now(dt.UTC) - SPAN)
    done = loaded()
    if done >= rows:
        print(f"{done:,} request records already loaded in {organisation.slug}")
        return
    sql = _chunk_sql()
    started = time.monotonic()
    while done < rows:
        last = min(rows, done + CHUNK)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit = off")
            cursor.execute(
                sql,
                {"t0": t0, "step": step, "first": done + 1, "last": last, "org": organisation.pk,
                 "key_ids": key_ids, "prompt_ids": prompt_ids},
            )  # fmt: skip
        done = last
        rate = done / max(time.monotonic() - started, 1e-9)
        print(f"  loaded {done:,}/{rows:,} ({rate:,.0f} rows/s)", flush=True)
    with connection.cursor() as cursor:
        # Index-only scans (the capped 24 h counts) need the visibility map; the planner needs statistics.
        cursor.execute("VACUUM ANALYZE proxy_requestlog")
        cursor.execute("VACUUM ANALYZE billing_usageline")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--load-only", action="store_true")
    args = parser.parse_args(argv)
    _setup()
    organisation, key_ids, prompt_ids = _fixtures()
    load(organisation=organisation, key_ids=key_ids, prompt_ids=prompt_ids, rows=args.rows)
    if args.load_only:
        return 0
    return measure(organisation=organisation, key_ids=key_ids, samples=args.samples)


def _admin_client(organisation):
    from django.contrib.auth import get_user_model
    from django.test import Client

    from accounts.services import membership_set, user_create
    from core.actors import Actor

    user = get_user_model().objects.filter(username="bench-requestlog-admin").first()
    if user is None:
        user = user_create(username="bench-requestlog-admin", password=secrets.token_urlsafe(24))
        membership_set(organisation=organisation, user=user, roles=["admin"], actor=Actor.system("bench.requestlog"))
    client = Client()
    client.force_login(user)
    return client


def _deep_cursor(*, organisation, filters) -> tuple[str, int]:
    """The cursor a reader holds after paging down `filters` 5,000 pages of 50 (or, for a filter with
    fewer rows, to its last full page), found with one OFFSET; and the number of the page it opens."""
    from proxy.request_log_selectors import request_log_cursor_encode
    from proxy.ui_selectors import request_logs_filtered

    qs = request_logs_filtered(organisation=organisation, filters=filters).only("id", "started_at")
    depth = DEEP_ROWS if qs[DEEP_ROWS : DEEP_ROWS + 51].count() > 50 else max(1, qs.count() - 51)
    row = qs[depth - 1 : depth].first()
    return request_log_cursor_encode(log=row, newer=False), depth // 50 + 1


def _time(client, url: str, params: dict, samples: int) -> list[float]:
    response = client.get(url, params)  # warm-up (and a check)
    if response.status_code != 200:
        raise RuntimeError(f"{url} {params} answered {response.status_code}: {response.content[:300]!r}")
    durations = []
    for _ in range(samples):
        started = time.perf_counter()
        response = client.get(url, params)
        durations.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200
    return durations


def measure(*, organisation, key_ids: list[int], samples: int) -> int:
    """Each page through the views and the API: p50/p95 in ms, and whether p95 is within 100 ms."""
    from django.db import connection
    from django.urls import reverse

    from proxy.models import RequestLog
    from proxy.ui_selectors import RequestLogFilters

    client = _admin_client(organisation)
    ui, api = reverse("proxy:request_log_list"), reverse("api-request-log-list")
    newest = RequestLog.objects.filter(organisation=organisation).order_by("-started_at", "-id").first()
    day = (newest.started_at - dt.timedelta(days=10)).date()
    filters = {
        "model": ({"model": "mistral-small"}, RequestLogFilters(model="mistral-small")),
        "status": ({"status": "error"}, RequestLogFilters(status="error")),
        "key": ({"api_key": key_ids[3]}, RequestLogFilters(api_key_id=key_ids[3])),
        "prompt+version": (
            {"prompt": PROMPTS[1], "version": 3},
            RequestLogFilters(prompt_name=PROMPTS[1], prompt_version=3),
        ),
        "date range": (
            {"date_from": day.isoformat(), "date_to": day.isoformat()},
            RequestLogFilters(date_from=day, date_to=day),
        ),
        "model+status": (
            {"model": "gpt-4o", "status": "cancelled"},
            RequestLogFilters(model="gpt-4o", status="cancelled"),
        ),
    }
    cases: list[tuple[str, str, dict]] = [("list, newest page", ui, {})]
    for name, (params, _) in filters.items():
        cases.append((f"list by {name}", ui, params))
    deep, deep_number = _deep_cursor(organisation=organisation, filters=None)
    cases.append((f"list, page {deep_number:,}", ui, {"cursor": deep}))
    for name in ("model", "status", "prompt+version"):
        params, selected = filters[name]
        cursor, number = _deep_cursor(organisation=organisation, filters=selected)
        cases.append((f"list by {name}, page {number:,}", ui, {**params, "cursor": cursor}))
    rows = RequestLog.objects.filter(organisation=organisation).count() if samples else 0
    step = max(1, rows // 40)
    request_ids = [f"rlb-{n:010d}" for n in range(step, rows, step)][:samples]
    api_params = {"api_key_id": key_ids[3], "page_size": 50}
    cases.append(("API list by key", api, api_params))
    cases.append((f"API list, page {deep_number:,}", api, {"cursor": deep}))

    table = [("page", "p50 ms", "p95 ms", "max ms", f"p95 ≤ {TARGET_MS:g} ms")]
    failures = 0

    def record(name: str, durations: list[float]) -> None:
        nonlocal failures
        p95 = _percentile(durations, 0.95)
        ok = p95 <= TARGET_MS
        failures += not ok
        table.append(
            (
                name,
                f"{statistics.median(durations):.1f}",
                f"{p95:.1f}",
                f"{max(durations):.1f}",
                "pass" if ok else "FAIL",
            )
        )

    for name, url, params in cases:
        record(name, _time(client, url, params, samples))
    detail = []
    for request_id in request_ids:
        url = reverse("proxy:request_log_detail", args=[request_id])
        detail.extend(_time(client, url, {}, 1))
    record(f"detail page ({len(request_ids)} requests)", detail)
    api_detail = []
    for request_id in request_ids:
        api_detail.extend(_time(client, reverse("api-request-log-detail", args=[request_id]), {}, 1))
    record(f"API detail ({len(request_ids)} requests)", api_detail)

    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for n, row in enumerate(table):
        cells = [row[0].ljust(widths[0]), *(cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True))]
        print("  ".join(cells))
        if n == 0:
            print("  ".join("-" * width for width in widths))
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_size_pretty(pg_total_relation_size('proxy_requestlog'))")
        size = cursor.fetchone()[0]
    print(
        f"({rows:,} request records in {organisation.slug}, table with indexes {size}; {samples} samples per page "
        f"after a warm-up, through Django's test client; {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f})"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
