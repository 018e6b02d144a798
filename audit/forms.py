from __future__ import annotations

from django import forms

from audit.actions import Action
from audit.selectors import AuditEventFilters


def target_type_label(target_type: str) -> str:
    return target_type.replace("_", " ").capitalize()


class AuditEventFilterForm(forms.Form):
    actor = forms.CharField(
        required=False,
        max_length=200,
        label="Actor",
        widget=forms.TextInput(attrs={"placeholder": "user name, key prefix or id"}),
    )
    action = forms.ChoiceField(required=False, choices=[("", "Any action"), *((a, a) for a in Action.values)])
    target_type = forms.ChoiceField(
        required=False,
        label="Target type",
        choices=[("", "Any type")],
        error_messages={"invalid_choice": "Choose a type of target this trail records."},
    )
    target = forms.CharField(
        required=False,
        max_length=200,
        label="Target",
        help_text="Its name (or part of it) or its id.",
        # The suggestions follow the chosen type: the results partial renders the datalist.
        widget=forms.TextInput(attrs={"list": "audit-target-names", "autocomplete": "off"}),
    )
    date_from = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, *args, target_types: list[str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["target_type"].choices = [
            ("", "Any type"),
            *((t, target_type_label(t)) for t in target_types or []),
        ]

    def clean(self):
        data = super().clean()
        if data.get("date_from") and data.get("date_to") and data["date_from"] > data["date_to"]:
            self.add_error("date_from", "'From' must not be after 'To'.")
        return data

    def filters(self) -> AuditEventFilters:
        data = self.cleaned_data
        return AuditEventFilters(
            actor=(data.get("actor") or "").strip(),
            action=data.get("action") or "",
            target_type=data.get("target_type") or "",
            target=(data.get("target") or "").strip(),
            date_from=data.get("date_from"),
            date_to=data.get("date_to"),
        )
