from __future__ import annotations

from django import forms

from audit.actions import Action
from audit.selectors import AuditEventFilters


class AuditEventFilterForm(forms.Form):
    actor = forms.CharField(
        required=False,
        max_length=200,
        label="Actor",
        widget=forms.TextInput(attrs={"placeholder": "user name, key prefix or id"}),
    )
    action = forms.ChoiceField(required=False, choices=[("", "Any action"), *((a, a) for a in Action.values)])
    target_type = forms.CharField(required=False, max_length=64, label="Target type")
    target_id = forms.CharField(required=False, max_length=64, label="Target id")
    date_from = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))

    def clean(self):
        data = super().clean()
        if data.get("date_from") and data.get("date_to") and data["date_from"] > data["date_to"]:
            raise forms.ValidationError("'From' must not be after 'To'.")
        return data

    def filters(self) -> AuditEventFilters:
        data = self.cleaned_data
        return AuditEventFilters(
            actor=(data.get("actor") or "").strip(),
            action=data.get("action") or "",
            target_type=(data.get("target_type") or "").strip(),
            target_id=(data.get("target_id") or "").strip(),
            date_from=data.get("date_from"),
            date_to=data.get("date_to"),
        )
