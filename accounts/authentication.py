"""API-key authentication for the management API (`Authorization: Bearer stw_…`)."""

from __future__ import annotations

from rest_framework import authentication, exceptions

from accounts.selectors import ApiKeyPrincipal, api_key_authenticate


class ApiKeyUser:
    """Stands in for `request.user` when a service calls the management API with a key."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False
    pk = None
    id = None

    def __init__(self, principal: ApiKeyPrincipal):
        self.principal = principal

    def get_username(self) -> str:
        return f"api-key:{self.principal.prefix}"

    def __str__(self) -> str:
        return self.get_username()


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        parts = header.split()
        if len(parts) != 2 or parts[0] != self.keyword:
            return None
        principal = api_key_authenticate(parts[1])
        if principal is None:
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked API key.")
        return ApiKeyUser(principal), principal

    def authenticate_header(self, request) -> str:
        return self.keyword
