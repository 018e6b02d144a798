from __future__ import annotations

from decimal import Decimal

from django import forms

from billing import models as m
from billing.money import MAX_BUDGET_AMOUNT
from billing.selectors import BREAKDOWNS, UsageFilters


def _choice(label: str, choices, *, blank: str, invalid: str, required: bool = False) -> forms.TypedChoiceField:
    """A picker by name whose submitted value is an id; any id not offered (another organisation's,
    a revoked key's) is refused with `invalid` beside the field."""
    return forms.TypedChoiceField(
        label=label,
        required=required,
        coerce=int,
        empty_value=None,
        choices=[("", blank), *choices],
        error_messages={"invalid_choice": invalid},
    )


def _team_choices(organisation) -> list[tuple[int, str]]:
    from accounts.models import Team

    return list(Team.objects.filter(organisation=organisation).order_by("name").values_list("pk", "name"))


def _key_label(key) -> str:
    return f"{key.name} ({key.prefix}…)"


class UsageFilterForm(forms.Form):
    date_from = forms.DateField(label="From", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(label="To", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    team = forms.IntegerField(required=False, min_value=1)
    api_key = forms.IntegerField(label="API key", required=False, min_value=1)
    model = forms.CharField(required=False, max_length=200)
    prompt = forms.IntegerField(required=False, min_value=1)
    prompt_version = forms.IntegerField(label="Version", required=False, min_value=1)
    breakdown = forms.ChoiceField(
        label="Break down by", required=False, choices=[(k, k.replace("_", " ")) for k in BREAKDOWNS]
    )

    def __init__(self, *args, organisation=None, **kwargs):
        super().__init__(*args, **kwargs)
        if organisation is None:
            return
        from accounts.models import ApiKey
        from billing.selectors import usage_models, usage_prompt_choices, usage_prompt_version_choices

        self.fields["team"] = _choice(
            "Team", _team_choices(organisation), blank="All teams", invalid="Choose a team of this organisation."
        )
        # Revoked keys stay here: their past spend is still worth reading.
        keys = ApiKey.objects.filter(organisation=organisation).order_by("name", "pk")
        self.fields["api_key"] = _choice(
            "API key",
            [(k.pk, _key_label(k) + (" (revoked)" if k.revoked_at else "")) for k in keys],
            blank="All keys",
            invalid="Choose an API key of this organisation.",
        )
        models = usage_models(organisation=organisation)
        self.fields["model"] = forms.ChoiceField(
            label="Model",
            required=False,
            choices=[("", "All models"), *((name, name) for name in models)],
            error_messages={"invalid_choice": "Choose a model this organisation's usage names."},
        )
        self.fields["prompt"] = _choice(
            "Prompt",
            usage_prompt_choices(organisation=organisation),
            blank="All prompts",
            invalid="Choose a prompt this organisation's usage names.",
        )
        # Another prompt's version would not be offered any more: the change starts from "All versions".
        self.fields["prompt"].widget.attrs["onchange"] = "this.form.prompt_version.value = ''"
        # A version is picked by its number within the chosen prompt: only that prompt's are offered.
        prompt_id = self._submitted_int("prompt")
        versions = usage_prompt_version_choices(organisation=organisation, prompt_id=prompt_id) if prompt_id else []
        self.fields["prompt_version"] = _choice(
            "Version",
            versions,
            blank="All versions" if prompt_id else "Choose a prompt first",
            invalid="Choose a version of the chosen prompt.",
        )

    def _submitted_int(self, name: str) -> int | None:
        value = self.data.get(self.add_prefix(name)) if self.is_bound else None
        try:
            return int(value) if value not in (None, "") else None
        except (TypeError, ValueError):
            return None

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


# The services name the ids they check; the form names the pickers.
BUDGET_SERVICE_PARAMS = {"team_id": "team", "api_key_id": "api_key", "prompt_id": "prompt"}


class BudgetEditForm(forms.Form):
    """What can change on an existing budget (its scope stays)."""

    name = forms.CharField(max_length=200)
    amount = forms.DecimalField(
        label="Amount (USD)",
        min_value=Decimal(0),
        max_value=MAX_BUDGET_AMOUNT,
        decimal_places=12,
        max_digits=28,
        widget=forms.TextInput(attrs={"inputmode": "decimal"}),
    )
    period = forms.ChoiceField(choices=m.BudgetPeriod.choices, initial=m.BudgetPeriod.MONTH)
    soft_threshold_percent = forms.IntegerField(
        label="Soft threshold (%)",
        required=False,
        min_value=1,
        max_value=100,
        help_text="Notify (banner, webhook) once this share of the amount is spent.",
    )
    hard_limit = forms.BooleanField(
        label="Hard limit (reject requests that could exceed it)", required=False, initial=True
    )


class BudgetForm(BudgetEditForm):
    scope = forms.ChoiceField(choices=m.BudgetScope.choices)
    team = forms.IntegerField(required=False)
    api_key = forms.IntegerField(label="API key", required=False)
    prompt = forms.IntegerField(required=False)

    field_order = ["name", "scope", "team", "api_key", "prompt", "amount", "period", "soft_threshold_percent"]

    def __init__(self, *args, organisation=None, **kwargs):
        super().__init__(*args, **kwargs)
        if organisation is None:
            return
        from accounts.models import ApiKey
        from billing.selectors import prompt_choices

        self.fields["team"] = _choice(
            "Team",
            _team_choices(organisation),
            blank="—",
            invalid="Choose a team of this organisation.",
        )
        self.fields["team"].help_text = "For a team budget."
        # Revoked and expired keys will never send a request again: a budget on one would guard nothing.
        keys = ApiKey.objects.filter(organisation=organisation, revoked_at__isnull=True).order_by("name", "pk")
        self.fields["api_key"] = _choice(
            "API key",
            [(k.pk, _key_label(k)) for k in keys if k.is_active],
            blank="—",
            invalid="Choose an active API key of this organisation.",
        )
        self.fields["api_key"].help_text = "For an API key budget."
        self.fields["prompt"] = _choice(
            "Prompt",
            prompt_choices(organisation=organisation),
            blank="—",
            invalid="Choose a prompt of this organisation.",
        )
        self.fields["prompt"].help_text = "For a prompt budget."

    def clean(self):
        data = super().clean()
        needs = {
            m.BudgetScope.TEAM: ("team", "A team budget needs a team: choose one."),
            m.BudgetScope.API_KEY: ("api_key", "An API key budget needs a key: choose one."),
            m.BudgetScope.PROMPT: ("prompt", "A prompt budget needs a prompt: choose one."),
        }
        field, message = needs.get(data.get("scope"), (None, ""))
        if field and data.get(field) is None and field not in self.errors:
            self.add_error(field, message)
        return data


class PriceForm(forms.Form):
    model = forms.CharField(max_length=200)
    deployment = forms.IntegerField(required=False, min_value=1)
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

    def __init__(self, *args, organisation=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._deployment_models: dict[int, str] = {}
        if organisation is None:
            return
        from billing.selectors import deployment_choices

        targets = deployment_choices(organisation=organisation)
        self._deployment_models = {t.id: t.model for t in targets}
        self.fields["deployment"] = _choice(
            "Deployment",
            [(t.id, f"{t.name} ({t.model})") for t in targets],
            blank="All deployments of the model",
            invalid="Choose a deployment of this organisation.",
        )
        self.fields["deployment"].help_text = "Only this deployment's calls use the price; it must serve the model."

    def clean(self):
        data = super().clean()
        deployment_id, model = data.get("deployment"), (data.get("model") or "").strip()
        served = self._deployment_models.get(deployment_id) if deployment_id else None
        if served is not None and model and served != model:
            # The proxy bills a deployment's calls under the model it serves: another name never applies.
            self.add_error("deployment", f"This deployment serves {served}, not {model}.")
        return data


class BillingSettingsForm(forms.Form):
    fail_open = forms.BooleanField(
        label="Fail open",
        required=False,
        help_text="Let requests through without budget checks while Redis is unreachable. By default they "
        "are rejected (fail closed) while budgets cannot be checked.",
    )
    webhook_url = forms.URLField(
        label="Budget alert webhook URL", required=False, max_length=500, assume_scheme="https"
    )
    webhook_secret = forms.CharField(
        label="Webhook signing secret",
        required=False,
        max_length=200,
        widget=forms.PasswordInput,
        help_text="Leave empty to keep the current secret.",
    )
