"""Forms for the models pages. They parse input; proxy.services validate it again and decide."""

from __future__ import annotations

from django import forms

from proxy.models import DeploymentKind, RequestStatus, RoutingStrategy
from proxy.ui_selectors import RequestLogFilters

# The shared stylesheet makes every input full width; a checkbox sits next to its label instead.
CHECKBOX = forms.CheckboxInput(attrs={"style": "width:auto;margin:0 .4rem 0 0"})


class RouteForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="The model name clients send, e.g. gpt-4o-mini.")
    description = forms.CharField(required=False, max_length=5000, widget=forms.Textarea(attrs={"rows": 2}))
    fallbacks = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Other models tried, in this order, when every deployment of this one failed. One per line.",
    )
    strategy = forms.ChoiceField(choices=RoutingStrategy.choices, initial=RoutingStrategy.WEIGHTED)
    cache_enabled = forms.BooleanField(required=False, label="Cache identical requests", widget=CHECKBOX)
    cache_ttl_seconds = forms.IntegerField(min_value=1, max_value=7 * 24 * 3600, initial=300, label="Cache TTL (s)")
    deadline_seconds = forms.FloatField(
        min_value=0.5, max_value=3600, initial=60.0, label="Deadline (s)", help_text="All attempts included."
    )
    passthrough_params = forms.CharField(
        required=False,
        label="Pass-through parameters",
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Request fields beyond the OpenAI ones that clients may send to this model (provider-specific "
        "parameters). One per line. Names that configure the upstream client (api_base, headers, ...) are refused.",
    )

    @staticmethod
    def _names(text: str) -> list[str]:
        names: list[str] = []
        for name in text.replace(",", "\n").splitlines():
            name = name.strip()
            if name and name not in names:
                names.append(name)
        return names

    def clean_fallbacks(self) -> list[str]:
        return self._names(self.cleaned_data["fallbacks"])

    def clean_passthrough_params(self) -> list[str]:
        return self._names(self.cleaned_data["passthrough_params"])


class DeploymentForm(forms.Form):
    name = forms.CharField(max_length=100)
    kind = forms.ChoiceField(choices=DeploymentKind.choices, initial=DeploymentKind.OPENAI_COMPATIBLE)
    model = forms.CharField(max_length=200, help_text="The upstream's model name, or a litellm model string.")
    api_base = forms.CharField(required=False, max_length=500, label="API base URL")
    credential_env = forms.CharField(
        required=False,
        max_length=200,
        label="Key from environment variable",
        help_text="Its name, e.g. OPENAI_API_KEY.",
    )
    credential_secret = forms.CharField(
        required=False,
        max_length=4096,
        strip=False,
        label="Key (stored encrypted)",
        # Never render a stored or submitted secret back into the page.
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
    )
    clear_credential = forms.BooleanField(required=False, label="Remove the stored key", widget=CHECKBOX)
    weight = forms.IntegerField(min_value=1, max_value=10_000, initial=1)
    rpm_limit = forms.IntegerField(required=False, min_value=1, label="Requests per minute")
    tpm_limit = forms.IntegerField(required=False, min_value=1, label="Tokens per minute")
    timeout_seconds = forms.FloatField(min_value=0.1, max_value=3600, initial=30.0, label="Timeout per attempt (s)")
    enabled = forms.BooleanField(required=False, initial=True, widget=CHECKBOX)

    def __init__(self, *args, editing: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if not editing:
            del self.fields["clear_credential"]
        else:
            self.fields["credential_secret"].help_text = "Leave empty to keep the stored key."

    def service_kwargs(self) -> dict:
        data = dict(self.cleaned_data)
        # Empty credential inputs mean "leave as is"; the service treats None that way.
        data["credential_env"] = data.get("credential_env") or None
        data["credential_secret"] = data.get("credential_secret") or None
        return data


class RequestLogFilterForm(forms.Form):
    api_key = forms.TypedChoiceField(required=False, coerce=int, empty_value=None, label="Key")
    model = forms.CharField(required=False, max_length=200)
    status = forms.ChoiceField(required=False, choices=[("", "Any"), *RequestStatus.choices])
    prompt = forms.ChoiceField(required=False, label="Prompt")
    version = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=2_147_483_647,
        label="Version",
        widget=forms.NumberInput(attrs={"min": 1}),
    )
    date_from = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}), label="From")
    date_to = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}), label="To")

    def __init__(self, *args, key_labels: dict[int, str], prompt_names: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["api_key"].choices = [("", "Any"), *key_labels.items()]
        self.fields["prompt"].choices = [("", "Any"), *((name, name) for name in prompt_names)]

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("date_from") and cleaned.get("date_to") and cleaned["date_from"] > cleaned["date_to"]:
            self.add_error("date_from", "must not be after the end date")
        if cleaned.get("version") is not None and not cleaned.get("prompt"):
            self.add_error("version", "choose a prompt for this version number")
        return cleaned

    def filters(self) -> RequestLogFilters:
        """The valid form's filters (call after is_valid; an unbound form means no filter)."""
        data = self.cleaned_data if self.is_bound else {}
        return RequestLogFilters(
            api_key_id=data.get("api_key"),
            model=data.get("model") or "",
            status=data.get("status") or "",
            prompt_name=data.get("prompt") or "",
            prompt_version=data.get("version"),
            date_from=data.get("date_from"),
            date_to=data.get("date_to"),
        )


class ProxySettingsForm(forms.Form):
    store_bodies = forms.BooleanField(
        required=False,
        label="Store request and response bodies",
        widget=CHECKBOX,
        help_text="Shown to admins on each request's page; deleted after the retention period.",
    )
    body_retention_days = forms.IntegerField(min_value=1, max_value=3650, label="Keep bodies for (days)")
