"""Web pages of evaluations: runs (list, start, live progress, results side by side, cancel), datasets,
suites, a prompt's score trend, promotion gates and drift alerts.

Every lookup is scoped to the signed-in organisation: another tenant's ids answer 404."""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.permissions import role_required
from accounts.roles import Role
from billing.charts import bar_chart
from core.errors import ApplicationError, NotFound
from evals import presenters
from evals.drift import drift_alert_acknowledge
from evals.forms import DatasetCreateForm, DatasetImportForm, GateForm, OverrideForm, RunStartForm, SuiteForm
from evals.gate import gate_refresh, prompt_gate_set
from evals.models import Dataset, DatasetVersion, DriftAlert, PromptGate, Run, RunStatus, Suite
from proxy.ui_selectors import unsupported_citations_by_version
from registry import selectors as registry_selectors
from registry.models import Label, PromotionRequest, Prompt

WRITERS = (Role.PROMPT_ENGINEER, Role.ADMIN)
PAGE = 100


def _safe_next(request, default: str) -> str:
    """Where to go back to after a form: a path on this site only (never another host)."""
    target = request.POST.get("next", "")
    if target.startswith("/") and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return default


def _can_write(request) -> bool:
    return request.org.has_role(*WRITERS)


def _run_or_404(request, run_id: int) -> Run:
    run = (
        Run.objects.filter(pk=run_id, organisation=request.org.organisation)
        .select_related("suite", "dataset_version__dataset")
        .first()
    )
    if run is None:
        raise Http404("No such run")
    return run


def _dataset_or_404(request, name: str) -> Dataset:
    dataset = Dataset.objects.filter(organisation=request.org.organisation, name=name).first()
    if dataset is None:
        raise Http404("No such dataset")
    return dataset


def _suite_or_404(request, name: str) -> Suite:
    suite = Suite.objects.filter(organisation=request.org.organisation, name=name).select_related("dataset").first()
    if suite is None:
        raise Http404("No such suite")
    return suite


def _prompt_or_404(request, name: str) -> Prompt:
    try:
        return registry_selectors.prompt_get(organisation=request.org.organisation, name=name)
    except NotFound:
        raise Http404("No such prompt") from None


# --- runs ------------------------------------------------------------------------------------


@require_GET
@role_required()
def home(request):
    runs = Run.objects.filter(organisation=request.org.organisation).select_related("suite")
    prompt = request.GET.get("prompt", "").strip()
    status = request.GET.get("status", "").strip()
    if prompt:
        runs = runs.filter(prompt_name=prompt)
    if status in RunStatus.values:
        runs = runs.filter(status=status)
    runs = list(runs.prefetch_related("variants")[:PAGE])
    for run in runs:
        run.progress = presenters.run_progress(run)
    return render(
        request,
        "evals/home.html",
        {
            "runs": runs,
            "prompt": prompt,
            "status": status,
            "statuses": RunStatus.values,
            "can_write": _can_write(request),
            "polling": any(run.progress["active"] for run in runs),
        },
    )


