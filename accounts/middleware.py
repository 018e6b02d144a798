from __future__ import annotations

from django.utils.functional import SimpleLazyObject

from accounts.selectors import membership_current


class OrganisationMiddleware:
    """Attaches the signed-in user's current organisation and membership (lazily) to the request."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.membership = SimpleLazyObject(lambda: membership_current(request=request))
        return self.get_response(request)
