from __future__ import annotations

import csv
from decimal import Decimal

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from accounts.permissions import role_required
from accounts.roles import Role
from billing import models as m
from billing.charts import bar_chart
from billing.forms import (
    BUDGET_SERVICE_PARAMS,
    BillingSettingsForm,
    BudgetEditForm,
    BudgetForm,
    PriceForm,
    UsageFilterForm,
)
from billing.selectors import (
    billing_settings_get,
    budget_alerts_current,
    budget_get,
    budgets_status,
    deployment_names,
    prices_list,
    top_spenders,
    unpriced_usage,
    usage_report,
    webhook_secret_state,
)
from billing.services import billing_settings_update, budget_create, budget_delete, budget_update, price_set
from core.errors import ApplicationError

PER_MILLION = Decimal(1_000_000)
# The price service names its per-token fields; the form asks per million.
PRICE_SERVICE_PARAMS = {
    f"{part}_per_token": f"{part}_per_million"
    for part in ("input", "output", "cached_input", "cache_write", "reasoning")
}


def _cell(value) -> str:
    # Names people typed could be read as formulas by spreadsheet software.
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def _is_admin(request) -> bool:
    return request.org.has_role(Role.ADMIN)


@role_required()
def usage_home(request):
    organisation = request.org.organisation
    form = UsageFilterForm(request.GET or None, organisation=organisation)
    filters = form.filters()
    breakdown = (form.cleaned_data.get("breakdown") if form.is_bound and form.is_valid() else "") or "model"
    report = usage_report(organisation=organisation, filters=filters, breakdown=breakdown)
    context = {
        "form": form,
        "report": report,
        "breakdown": breakdown,
        "cost_chart": bar_chart(
            title="Cost per day (USD)", points=[(r.label, r.cost) for r in report.series], unit="$", css_class="cost"
        ),
        "tokens_chart": bar_chart(
            title="Tokens per day",
            points=[(r.label, r.prompt_tokens + r.completion_tokens) for r in report.series],
            css_class="tokens",
        ),
        "spenders": top_spenders(organisation=organisation, filters=filters),
        "unpriced": unpriced_usage(organisation=organisation, filters=filters),
        "budgets": budgets_status(organisation=organisation),
        "alerts": budget_alerts_current(organisation=organisation),
        "query": request.GET.urlencode(),
        "is_admin": _is_admin(request),
    }
    # htmx swaps the filters with the report: the version picker follows the chosen prompt and
    # errors appear beside their filter.
    template = "billing/partials/_usage_body.html" if request.htmx else "billing/usage_home.html"
    return render(request, template, context)


@role_required()
def usage_export(request):
    """CSV of the same view: `view` = daily (default), breakdown or budgets, with the page's filters."""
    organisation = request.org.organisation
    form = UsageFilterForm(request.GET or None, organisation=organisation)
    filters = form.filters()
    view = request.GET.get("view", "daily")
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="steward-usage-{view}-{timezone.now():%Y%m%d}.csv"'
    writer = csv.writer(response)
    if view == "budgets":
        writer.writerow(["budget", "scope", "period", "amount", "spent", "reserved", "percent", "resets_at"])
        for s in budgets_status(organisation=organisation):
            writer.writerow(
                [
                    _cell(s.budget.name),
                    s.budget.scope,
                    s.budget.period,
                    s.budget.amount,
                    s.spent,
                    s.reserved,
                    s.percent,
                    s.resets_at.isoformat() if s.resets_at else "",
                ]
            )
        return response
    breakdown = request.GET.get("breakdown") or "model"
    report = usage_report(organisation=organisation, filters=filters, breakdown=breakdown)
    rows = report.breakdown if view == "breakdown" else report.series
    writer.writerow(
        [breakdown if view == "breakdown" else "day", "requests", "prompt_tokens", "completion_tokens", "cost_usd"]
    )
    for row in rows:
        writer.writerow([_cell(row.label), row.requests, row.prompt_tokens, row.completion_tokens, row.cost])
    writer.writerow(
        ["total", report.total.requests, report.total.prompt_tokens, report.total.completion_tokens, report.total.cost]
    )
    return response


def _edit_form(status) -> BudgetEditForm:
    budget = status.budget
    return BudgetEditForm(
        auto_id=f"id_b{budget.pk}_%s",
        initial={
            "name": budget.name,
            "amount": budget.amount.normalize() if budget.amount else budget.amount,
            "period": budget.period,
            "soft_threshold_percent": budget.soft_threshold_percent,
            "hard_limit": budget.hard_limit,
        },
    )


def _budget_page(request, *, form, edited: BudgetEditForm | None = None, edited_id: int | None = None, status=200):
    organisation = request.org.organisation
    budgets = budgets_status(organisation=organisation)
    is_admin = _is_admin(request)
    edits = []
    if is_admin:
        for s in budgets:
            bound = edited if edited is not None and s.budget.pk == edited_id else None
            edits.append((s, bound or _edit_form(s), bound is not None))
    return render(
        request,
        "billing/budget_list.html",
        {"budgets": budgets, "form": form, "edits": edits, "is_admin": is_admin},
        status=status,
    )


def _service_error(form, exc: ApplicationError, params: dict | None = None) -> None:
    field = (params or {}).get(exc.param, exc.param)
    form.add_error(field if field in form.fields else None, exc.message)