@require_http_methods(["GET", "POST"])
@role_required(*WRITERS)
def run_new(request):
    org = request.org.organisation
    initial = {k: request.GET[k] for k in ("prompt", "candidate", "baseline", "suite") if request.GET.get(k)}
    form = RunStartForm(request.POST or None, initial={"baseline": "production", **initial})
    if request.method == "POST" and form.is_valid():
        from evals.services import run_start

        data = form.cleaned_data
        prompt = Prompt.objects.filter(organisation=org, name=data["prompt"]).first()
        suite = Suite.objects.filter(organisation=org, name=data["suite"]).first()
        if prompt is None:
            form.add_error("prompt", "No such prompt.")
        if suite is None:
            form.add_error("suite", "No such suite.")
        if prompt is not None and suite is not None:
            version = prompt.versions.filter(number=data["candidate"]).first()
            if version is None:
                form.add_error("candidate", f"Prompt {prompt.name} has no version {data['candidate']}.")
            else:
                try:
                    run = run_start(
                        suite=suite,
                        prompt=prompt,
                        actor=request.org.actor,
                        kind="regression",
                        candidate_version=version,
                        baseline_label=data["baseline"],
                        model_override=data["model_override"] or "",
                        trigger="ui",
                        repeats=data["repeats"],
                    )
                except ApplicationError as exc:
                    form.add_error(None, exc.message)
                else:
                    return redirect("evals:run_detail", run_id=run.id)
    prompt_name = form["prompt"].value()
    prompt = Prompt.objects.filter(organisation=org, name=prompt_name).first() if prompt_name else None
    return render(
        request,
        "evals/run_new.html",
        {
            "form": form,
            "prompt_names": registry_selectors.prompt_names(organisation=org, names=request.org.allowed_prompts),
            "suites": Suite.objects.filter(organisation=org),
            "prompt": prompt,
            "versions": prompt.versions.order_by("-number") if prompt else [],
            "labels": Label.objects.filter(prompt=prompt).select_related("version") if prompt else [],
        },
    )


def _run_context(request, run: Run) -> dict:
    show = request.GET.get("show", "all")
    if show not in presenters.FILTERS:
        show = "all"
    assertion = request.GET.get("assertion", "")
    variants, rows = presenters.run_grid(run, show=show, assertion=assertion)
    summary = run.summary or {}
    return {
        "run": run,
        "variants": variants,
        "rows": rows,
        "show": show,
        "filters": presenters.FILTERS,
        "assertion": assertion,
        "assertion_names": presenters.run_assertion_names(run),
        "progress": presenters.run_progress(run),
        "variant_summaries": summary.get("variants", []),
        "comparisons": presenters.comparison_rows(run),
        "critical": summary.get("newly_failing_critical", []),
        "drift": summary.get("drift"),
        "can_write": _can_write(request),
        "promotion": PromotionRequest.objects.filter(
            pk=run.promotion_request_id, prompt__organisation=request.org.organisation
        ).first()
        if run.promotion_request_id
        else None,
    }


@require_GET
@role_required()
def run_detail(request, run_id: int):
    run = _run_or_404(request, run_id)
    return render(request, "evals/run_detail.html", _run_context(request, run))


@require_GET
@role_required()
def run_progress(request, run_id: int):
    """The live part of the run page (htmx polls it while the run is active). When the run has just
    ended it tells the page to reload once, so results appear without moving focus mid-run."""
    run = _run_or_404(request, run_id)
    progress = presenters.run_progress(run)
    response = render(request, "evals/partials/_run_progress.html", {"run": run, "progress": progress})
    if not progress["active"] and request.GET.get("was") == "active":
        response["HX-Refresh"] = "true"
    return response


@require_POST
@role_required(*WRITERS)
def run_cancel(request, run_id: int):
    from evals.services import run_cancel as service_run_cancel

    run = _run_or_404(request, run_id)
    try:
        service_run_cancel(run=run, actor=request.org.actor)
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Run #{run.id} is being cancelled.")
    return redirect("evals:run_detail", run_id=run.id)


# --- datasets --------------------------------------------------------------------------------


def _dataset_list_page(request, form: DatasetCreateForm, status: int = 200):
    return render(
        request,
        "evals/dataset_list.html",
        {
            "datasets": Dataset.objects.filter(organisation=request.org.organisation),
            "form": form,
            "can_write": _can_write(request),
        },
        status=status,
    )


@require_GET
@role_required()
def dataset_list(request):
    return _dataset_list_page(request, DatasetCreateForm())


