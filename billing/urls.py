from django.urls import path

from billing import views

app_name = "billing"
urlpatterns = [
    path("", views.usage_home, name="home"),
    path("export.csv", views.usage_export, name="export"),
    path("budgets/", views.budget_list, name="budget_list"),
    path("budgets/<int:budget_id>/edit/", views.budget_edit, name="budget_edit"),
    path("budgets/<int:budget_id>/delete/", views.budget_remove, name="budget_delete"),
    path("prices/", views.price_list, name="price_list"),
    path("settings/", views.billing_settings, name="settings"),
]
