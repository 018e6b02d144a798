from django.urls import path

from billing import apis

urlpatterns = [
    path("billing/usage/", apis.UsageReportApi.as_view(), name="api-billing-usage"),
    path("billing/spend/", apis.SpendApi.as_view(), name="api-billing-spend"),
    path("billing/prices/", apis.PriceListCreateApi.as_view(), name="api-billing-prices"),
    path("billing/budgets/", apis.BudgetListCreateApi.as_view(), name="api-billing-budgets"),
    path("billing/budgets/<int:budget_id>/", apis.BudgetDetailApi.as_view(), name="api-billing-budget-detail"),
    path("billing/settings/", apis.BillingSettingsApi.as_view(), name="api-billing-settings"),
    path(
        "billing/api-keys/<int:api_key_id>/cost-ceiling/",
        apis.KeyCostCeilingApi.as_view(),
        name="api-billing-key-cost-ceiling",
    ),
]
