"""The policy pages, under the safety app's namespace (included from safety/urls.py at policies/)."""

from django.urls import path

from safety import policy_views as views

urlpatterns = [
    path("", views.policy_list, name="policy_list"),
    path("new/", views.policy_create_view, name="policy_create"),
    path("filter-entry/", views.policy_filter_entry, name="policy_filter_entry"),
    path("settings/", views.safety_settings_edit, name="safety_settings"),
    path("<int:policy_id>/", views.policy_detail, name="policy_detail"),
    path("<int:policy_id>/edit/", views.policy_edit, name="policy_edit"),
    path("<int:policy_id>/delete/", views.policy_delete_view, name="policy_delete"),
    path("<int:policy_id>/attach/", views.policy_attach_view, name="policy_attach"),
    path("attachments/<int:attachment_id>/detach/", views.attachment_detach, name="attachment_detach"),
]