@require_POST
@role_required(*WRITERS)
def dataset_create(request):
    from evals.services import dataset_create as service_dataset_create

    form = DatasetCreateForm(request.POST)
    if form.is_valid():
        try:
            dataset = service_dataset_create(
                organisation=request.org.organisation,
                name=form.cleaned_data["name"],
                description=form.cleaned_data["description"],
                actor=request.org.actor,
            )
        except ApplicationError as exc:
            form.add_error("name" if exc.param == "name" else None, exc.message)
        else:
            return redirect("evals:dataset_detail", name=dataset.name)
    return _dataset_list_page(request, form, status=400)


@require_GET
@role_required()
def dataset_detail(request, name: str):
    dataset = _dataset_or_404(request, name)
    versions = list(dataset.versions.all())
    chosen = versions[0] if versions else None
    wanted = request.GET.get("v", "")
    if wanted.isdigit():
        chosen = next((v for v in versions if v.number == int(wanted)), None)
        if chosen is None:
            raise Http404("No such version")
    return render(
        request,
        "evals/dataset_detail.html",
        {
            "dataset": dataset,
            "versions": versions,
            "version": chosen,
            "items": chosen.items.all()[:500] if chosen else [],
            "suites": dataset.suites.all(),
            "can_write": _can_write(request),
            "import_form": DatasetImportForm(),
        },
    )


@require_POST
@role_required(*WRITERS)
def dataset_import(request, name: str):
    from evals.services import DatasetImportError
    from evals.services import dataset_import as service_dataset_import

    dataset = _dataset_or_404(request, name)
    form = DatasetImportForm(request.POST, request.FILES)
    errors: list = []
    if form.is_valid():
        try:
            version = service_dataset_import(
                dataset=dataset,
                fileobj=form.cleaned_data["file"],
                format=form.cleaned_data["format"],
                actor=request.org.actor,
            )
        except DatasetImportError as exc:
            errors = list(exc.errors)
        except ApplicationError as exc:
            form.add_error(None, exc.message)
        else:
            messages.success(request, f"Imported {version.item_count} items as version {version.number}.")
            return redirect(reverse("evals:dataset_detail", args=[dataset.name]) + f"?v={version.number}")
    versions = list(dataset.versions.all())
    return render(
        request,
        "evals/dataset_detail.html",
        {
            "dataset": dataset,
            "versions": versions,
            "version": versions[0] if versions else None,
            "items": versions[0].items.all()[:500] if versions else [],
            "suites": dataset.suites.all(),
            "can_write": True,
            "import_form": form,
            "import_errors": errors,
        },
        status=400,
    )


