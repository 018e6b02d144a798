"""A separate process that reserves and settles budgets, for the concurrency and leak tests.

python -m tests.billing.budget_worker burst <org> <key> <team> <count> <start_at> <prefix>
python -m tests.billing.budget_worker hold <org> <key> <team> <prefix>
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django

django.setup()

from django.utils import timezone  # noqa: E402

from billing.services import (  # noqa: E402
    BudgetExceeded,
    BudgetScope,
    Usage,
    abudget_reserve,
    abudget_settle,
    acost_compute,
    usage_lines_record,
)

INPUT_BYTES = 100
MAX_TOKENS = 100


async def one(scope: BudgetScope, request_id: str, records: list) -> str:
    try:
        reservation = await abudget_reserve(
            request_id=request_id,
            scope=scope,
            model="dev-small",
            deployment_id=None,
            input_text_bytes=INPUT_BYTES,
            max_output_tokens=MAX_TOKENS,
        )
    except BudgetExceeded:
        return "rejected"
    await asyncio.sleep(0.02)  # the upstream call
    # The worst case actually happens: every input byte a token, every allowed output token produced.
    usage = Usage(prompt_tokens=INPUT_BYTES + 16, completion_tokens=MAX_TOKENS)
    started = timezone.now()
    cost = await acost_compute(
        organisation_id=scope.organisation_id, model="dev-small", deployment_id=None, usage=usage, at=started
    )
    await abudget_settle(reservation=reservation, actual_cost=cost.total)
    records.append(
        {
            "request_id": request_id,
            "organisation_id": scope.organisation_id,
            "api_key_id": scope.api_key_id,
            "team_id": scope.team_id,
            "model": "dev-small",
            "status": "ok",
            "cache_hit": False,
            "started_at": started.isoformat(),
            "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens},
            "attempts": [
                {
                    "n": 1,
                    "deployment_id": None,
                    "model": "dev-small",
                    "status": "ok",
                    "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens},
                }
            ],
        }
    )
    return "admitted"


async def burst(scope: BudgetScope, count: int, start_at: float, prefix: str) -> tuple[list[str], list]:
    records: list = []
    time.sleep(max(0.0, start_at - time.time()))
    outcomes = await asyncio.gather(*(one(scope, f"{prefix}-{i}", records) for i in range(count)))
    return list(outcomes), records


def main() -> None:
    mode = sys.argv[1]
    org, key, team = (int(x) if x != "-" else None for x in sys.argv[2:5])
    scope = BudgetScope(organisation_id=org, api_key_id=key, team_id=team)
    if mode == "burst":
        count, start_at, prefix = int(sys.argv[5]), float(sys.argv[6]), sys.argv[7]
        outcomes, records = asyncio.run(burst(scope, count, start_at, prefix))
        usage_lines_record(records=records)
        print(json.dumps({"admitted": outcomes.count("admitted"), "rejected": outcomes.count("rejected")}))
    elif mode == "hold":

        async def hold() -> None:
            await abudget_reserve(
                request_id=sys.argv[5],
                scope=scope,
                model="dev-small",
                deployment_id=None,
                input_text_bytes=INPUT_BYTES,
                max_output_tokens=MAX_TOKENS,
            )
            print("held", flush=True)
            await asyncio.sleep(3600)

        asyncio.run(hold())


if __name__ == "__main__":
    main()
