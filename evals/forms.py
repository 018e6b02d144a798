"""Forms of the evaluation pages. They check shape; the services check meaning (and say so clearly)."""

from __future__ import annotations

import json

from django import forms

from evals.assertions import AssertionConfigError, assertion_validate
from evals.models import Reducer

MAX_ASSERTIONS = 50


class RunStartForm(forms.Form):
    prompt = forms.SlugField(max_length=100)
    candidate = forms.IntegerField(min_value=1, label="Candidate version")
    baseline = forms.SlugField(max_length=100, initial="production", label="Baseline label")
    suite = forms.SlugField(max_length=100)
    model_override = forms.CharField(max_length=200, required=False, label="Model override (optional)")
    repeats = forms.IntegerField(min_value=1, max_value=20, required=False, label="Repeats (default: the suite's)")


class DatasetCreateForm(forms.Form):
    name = forms.SlugField(max_length=100)
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))


class DatasetImportForm(forms.Form):
    file = forms.FileField()
    format = forms.ChoiceField(choices=[("csv", "CSV"), ("jsonl", "JSON Lines")], initial="csv")


def assertions_parse(text: str) -> list[dict]:
    """A JSON list of assertion specs, each validated; errors name the assertion and the field."""
    try:
        value = json.loads(text or "[]")
    except json.JSONDecodeError as exc:
        raise forms.ValidationError(f"Not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.") from None
    if not isinstance(value, list):
        raise forms.ValidationError('Give a JSON list of assertions, e.g. [{"type": "contains", "value": "x"}].')
    if len(value) > MAX_ASSERTIONS:
        raise forms.ValidationError(f"At most {MAX_ASSERTIONS} assertions.")
    errors, clean = [], []
    for index, spec in enumerate(value, start=1):
        if not isinstance(spec, dict):
            errors.append(f"Assertion {index}: must be an object.")
            continue
        try:
            clean.append(assertion_validate(spec))
        except AssertionConfigError as exc:
            errors.append(f"Assertion {index} ({spec.get('type', '?')}): {exc}.")
    if errors:
        raise forms.ValidationError(errors)
    return clean


class SuiteForm(forms.Form):
    name = forms.SlugField(max_length=100)
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    dataset = forms.SlugField(max_length=100)
    assertions = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 10, "spellcheck": "false"}),
        help_text='A JSON list, e.g. [{"type": "icontains", "value": ["refund"], "weight": 2}]',
    )
    pass_threshold = forms.FloatField(min_value=0.0, max_value=1.0, initial=1.0)
    repeats = forms.IntegerField(min_value=1, max_value=20, initial=1)
    reducer = forms.ChoiceField(choices=Reducer.choices, initial=Reducer.MEAN)
    margin = forms.FloatField(min_value=0.0, max_value=1.0, initial=0.05, label="Non-inferiority margin")
    gating_metrics = forms.CharField(
        required=False, max_length=500, help_text="Comma-separated; empty: pass_rate and score"
    )
    concurrency = forms.IntegerField(min_value=1, max_value=200, initial=8)
    cost_budget_usd = forms.DecimalField(
        required=False, min_value=0, max_digits=12, decimal_places=6, label="Cost budget (USD, optional)"
    )
    schedule_prompt = forms.SlugField(max_length=100, required=False, label="Drift watch: prompt")
    schedule_label = forms.SlugField(max_length=100, required=False, label="Drift watch: label")
    schedule_minutes = forms.IntegerField(min_value=5, max_value=60 * 24 * 31, required=False, label="Every (minutes)")

    def clean_assertions(self):
        return assertions_parse(self.cleaned_data["assertions"])

    def clean_gating_metrics(self):
        raw = self.cleaned_data.get("gating_metrics") or ""
        return [m.strip() for m in raw.split(",") if m.strip()]

    def clean(self):
        data = super().clean()
        schedule = [data.get("schedule_prompt"), data.get("schedule_label"), data.get("schedule_minutes")]
        if any(schedule) and not all(schedule):
            raise forms.ValidationError("A drift watch needs a prompt, a label and an interval (or none of them).")
        return data


class GateForm(forms.Form):
    prompt = forms.SlugField(max_length=100)
    label = forms.SlugField(max_length=100, initial="production")
    suite = forms.SlugField(max_length=100, required=False, help_text="Empty: remove the requirement")


class OverrideForm(forms.Form):
    reason = forms.CharField(max_length=2000, widget=forms.Textarea(attrs={"rows": 2}))
