from __future__ import annotations

import re

from django import forms
from django.utils import timezone

from accounts.models import Team
from accounts.roles import Role

_SEPARATORS = re.compile(r"[\s,]+")
INT_MAX = 2_147_483_647  # the limits are PositiveIntegerFields


class ListField(forms.CharField):
    """A list of short names typed one per line or comma-separated; empty means none."""

    widget = forms.Textarea(attrs={"rows": 2})

    def __init__(self, *, item_max_length: int = 200, **kwargs):
        self.item_max_length = item_max_length
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def to_python(self, value) -> list[str]:
        if isinstance(value, list | tuple):
            return [str(v) for v in value]
        text = super().to_python(value)
        items = [item for item in _SEPARATORS.split(text) if item]
        too_long = [item for item in items if len(item) > self.item_max_length]
        if too_long:
            raise forms.ValidationError(f"Names are at most {self.item_max_length} characters: {too_long[0][:40]}…")
        return sorted(set(items))

    def prepare_value(self, value):
        if isinstance(value, list | tuple):
            return "\n".join(value)
        return value


class RolesField(forms.MultipleChoiceField):
    widget = forms.CheckboxSelectMultiple

    def __init__(self, **kwargs):
        kwargs.setdefault("choices", Role.choices)
        super().__init__(**kwargs)


class ApiKeyForm(forms.Form):
    """A key's name, team, expiry, scopes and limits: the same form creates a key and edits one."""

    name = forms.CharField(max_length=200)
    team = forms.ModelChoiceField(queryset=Team.objects.none(), required=False, empty_label="No team")
    expires_at = forms.DateTimeField(
        required=False,
        label="Expires at (UTC)",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d"],
    )
    allowed_models = ListField(help_text="One per line; empty allows every model.")
    allowed_prompts = ListField(help_text="Prompt names, one per line; empty allows every prompt.")
    roles = RolesField(required=False, label="Management API roles", help_text="None: proxy use only.")
    rpm_limit = forms.IntegerField(required=False, min_value=1, max_value=INT_MAX, label="Requests per minute")
    tpm_limit = forms.IntegerField(required=False, min_value=1, max_value=INT_MAX, label="Tokens per minute")
    max_in_flight = forms.IntegerField(required=False, min_value=1, max_value=100_000, label="Max requests in flight")
    cache_enabled = forms.BooleanField(required=False, label="Response cache enabled")
    overridable_params = ListField(
        item_max_length=64, help_text="Parameters a request may override, e.g. temperature, max_tokens."
    )

    def __init__(self, *args, organisation, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["team"].queryset = Team.objects.filter(organisation=organisation).order_by("name")

    def clean_expires_at(self):
        value = self.cleaned_data.get("expires_at")
        initial = self.initial.get("expires_at")
        # Editing a key that expired keeps its date if left alone; only a new date must be ahead.
        unchanged = initial is not None and value == initial.replace(second=0, microsecond=0)
        if value is not None and value <= timezone.now() and not unchanged:
            raise forms.ValidationError("Must be in the future.")
        if unchanged:
            return initial
        return value


def api_key_form_initial(key) -> dict:
    """The form's starting values for an existing key."""
    return {
        "name": key.name,
        "team": key.team_id,
        "expires_at": key.expires_at,
        "allowed_models": key.allowed_models,
        "allowed_prompts": key.allowed_prompts,
        "roles": key.roles,
        "rpm_limit": key.rpm_limit,
        "tpm_limit": key.tpm_limit,
        "max_in_flight": key.max_in_flight,
        "cache_enabled": key.cache_enabled,
        "overridable_params": key.overridable_params,
    }


class _TeamsField(forms.ModelMultipleChoiceField):
    widget = forms.CheckboxSelectMultiple

    def __init__(self, **kwargs):
        kwargs.setdefault("queryset", Team.objects.none())
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)


class InvitationCreateForm(forms.Form):
    email = forms.EmailField(required=False, label="Email address")
    username = forms.CharField(
        max_length=150, required=False, label="or the user name of someone who already has an account"
    )
    roles = RolesField(required=True)
    teams = _TeamsField(help_text="The teams they join on accepting.")

    def __init__(self, *args, organisation, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["teams"].queryset = Team.objects.filter(organisation=organisation).order_by("name")

    def clean(self):
        data = super().clean()
        if bool(data.get("email")) == bool((data.get("username") or "").strip()):
            raise forms.ValidationError("Give either an email address or a user name.")
        return data


class InvitationNewAccountForm(forms.Form):
    username = forms.CharField(max_length=150, label="Choose a user name")
    email = forms.EmailField(required=False, label="Email address (optional)")
    password = forms.CharField(
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}), label="Password", strip=False
    )
    password_again = forms.CharField(
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}), label="Password again", strip=False
    )

    def clean(self):
        data = super().clean()
        if data.get("password") and data.get("password") != data.get("password_again"):
            self.add_error("password_again", "The two passwords differ.")
        return data


class MemberForm(forms.Form):
    roles = RolesField(required=False, help_text="No role at all keeps the member but lets them see nothing.")
    teams = _TeamsField()

    def __init__(self, *args, organisation, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["teams"].queryset = Team.objects.filter(organisation=organisation).order_by("name")


class TeamCreateForm(forms.Form):
    name = forms.CharField(max_length=200)
