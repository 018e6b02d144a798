"""Server-rendered SVG bar charts (no JavaScript, no CDN): the page works with scripts off.

Every chart in the app is drawn here (the usage page's cost and token charts, the evaluations'
score trend), so their axes share one scale: `nice_ticks`.
"""

from __future__ import annotations

from decimal import Decimal

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP = 900, 220, 70, 28, 10
NICE_FACTORS = (1, 2, 5, 10)


def nice_ticks(max_value: Decimal | int | float, *, intervals: int = 5, integer: bool = False) -> list[Decimal]:
    """Axis ticks from 0 up to at least `max_value`, a step of 1, 2 or 5 times a power of ten apart
    ("nice numbers": 0, 0.001, 0.002 … rather than 0, 0.00125, 0.0025 …), at most `intervals` steps.

    Values are never negative here (costs, tokens, percentages): a negative or zero maximum gives
    the single tick [0], which callers treat as "nothing to draw". `integer` keeps the step at 1 or
    more, for counts (no "0.5 tokens" tick)."""
    top = Decimal(str(max_value)) if isinstance(max_value, float) else Decimal(max_value)
    if not top.is_finite() or top <= 0:
        return [Decimal(0)]
    intervals = max(1, intervals)
    raw = top / intervals
    power = Decimal(1).scaleb(raw.adjusted())  # 10 ** exponent of raw's leading digit
    step = next(power * f for f in NICE_FACTORS if power * f >= raw)
    if integer and step < 1:
        step = Decimal(1)
    count = int((top / step).to_integral_value(rounding="ROUND_CEILING"))
    # Exact multiples of the step; normalised so 0.0010 prints as 0.001 and 1E+1 as 10.
    return [_plain(step * i) for i in range(count + 1)]


def _plain(value: Decimal) -> Decimal:
    value = value.normalize()
    # normalize() writes 100 as 1E+2; quantize to whole units when it has no fraction.
    return value.quantize(Decimal(1)) if value == value.to_integral_value() else value


def tick_label(value: Decimal, *, step: Decimal, unit: str = "") -> str:
    """A tick written with as many decimals as its step needs (never "$0.001000")."""
    if value == 0:
        return {"$": "$0", "%": "0%"}.get(unit, "0")
    decimals = max(0, -step.normalize().as_tuple().exponent) if step else 0
    if unit == "$":
        if step < 1:
            decimals = max(decimals, 2)
        return f"${value:,.{decimals}f}"
    text = f"{value:,.{decimals}f}"
    return text + "%" if unit == "%" else text


def _fmt(value: Decimal, unit: str) -> str:
    """One bar's exact value (its tooltip), not rounded to the axis."""
    if unit == "$":
        if value == 0:
            return "$0"
        return f"${value:.6f}".rstrip("0").rstrip(".") if value < 1 else f"${value:,.2f}"
    if unit == "%":
        return f"{value}%"
    return f"{int(value):,}"


def bar_chart(
    *,
    title: str,
    points: list[tuple[str, Decimal | int]],
    unit: str = "",
    css_class: str = "",
    max_value: Decimal | int | None = None,
    empty_text: str = "No usage in this period",
) -> SafeString:
    """One bar per point (label, value). `unit` "$" formats money, "%" percentages; anything else
    counts (whole ticks). `max_value` fixes the top of the scale (100 for percentages); without it,
    a chart with no points or only zeros is `empty_text` rather than an axis of zeros."""
    data_max = max((Decimal(v) for _, v in points), default=Decimal(0))
    scale_max = max(data_max, Decimal(max_value)) if max_value is not None else data_max
    ticks = nice_ticks(scale_max, integer=unit not in ("$", "%"))
    if not points or len(ticks) < 2:
        return mark_safe(f'<p class="muted chart-empty {escape(css_class)}">{escape(empty_text)}</p>')  # noqa: S308
    top, step = ticks[-1], ticks[1]
    plot_w = WIDTH - PAD_LEFT - 10
    plot_h = HEIGHT - PAD_BOTTOM - PAD_TOP
    n = len(points)
    slot = plot_w / n
    bar_w = max(slot * 0.7, 1)
    parts = [
        f'<svg class="chart {escape(css_class)}" role="img" aria-label="{escape(title)}" viewBox="0 0 {WIDTH} {HEIGHT}"'
        f' width="100%" preserveAspectRatio="xMidYMid meet" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for tick in ticks:
        # Floats here are pixel geometry only; the values shown stay Decimal.
        y = PAD_TOP + plot_h * (1 - float(tick / top))
        parts.append(f'<line x1="{PAD_LEFT}" x2="{WIDTH - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        parts.append(
            f'<text class="tick" x="{PAD_LEFT - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" fill="#6b7280">'
            f"{escape(tick_label(tick, step=step, unit=unit))}</text>"
        )
    label_every = max(1, n // 10)
    for i, (label, value) in enumerate(points):
        h = float(Decimal(value) / top) * plot_h
        shown = _fmt(Decimal(value), unit) if unit in ("$", "%") else str(value)
        x = PAD_LEFT + slot * i + (slot - bar_w) / 2
        y = PAD_TOP + plot_h - h
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="#2563eb"'
            f' data-label="{escape(label)}" data-value="{escape(str(value))}">'
            f"<title>{escape(label)}: {escape(shown)}</title></rect>"
        )
        if i % label_every == 0:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{HEIGHT - 10}" font-size="10" text-anchor="middle" fill="#6b7280">'
                f"{escape(label[5:] if len(label) == 10 else label)}</text>"
            )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every interpolated text is escaped above
