"""OpenAPI generation tweaks (kept apart from core.api: drf-spectacular imports DRF's generics,
which import core.api's pagination class).

Generated clients (openapi-python-client, openapi-generator) treat any status the description does
not list as unknown, so every operation lists the error statuses it can answer, each with the one
error envelope `core.api.exception_handler` writes (component `Error`)."""

from __future__ import annotations

from drf_spectacular.openapi import AutoSchema as _AutoSchema
from rest_framework import serializers

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Machine-readable, e.g. invalid_request, not_found, conflict")
    message = serializers.CharField()
    status = serializers.IntegerField(help_text="The HTTP status, repeated")
    details = serializers.JSONField(
        required=False, help_text="Field errors for a 400 ({field: [messages]}), or {param: name}"
    )
    request_id = serializers.CharField(required=False, help_text="Also in the X-Request-ID header; quote it")


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


ERROR_DESCRIPTIONS = {
    400: "Invalid input (a body field or a query parameter; `details` says which)",
    401: "Not authenticated",
    403: "Authenticated, but the role or the API key's scope does not allow this",
    404: "No such object in this organisation (or outside the API key's scope), or no such page",
    409: "Conflicts with the current state (a name taken, a decision already made, ...)",
    415: "The body is not JSON (or form data)",
}


class AutoSchema(_AutoSchema):
    """Names nested serializers after their view (`ApiKeyDetailApi.OutputSerializer` becomes the
    component `ApiKeyDetailApiOutput`), so the house style of nested Input/OutputSerializer classes
    does not make every view's components collide into one wrong "Output"; adds the error
    responses each operation can answer."""

    def get_serializer_name(self, serializer, direction) -> str:
        if isinstance(serializer, ErrorSerializer | ErrorDetailSerializer):
            return serializer.__class__.__name__.removesuffix("Serializer")
        qualname = serializer.__class__.__qualname__
        if "." in qualname and "<locals>" not in qualname:
            return qualname.replace(".", "")
        return super().get_serializer_name(serializer, direction)

    def error_statuses(self) -> set[int]:
        """The error statuses this operation can answer, from what it takes in: every operation needs
        a signed-in user or API key with a role (401, 403); a body can be malformed, of the wrong
        type or invalid (400, 415); query parameters can be invalid (400); path parameters and page
        numbers can name nothing (404); writes can conflict with the current state (409). A view adds
        others through `extra_error_statuses`."""
        statuses = {401, 403}
        has_body = self.method in ("POST", "PUT", "PATCH") and self.get_request_serializer() is not None
        if has_body:
            statuses |= {400, 415}
        query = [p for p in self._get_parameters() if p.get("in") == "query"]
        if any(p["name"] not in ("page", "page_size") for p in query):
            statuses.add(400)
        if any(p.get("in") == "path" for p in self._get_parameters()) or self._get_pagination_parameters():
            statuses.add(404)
        if self.method in WRITE_METHODS:
            statuses.add(409)
        statuses |= set(getattr(self.view, "extra_error_statuses", ()))
        return statuses

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        error = self.resolve_serializer(ErrorSerializer(), "response").ref
        for status in sorted(self.error_statuses()):
            responses.setdefault(
                str(status),
                {"description": ERROR_DESCRIPTIONS[status], "content": {"application/json": {"schema": error}}},
            )
        return responses
