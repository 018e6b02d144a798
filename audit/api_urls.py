from django.urls import path

from audit import apis

urlpatterns = [
    path("audit-events/", apis.AuditEventListApi.as_view(), name="api-audit-event-list"),
    path("audit-verifications/", apis.AuditVerificationCreateApi.as_view(), name="api-audit-verification-create"),
    path(
        "audit-verifications/<int:verification_id>/",
        apis.AuditVerificationDetailApi.as_view(),
        name="api-audit-verification-detail",
    ),
]
