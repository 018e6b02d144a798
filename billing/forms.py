from __future__ import annotations

from decimal import Decimal

from django import forms

from billing import models as m
from billing.money import MAX_BUDGET_AMOUNT
from billing.selectors import BREAKDOWNS, UsageFilters


class UsageFilterForm(forms.Form):
    date_from = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    team = forms.IntegerField(required=False, min_value=1)
    api_key = forms.IntegerField(required=False, min_value=1)
    model = forms.CharField(required=False, max_length=200)
    prompt = forms.IntegerField(required=False, min_value=1)
    prompt_version = forms.IntegerField(required=False, min_value=1)
    breakdown = forms.ChoiceField(required=False, choices=[(k, k.replace("_", " ")) for k in BREAKDOWNS])

    def __init__(self, *args, organisation=None, **kwargs):
        super().__init__(*args, **kwargs)
        if organisation is not None:
            from accounts.models import ApiKey, Team

            self.fields["team"] = forms.TypedChoiceField(
                required=False,
                coerce=int,
                empty_value=None,
                choices=[("", "All teams")] + [(t.pk, t.name) for t in Team.objects.filter(organisation=organisation)],
            )
            self.fields["api_key"] = forms.TypedChoiceField(
                required=False,
                coerce=int,
                empty_value=None,
                choices=[("", "All keys")]
                + [(k.pk, f"{k.name} ({k.prefix}…)") for k in ApiKey.objects.filter(organisation=organisation)],
            )

    def clean(self):
        data = super().clean()
        if data.get("date_from") and data.get("date_to") and data["date_from"] > data["date_to"]:
            self.add_error("date_from", "must not be after the end date")
        if data.get("date_from") and data.get("date_to") and (data["date_to"] - data["date_from"]).days > 366:
            self.add_error("date_from", "at most one year at a time")
        return data

    def filters(self) -> UsageFilters:
        data = self.cleaned_data if self.is_valid() else {}
        return UsageFilters(
            date_from=data.get("date_from"),
            date_to=data.get("date_to"),
            team_id=data.get("team"),
            api_key_id=data.get("api_key"),
            model=data.get("model") or "",
            prompt_id=data.get("prompt"),
            prompt_version_id=data.get("prompt_version"),
        )


class BudgetForm(forms.Form):
    name = forms.CharField(max_length=200)
    scope = forms.ChoiceField(choices=m.BudgetScope.choices)
    team = forms.IntegerField(required=False)
    api_key = forms.IntegerField(required=False)
    prompt_id = forms.IntegerField(required=False, min_value=1)
    amount = forms.DecimalField(min_value=Decimal(0), max_value=MAX_BUDGET_AMOUNT, decimal_places=12, max_digits=28)
    period = forms.ChoiceField(choices=m.BudgetPeriod.choices, initial=m.BudgetPeriod.MONTH)
    soft_threshold_percent = forms.IntegerField(required=False, min_value=1, max_value=100)
    hard_limit = forms.BooleanField(required=False, initial=True)

    def __init__(self, *args, organisation=None, **kwargs):
        super().__init__(*args, **kwargs)
        if organisation is not None:
            from accounts.models import ApiKey, Team

            self.fields["team"] = forms.TypedChoiceField(
                required=False,
                coerce=int,
                empty_value=None,
                choices=[("", "—")] + [(t.pk, t.name) for t in Team.objects.filter(organisation=organisation)],
            )
            self.fields["api_key"] = forms.TypedChoiceField(
                required=False,
                coerce=int,
                empty_value=None,
                choices=[("", "—")]
                + [(k.pk, f"{k.name} ({k.prefix}…)") for k in ApiKey.objects.filter(organisation=organisation)],
            )


class PriceForm(forms.Form):
    model = forms.CharField(max_length=200)
    deployment_id = forms.IntegerField(required=False, min_value=1)
    effective_from = forms.DateTimeField(
        required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"}), help_text="Empty: now"
    )
    input_per_million = forms.DecimalField(min_value=0, decimal_places=12, max_digits=30)
    output_per_million = forms.DecimalField(min_value=0, decimal_places=12, max_digits=30)
    cached_input_per_million = forms.DecimalField(required=False, min_value=0, decimal_places=12, max_digits=30)
    cache_write_per_million = forms.DecimalField(required=False, min_value=0, decimal_places=12, max_digits=30)
    reasoning_per_million = forms.DecimalField(required=False, min_value=0, decimal_places=12, max_digits=30)
    request_fee = forms.DecimalField(required=False, min_value=0, decimal_places=12, max_digits=30)
    free = forms.BooleanField(
        required=False,
        label="Free on purpose",
        help_text="This model costs nothing (e.g. self-hosted): every rate above must be 0. Audited.",
    )


class BillingSettingsForm(forms.Form):
    fail_open = forms.BooleanField(
        required=False, help_text="Let requests through without budget checks while Redis is unreachable."
    )
    webhook_url = forms.URLField(required=False, max_length=500, assume_scheme="https")
    webhook_secret = forms.CharField(
        required=False, max_length=200, widget=forms.PasswordInput, help_text="Leave empty to keep the current secret."
    )
