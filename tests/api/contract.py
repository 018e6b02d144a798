"""Runs schemathesis over /api/schema/ against a running Steward, as one persona, and reads its report.

The checks are the issue's three promises: no server error (not_a_server_error), no response that
breaks its schema (response_schema_conformance, content_type_conformance) and no undocumented status
(status_code_conformance). Every phase is on: examples (skipped while the description has none),
coverage (boundary and invalid values of every parameter and body field), fuzzing (`max_examples`
random cases per operation) and stateful (sequences of calls along the links schemathesis infers)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


@dataclass(frozen=True)
class ContractRun:
    persona: str
    generated: int
    failures: list
    errors: list
    exit_code: int
    output: str


# The coverage phase (every boundary and invalid value of every field) is most of a run's requests:
# about 3,900 for the whole API, 45 s on a loaded 2-core machine. One run in the suite covers all
# operations; the SQLite run covers the reads, where the two databases differ (filters); the viewer
# runs skip it (their writes are 403 before any input is read).
COVERAGE_METHODS = {"all": None, "reads": "POST|PUT|PATCH|DELETE", "none": "GET|POST|PUT|PATCH|DELETE"}


def _config(path: Path, *, fixed: dict[str, object], coverage: str) -> Path:
    lines = [
        # Methods the description does not list answer 405; that is another promise (Allow headers).
        "[phases.coverage]",
        "unexpected-methods = []",
        "",
        "[parameters]",
        *(f'"path.{name}" = {json.dumps(value)}' for name, value in fixed.items()),
    ]
    if COVERAGE_METHODS[coverage]:
        lines += [
            "",
            "[[operations]]",
            f'include-method-regex = "{COVERAGE_METHODS[coverage]}"',
            "phases.coverage.enabled = false",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def schemathesis_run(
    *,
    base_url: str,
    token: str,
    persona: str,
    workdir: Path,
    fixed: dict[str, object],
    coverage: str = "all",
    max_examples: int = 3,
) -> ContractRun:
    """`fixed` pins path parameters to seeded objects, so requests reach the views' logic rather than
    404s, and keeps the run from revoking the key it authenticates with (key_id: another key)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = _config(workdir / f"schemathesis-{persona}.toml", fixed=fixed, coverage=coverage)
    report = workdir / f"report-{persona}.json"
    command = [
        str(Path(sys.executable).with_name("st")),
        "--config-file",
        str(config),
        "run",
        f"{base_url}/api/schema/",
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        CHECKS,
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(max_examples),
        "--seed",
        "20261205",
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--no-color",
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=workdir)
    output = completed.stdout + completed.stderr
    assert report.exists(), output[-6000:]
    data = json.loads(report.read_text())
    return ContractRun(
        persona=persona,
        generated=data["test_cases"]["generated"],
        failures=data["failures"],
        errors=data["errors"],
        exit_code=completed.returncode,
        output=output,
    )


def assert_kept(run: ContractRun, *, minimum: int) -> None:
    summary = run.output[-12000:]
    assert not run.failures, summary
    assert not run.errors, summary
    assert run.exit_code == 0, summary
    # A run that generated (almost) nothing would prove nothing.
    assert run.generated > minimum, summary
    print(f"schemathesis as {run.persona}: {run.generated} test cases, no failures")
