"""A finished run as text and as JUnit XML (the eval_run command's output, for people and for CI)."""

from __future__ import annotations

from xml.etree import ElementTree as ET

from evals.models import Cell, Run


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def verdict_table(run: Run) -> str:
    """Variants (pass rate, score with intervals, cost) and comparisons (diff, interval, p, verdict)."""
    summary = run.summary or {}
    lines = [
        f"Run {run.id} ({run.kind}) of {run.prompt_name!r} with suite {run.suite.name!r}: {run.status}"
        + (f", verdict {run.verdict}" if run.verdict else "")
        + (f" ({run.error})" if run.error else ""),
        "",
    ]
    variants = summary.get("variants") or []
    if variants:
        rows = [("variant", "items", "pass rate [95% CI]", "score [95% CI]", "cost USD", "p50 ms")]
        for v in variants:
            rows.append(
                (
                    v["name"],
                    str(v["n_items"]),
                    f"{_pct(v['pass_rate'])} [{_pct(v['pass_low'])}, {_pct(v['pass_high'])}]",
                    f"{_num(v['score'])} [{_num(v['score_low'])}, {_num(v['score_high'])}]",
                    v["cost_usd"],
                    _num(v["latency_ms_p50"], 0),
                )
            )
        lines += [*_table(rows), ""]
    comparisons = summary.get("comparisons") or []
    if comparisons:
        rows = [("variant", "metric", "diff [95% CI]", "p (Holm)", "verdict", "more items")]
        for c in comparisons:
            rows.append(
                (
                    c["variant"],
                    c["metric"],
                    f"{c['diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]",
                    f"{c['p_adjusted']:.4f}",
                    c["verdict"],
                    "-"
                    if c["items_needed"] is None or c["verdict"] != "no_significant_difference"
                    else str(c["items_needed"]),
                )
            )
        lines += [*_table(rows), ""]
    failing = summary.get("newly_failing_critical") or []
    if failing:
        lines.append(f"Newly failing critical items: {', '.join(failing)}")
    return "\n".join(lines).rstrip() + "\n"


def _table(rows: list[tuple]) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    out = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    out.insert(1, "  ".join("-" * w for w in widths))
    return out


def run_regressed(run: Run) -> bool:
    """A regression for CI: any comparison regressed, or a critical item newly fails."""
    summary = run.summary or {}
    return any(c["verdict"] == "regressed" for c in summary.get("comparisons") or []) or bool(
        summary.get("newly_failing_critical")
    )


def junit_xml(run: Run) -> str:
    """One testsuite per compared variant: a testcase per metric (fails when regressed) and per dataset item
    (fails when the variant's cells of it failed), plus one testsuite error when the run did not complete."""
    summary = run.summary or {}
    root = ET.Element("testsuites", name=f"eval run {run.id}")
    variants = list(run.variants.order_by("position"))
    compared = variants[1:] or variants
    for variant in compared:
        suite = ET.SubElement(root, "testsuite", name=f"{run.prompt_name}:{variant.name}")
        tests = failures = errors = 0
        for c in (x for x in summary.get("comparisons") or [] if x["variant"] == variant.name):
            tests += 1
            case = ET.SubElement(suite, "testcase", classname=f"metrics.{variant.name}", name=c["metric"])
            if c["verdict"] == "regressed":
                failures += 1
                ET.SubElement(
                    case, "failure", message=f"{c['metric']} regressed: {c['diff']:+.3f}"
                ).text = f"diff {c['diff']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}], p (Holm) {c['p_adjusted']:.4f}"
        cells = (
            Cell.objects.filter(run=run, variant=variant).select_related("item").order_by("item__position", "repeat")
        )
        by_item: dict[str, list[Cell]] = {}
        for cell in cells:
            by_item.setdefault(cell.item.key, []).append(cell)
        for key, item_cells in by_item.items():
            tests += 1
            case = ET.SubElement(suite, "testcase", classname=f"items.{variant.name}", name=key)
            if any(c.status == "error" for c in item_cells):
                errors += 1
                ET.SubElement(case, "error", message="the call failed").text = item_cells[0].error[:2000]
            elif any(c.status in ("pending", "running", "cancelled") for c in item_cells):
                ET.SubElement(case, "skipped", message="not run")
            elif not all(c.passed for c in item_cells):
                failures += 1
                details = "; ".join(
                    f"{o['name']}: {o['detail']}" for c in item_cells for o in c.outcomes if not o.get("passed")
                )
                ET.SubElement(case, "failure", message="assertions failed").text = details[:4000]
        if run.status != "completed":
            errors += 1
            case = ET.SubElement(suite, "testcase", classname="run", name="status")
            ET.SubElement(case, "error", message=f"run {run.status}").text = run.error
            tests += 1
        suite.set("tests", str(tests))
        suite.set("failures", str(failures))
        suite.set("errors", str(errors))
    return ET.tostring(root, encoding="unicode", xml_declaration=True)
