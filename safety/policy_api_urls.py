from django.urls import path

from safety import policy_apis as apis

urlpatterns = [
    path("safety/policies/", apis.PolicyListApi.as_view(), name="api-safety-policy-list"),
    path("safety/policies/create/", apis.PolicyCreateApi.as_view(), name="api-safety-policy-create"),
    path("safety/policies/<int:policy_id>/", apis.PolicyDetailApi.as_view(), name="api-safety-policy-detail"),
    path("safety/policies/<int:policy_id>/update/", apis.PolicyUpdateApi.as_view(), name="api-safety-policy-update"),
    path("safety/policies/<int:policy_id>/delete/", apis.PolicyDeleteApi.as_view(), name="api-safety-policy-delete"),
    path(
        "safety/policies/<int:policy_id>/false-positives/",
        apis.PolicyFalsePositivesApi.as_view(),
        name="api-safety-policy-false-positives",
    ),
    path("safety/attachments/", apis.AttachmentListApi.as_view(), name="api-safety-attachment-list"),
    path("safety/attachments/create/", apis.AttachmentCreateApi.as_view(), name="api-safety-attachment-create"),
    path(
        "safety/attachments/<int:attachment_id>/delete/",
        apis.AttachmentDeleteApi.as_view(),
        name="api-safety-attachment-delete",
    ),
    path("safety/filters/", apis.FilterCatalogueApi.as_view(), name="api-safety-filter-list"),
    path("safety/settings/", apis.SafetySettingsDetailApi.as_view(), name="api-safety-settings-detail"),
    path("safety/settings/update/", apis.SafetySettingsUpdateApi.as_view(), name="api-safety-settings-update"),
]
