"""The request log, off the hot path.

The proxy only appends one compact JSON record per request to a Redis stream (through LogBuffer,
which batches the XADDs of requests finishing in the same turn of the event loop into one pipeline).
`request_log_drain` — run by a Celery task on Queue.PROXY_LOG every
second and on demand — reads the stream through a consumer group, writes RequestLog rows in bulk
(skipping request ids already written, so a replay never duplicates), hands the records to billing
and marks keys used, all in one transaction, and only then acknowledges the entries. If
PostgreSQL is down the entries stay pending and are retried; a dead consumer's pending entries
are reclaimed with XAUTOCLAIM.

Record format (also what billing.services.usage_lines_record receives, one dict per request):
    request_id, organisation_id, api_key_id, team_id, endpoint, model, stream, deployment_id,
    deployment_name, prompt_id, prompt_version_id, prompt_name, prompt_version_number,
    status (ok|error|cancelled|rejected|cached), http_status, error_type, error_message, cache_hit,
    started_at (ISO 8601 UTC), latency_ms, overhead_ms, upstream_ms, timings {stage: ms},
    usage {prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, estimated},
    attempts [{n, deployment_id, deployment, model, status, http_status, error_type, latency_ms,
               usage {...} | None, circuit ("opened"|"closed"|"")}],
    experiment {id, variant, sticky} (only when a running experiment chose the prompt version),
    safety {policy_id, policy_name, input, output, moderation_id, ...} (only when a safety policy applied),
    bodies {request, response} (only when the organisation stores bodies)
"""

from __future__ import annotations

import collections
import logging
import os
import socket
from datetime import UTC, datetime

import orjson
import redis.exceptions
from django.db import connection, transaction
from django.utils.dateparse import parse_datetime

from core.conf import hot
from core.db import aread
from core.redis import redis_client

logger = logging.getLogger(__name__)

STREAM_KEY = "stw:requestlog"
GROUP = "requestlog-writers"
RECLAIM_IDLE_MS = 60_000


def consumer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _group_ensure(client) -> None:
    try:
        client.xgroup_create(STREAM_KEY, GROUP, id="0", mkstream=True)
    except redis.exceptions.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _row(record: dict):
    from proxy.models import RequestLog

    usage = record.get("usage") or {}
    experiment = record.get("experiment") or {}
    return RequestLog(
        request_id=record["request_id"],
        organisation_id=record["organisation_id"],
        api_key_id=record.get("api_key_id"),
        team_id=record.get("team_id"),
        endpoint=(record.get("endpoint") or "")[:40],
        model=(record.get("model") or "")[:200],
        stream=bool(record.get("stream")),
        deployment_id=record.get("deployment_id"),
        deployment_name=(record.get("deployment_name") or "")[:100],
        prompt_id=record.get("prompt_id"),
        prompt_version_id=record.get("prompt_version_id"),
        prompt_name=(record.get("prompt_name") or "")[:100],
        prompt_version_number=record.get("prompt_version_number"),
        status=record["status"],
        http_status=record["http_status"],
        error_type=(record.get("error_type") or "")[:64],
        error_message=(record.get("error_message") or "")[:500],
        cache_hit=bool(record.get("cache_hit")),
        started_at=parse_datetime(record["started_at"]),
        latency_ms=record.get("latency_ms") or 0,
        overhead_ms=record.get("overhead_ms") or 0,
        upstream_ms=record.get("upstream_ms") or 0,
        timings=record.get("timings") or {},
        prompt_tokens=usage.get("prompt_tokens") or 0,
        completion_tokens=usage.get("completion_tokens") or 0,
        cached_tokens=usage.get("cached_tokens") or 0,
        reasoning_tokens=usage.get("reasoning_tokens") or 0,
        usage_estimated=bool(usage.get("estimated")),
        attempts=record.get("attempts") or [],
        experiment_id=experiment.get("id"),
        experiment_variant=(experiment.get("variant") or "")[:50],
        experiment_sticky=experiment.get("sticky"),
        safety=record.get("safety") or {},
        unsupported_citations=_unsupported_citations(record.get("safety")),
    )


def _unsupported_citations(safety: dict | None) -> int:
    output = (safety or {}).get("output") or {}
    return sum(1 for finding in output.get("findings") or () if finding.get("kind") == "citation_unknown_source")


