"""`python -m bench.safety`: the timing table and the quality table, with or without Presidio installed.

It asserts the report's shape, not speeds (timings belong to the benchmark's output, not to tests).
"""

from __future__ import annotations

import importlib.util
import re

from bench import safety


def test_bench_prints_every_filter_row_and_the_quality_table(capsys):
    assert safety.main(["--texts", "4", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    for name in ("pii + injection (default)", "pii", "injection", "secrets", "blocklist", "json_schema", "citations"):
        assert re.search(rf"^{re.escape(name)}.*\d+(\.\d)?\s+[\d,.]+\s+[\d,.]+$", out, re.MULTILINE), name
    for kind in safety.KINDS:
        assert re.search(rf"^{kind}\s+\d+\s+[01]\.\d{{3}}\s+[01]\.\d{{3}}", out, re.MULTILINE), kind
    if importlib.util.find_spec("presidio_analyzer") is None:
        assert "presidio-analyzer is not importable: its columns are skipped" in out
        assert "Presidio P" not in out
    else:
        assert "Presidio 6 pattern recognizers" in out and "Presidio P" in out


def test_no_presidio_flag_skips_it_without_the_message(capsys):
    assert safety.main(["--texts", "2", "--rounds", "1", "--no-presidio"]) == 0
    out = capsys.readouterr().out
    assert "Presidio" not in out


def test_texts_are_4k_and_distinct():
    texts = safety.texts_4k(10)
    assert all(len(text) == safety.TEXT_SIZE for text in texts) and len(set(texts)) == 10
