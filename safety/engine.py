"""Running a policy's filters on one text: `arun_policy(policy, text, context) -> StageResult`.

The filters that apply to the text's direction run concurrently: async ones (they wait on I/O)
as tasks, each under its own timeout, started first; deterministic sync ones inline meanwhile
(they are CPU-bound and bounded by construction, so a task would only add cost; their time is
still measured and recorded). The stage waits for the slowest task, bounded by the policy's
deadline; a task still running then is cancelled and counts as timed out.

Every filter is accounted for in `runs`: passed, triggered (with its findings), errored, timed_out,
or skipped with the reason. A filter that errors or times out fails closed (the stage blocks, and
`failed` names the filter) unless its entry says `on_error: allow`, which is recorded instead.

Each finding's kind maps to the policy's action for it (`CompiledPolicy.kind_actions`, else its
"*" action, else the filter's proposal); the strongest
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
from safety.redaction import redact

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
    return ""


async def _bounded(entry: FilterEntry, text: str, context: CheckContext) -> tuple[FilterResult, float]:
    t = time.perf_counter()
    async with asyncio.timeout(entry.timeout_s):
        result = await entry.filter.acheck(text, context)
    return result, time.perf_counter() - t


async def arun_policy(policy: CompiledPolicy, text: str, context: CheckContext) -> StageResult:
    """Run `policy` on `text` (see the module docstring); never raises for a filter's failure."""
    started = time.perf_counter()
    outcomes: list[tuple[FilterEntry, str, Any, float, str]] = []  # entry, status, result|error, seconds, reason
    tasks: dict[int, asyncio.Task] = {}
    for entry in policy.entries:
        reason = _skip_reason(entry, context)
        if reason:
            outcomes.append((entry, "skipped", None, 0.0, reason))
        elif entry.filter.is_async:
            # Scheduled now, run once this coroutine waits for them (below), all together.
            tasks[len(outcomes)] = asyncio.ensure_future(_bounded(entry, text, context))
            outcomes.append((entry, "task", None, 0.0, ""))
        else:
            t = time.perf_counter()
            try:
                result = entry.filter.check(text, context)
            except Exception as exc:
                logger.warning("filter %s errored: %r", entry.name, exc)
                outcomes.append((entry, "errored", exc, time.perf_counter() - t, _error_text(exc)))
            else:
                outcomes.append((entry, "done", result, time.perf_counter() - t, ""))
    if tasks:
        remaining = max(0.0, policy.deadline_s - (time.perf_counter() - started))
        _, not_done = await asyncio.wait(tasks.values(), timeout=remaining)
        for task in not_done:
            task.cancel()
        for index, task in tasks.items():
            entry = outcomes[index][0]
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


_RANK = {
    action: rank for rank, action in enumerate((Action.ALLOW, Action.FLAG, Action.REDACT, Action.HOLD, Action.BLOCK))
}
_BY_RANK = tuple(_RANK)


def _run(name: str, status: str, seconds: float, findings: int, reason: str) -> dict[str, Any]:
    return {"filter": name, "status": status, "ms": round(seconds * 1000, 3), "findings": findings, "reason": reason}


def _combine(policy: CompiledPolicy, text: str, context: CheckContext, outcomes) -> StageResult:
    # On every request of a policy: kept to plain loops and dict reads (see bench.compare --policy).
    runs = []
    findings: list[dict[str, Any]] = []
    to_redact = []
    rank = 0
    rewrite = None
    extra: dict[str, Any] = {}
    failed = ""
    by_kind = policy.kind_actions
    star = policy.star_action
    for entry, status, result, seconds, reason in outcomes:
        name = entry.name
        if status == "done":
            if result.skipped:
                runs.append(
                    {
                        "filter": name,
                        "status": "skipped",
                        "ms": round(seconds * 1000, 3),
                        "findings": 0,
                        "reason": result.skipped,
                    }
                )
                continue
            found = result.findings
            if found:
                proposed = result.proposed
                for finding in found:
                    action = by_kind.get(finding.kind) or star or proposed
                    if _RANK[action] > rank:
                        rank = _RANK[action]
                    findings.append(
                        {
                            "kind": finding.kind,
                            "start": finding.start,
                            "end": finding.end,
                            "score": finding.score,
                            "detail": finding.detail,
                            "filter": name,
                            "action": action.value,
                        }
                    )
                    if action is Action.REDACT:
                        to_redact.append(finding)
                runs.append(
                    {
                        "filter": name,
                        "status": "triggered",
                        "ms": round(seconds * 1000, 3),
                        "findings": len(found),
                        "reason": "",
                    }
                )
            else:
                runs.append(
                    {"filter": name, "status": "passed", "ms": round(seconds * 1000, 3), "findings": 0, "reason": ""}
                )
            if result.rewrite is not None:
                rewrite = result.rewrite
            if result.extra:
                extra.update(result.extra)
            continue
        if status in ("errored", "timed_out"):
            if entry.fail_open:
                reason = f"{reason}; on_error allow: let through"
            else:
                rank = _RANK[Action.BLOCK]
                failed = failed or name
        runs.append(_run(name, status, seconds, 0, reason))
    action = _BY_RANK[rank]
    out, mapping = text, {}
    if action is Action.REDACT and to_redact:
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
        changed=out is not text,
    )
