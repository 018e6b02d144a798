from django.urls import path

from audit import views

app_name = "audit"
urlpatterns = [
    path("", views.event_list, name="event_list"),
    path("export.jsonl", views.event_export, name="event_export"),
    path("verifications/", views.verification_list, name="verification_list"),
    path("verifications/new/", views.verification_create, name="verification_create"),
]
