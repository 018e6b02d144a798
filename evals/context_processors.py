"""The drift banner: open drift alerts of the current organisation on every page until acknowledged."""

from __future__ import annotations


def drift_alerts(request) -> dict:
    membership = getattr(request, "membership", None)
    user = getattr(request, "user", None)
    if not membership or user is None or not user.is_authenticated:
        return {}

    def alerts():
        from evals.drift import drift_alerts_open

        return list(drift_alerts_open(membership.organisation_id)[:5])

    # A callable: the query runs only when a page renders the banner.
    return {"drift_alerts": alerts}
