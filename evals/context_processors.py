"""The drift banner: open drift alerts of the current organisation on every page until acknowledged."""

from __future__ import annotations


class _OpenAlerts:
    """Loaded on first use, once per request: pages that never render the banner pay no query."""

    def __init__(self, organisation_id: int):
        self.organisation_id = organisation_id
        self._alerts: list | None = None

    def _load(self) -> list:
        if self._alerts is None:
            from evals.drift import drift_alerts_open

            self._alerts = list(drift_alerts_open(self.organisation_id)[:5])
        return self._alerts

    def __bool__(self) -> bool:
        return bool(self._load())

    def __iter__(self):
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


def drift_alerts(request) -> dict:
    membership = getattr(request, "membership", None)
    user = getattr(request, "user", None)
    if not membership or user is None or not user.is_authenticated:
        return {}
    return {"drift_alerts": _OpenAlerts(membership.organisation_id)}
