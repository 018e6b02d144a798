"""Read-only admin views: registry changes go through the services (audited, validated, approved)."""

from django.contrib import admin

from registry.models import Label, LabelMove, PromotionRequest, Prompt, PromptVersion


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Prompt)
class PromptAdmin(ReadOnlyAdmin):
    list_display = ["name", "organisation", "latest_number", "updated_at"]
    search_fields = ["name"]


@admin.register(PromptVersion)
class PromptVersionAdmin(ReadOnlyAdmin):
    list_display = ["prompt", "number", "model", "author_label", "created_at", "content_hash"]
    list_select_related = ["prompt"]


@admin.register(Label)
class LabelAdmin(ReadOnlyAdmin):
    list_display = ["prompt", "name", "version", "updated_at"]


@admin.register(LabelMove)
class LabelMoveAdmin(ReadOnlyAdmin):
    list_display = ["prompt", "label", "from_version", "to_version", "actor_label", "created_at"]


@admin.register(PromotionRequest)
class PromotionRequestAdmin(ReadOnlyAdmin):
    list_display = ["prompt", "label", "to_version", "status", "gate_status", "requested_by_label", "created_at"]
