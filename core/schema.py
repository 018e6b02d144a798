"""OpenAPI generation tweaks (kept apart from core.api: drf-spectacular imports DRF's generics,
which import core.api's pagination class)."""

from __future__ import annotations

from drf_spectacular.openapi import AutoSchema as _AutoSchema
from drf_spectacular.utils import OpenApiParameter, inline_serializer
from rest_framework import serializers


class AutoSchema(_AutoSchema):
    """Names nested serializers after their view (`ApiKeyDetailApi.OutputSerializer` becomes the
    component `ApiKeyDetailApiOutput`), so the house style of nested Input/OutputSerializer classes
    does not make every view's components collide into one wrong "Output"."""

    def get_serializer_name(self, serializer, direction) -> str:
        qualname = serializer.__class__.__qualname__
        if "." in qualname and "<locals>" not in qualname:
            return qualname.replace(".", "")
        return super().get_serializer_name(serializer, direction)


PAGE_PARAMETERS = [
    OpenApiParameter("page", int, description="Page number (from 1)."),
    OpenApiParameter("page_size", int, description="Items per page (default 50, at most 500)."),
]


def paginated(serializer_class) -> serializers.Serializer:
    """The schema of `core.api.Pagination`'s envelope around `serializer_class` items, for APIViews
    that paginate by hand (drf-spectacular only infers it for generic list views)."""
    name = serializer_class.__qualname__.replace(".", "").removesuffix("Serializer")
    return inline_serializer(
        name=f"Paginated{name}",
        fields={
            "count": serializers.IntegerField(),
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": serializer_class(many=True),
        },
    )
