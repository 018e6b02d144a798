from django.urls import path

from safety import apis

urlpatterns = [
    path("moderation/items/", apis.ModerationItemListApi.as_view(), name="api-moderation-items"),
    path("moderation/items/<str:public_id>/", apis.ModerationItemDetailApi.as_view(), name="api-moderation-item"),
    path("moderation/items/<str:public_id>/decide/", apis.ModerationDecideApi.as_view(), name="api-moderation-decide"),
    path(
        "moderation/items/<str:public_id>/release/",
        apis.ModerationReleaseApi.as_view(),
        name="api-moderation-release",
    ),
    path("moderation/claim/", apis.ModerationClaimApi.as_view(), name="api-moderation-claim"),
    path("moderation/bulk/", apis.ModerationBulkApi.as_view(), name="api-moderation-bulk"),
]
