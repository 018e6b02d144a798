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


class ApiKeyCreateForm(forms.Form):
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
        if value is not None and value <= timezone.now():
            raise forms.ValidationError("Must be in the future.")
        return value


class InvitationCreateForm(forms.Form):
    email = forms.EmailField(required=False, label="Email address")
    username = forms.CharField(max_length=150, required=False, label="or the user name of someone with an account")
    roles = RolesField(required=True)

    def clean(self):
        data = super().clean()
        if bool(data.get("email")) == bool((data.get("username") or "").strip()):
            raise forms.ValidationError("Give either an email address or a user name.")
        return data


class InvitationNewAccountForm(forms.Form):
    username = forms.CharField(max_length=150, label="Choose a user name")
    email = forms.EmailField(required=False, label="Email address (optional)")
    password = forms.CharField(widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}), label="Password")
    password_again = forms.CharField(
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}), label="Password again"
    )

    def clean(self):
        data = super().clean()
        if data.get("password") and data.get("password") != data.get("password_again"):
            self.add_error("password_again", "The two passwords differ.")
        return data


class MemberRolesForm(forms.Form):
    roles = RolesField(required=False, help_text="No role at all keeps the member but lets them see nothing.")


class TeamCreateForm(forms.Form):
    name = forms.CharField(max_length=200)