@require_GET
@role_required()
def dataset_export(request, name: str, number: int):
    from evals.services import dataset_export as service_dataset_export

    dataset = _dataset_or_404(request, name)
    version = DatasetVersion.objects.filter(dataset=dataset, number=number).first()
    if version is None:
        raise Http404("No such version")
    fmt = "csv" if request.GET.get("format") == "csv" else "jsonl"
    body = service_dataset_export(version=version, format=fmt)
    content_type = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson; charset=utf-8"
    response = HttpResponse(body, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{dataset.name}-v{number}.{fmt}"'
    return response


# --- suites ----------------------------------------------------------------------------------


@require_GET
@role_required()
def suite_list(request):
    org = request.org.organisation
    return render(
        request,
        "evals/suite_list.html",
        {
            "suites": Suite.objects.filter(organisation=org).select_related("dataset"),
            "can_write": _can_write(request),
        },
    )


def _suite_fields(request, form: SuiteForm) -> dict:
    org = request.org.organisation
    data = form.cleaned_data
    dataset = Dataset.objects.filter(organisation=org, name=data["dataset"]).first()
    if dataset is None:
        form.add_error("dataset", "No such dataset.")
    schedule_prompt_id = None
    if data.get("schedule_prompt"):
        prompt = Prompt.objects.filter(organisation=org, name=data["schedule_prompt"]).first()
        if prompt is None:
            form.add_error("schedule_prompt", "No such prompt.")
        else:
            schedule_prompt_id = prompt.id
    return {
        "name": data["name"],
        "description": data["description"],
        "dataset": dataset,
        "assertions": data["assertions"],
        "pass_threshold": data["pass_threshold"],
        "repeats": data["repeats"],
        "reducer": data["reducer"],
        "margin": data["margin"],
        "gating_metrics": data["gating_metrics"],
        "concurrency": data["concurrency"],
        "cost_budget_usd": data["cost_budget_usd"],
        "schedule_prompt_id": schedule_prompt_id,
        "schedule_label": data.get("schedule_label") or "",
        "schedule_minutes": data.get("schedule_minutes"),
    }


def _suite_initial(suite: Suite) -> dict:
    import json

    prompt = Prompt.objects.filter(pk=suite.schedule_prompt_id).first() if suite.schedule_prompt_id else None
    return {
        "name": suite.name,
        "description": suite.description,
        "dataset": suite.dataset.name,
        "assertions": json.dumps(suite.assertions, indent=2),
        "pass_threshold": suite.pass_threshold,
        "repeats": suite.repeats,
        "reducer": suite.reducer,
        "margin": suite.margin,
        "gating_metrics": ", ".join(suite.gating_metrics or []),
        "concurrency": suite.concurrency,
        "cost_budget_usd": suite.cost_budget_usd,
        "schedule_prompt": prompt.name if prompt else "",
        "schedule_label": suite.schedule_label,
        "schedule_minutes": suite.schedule_minutes,
    }


@require_http_methods(["GET", "POST"])
@role_required(*WRITERS)
def suite_edit(request, name: str | None = None):
    org = request.org.organisation
    suite = _suite_or_404(request, name) if name else None
    initial = _suite_initial(suite) if suite else {"assertions": "[]"}
    form = SuiteForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        from evals.services import suite_create, suite_update

        fields = _suite_fields(request, form)
        if not form.errors:
            try:
                if suite is None:
                    suite = suite_create(organisation=org, actor=request.org.actor, **fields)
                else:
                    suite = suite_update(suite=suite, actor=request.org.actor, **fields)
            except ApplicationError as exc:
                param = (exc.param or "").split("[")[0]
                form.add_error(param if param in form.fields else None, exc.message)
            else:
                messages.success(request, f"Suite {suite.name} saved.")
                return redirect("evals:suite_detail", name=suite.name)
    return render(
        request,
        "evals/suite_edit.html",
        {"form": form, "suite": suite, "datasets": Dataset.objects.filter(organisation=org)},
    )


@require_GET
@role_required()
def suite_detail(request, name: str):
    suite = _suite_or_404(request, name)
    gates = list(PromptGate.objects.filter(suite=suite))
    prompts = {p.id: p for p in Prompt.objects.filter(id__in=[g.prompt_id for g in gates])}
    for gate in gates:
        gate.prompt = prompts.get(gate.prompt_id)
    schedule_prompt = Prompt.objects.filter(pk=suite.schedule_prompt_id).first() if suite.schedule_prompt_id else None
    return render(
        request,
        "evals/suite_detail.html",
        {
            "suite": suite,
            "gates": gates,
            "schedule_prompt": schedule_prompt,
            "runs": suite.runs.all()[:20],
            "alerts": suite.drift_alerts.order_by("-created_at")[:10],
            "can_write": _can_write(request),
            "is_admin": request.org.has_role(Role.ADMIN) and not request.org.is_api_key,
            "gate_form": GateForm(initial={"suite": suite.name, "label": "production"}),
        },
    )


# --- prompts: score trend and gates -----------------------------------------------------------


@require_GET
@role_required()
def prompt_evals(request, prompt_name: str):
    """A prompt's evaluations: its score trend across versions (a server-drawn chart), its runs and gates."""
    prompt = _prompt_or_404(request, prompt_name)
    org = request.org.organisation
    pass_points = presenters.prompt_score_trend(organisation=org, prompt_id=prompt.id, metric="pass_rate")
    score_points = presenters.prompt_score_trend(organisation=org, prompt_id=prompt.id, metric="score")
    gates = PromptGate.objects.filter(prompt_id=prompt.id).select_related("suite")
    return render(
        request,
        "evals/prompt_evals.html",
        {
            "prompt": prompt,
            "pass_chart": bar_chart(
                title=f"{prompt.name}: pass rate (%) by version", points=pass_points, unit="%", max_value=100
            )
            if pass_points
            else None,
            "score_chart": bar_chart(
                title=f"{prompt.name}: mean score (%) by version", points=score_points, unit="%", max_value=100
            )
            if score_points
            else None,
            "runs": Run.objects.filter(organisation=org, prompt_id=prompt.id)[:50],
            "unsupported_citations": unsupported_citations_by_version(organisation=org, prompt_id=prompt.id),
            "gates": gates,
            "suites": Suite.objects.filter(organisation=org),
            "is_admin": request.org.has_role(Role.ADMIN) and not request.org.is_api_key,
            "can_write": _can_write(request),
        },
    )


@require_POST
@role_required(Role.ADMIN)
def gate_set(request):
    org = request.org.organisation
    form = GateForm(request.POST)
    back = _safe_next(request, reverse("evals:suite_list"))
    if not form.is_valid():
        messages.error(request, "Give a prompt, a label and a suite.")
        return redirect(back)
    prompt = _prompt_or_404(request, form.cleaned_data["prompt"])
    suite = None
    if form.cleaned_data["suite"]:
        suite = Suite.objects.filter(organisation=org, name=form.cleaned_data["suite"]).first()
        if suite is None:
            messages.error(request, "No such suite.")
            return redirect(back)
    try:
        prompt_gate_set(
            prompt=prompt,
            label=form.cleaned_data["label"],
            suite=suite,
            actor=request.org.actor,
            roles=request.org.roles,
        )
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        label = form.cleaned_data["label"]
        messages.success(
            request,
            f"{prompt.name}: promoting {label} now needs suite {suite.name}."
            if suite
            else f"{prompt.name}: {label} no longer needs an evaluation.",
        )
    return redirect(back)


def _promotion_or_404(request, promotion_id: int) -> PromotionRequest:
    try:
        return registry_selectors.promotion_request_get(organisation=request.org.organisation, request_id=promotion_id)
    except NotFound:
        raise Http404("No such promotion request") from None


@require_POST
@role_required(Role.ADMIN)
def gate_override(request, promotion_id: int):
    from registry.services import promotion_request_gate_override

    promotion = _promotion_or_404(request, promotion_id)
    form = OverrideForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Write why the regression gate is overridden.")
    else:
        try:
            promotion_request_gate_override(
                promotion=promotion,
                reason=form.cleaned_data["reason"],
                actor=request.org.actor,
                roles=request.org.roles,
            )
        except ApplicationError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, "Regression gate overridden; the request can now be approved.")
    return redirect("registry:prompt_detail", prompt_name=promotion.prompt.name)


@require_POST
@role_required(*WRITERS)
def gate_check(request, promotion_id: int):
    """Evaluate a request's gate now (e.g. after a run started by hand)."""
    promotion = _promotion_or_404(request, promotion_id)
    promotion = gate_refresh(promotion)
    messages.info(request, f"Regression gate: {promotion.gate_status}.")
    return redirect("registry:prompt_detail", prompt_name=promotion.prompt.name)


@require_POST
@role_required()
def drift_ack(request, alert_id: int):
    alert = DriftAlert.objects.filter(pk=alert_id, organisation=request.org.organisation).first()
    if alert is None:
        raise Http404("No such alert")
    drift_alert_acknowledge(alert=alert, actor=request.org.actor)
    return redirect(_safe_next(request, reverse("evals:home")))