def hourly_counts_add(rows) -> None:
    """Add `rows` (RequestLog, not saved or just saved) to RequestCountHourly, one upsert per batch.
    Keys go in sorted order, so two consumers adding to the same hours cannot deadlock."""
    from proxy.models import RequestCountHourly

    counts = collections.Counter(
        (row.organisation_id, row.started_at.astimezone(UTC).replace(minute=0, second=0, microsecond=0), row.status)
        for row in rows
    )
    if not counts:
        return
    table = RequestCountHourly._meta.db_table
    adapt = connection.ops.adapt_datetimefield_value
    params = []
    for (organisation_id, hour, status), n in sorted(counts.items()):
        params += [organisation_id, adapt(hour), status, n]
    values = ", ".join(["(%s, %s, %s, %s)"] * len(counts))
    # PostgreSQL and SQLite (3.24+) both take ON CONFLICT ... DO UPDATE; the addition happens in the database.
    sql = (
        f"INSERT INTO {table} (organisation_id, hour, status, count) VALUES {values} "  # noqa: S608
        f"ON CONFLICT (organisation_id, hour, status) DO UPDATE SET count = {table}.count + excluded.count"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def records_write(records: list[dict]) -> int:
    """Write request records idempotently; returns how many were new. Raises if the database is down."""
    from accounts.services import api_keys_mark_used
    from billing.services import usage_lines_record
    from proxy.models import RequestBody, RequestLog

    by_id: dict[str, dict] = {}
    for record in records:
        by_id.setdefault(record["request_id"], record)
    with transaction.atomic():
        existing = set(RequestLog.objects.filter(request_id__in=list(by_id)).values_list("request_id", flat=True))
        new = [r for rid, r in by_id.items() if rid not in existing]
        if not new:
            return 0
        rows = [_row(r) for r in new]
        RequestLog.objects.bulk_create(rows, ignore_conflicts=True, batch_size=500)
        hourly_counts_add(rows)
        bodies = [
            RequestBody(
                request_id=r["request_id"],
                organisation_id=r["organisation_id"],
                started_at=parse_datetime(r["started_at"]),
                request=r["bodies"].get("request"),
                response=r["bodies"].get("response"),
            )
            for r in new
            if r.get("bodies")
        ]
        if bodies:
            RequestBody.objects.bulk_create(bodies, ignore_conflicts=True)
        usage_lines_record(records=new)
        last_used: dict[int, datetime] = {}
        for r in new:
            key_id = r.get("api_key_id")
            if key_id is not None:
                at = parse_datetime(r["started_at"])
                if key_id not in last_used or last_used[key_id] < at:
                    last_used[key_id] = at
        if last_used:
            api_keys_mark_used(last_used=last_used)
    return len(new)


def _decode(entries) -> tuple[list[bytes], list[dict]]:
    ids, records = [], []
    for entry_id, fields in entries:
        ids.append(entry_id)
        raw = fields.get(b"r") if fields else None
        if raw is None:
            continue
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            logger.error("unreadable request-log entry %s dropped", entry_id)
            continue
        if record.get("organisation_id") is None or not record.get("request_id"):
            continue
        records.append(record)
    return ids, records


def _handle(client, entries) -> int:
    if not entries:
        return 0
    ids, records = _decode(entries)
    written = records_write(records) if records else 0
    pipe = client.pipeline()
    pipe.xack(STREAM_KEY, GROUP, *ids)
    pipe.xdel(STREAM_KEY, *ids)
    pipe.execute()
    return written


def request_log_drain(*, batch_size: int = 500, max_batches: int = 40, consumer: str | None = None) -> dict:
    """Move finished request records from the Redis stream into PostgreSQL.

    Idempotent: entries are acknowledged only after their transaction committed, and request ids
    already written are skipped. Order of work: this consumer's own pending entries (a previous
    run that failed), entries idle for a minute under other (dead) consumers, then new entries.
    Raises if PostgreSQL is unreachable; nothing is acknowledged then.
    """
    client = redis_client()
    consumer = consumer or consumer_name()
    _group_ensure(client)
    stats = {"written": 0, "seen": 0}

    own = client.xreadgroup(GROUP, consumer, {STREAM_KEY: "0"}, count=batch_size)
    for _, entries in own or []:
        stats["seen"] += len(entries)
        stats["written"] += _handle(client, entries)

    start = "0-0"
    for _ in range(max_batches):
        next_start, claimed, *_ = client.xautoclaim(
            STREAM_KEY, GROUP, consumer, min_idle_time=RECLAIM_IDLE_MS, start_id=start, count=batch_size
        )
        claimed = [e for e in claimed if e and e[1] is not None]
        stats["seen"] += len(claimed)
        stats["written"] += _handle(client, claimed)
        start = next_start.decode() if isinstance(next_start, bytes) else next_start
        if start == "0-0":
            break

    for _ in range(max_batches):
        fresh = client.xreadgroup(GROUP, consumer, {STREAM_KEY: ">"}, count=batch_size)
        entries = fresh[0][1] if fresh else []
        if not entries:
            break
        stats["seen"] += len(entries)
        stats["written"] += _handle(client, entries)
    return stats


CIRCUIT_STREAM_KEY = "stw:circuit"


def circuit_events_audit(*, limit: int = 1000) -> int:
    """Turn circuit transitions recorded by the proxy (a Redis stream) into audit events.

    Idempotent: an event already audited for the same request, deployment and action is skipped,
    and entries are deleted from the stream only after the transaction committed.
    """
    from audit.actions import Action
    from audit.models import AuditEvent
    from audit.services import audit_event_record
    from core.actors import Actor
    from proxy.models import Deployment

    client = redis_client()
    entries = client.xrange(CIRCUIT_STREAM_KEY, count=limit)
    if not entries:
        return 0
    written = 0
    with transaction.atomic():
        for _, fields in entries:
            deployment_id = int(fields[b"d"])
            transition = fields[b"t"].decode()
            request_id = fields[b"r"].decode()
            action = Action.DEPLOYMENT_CIRCUIT_OPENED if transition == "opened" else Action.DEPLOYMENT_CIRCUIT_CLOSED
            deployment = Deployment.objects.select_related("route").filter(pk=deployment_id).first()
            if deployment is None:
                continue
            organisation_id = deployment.route.organisation_id
            if AuditEvent.objects.filter(
                organisation_id=organisation_id, action=action, target_id=str(deployment_id), request_id=request_id
            ).exists():
                continue
            audit_event_record(
                organisation_id=organisation_id,
                actor=Actor.system("proxy"),
                action=action,
                target_type="deployment",
                target_id=deployment_id,
                after={"deployment": deployment.name, "model": deployment.route.name, "at_ms": int(fields[b"at"])},
                request_id=request_id,
            )
            written += 1
    client.xdel(CIRCUIT_STREAM_KEY, *[entry_id for entry_id, _ in entries])
    return written


def request_log_backlog() -> int:
    """Entries waiting in the stream (written by the proxy, not yet in PostgreSQL)."""
    try:
        return int(redis_client().xlen(STREAM_KEY))
    except redis.exceptions.RedisError:
        return -1


class LogBuffer:
    """Per-event-loop buffer of records, XADDed in one pipeline at the end of the loop's current turn.

    Requests finishing in the same turn of the event loop (many, under load) share one Redis round
    trip. A record waits here for less than a turn (or until 256 are queued); a process killed in
    that window loses those records, the price of not paying a round trip per request.

    Records that Redis does not take (it is down) go to a spill queue in memory, bounded by
    STEWARD_PROXY_LOG_SPILL_MAX (the oldest go first, counted in the log), which one task empties:
    into Redis again once it answers, else straight into PostgreSQL with `records_write` on a
    thread (idempotent, as the consumer's writes are), else it waits a second and tries again.
    """

    FLUSH_AT = 256
    SPILL_BATCH = 500

    def __init__(self, loop) -> None:
        self.loop = loop
        self.items: list[bytes] = []
        self.handle = None
        self.tasks: set = set()
        self.spill: collections.deque[bytes] = collections.deque()
        self.spill_task = None
        self.spill_dropped = 0

    def add(self, record: bytes) -> None:
        self.items.append(record)
        if len(self.items) >= self.FLUSH_AT:
            self._flush_now()
        elif self.handle is None:
            self.handle = self.loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        if not self.items:
            return
        items, self.items = self.items, []
        task = self.loop.create_task(self._write(items))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    @staticmethod
    async def _xadd(items: list[bytes]) -> None:
        from core.redis import Command, abatch

        maxlen = hot.STEWARD_PROXY_LOG_STREAM_MAXLEN
        results = await abatch([Command("XADD", STREAM_KEY, "MAXLEN", "~", maxlen, "*", "r", raw) for raw in items])
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            raise failed[0]

    async def _write(self, items: list[bytes]) -> None:
        try:
            await self._xadd(items)
        except Exception as exc:
            logger.warning("%d request records could not be handed to Redis (%s); spilled", len(items), exc)
            self._spill(items)

    def _spill(self, items: list[bytes]) -> None:
        self.spill.extend(items)
        excess = len(self.spill) - hot.STEWARD_PROXY_LOG_SPILL_MAX
        for _ in range(max(0, excess)):
            self.spill.popleft()
        if excess > 0:
            self.spill_dropped += excess
            logger.error("request-log spill full: %d records dropped so far", self.spill_dropped)
        if self.spill_task is None or self.spill_task.done():
            self.spill_task = self.loop.create_task(self._spill_empty())

    async def _spill_empty(self) -> None:
        import asyncio

        while self.spill:
            batch = [self.spill.popleft() for _ in range(min(self.SPILL_BATCH, len(self.spill)))]
            try:
                await self._xadd(batch)
            except Exception:
                try:
                    await aread(records_write, [orjson.loads(raw) for raw in batch])
                except Exception as exc:
                    logger.warning("request-log spill: Redis and PostgreSQL refused %d records: %s", len(batch), exc)
                    self.spill.extendleft(reversed(batch))  # back in front, in their order
                    await asyncio.sleep(1.0)

    async def flush(self, spill_timeout: float = 5.0) -> None:
        """Hand over what is buffered; at shutdown, also give the spill a few seconds to empty."""
        import asyncio

        self._flush_now()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.spill_task is not None and not self.spill_task.done():
            await asyncio.wait({self.spill_task}, timeout=spill_timeout)
            if self.spill:
                logger.error("%d spilled request records lost at shutdown", len(self.spill))


_buffers: dict[int, LogBuffer] = {}


def log_buffer() -> LogBuffer:
    import asyncio

    loop = asyncio.get_running_loop()
    buffer = _buffers.get(id(loop))
    if buffer is None or buffer.loop is not loop:
        buffer = _buffers[id(loop)] = LogBuffer(loop)
    return buffer


async def log_buffers_flush() -> None:
    import asyncio

    buffer = _buffers.get(id(asyncio.get_running_loop()))
    if buffer is not None:
        await buffer.flush()
