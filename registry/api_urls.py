from django.urls import path

from registry import apis

urlpatterns = [
    path("prompts/", apis.PromptListCreateApi.as_view(), name="api-prompt-list"),
    path("prompts/import/", apis.PromptImportApi.as_view(), name="api-prompt-import"),
    path("prompts/<slug:prompt_name>/", apis.PromptDetailApi.as_view(), name="api-prompt-detail"),
    path("prompts/<slug:prompt_name>/export/", apis.PromptExportApi.as_view(), name="api-prompt-export"),
    path("prompts/<slug:prompt_name>/archive/", apis.PromptArchiveApi.as_view(), name="api-prompt-archive"),
    path("prompts/<slug:prompt_name>/unarchive/", apis.PromptUnarchiveApi.as_view(), name="api-prompt-unarchive"),
    path("prompts/<slug:prompt_name>/diff/", apis.VersionDiffApi.as_view(), name="api-prompt-diff"),
    path("prompts/<slug:prompt_name>/versions/", apis.VersionListCreateApi.as_view(), name="api-prompt-version-list"),
    path(
        "prompts/<slug:prompt_name>/versions/<int:version_number>/",
        apis.VersionDetailApi.as_view(),
        name="api-prompt-version-detail",
    ),
    path(
        "prompts/<slug:prompt_name>/versions/<int:version_number>/render/",
        apis.VersionRenderApi.as_view(),
        name="api-prompt-version-render",
    ),
    path(
        "prompts/<slug:prompt_name>/labels/<slug:label_name>/move/",
        apis.LabelMoveApi.as_view(),
        name="api-prompt-label-move",
    ),
    path(
        "prompts/<slug:prompt_name>/labels/<slug:label_name>/history/",
        apis.LabelHistoryApi.as_view(),
        name="api-prompt-label-history",
    ),
    path(
        "prompts/<slug:prompt_name>/labels/<slug:label_name>/protection/",
        apis.LabelProtectionApi.as_view(),
        name="api-prompt-label-protection",
    ),
    path("promotion-requests/", apis.PromotionListApi.as_view(), name="api-promotion-request-list"),
    path(
        "promotion-requests/<int:promotion_id>/approve/",
        apis.PromotionApproveApi.as_view(),
        name="api-promotion-request-approve",
    ),
    path(
        "promotion-requests/<int:promotion_id>/reject/",
        apis.PromotionRejectApi.as_view(),
        name="api-promotion-request-reject",
    ),
]
