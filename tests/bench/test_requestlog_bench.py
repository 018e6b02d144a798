"""`python -m bench.requestlog` on a small load: it loads, resumes instead of loading twice, and prints
every page's row. It asserts the report's shape, not speeds (those belong to the benchmark's output)."""

from __future__ import annotations

import re

import pytest

from bench import requestlog
from billing.models import UsageLine
from proxy.models import RequestLog


@pytest.mark.django_db(transaction=True)
def test_bench_loads_once_and_prints_every_page(capsys):
    requestlog.main(["--rows", "1200", "--samples", "2"])
    out = capsys.readouterr().out
    assert RequestLog.objects.filter(request_id__startswith="rlb-").count() == 1200
    assert UsageLine.objects.filter(request_id__startswith="rlb-").count() == 1200
    assert set(RequestLog.objects.values_list("prompt_name", flat=True)) == {"", *requestlog.PROMPTS}
    for page in ("list, newest page", "list by model", "list by status", "list by key", "list by prompt+version",
                 "list by date range", "list, page ", "list by prompt+version, page ",
                 "API list by key", "API list, page ", "detail page", "API detail"):  # fmt: skip
        assert re.search(rf"^{re.escape(page)}.*\s[\d.]+\s+[\d.]+\s+[\d.]+\s+(pass|FAIL)$", out, re.MULTILINE), page

    requestlog.main(["--rows", "1200", "--samples", "1"])
    assert "1,200 request records already loaded" in capsys.readouterr().out
    assert RequestLog.objects.filter(request_id__startswith="rlb-").count() == 1200
