"""Running a policy's filters on one text: `arun_policy(policy, text, context) -> StageResult`.

The filters that apply to the text's direction run concurrently: async ones (they wait on I/O)
as tasks, each under its own timeout, started first; deterministic sync ones inline meanwhile
(they are CPU-bound and bounded by construction, so a task would only add cost; their time is
still measured and recorded). The stage waits for the slowest task, bounded by the policy's
deadline; a task still running then is cancelled and counts as timed out.

Every filter is accounted for in `runs`: passed, triggered (with its findings), errored, timed_out,
or skipped with the reason. A filter that errors or times out fails closed (the stage blocks, and
`failed` names the filter) unless its entry says `on_error: allow`, which is recorded instead.

Each finding's kind maps to the policy's action for it (`CompiledPolicy.action_for`); the strongest
action of all findings is the stage's. Redact replaces the redacted spans with typed placeholders
(`safety.redaction`); `mapping` restores them. A filter's rewrite (the citation cleaner's) becomes
the stage's text whatever the action, with any redaction carried over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from safety.filters.base import Action, CheckContext, FilterResult
from safety.policies import CompiledPolicy, FilterEntry

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class StageResult:
    action: Action
    text: str  # redacted or rewritten, else the original
    mapping: dict[str, str] = field(default_factory=dict)  # placeholder -> original
    findings: list[dict[str, Any]] = field(default_factory=list)  # Finding.as_dict() + "filter", "action"
    runs: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    policy_id: int | None = None
    policy_name: str = ""
    failed: str = ""  # the filter that failed closed (errored or timed out), if any
    changed: bool = False  # `text` differs from the text checked

    def summary(self) -> dict[str, Any]:
        """What the request log keeps of the stage (no text: findings carry spans, not content)."""
        return {
            "action": str(self.action),
            "findings": self.findings,
            "runs": self.runs,
            "redacted": bool(self.mapping),
            "failed": self.failed,
        }

    def kinds(self) -> list[str]:
        return sorted({f["kind"] for f in self.findings if f["action"] == self.action})


def _skip_reason(entry: FilterEntry, context: CheckContext) -> str:
    if not entry.applies(context.direction):
        return f"does not check {context.direction} text"
    if entry.name == "json_schema" and context.output_schema is None:
        return "no output schema declared"
    reason = getattr(entry.filter, "skip_reason", None)  # a filter may know when it has nothing to check
    return (reason(context) or "") if callable(reason) else ""


async def _bounded(entry: FilterEntry, text: str, context: CheckContext) -> tuple[FilterResult, float]:
    t = time.perf_counter()
    async with asyncio.timeout(entry.timeout_s):
        result = await entry.filter.acheck(text, context)
    return result, time.perf_counter() - t


async def arun_policy(policy: CompiledPolicy, text: str, context: CheckContext) -> StageResult:
    """Run `policy` on `text` (see the module docstring); never raises for a filter's failure."""
    entries = policy.entries
    outcomes: list[tuple[FilterEntry, str, Any, float, str]] = []  # entry, status, result|error, seconds, reason
    tasks: dict[int, asyncio.Task] = {}
    pending_sync = []
    for i, entry in enumerate(entries):
        reason = _skip_reason(entry, context)
        if reason:
            outcomes.append((entry, "skipped", None, 0.0, reason))
        elif entry.filter.is_async:
            tasks[i] = asyncio.ensure_future(_bounded(entry, text, context))
            outcomes.append((entry, "task", i, 0.0, ""))
        else:
            pending_sync.append(len(outcomes))
            outcomes.append((entry, "sync", None, 0.0, ""))
    started = time.perf_counter()
    for index in pending_sync:
        entry = outcomes[index][0]
        t = time.perf_counter()
        try:
            result = entry.filter.check(text, context)
            outcomes[index] = (entry, "done", result, time.perf_counter() - t, "")
        except Exception as exc:
            logger.warning("filter %s errored: %r", entry.name, exc)
            outcomes[index] = (entry, "errored", exc, time.perf_counter() - t, _error_text(exc))
    if tasks:
        remaining = max(0.0, policy.deadline_s - (time.perf_counter() - started))
        _, not_done = await asyncio.wait(tasks.values(), timeout=remaining)
        for task in not_done:
            task.cancel()
        for index, (entry, status, task_index, _, _) in enumerate(outcomes):
            if status != "task":
                continue
            task = tasks[task_index]
            if task in not_done:
                outcomes[index] = (entry, "timed_out", None, policy.deadline_s, "policy deadline reached")
                continue
            exc = task.exception()
            if isinstance(exc, TimeoutError):
                outcomes[index] = (entry, "timed_out", None, entry.timeout_s, f"over {entry.timeout_s * 1000:g} ms")
            elif exc is not None:
                logger.warning("filter %s errored: %r", entry.name, exc)
                outcomes[index] = (entry, "errored", exc, 0.0, _error_text(exc))
            else:
                result, seconds = task.result()
                outcomes[index] = (entry, "done", result, seconds, "")
    return _combine(policy, text, context, outcomes)


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def _combine(policy: CompiledPolicy, text: str, context: CheckContext, outcomes) -> StageResult:
    runs = []
    findings: list[dict[str, Any]] = []
    to_redact = []
    actions = []
    rewrite = None
    extra: dict[str, Any] = {}
    failed = ""
    for entry, status, result, seconds, reason in outcomes:
        run = {"filter": entry.name, "status": status, "ms": round(seconds * 1000, 3), "findings": 0, "reason": reason}
        runs.append(run)
        if status in ("errored", "timed_out"):
            if entry.fail_open:
                run["reason"] = f"{reason}; on_error allow: let through"
            else:
                actions.append(Action.BLOCK)
                failed = failed or entry.name
            continue
        if status != "done":
            continue
        if result.skipped:
            run["status"], run["reason"] = "skipped", result.skipped
            continue
        if result.findings:
            run["status"] = "triggered"
            run["findings"] = len(result.findings)
            for finding in result.findings:
                action = policy.action_for(finding.kind, result.proposed)
                actions.append(action)
                record = finding.as_dict()
                record["filter"] = entry.name
                record["action"] = str(action)
                findings.append(record)
                if action == Action.REDACT:
                    to_redact.append(finding)
        else:
            run["status"] = "passed"
        if result.rewrite is not None:
            rewrite = result.rewrite
        if result.extra:
            extra.update(result.extra)
    action = Action.strongest(actions)
    out, mapping = text, {}
    if action == Action.REDACT and to_redact:
        from safety.redaction import redact

        out, mapping = redact(text, to_redact)
    if rewrite is not None:
        # The rewrite is of the original text: carry the redactions over by their original values.
        out = rewrite
        for placeholder, original in mapping.items():
            out = out.replace(original, placeholder)
    return StageResult(
        action=action,
        text=out,
        mapping=mapping,
        findings=findings,
        runs=runs,
        extra=extra,
        policy_id=policy.id,
        policy_name=policy.name,
        failed=failed,
        changed=out != text,
    )
