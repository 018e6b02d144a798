from django.urls import path

from registry import views

app_name = "registry"
urlpatterns = [
    path("", views.prompt_list, name="prompt_list"),
    path("new/", views.prompt_create, name="prompt_create"),
    path("import/", views.prompt_import, name="prompt_import"),
    path("promotions/<int:promotion_id>/approve/", views.promotion_approve, name="promotion_approve"),
    path("promotions/<int:promotion_id>/reject/", views.promotion_reject, name="promotion_reject"),
    path("<slug:prompt_name>/", views.prompt_detail, name="prompt_detail"),
    path("<slug:prompt_name>/edit/", views.version_edit, name="version_edit"),
    path("<slug:prompt_name>/diff/", views.version_diff, name="version_diff"),
    path("<slug:prompt_name>/labels/move/", views.label_move, name="label_move"),
    path("<slug:prompt_name>/labels/protection/", views.label_protection, name="label_protection"),
    path("<slug:prompt_name>/export/", views.prompt_export, name="prompt_export"),
    path("<slug:prompt_name>/archive/", views.prompt_archive, name="prompt_archive"),
    path("<slug:prompt_name>/unarchive/", views.prompt_unarchive, name="prompt_unarchive"),
    path("<slug:prompt_name>/v/<int:version_number>/", views.version_detail, name="version_detail"),
    path("<slug:prompt_name>/v/<int:version_number>/run/", views.version_run, name="version_run"),
]
