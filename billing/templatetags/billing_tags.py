from decimal import Decimal

from django import template

register = template.Library()


@register.filter
def per_million(value) -> str:
    """A per-token price shown per million tokens, exactly (Decimal, trailing zeros dropped)."""
    if value is None:
        return "—"
    shown = (Decimal(value) * 1_000_000).normalize()
    return f"{shown:f}"