@role_required()
@require_http_methods(["GET", "POST"])
def budget_list(request):
    organisation = request.org.organisation
    form = BudgetForm(organisation=organisation)
    if request.method == "POST":
        if not _is_admin(request):
            raise PermissionDenied
        form = BudgetForm(request.POST, organisation=organisation)
        if form.is_valid():
            data = form.cleaned_data
            try:
                budget_create(
                    organisation=organisation,
                    actor=request.org.actor,
                    name=data["name"],
                    scope=data["scope"],
                    amount=data["amount"],
                    period=data["period"],
                    team_id=data.get("team"),
                    api_key_id=data.get("api_key"),
                    prompt_id=data.get("prompt"),
                    soft_threshold_percent=data.get("soft_threshold_percent"),
                    hard_limit=data.get("hard_limit", False),
                )
            except ApplicationError as exc:
                _service_error(form, exc, BUDGET_SERVICE_PARAMS)
            else:
                messages.success(request, f"Budget “{data['name']}” created.")
                return redirect("billing:budget_list")
        return _budget_page(request, form=form, status=400)
    return _budget_page(request, form=form)


def _budget_or_404(request, budget_id: int) -> m.Budget:
    try:
        return budget_get(organisation=request.org.organisation, budget_id=budget_id)
    except m.Budget.DoesNotExist as exc:
        raise Http404 from exc


@require_POST
@role_required(Role.ADMIN)
def budget_edit(request, budget_id: int):
    budget = _budget_or_404(request, budget_id)
    form = BudgetEditForm(request.POST, auto_id=f"id_b{budget.pk}_%s")
    if form.is_valid():
        data = form.cleaned_data
        try:
            budget_update(
                budget=budget,
                actor=request.org.actor,
                name=data["name"],
                amount=data["amount"],
                period=data["period"],
                soft_threshold_percent=data.get("soft_threshold_percent"),
                hard_limit=data.get("hard_limit", False),
            )
        except ApplicationError as exc:
            _service_error(form, exc)
        else:
            messages.success(request, "Budget updated.")
            return redirect("billing:budget_list")
    # The page again, this budget's form open with each error beside its field.
    return _budget_page(
        request, form=BudgetForm(organisation=request.org.organisation), edited=form, edited_id=budget.pk, status=400
    )


@require_POST
@role_required(Role.ADMIN)
def budget_remove(request, budget_id: int):
    budget = _budget_or_404(request, budget_id)
    budget_delete(budget=budget, actor=request.org.actor)
    messages.success(request, f"Budget “{budget.name}” deleted.")
    return redirect("billing:budget_list")


@role_required()
@require_http_methods(["GET", "POST"])
def price_list(request):
    organisation = request.org.organisation
    # The models page links here with ?model=<name> for a model that has no price yet.
    form = PriceForm(initial={"model": request.GET.get("model", "").strip()[:200]}, organisation=organisation)
    status = 200
    if request.method == "POST":
        if not _is_admin(request):
            raise PermissionDenied
        form = PriceForm(request.POST, organisation=organisation)
        status = 400
        if form.is_valid():
            data = form.cleaned_data

            def per_token(name):
                value = data.get(name)
                return None if value is None else value / PER_MILLION

            try:
                price_set(
                    organisation=organisation,
                    actor=request.org.actor,
                    model=data["model"],
                    deployment_id=data.get("deployment"),
                    effective_from=data.get("effective_from"),
                    input_per_token=per_token("input_per_million"),
                    output_per_token=per_token("output_per_million"),
                    cached_input_per_token=per_token("cached_input_per_million"),
                    cache_write_per_token=per_token("cache_write_per_million"),
                    reasoning_per_token=per_token("reasoning_per_million"),
                    request_fee=data.get("request_fee") or Decimal(0),
                    free=bool(data.get("free")),
                )
            except ApplicationError as exc:
                _service_error(form, exc, {"deployment_id": "deployment", **PRICE_SERVICE_PARAMS})
            else:
                messages.success(request, f"Price for {data['model']} saved.")
                return redirect("billing:price_list")
    search = request.GET.get("q", "").strip()[:200]
    prices = prices_list(organisation=organisation, model=search)
    names = deployment_names(organisation=organisation, ids={p.deployment_id for p in prices})
    for price in prices:
        # A price outlives its deployment: a deleted one is still named by its id.
        price.deployment_label = names.get(price.deployment_id) or (
            f"deployment #{price.deployment_id} (deleted)" if price.deployment_id else "all"
        )
    return render(
        request,
        "billing/price_list.html",
        {"prices": prices, "search": search, "form": form, "is_admin": _is_admin(request)},
        status=status,
    )


@role_required(Role.ADMIN)
@require_http_methods(["GET", "POST"])
def billing_settings(request):
    organisation = request.org.organisation
    current = billing_settings_get(organisation=organisation)
    form = BillingSettingsForm(initial={"fail_open": current.fail_open, "webhook_url": current.webhook_url})
    if request.method == "POST":
        form = BillingSettingsForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                billing_settings_update(
                    organisation=organisation,
                    actor=request.org.actor,
                    fail_open=data["fail_open"],
                    webhook_url=data["webhook_url"],
                    webhook_secret=data["webhook_secret"] or None,
                )
            except ApplicationError as exc:
                form.add_error(exc.param if exc.param in form.fields else None, exc.message)
            else:
                messages.success(request, "Billing settings saved.")
                return redirect("billing:settings")
    return render(
        request,
        "billing/settings.html",
        {"form": form, "current": current, "secret_state": webhook_secret_state(settings_row=current)},
    )
