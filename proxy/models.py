"""Model routes, their deployments, the request log and per-organisation proxy settings.

Writes go through proxy.services. The hot path never reads these tables while its in-process
cache is warm (proxy.selectors.arouting_table); every write invalidates that cache.
"""

from __future__ import annotations

from django.db import models

from accounts.models import Organisation
from core.models import TimeStampedModel


class RoutingStrategy(models.TextChoices):
    WEIGHTED = "weighted", "Weighted random"
    LEAST_IN_FLIGHT = "least_in_flight", "Least in flight"


class DeploymentKind(models.TextChoices):
    # Called directly with the pooled HTTP client (OpenAI, vLLM, llama.cpp, Ollama, dev upstream).
    OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible"
    # Translated by litellm (core/llm.py) for every other provider.
    LITELLM = "litellm", "litellm"


class ModelRoute(TimeStampedModel):
    """A public model name clients send as `model`, served by one or more deployments."""

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="model_routes")
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    # Ordered names of other routes of the same organisation tried when every deployment here failed.
    fallbacks = models.JSONField(default=list, blank=True)
    strategy = models.CharField(max_length=20, choices=RoutingStrategy.choices, default=RoutingStrategy.WEIGHTED)
    cache_enabled = models.BooleanField(default=False)
    cache_ttl_seconds = models.PositiveIntegerField(default=300)
    # Budget for the whole request, all attempts and fallbacks included.
    deadline_seconds = models.FloatField(default=60.0)
    # Request fields beyond the endpoint's OpenAI ones that clients may send to this model's
    # deployments (provider-specific parameters); never a provider-configuration name (proxy.schemas).
    passthrough_params = models.JSONField(default=list, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organisation", "name"], name="model_route_unique_name_per_org")]
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Deployment(TimeStampedModel):
    """One place a route's requests can go. The credential is never returned by any API."""

    route = models.ForeignKey(ModelRoute, on_delete=models.CASCADE, related_name="deployments")
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=20, choices=DeploymentKind.choices, default=DeploymentKind.OPENAI_COMPATIBLE)
    # openai_compatible: the upstream's model name (a leading "openai/" is dropped);
    # litellm: a litellm model string such as "anthropic/claude-3-5-haiku-latest".
    model = models.CharField(max_length=200)
    api_base = models.CharField(max_length=500, blank=True)
    # Either the name of an environment variable holding the key, or a Fernet token (core.crypto).
    credential_env = models.CharField(max_length=200, blank=True)
    credential_encrypted = models.TextField(blank=True)
    weight = models.PositiveIntegerField(default=1)
    rpm_limit = models.PositiveIntegerField(null=True, blank=True)
    tpm_limit = models.PositiveIntegerField(null=True, blank=True)
    timeout_seconds = models.FloatField(default=30.0)
    enabled = models.BooleanField(default=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["route", "name"], name="deployment_unique_name_per_route")]
        ordering = ["route_id", "name"]

    def __str__(self) -> str:
        return f"{self.route.name}/{self.name}"

    @property
    def credential_kind(self) -> str:
        if self.credential_encrypted:
            return "secret"
        if self.credential_env:
            return "env"
        return "none"


class ProxySettings(TimeStampedModel):
    """Per-organisation proxy settings. Absent row = defaults (bodies not stored)."""

    organisation = models.OneToOneField(Organisation, on_delete=models.CASCADE, related_name="proxy_settings")
    store_bodies = models.BooleanField(default=False)
    body_retention_days = models.PositiveIntegerField(default=30)

    def __str__(self) -> str:
        return f"proxy settings of {self.organisation_id}"


class RequestStatus(models.TextChoices):
    OK = "ok"
    ERROR = "error"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    CACHED = "cached"


