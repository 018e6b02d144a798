"""The charts' axis: "nice" 1-2-5 ticks, labels a person would write, and no axis of zeros."""

from __future__ import annotations

import itertools
import re
from decimal import Decimal

import pytest

from billing.charts import bar_chart, nice_ticks, tick_label

D = Decimal


def _is_nice_step(step: Decimal) -> bool:
    return step.normalize().as_tuple().digits[0] in (1, 2, 5) and len(step.normalize().as_tuple().digits) == 1


@pytest.mark.parametrize(
    ("maximum", "expected"),
    [
        (D("0.00375"), ["0", "0.001", "0.002", "0.003", "0.004"]),
        (D("0.0588"), ["0", "0.02", "0.04", "0.06"]),
        (1, ["0", "0.2", "0.4", "0.6", "0.8", "1"]),
        (7, ["0", "2", "4", "6", "8"]),
        (100, ["0", "20", "40", "60", "80", "100"]),
        (123456, ["0", "50000", "100000", "150000"]),
    ],
)
def test_ticks_are_multiples_of_one_two_or_five(maximum, expected):
    assert [str(t) for t in nice_ticks(maximum)] == expected


@pytest.mark.parametrize(
    "maximum", [D("1e-12"), D("0.000000123"), D("0.5"), D("3.14159"), D("999"), D("1000"), D("1e15"), 17, 0.3]
)
def test_ticks_cover_the_maximum_in_at_most_five_nice_steps(maximum):
    ticks = nice_ticks(maximum)
    steps = {b - a for a, b in itertools.pairwise(ticks)}
    assert ticks[0] == 0 and len(steps) == 1
    step = steps.pop()
    assert _is_nice_step(step), step
    assert ticks[-1] >= D(str(maximum)) > ticks[-2]
    assert 2 <= len(ticks) <= 6


@pytest.mark.parametrize("maximum", [0, D(0), -5, D("-0.1")])
def test_nothing_to_scale_gives_the_single_zero_tick(maximum):
    assert nice_ticks(maximum) == [0]


def test_counts_never_get_fractional_ticks():
    assert [str(t) for t in nice_ticks(3, integer=True)] == ["0", "1", "2", "3"]
    assert [str(t) for t in nice_ticks(1, integer=True)] == ["0", "1"]


def test_tick_labels_use_the_decimals_of_the_step():
    assert tick_label(D("0.003"), step=D("0.001"), unit="$") == "$0.003"
    assert tick_label(D("0.2"), step=D("0.2"), unit="$") == "$0.20"
    assert tick_label(D("150000"), step=D("50000"), unit="$") == "$150,000"
    assert tick_label(D(0), step=D("0.001"), unit="$") == "$0"
    assert tick_label(D("40"), step=D("20"), unit="%") == "40%"
    assert tick_label(D("1500"), step=D("500")) == "1,500"


def _axis(svg: str) -> list[str]:
    return re.findall(r'<text class="tick"[^>]*>([^<]*)</text>', svg)


def test_cost_chart_axis_is_round():
    svg = str(bar_chart(title="Cost", points=[("2026-05-01", D("0.00375")), ("2026-05-02", D("0.001"))], unit="$"))
    assert _axis(svg) == ["$0", "$0.001", "$0.002", "$0.003", "$0.004"]
    assert "0.00375" not in "".join(_axis(svg))


@pytest.mark.parametrize("points", [[], [("2026-05-01", 0), ("2026-05-02", D(0))]])
def test_no_usage_says_so_instead_of_an_axis_of_zeros(points):
    html = str(bar_chart(title="Cost", points=points, unit="$"))
    assert "<svg" not in html and "No usage in this period" in html


def test_a_fixed_scale_still_draws_zero_values():
    svg = str(bar_chart(title="Pass rate", points=[("v1", 0), ("v2", 0)], unit="%", max_value=100))
    assert _axis(svg) == ["0%", "20%", "40%", "60%", "80%", "100%"]
    assert svg.count('class="bar"') == 2
