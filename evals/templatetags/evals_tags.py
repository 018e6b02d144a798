from django import template

register = template.Library()


@register.filter
def words(value) -> str:
    """ "no_significant_difference" -> "no significant difference"."""
    return str(value or "").replace("_", " ")


@register.filter
def percent(value) -> str:
    """0.8234 -> "82.3%" (blank for None)."""
    if value is None or value == "":
        return "–"
    return f"{float(value) * 100:.1f}%"


@register.filter
def signed_percent(value) -> str:
    if value is None or value == "":
        return "–"
    return f"{float(value) * 100:+.1f} pts"


@register.filter
def pvalue(value) -> str:
    if value is None or value == "":
        return "–"
    value = float(value)
    return "<0.001" if value < 0.001 else f"{value:.3f}"
