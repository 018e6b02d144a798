from django.urls import include, path

from safety import views

app_name = "safety"
urlpatterns = [
    path("", views.queue, name="home"),
    path("next/", views.queue_next, name="queue_next"),
    path("bulk/", views.queue_bulk, name="queue_bulk"),
    path("items/<str:public_id>/", views.item_detail, name="item_detail"),
    path("items/<str:public_id>/decide/", views.item_decide_view, name="item_decide"),
    path("items/<str:public_id>/release/", views.item_release, name="item_release"),
    path("items/<str:public_id>/findings/<int:finding_index>/", views.finding_review, name="finding_review"),
    path("policies/", include("safety.policy_urls")),
]