class RequestLog(models.Model):
    """One row per proxied request, written off the hot path by the request-log consumer.

    Keys to other apps' rows are plain integers: a log row must be insertable in bulk even when the
    key, team or prompt it mentions has since been deleted.
    """

    request_id = models.CharField(max_length=64, unique=True)
    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, db_constraint=False, related_name="request_logs"
    )
    api_key_id = models.BigIntegerField(null=True, blank=True)
    team_id = models.BigIntegerField(null=True, blank=True)
    endpoint = models.CharField(max_length=40)
    model = models.CharField(max_length=200, blank=True)
    stream = models.BooleanField(default=False)
    deployment_id = models.BigIntegerField(null=True, blank=True)
    deployment_name = models.CharField(max_length=100, blank=True)
    prompt_id = models.BigIntegerField(null=True, blank=True)
    prompt_version_id = models.BigIntegerField(null=True, blank=True)
    prompt_name = models.CharField(max_length=100, blank=True)
    prompt_version_number = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=RequestStatus.choices)
    http_status = models.PositiveSmallIntegerField()
    error_type = models.CharField(max_length=64, blank=True)
    error_message = models.CharField(max_length=500, blank=True)
    cache_hit = models.BooleanField(default=False)
    started_at = models.DateTimeField()
    latency_ms = models.FloatField(default=0)
    overhead_ms = models.FloatField(default=0)
    upstream_ms = models.FloatField(default=0)
    # stage name -> milliseconds (authenticate, resolve_prompt, pre_filters, reserve_budget, ...)
    timings = models.JSONField(default=dict, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    reasoning_tokens = models.PositiveIntegerField(default=0)
    usage_estimated = models.BooleanField(default=False)
    # [{n, deployment_id, deployment, model, status, http_status, error_type, latency_ms, usage}]
    attempts = models.JSONField(default=list, blank=True)
    # The online experiment (registry.Experiment, a plain id) whose variant chose the prompt version,
    # and whether the end user's key made the choice sticky (False: assigned at random).
    experiment_id = models.BigIntegerField(null=True, blank=True)
    experiment_variant = models.CharField(max_length=50, blank=True, default="", db_default="")
    experiment_sticky = models.BooleanField(null=True, blank=True)
    # The safety policy that applied and every filter run: {"policy_id", "policy_name", "input",
    # "output" (each {"action", "findings", "runs", "redacted", "failed"}), "moderation_id", ...};
    # {} when no policy applied (proxy.safetystage).
    safety = models.JSONField(default=dict, blank=True)
    # Citations of a source the request never supplied (the citations filter's hallucination signal),
    # counted when the row is written so a prompt's versions can be compared without reading `safety`.
    unsupported_citations = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            models.Index(fields=["experiment_id", "started_at"], name="requestlog_experiment_started"),
            # The log's pages are keyset pages ordered by (started_at, id) within the organisation: one
            # index per filter the list offers, each ending in (started_at, id), so every page, however
            # deep, is one index range read (bench/requestlog.py measures them at 10 million rows).
            models.Index(fields=["organisation", "started_at", "id"], name="reqlog_org_started"),
            models.Index(fields=["organisation", "api_key_id", "started_at", "id"], name="reqlog_org_key_started"),
            models.Index(fields=["organisation", "model", "started_at", "id"], name="reqlog_org_model_started"),
            models.Index(fields=["organisation", "status", "started_at", "id"], name="reqlog_org_status_started"),
            models.Index(fields=["organisation", "prompt_name", "started_at", "id"], name="reqlog_org_prompt_started"),
            models.Index(
                fields=["organisation", "prompt_name", "prompt_version_number", "started_at", "id"],
                name="reqlog_org_prompt_ver_started",
            ),
            models.Index(
                fields=["prompt_id", "prompt_version_number"],
                condition=models.Q(unsupported_citations__gt=0),
                name="requestlog_unsupported_cites",
            ),
        ]
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return self.request_id

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class RequestCountHourly(models.Model):
    """Requests per organisation, hour and status, added to by the request-log consumer in the same
    transaction as the rows it writes (records_write). The dashboard's "last 24 hours" reads these
    few rows instead of counting a request log that may hold tens of millions."""

    organisation_id = models.BigIntegerField()
    hour = models.DateTimeField()  # the start of the hour, UTC
    status = models.CharField(max_length=16)
    count = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organisation_id", "hour", "status"], name="reqcount_org_hour_status")
        ]

    def __str__(self) -> str:
        return f"{self.organisation_id} {self.hour:%Y-%m-%d %H}:00 {self.status}: {self.count}"


class RequestBody(models.Model):
    """Request and response bodies, kept only when the organisation stores them; purged after retention."""

    request_id = models.CharField(max_length=64, unique=True)
    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, db_constraint=False, related_name="request_bodies"
    )
    started_at = models.DateTimeField(db_index=True)
    request = models.JSONField(null=True, blank=True)
    response = models.JSONField(null=True, blank=True)

    def __str__(self) -> str:
        return self.request_id


class Feedback(models.Model):
    """A score (and optional comment) on one proxied request, from its API key or a member.

    One per request per source: the source is "api_key:<id>" or "user:<id>", and posting again
    replaces that source's score (proxy.feedback). The request is named by its public id, like the
    request log; the organisation is checked when it is written, never trusted from the caller.
    """

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="feedback")
    request_id = models.CharField(max_length=64)
    source = models.CharField(max_length=40)
    score = models.FloatField()
    comment = models.TextField(blank=True)
    # The end user the score came from, as the caller names them (free text, e.g. the request's `user`).
    end_user = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["request_id", "source"], name="feedback_one_per_request_source"),
            models.CheckConstraint(
                condition=models.Q(score__gte=-1) & models.Q(score__lte=1), name="feedback_score_range"
            ),
        ]
        indexes = [models.Index(fields=["organisation", "-created_at"], name="feedback_org_created")]
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.request_id}: {self.score}"
