from django import template

from audit.selectors import AuditChange, audit_event_change

register = template.Library()


@register.filter
def audit_change(event) -> AuditChange:
    """`{% with change=event|audit_change %}`: the fields an event changed, and each side as JSON."""
    return audit_event_change(event)
