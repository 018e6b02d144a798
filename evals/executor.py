"""Executing a run's cells: many at once with asyncio inside one Celery task, through the proxy over HTTP.

One `execute(run_id)` claims cells in batches (SELECT ... FOR UPDATE SKIP LOCKED, under a lease), runs up to
`run.concurrency` of them at a time, each after taking a slot of the run's and of the model's shared limit
(evals.limits, in Redis, so every worker together respects them), calls the proxy with the run's key and
the prompt reference (name, version, the item's variables), scores the output with the suite's assertions
and records the one result with a conditional update that only the claim holding the cell can make.

Retries: a 429 or 503, or any answer with Retry-After, waits (Retry-After, at least a jittered exponential
backoff) and tries again for as long as the run's deadline allows; other failures are tried
STEWARD_EVALS_MAX_ATTEMPTS times, then the cell's result is the error. Cancellation is seen within
CANCEL_POLL_SECONDS through a Redis flag (and at each claim through the run row); in-flight calls are
abandoned and the open cells cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal

import aiohttp
import httpx
from django.conf import settings
from django.db import close_old_connections, connections
from django.utils import timezone

from evals import runs
from evals.assertions import CellOutput, assertion_needs, assertion_score, cell_score, judge_messages, judge_reply_parse
from evals.limits import SharedLimits, model_limit_key, run_limit_key

logger = logging.getLogger(__name__)

CANCEL_POLL_SECONDS = 0.25
HEARTBEAT_SECONDS = 3.0
ALIVE_KEY = "evals:alive:{run_id}"
PROGRESS_KEY = "evals:progress:{run_id}"
JUDGE_SEED = 20240101
RETRYABLE = {429, 503}
# 429s that waiting does not cure: the run's own budget is a `total` one, it never resets.
NOT_RETRYABLE_CODES = {"budget_exceeded", "cost_ceiling_exceeded"}
BACKOFF_START = 0.25
BACKOFF_CAP = 20.0


@dataclass
class VariantPlan:
    id: int
    name: str
    version_number: int
    model: str  # the model the call goes to (the override, or the version's own), for the shared limit
    override: str


@dataclass
class Plan:
    run_id: int
    organisation_id: int
    prompt_name: str
    secret: str
    concurrency: int
    deadline_at: float  # time.time()
    specs: list[dict]
    threshold: float
    variants: dict[int, VariantPlan]
    items: dict[int, dict]
    judges: dict[int, tuple[str, int]] = field(default_factory=dict)  # version id -> (prompt name, number)
    deployments: dict[tuple[str, str], int | None] = field(default_factory=dict)


class ClaimLost(Exception):
    """The cell was taken away from this claim (swept after its lease, or cancelled)."""


def plan_load(run_id: int) -> Plan | None:
    """What executing the run needs, or None when there is nothing to execute (ended, or its key is gone)."""
    from core.crypto import secret_decrypt
    from evals.models import DatasetItem, Run, RunStatus
    from registry.models import PromptVersion

    run = Run.objects.select_related("suite").filter(pk=run_id).first()
    if run is None or run.status in runs.TERMINAL or not run.api_key_secret_encrypted:
        return None
    secret = secret_decrypt(run.api_key_secret_encrypted)
    if secret is None:
        runs.run_fail(run_id=run_id, error="the run's key cannot be decrypted (encryption key rotated away?)")
        return None
    if run.status == RunStatus.QUEUED:
        Run.objects.filter(pk=run_id, status=RunStatus.QUEUED).update(
            status=RunStatus.RUNNING, started_at=timezone.now()
        )
    versions = {v.pk: v for v in PromptVersion.objects.filter(pk__in=run.variants.values("prompt_version_id"))}
    variants = {
        v.id: VariantPlan(
            id=v.id,
            name=v.name,
            version_number=v.prompt_version_number,
            model=v.model_override or versions[v.prompt_version_id].model or "",
            override=v.model_override,
        )
        for v in run.variants.all()
    }
    items = {
        i.id: {"input": i.variables, "expected": i.expected or None, "metadata": i.metadata, "key": i.key}
        for i in DatasetItem.objects.filter(version_id=run.dataset_version_id)
    }
    specs = list(run.suite.assertions)
    judge_ids = [s["judge_prompt_version_id"] for s in specs if s.get("type") == "llm-judge"]
    judges = {
        pk: (name, number)
        for pk, name, number in PromptVersion.objects.filter(pk__in=judge_ids).values_list(
            "pk", "prompt__name", "number"
        )
    }
    return Plan(
        run_id=run.id,
        organisation_id=run.organisation_id,
        prompt_name=run.prompt_name,
        secret=secret,
        concurrency=max(1, run.concurrency),
        deadline_at=run.deadline.timestamp(),
        specs=specs,
        threshold=run.suite.pass_threshold,
        variants=variants,
        items=items,
        judges=judges,
    )


@dataclass
class Answer:
    """What the proxy answered (the part of an HTTP response the executor reads)."""

    status_code: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def _retry_after(response: Answer | httpx.Response | None) -> float | None:
    if response is None:
        return None
    value = response.headers.get("retry-after")
    if value is None:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    return None


def _error_code(response: Answer | httpx.Response) -> str:
    with contextlib.suppress(Exception):
        return str((response.json().get("error") or {}).get("code") or "")
    return ""


def _error_text(response: Answer | httpx.Response) -> str:
    with contextlib.suppress(Exception):
        error = response.json().get("error") or {}
        return f"HTTP {response.status_code} {error.get('code') or error.get('type') or ''}: {error.get('message')}"
    return f"HTTP {response.status_code}: {response.text[:300]}"


class Executor:
    def __init__(self, plan: Plan, *, slice_seconds: float | None = None):
        self.plan = plan
        self.slice_end = time.monotonic() + slice_seconds if slice_seconds else None
        self.sliced = False
        self.db = ThreadPoolExecutor(
            max_workers=min(16, plan.concurrency + 2), thread_name_prefix=f"evals-{plan.run_id}"
        )
        self.connections: set = set()  # the DB threads' connections, closed at the end
        self.prices: dict = {}
        self.releases: set = set()
        self.pending: list = []
        self.pending_event = asyncio.Event()
        self.writer_stop = False
        self.needs_models = any(assertion_needs(spec) for spec in plan.specs)
        self.buffer: list[dict] = []
        self.claim_lock = asyncio.Lock()
        self.exhausted = False
        self.cancelled = asyncio.Event()
        self.lease_ms = int(settings.STEWARD_EVALS_LEASE_SECONDS * 1000)
        self.rate_limited = 0
        headers = {"Authorization": f"Bearer {plan.secret}", "x-steward-eval-run": str(plan.run_id)}
        self.base = settings.STEWARD_EVALS_PROXY_URL
        self.headers = headers
        self.http: aiohttp.ClientSession | None = None  # made in the executing loop
        # The judge and the embedder are called from scoring threads (the assertions are synchronous); made
        # only for suites that need them (building its TLS context alone costs ~50 ms of a run's start).
        self.sync_http = (
            httpx.Client(base_url=self.base, headers=headers, timeout=httpx.Timeout(600.0, connect=10.0))
            if any(assertion_needs(spec) for spec in plan.specs)
            else None
        )

    # --- plumbing ---------------------------------------------------------------------------------

    async def in_thread(self, fn, *args, **kwargs):
        def call():
            close_old_connections()
            self.connections.add(connections["default"])
            return fn(*args, **kwargs)

        return await asyncio.get_running_loop().run_in_executor(self.db, lambda: call())

    def seconds_left(self) -> float:
        return self.plan.deadline_at - time.time()

    async def next_cell(self) -> dict | None:
        if self.slice_end is not None and time.monotonic() > self.slice_end and not self.buffer:
            self.sliced = not self.exhausted
            return None
        while not self.buffer and not self.exhausted and not self.cancelled.is_set():
            async with self.claim_lock:
                if self.buffer or self.exhausted:
                    break
                # Two rounds' worth: fewer pauses while a batch is claimed, well within the lease.
                claimed = await self.in_thread(
                    runs.cells_claim, run_id=self.plan.run_id, limit=min(2 * self.plan.concurrency, 200)
                )
                if not claimed:
                    self.exhausted = True
                self.buffer.extend(claimed)
        if self.cancelled.is_set() or not self.buffer:
            return None
        return self.buffer.pop(0)

    # --- watching ---------------------------------------------------------------------------------

    async def watch(self, redis) -> None:
        """Cancellation flag, deadline and the heartbeat the sweeper reads, until the work is done."""
        cancel_key = runs.CANCEL_KEY.format(run_id=self.plan.run_id)
        alive_key = ALIVE_KEY.format(run_id=self.plan.run_id)
        beat = 0.0
        while True:
            now = time.monotonic()
            if now - beat >= HEARTBEAT_SECONDS:
                await redis.set(alive_key, "1", ex=int(HEARTBEAT_SECONDS * 3))
                beat = now
            if await redis.get(cancel_key):
                self.cancelled.set()
                return
            if self.seconds_left() <= 0:
                self.deadline_passed = True
                self.cancelled.set()
                return
            await asyncio.sleep(CANCEL_POLL_SECONDS)

    # --- one cell ---------------------------------------------------------------------------------

    async def call(self, cell: dict, path: str, body: dict, model: str, limits: SharedLimits) -> tuple[dict, dict]:
        """(response JSON, meta) from the proxy, retrying as the module docstring says; raises RuntimeError
        with the final error."""
        keys = [run_limit_key(self.plan.run_id), model_limit_key(self.plan.organisation_id, model or "-")]
        caps = [self.plan.concurrency, settings.STEWARD_EVALS_MODEL_CONCURRENCY]
        failures, backoff = 0, BACKOFF_START
        while True:
            left = self.seconds_left()
            if left <= 0:
                raise RuntimeError("the run's deadline passed")
            token = await limits.acquire(keys, caps, deadline=time.monotonic() + left)
            if token is None:
                raise RuntimeError("the run's deadline passed waiting for a concurrency slot")
            response, error = None, ""
            started = time.perf_counter()
            try:
                # aiohttp, not httpx: httpx's pool scans every connection on each request, which at 50
                # concurrent calls cost 8 ms of CPU per cell (cProfile); aiohttp costs a tenth of that.
                async with self.http.post(
                    self.base + path, json=body, timeout=aiohttp.ClientTimeout(total=max(1.0, left))
                ) as reply:
                    response = Answer(
                        reply.status, {k.lower(): v for k, v in reply.headers.items()}, await reply.read()
                    )
            except (TimeoutError, aiohttp.ClientError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            finally:
                # Released in the background: the cell's result does not wait for Redis's answer.
                task = asyncio.create_task(limits.release(keys, token))
                self.releases.add(task)
                task.add_done_callback(self.releases.discard)
            latency_ms = (time.perf_counter() - started) * 1000
            if response is not None and response.status_code == 200:
                meta = {
                    "latency_ms": latency_ms,
                    "request_id": response.headers.get("x-request-id", ""),
                    "deployment": response.headers.get("x-steward-model-deployment", ""),
                }
                return response.json(), meta
            retry_after = _retry_after(response)
            if response is not None and _error_code(response) in NOT_RETRYABLE_CODES:
                raise RuntimeError(_error_text(response))
            if response is not None and (response.status_code in RETRYABLE or retry_after is not None):
                # Rate limited: wait as told (at least the backoff), for as long as the deadline allows.
                self.rate_limited += 1
                # As told when told (plus up to 20% jitter, so waiting cells do not return in one burst),
                # else a jittered exponential backoff.
                if retry_after is not None:
                    wait = min(retry_after, BACKOFF_CAP) * (1.0 + random.random() * 0.2)
                else:
                    wait = backoff * (0.5 + random.random())
                    backoff = min(backoff * 2, BACKOFF_CAP)
                logger.info(
                    "run %s cell %s: %s, retrying in %.1fs", self.plan.run_id, cell["id"], _error_text(response), wait
                )
                if wait >= self.seconds_left():
                    raise RuntimeError(f"rate limited until the run's deadline ({_error_text(response)})")
                if not await self.in_thread(runs.cell_lease_extend, cell_id=cell["id"], attempts=cell["attempts"]):
                    raise ClaimLost()
                await asyncio.sleep(wait)
                continue
            failures += 1
            if response is not None:
                error = _error_text(response)
                if 400 <= response.status_code < 500 and response.status_code not in (408, 409):
                    raise RuntimeError(error)
            if failures >= settings.STEWARD_EVALS_MAX_ATTEMPTS:
                raise RuntimeError(error)
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, BACKOFF_CAP)

    async def execute_cell(self, cell: dict, limits: SharedLimits) -> None:
        plan = self.plan
        variant = plan.variants[cell["variant_id"]]
        item = plan.items[cell["item_id"]]
        body: dict = {
            "prompt": {"name": plan.prompt_name, "version": variant.version_number, "variables": item["input"]},
        }
        if variant.override:
            body["model"] = variant.override
        result: dict = {}
        try:
            data, meta = await self.call(cell, "/chat/completions", body, variant.model, limits)
            usage = data.get("usage") or {}
            choice = (data.get("choices") or [{}])[0]
            result = {
                "output": str((choice.get("message") or {}).get("content") or ""),
                "request_id": meta["request_id"],
                "latency_ms": round(meta["latency_ms"], 3),
                "prompt_tokens": int(usage.get("prompt_tokens") or 0),
                "completion_tokens": int(usage.get("completion_tokens") or 0),
                "model": data.get("model") or variant.model,
                "deployment": meta["deployment"],
                "route": variant.model,
            }
        except ClaimLost:
            return
        except RuntimeError as exc:
            result = {"error": str(exc)[:2000]}
        if not result.get("error"):
            await self.acost(result)
        if self.needs_models:
            await self.in_thread(self.score, cell, item, result)
        else:
            self.score(cell, item, result)
        self.record(cell, result)

    def record(self, cell: dict, result: dict) -> None:
        """Queue the cell's result for the writer, which stores results in batches (one thread hop and one
        pipelined round of statements per batch instead of per cell)."""
        self.pending.append((cell["id"], cell["attempts"], result))
        self.pending_event.set()

    async def writer(self) -> None:
        while True:
            await self.pending_event.wait()
            self.pending_event.clear()
            batch, self.pending = self.pending, []
            if batch:
                try:
                    await self.in_thread(runs.cells_finish_many, batch)
                except Exception:
                    # One bad row must not cost the batch, nor stop the writer (the cells would wait for the
                    # sweeper): store them one by one; a cell that still fails stays leased and is re-run.
                    logger.exception("storing %d results of run %s failed; one by one", len(batch), self.plan.run_id)
                    for cell_id, attempts, result in batch:
                        try:
                            await self.in_thread(runs.cell_finish, cell_id=cell_id, attempts=attempts, result=result)
                        except Exception:
                            logger.exception("storing cell %s of run %s failed", cell_id, self.plan.run_id)
            if self.writer_stop and not self.pending:
                return

    # --- scoring and recording (in a thread: assertions and the judge are synchronous) ----------------

    def _price_load(self, route: str, deployment: str):
        """The price of a (route, deployment) at the run's start of using it, cached for the run (sync: DB)."""
        from billing.prices import price_resolve
        from proxy.models import Deployment

        key = (route, deployment)
        if key not in self.prices:
            deployment_id = (
                Deployment.objects.filter(
                    route__organisation_id=self.plan.organisation_id, route__name=route, name=deployment
                )
                .values_list("pk", flat=True)
                .first()
            )
            self.prices[key] = price_resolve(
                organisation_id=self.plan.organisation_id, model=route, deployment_id=deployment_id, at=timezone.now()
            )
        return self.prices[key]

    def _cost_priced(self, route: str, usage: dict, price) -> Decimal:
        from billing.contract import Usage
        from billing.prices import cost_from_price

        counts = Usage(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )
        return cost_from_price(price=price, model=route, usage=counts).total

    def _cost(self, route: str, deployment: str, usage: dict) -> Decimal:
        if not route:
            return Decimal(0)
        return self._cost_priced(route, usage, self._price_load(route, deployment))

    async def acost(self, result: dict) -> None:
        """The cell's cost from its usage and the price of where it went (looked up once per deployment)."""
        route, deployment = result["route"], result["deployment"]
        try:
            if not route:
                result["cost_usd"] = Decimal(0)
                return
            if (route, deployment) not in self.prices:
                await self.in_thread(self._price_load, route, deployment)
            usage = {"prompt_tokens": result["prompt_tokens"], "completion_tokens": result["completion_tokens"]}
            result["cost_usd"] = self._cost_priced(route, usage, self.prices[(route, deployment)])
        except Exception as exc:  # pricing must not lose the output
            logger.warning("pricing a cell of run %s failed: %s", self.plan.run_id, exc)
            result["cost_usd"] = Decimal(0)

    def _post_sync(self, path: str, body: dict) -> tuple[dict, Decimal]:
        response = self.sync_http.post(path, json=body)
        if response.status_code != 200:
            raise RuntimeError(_error_text(response))
        data = response.json()
        route = body.get("model") or data.get("model") or ""
        return data, self._cost(route, response.headers.get("x-steward-model-deployment", ""), data.get("usage") or {})

    def score(self, cell: dict, item: dict, result: dict) -> dict:
        """Outcomes, score and passed (and the judge's and embedder's costs) into `result`. Synchronous; in a
        thread when an assertion calls a model."""
        plan = self.plan
        extra_cost = [Decimal(0)]

        def judge(rubric: str, output: str, item_: dict) -> tuple[float, str]:
            spec = next(s for s in plan.specs if s.get("type") == "llm-judge" and s.get("rubric") == rubric)
            name, number = plan.judges[spec["judge_prompt_version_id"]]
            variables = {
                "rubric": rubric,
                "output": output,
                "input": json.dumps(item_.get("input"), ensure_ascii=False),
                "expected": item_.get("expected") or "",
            }
            data, cost = self._post_sync(
                "/chat/completions",
                {
                    "prompt": {"name": name, "version": number, "variables": variables},
                    "messages": judge_messages(rubric, output, item_),
                    "temperature": 0,
                    "seed": JUDGE_SEED,
                },
            )
            extra_cost[0] += cost
            return judge_reply_parse(str(data["choices"][0]["message"]["content"] or ""))

        def embed(texts: list[str]) -> list[list[float]]:
            model = settings.STEWARD_EVALS_EMBEDDING_MODEL
            data, cost = self._post_sync("/embeddings", {"model": model, "input": texts})
            extra_cost[0] += cost
            return [row["embedding"] for row in sorted(data["data"], key=lambda r: r["index"])]

        output = CellOutput(
            text=result.get("output", ""),
            latency_ms=float(result.get("latency_ms") or 0.0),
            cost_usd=result.get("cost_usd") or Decimal(0),
            tokens=int(result.get("prompt_tokens", 0)) + int(result.get("completion_tokens", 0)),
            error=result.get("error", ""),
        )
        try:
            outcomes = [
                assertion_score(
                    spec,
                    output,
                    item,
                    judge=judge if "judge" in assertion_needs(spec) else None,
                    embed=embed if "embed" in assertion_needs(spec) else None,
                )
                for spec in plan.specs
            ]
            score, passed = cell_score(plan.specs, outcomes, plan.threshold)
            result["outcomes"] = [o.__dict__ for o in outcomes]
            result["score"], result["passed"] = score, passed
        except Exception as exc:  # a judge or embedder that failed: the cell's result is that error
            result["error"] = f"scoring failed: {type(exc).__name__}: {exc}"[:2000]
            result["outcomes"], result["score"], result["passed"] = [], 0.0, False
        result["cost_usd"] = (result.get("cost_usd") or Decimal(0)) + extra_cost[0]
        if result.get("error") and "score" not in result:
            result["score"], result["passed"] = 0.0, False
        return result

    # --- the whole run ----------------------------------------------------------------------------

    async def worker(self, limits: SharedLimits) -> None:
        while not self.cancelled.is_set():
            cell = await self.next_cell()
            if cell is None:
                return
            try:
                await self.execute_cell(cell, limits)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A bug or an outage (database, Redis) on one cell: record it if possible and go on; a cell
                # that cannot even be recorded stays leased and the sweeper gives it another try.
                logger.exception("run %s cell %s failed", self.plan.run_id, cell["id"])
                with contextlib.suppress(Exception):
                    await self.in_thread(
                        runs.cell_finish,
                        cell_id=cell["id"],
                        attempts=cell["attempts"],
                        result={
                            "error": f"internal error: {type(exc).__name__}: {exc}"[:2000],
                            "score": 0.0,
                            "passed": False,
                        },
                    )

    async def execute(self) -> None:
        import redis.asyncio as aredis

        redis = aredis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2)
        self.http = aiohttp.ClientSession(
            headers=self.headers,
            connector=aiohttp.TCPConnector(limit=self.plan.concurrency + 8, limit_per_host=0),
        )
        limits = SharedLimits(redis, self.lease_ms)
        self.deadline_passed = False
        watcher = asyncio.create_task(self.watch(redis))
        writer = asyncio.create_task(self.writer())
        workers = [asyncio.create_task(self.worker(limits)) for _ in range(self.plan.concurrency)]
        everything = asyncio.gather(*workers, return_exceptions=True)
        cancel_wait = asyncio.create_task(self.cancelled.wait())
        try:
            await asyncio.wait([everything, cancel_wait], return_when=asyncio.FIRST_COMPLETED)
            if self.cancelled.is_set():
                for task in workers:
                    task.cancel()
                with contextlib.suppress(BaseException):
                    await everything
        finally:
            # Results already in hand are stored, cancelled or not: they are the cells' one result.
            self.writer_stop = True
            self.pending_event.set()
            with contextlib.suppress(Exception):
                await writer
            watcher.cancel()
            cancel_wait.cancel()
            if self.releases:
                await asyncio.gather(*self.releases, return_exceptions=True)
            with contextlib.suppress(BaseException):
                await watcher
            with contextlib.suppress(Exception):
                await redis.delete(ALIVE_KEY.format(run_id=self.plan.run_id))
            await redis.aclose()
            await self.http.close()
            if self.sync_http is not None:
                self.sync_http.close()
        if self.rate_limited:
            logger.info("run %s: %d rate-limited answers retried", self.plan.run_id, self.rate_limited)
        if self.cancelled.is_set():
            if self.deadline_passed:
                await self.in_thread(runs.run_fail, run_id=self.plan.run_id, error="the run's deadline passed")
            else:
                await self.in_thread(runs.cells_cancel_open, run_id=self.plan.run_id)
        await self.in_thread(runs.run_finish_if_done, run_id=self.plan.run_id)
        self.db.shutdown(wait=True)
        for conn in self.connections:
            # Opened in the pool's threads, which are gone: allowed to close from here.
            conn.inc_thread_sharing()
            with contextlib.suppress(Exception):
                conn.close()


def execute(run_id: int, *, slice_seconds: float | None = None) -> str:
    """Execute the run's claimable cells until none is left (or the run is cancelled or out of time, or
    `slice_seconds` passed: then "more" is returned and the caller hands the rest on), then end the run if no
    other worker still holds cells. Safe to call for any run, any number of times at once."""
    plan = plan_load(run_id)
    if plan is None:
        return "done"
    executor = Executor(plan, slice_seconds=slice_seconds)
    asyncio.run(executor.execute())
    return "more" if executor.sliced else "done"
