"""Server-rendered SVG bar charts (no JavaScript, no CDN): the page works with scripts off."""

from __future__ import annotations

from decimal import Decimal

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP = 900, 220, 70, 28, 10


def _nice_max(value: Decimal | int) -> Decimal:
    value = Decimal(value)
    if value <= 0:
        return Decimal(1)
    exponent = value.adjusted()
    step = Decimal(10) ** exponent
    for factor in (1, 2, 5, 10):
        if value <= step * factor:
            return step * factor
    return step * 10


def _fmt(value: Decimal, unit: str) -> str:
    if unit == "$":
        if value == 0:
            return "$0"
        return f"${value:.6f}".rstrip("0").rstrip(".") if value < 1 else f"${value:,.2f}"
    return f"{int(value):,}"


def bar_chart(
    *, title: str, points: list[tuple[str, Decimal | int]], unit: str = "", css_class: str = ""
) -> SafeString:
    """One bar per point (label, value). `unit` "$" formats money; anything else counts."""
    top = _nice_max(max((v for _, v in points), default=0))
    plot_w = WIDTH - PAD_LEFT - 10
    plot_h = HEIGHT - PAD_BOTTOM - PAD_TOP
    n = max(len(points), 1)
    slot = plot_w / n
    bar_w = max(slot * 0.7, 1)
    parts = [
        f'<svg class="chart {escape(css_class)}" role="img" aria-label="{escape(title)}" viewBox="0 0 {WIDTH} {HEIGHT}"'
        f' width="100%" preserveAspectRatio="xMidYMid meet" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for i in range(5):
        y = PAD_TOP + plot_h * i / 4
        value = top * (4 - i) / 4
        parts.append(f'<line x1="{PAD_LEFT}" x2="{WIDTH - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        parts.append(
            f'<text x="{PAD_LEFT - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" fill="#6b7280">'
            f"{escape(_fmt(value, unit))}</text>"
        )
    label_every = max(1, n // 10)
    for i, (label, value) in enumerate(points):
        # Floats here are pixel geometry only; the values shown stay Decimal.
        h = float(Decimal(value) / top) * plot_h if top else 0.0
        shown = _fmt(Decimal(value), unit) if unit == "$" else str(value)
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
