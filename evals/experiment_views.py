"""Web pages of online experiments: the list, starting one, its page (variants side by side, comparisons
with the control, guard rails, audit trail), stopping it. Any member reads; prompt engineers and
admins start and stop."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.permissions import role_required
from accounts.roles import Role
from audit.models import AuditEvent
from core.errors import ApplicationError, NotFound
from registry.experiments import experiment_get, experiment_start, experiment_stop, experiments_list
from registry.models import ExperimentStatus, StickyBy
from registry.selectors import prompts_list

WRITERS = (Role.PROMPT_ENGINEER, Role.ADMIN)


class ExperimentStartForm(forms.Form):
    prompt = forms.CharField(max_length=100)
    label = forms.SlugField(max_length=100, initial="production")
    name = forms.CharField(max_length=200, required=False)
    variants = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        max_length=2000,
        help_text='One "version:weight" per line, weights adding up to 100, e.g. "1:50" and "2:50".',
    )
    sticky_by = forms.ChoiceField(choices=StickyBy.choices, initial=StickyBy.USER)
    max_error_rate = forms.FloatField(required=False, min_value=0, max_value=1, help_text="A fraction, e.g. 0.05.")
    max_latency_p95_ms = forms.FloatField(required=False, min_value=1, max_value=3_600_000)
    max_cost_per_request = forms.DecimalField(required=False, min_value=0, max_digits=20, decimal_places=12)
    min_sample = forms.IntegerField(initial=100, min_value=1, max_value=1_000_000)

    def clean_variants(self) -> list[dict]:
        variants = []
        for line in self.cleaned_data["variants"].splitlines():
            if not line.strip():
                continue
            version, sep, weight = line.partition(":")
            if not sep or not version.strip().isdigit() or not weight.strip().isdigit():
                raise forms.ValidationError(f'"{line.strip()}" is not "version:weight".')
            variants.append({"version": int(version), "weight": int(weight)})
        return variants


def _experiment_or_404(request, experiment_id: int):
    try:
        return experiment_get(organisation=request.org.organisation, experiment_id=experiment_id)
    except NotFound:
        raise Http404("No such experiment") from None


@require_GET
@role_required()
def experiment_list(request):
    status = request.GET.get("status", "")
    status = status if status in ExperimentStatus.values else ""
    context = {
        "experiments": experiments_list(organisation=request.org.organisation, status=status or None)[:200],
        "status": status,
        "statuses": ExperimentStatus.values,
        "can_write": request.org.has_role(*WRITERS),
    }
    return render(request, "evals/experiment_list.html", context)


@require_http_methods(["GET", "POST"])
@role_required(*WRITERS)
def experiment_start_view(request):
    org = request.org.organisation
    form = ExperimentStartForm(request.POST or None, initial={"prompt": request.GET.get("prompt", "")})
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        prompt = prompts_list(organisation=org).filter(name=data["prompt"]).first()
        if prompt is None:
            form.add_error("prompt", "No such prompt.")
        else:
            try:
                experiment = experiment_start(
                    prompt=prompt,
                    label=data["label"],
                    variants=data["variants"],
                    actor=request.org.actor,
                    roles=request.org.roles,
                    name=data["name"],
                    sticky_by=data["sticky_by"],
                    max_error_rate=data["max_error_rate"],
                    max_latency_p95_ms=data["max_latency_p95_ms"],
                    max_cost_per_request=data["max_cost_per_request"],
                    min_sample=data["min_sample"],
                )
            except ApplicationError as exc:
                field = exc.param if exc.param in form.fields else None
                form.add_error(field, exc.message)
            else:
                messages.success(request, "Experiment started; the proxy splits the label's traffic within seconds.")
                return redirect("evals:experiment_detail", experiment_id=experiment.id)
    prompts = prompts_list(organisation=org).values_list("name", flat=True)[:500]
    return render(request, "evals/experiment_start.html", {"form": form, "prompts": prompts})


@require_GET
@role_required()
def experiment_detail(request, experiment_id: int):
    # Imported here, not at the top: the URLconf is loaded into the proxy's process, and evals.stats
    # brings numpy and scipy (634 modules); at import they cost the proxy 2-3% more CPU per request
    # (bench.compare --chat, median ratio 1.027 against main) for a page the proxy never serves.
    from evals.experiments import LIMIT_NAMES, experiment_report

    experiment = _experiment_or_404(request, experiment_id)
    report = experiment_report(experiment)
    comparisons: dict[str, list] = {}
    for comparison in report.comparisons:
        comparisons.setdefault(comparison.variant, []).append(comparison)
    events = AuditEvent.objects.filter(
        organisation_id=request.org.organisation.id, target_type="experiment", target_id=str(experiment.id)
    ).order_by("seq")
    context = {
        "experiment": experiment,
        "report": report,
        "comparisons": comparisons,
        "limit_names": LIMIT_NAMES,
        "events": events,
        "can_write": request.org.has_role(*WRITERS),
    }
    return render(request, "evals/experiment_detail.html", context)


@require_POST
@role_required(*WRITERS)
def experiment_stop_view(request, experiment_id: int):
    experiment = _experiment_or_404(request, experiment_id)
    try:
        experiment_stop(
            experiment=experiment,
            actor=request.org.actor,
            roles=request.org.roles,
            reason=request.POST.get("reason", "")[:2000],
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, "Experiment stopped: every request gets the control again.")
    return redirect("evals:experiment_detail", experiment_id=experiment.id)
