"""Feedback on proxied requests: a score in [-1, 1] and an optional comment, by request id.

An API key may score only the requests it made itself; a member (admin, prompt engineer or
reviewer) any request of their organisation. Anything else answers as if the request did not
exist. One score per request per source ("api_key:<id>" or "user:<id>"): posting again replaces
it, so a client that retries, or a user who changes their mind, does not count twice.

The request must already be in the request log, which the proxy hands over within about a second
of answering (proxy.requestlog); until then the request is not found, and a client retries.
Experiments (evals.experiments) compare their variants on these scores.
"""

from __future__ import annotations

import math

from django.db.models import QuerySet

from accounts.models import Organisation
from core.errors import NotFound, ValidationFailed
from proxy.models import Feedback, RequestLog

SCORE_MIN = -1.0
SCORE_MAX = 1.0
MAX_COMMENT = 2000
MAX_END_USER = 200


def feedback_source(*, api_key_id: int | None, user_id: int | None) -> str:
    if api_key_id is not None:
        return f"api_key:{api_key_id}"
    if user_id is not None:
        return f"user:{user_id}"
    raise ValueError("feedback needs an API key or a user")


def feedback_record(
    *,
    organisation: Organisation,
    request_id: str,
    score: float,
    comment: str = "",
    end_user: str = "",
    api_key_id: int | None = None,
    user_id: int | None = None,
) -> tuple[Feedback, bool]:
    """Store (or replace) this source's score on `request_id`; returns (feedback, created).

    With `api_key_id` the request must have been made with that key; raises NotFound otherwise (and for
    another organisation's request), ValidationFailed for a score outside [-1, 1] or an overlong text.
    """
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise ValidationFailed("score must be a number.", param="score")
    if not SCORE_MIN <= score <= SCORE_MAX:
        raise ValidationFailed(f"score must be between {SCORE_MIN:g} and {SCORE_MAX:g}.", param="score")
    if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
        raise ValidationFailed(f"comment must be text up to {MAX_COMMENT} characters.", param="comment")
    if not isinstance(end_user, str) or len(end_user) > MAX_END_USER:
        raise ValidationFailed(f"user must be text up to {MAX_END_USER} characters.", param="user")
    requests = RequestLog.objects.filter(organisation=organisation, request_id=request_id)
    if api_key_id is not None:
        requests = requests.filter(api_key_id=api_key_id)
    if not isinstance(request_id, str) or not requests.exists():
        raise NotFound("No such request (a request is logged about a second after it is answered).", code="not_found")
    feedback, created = Feedback.objects.update_or_create(
        request_id=request_id,
        source=feedback_source(api_key_id=api_key_id, user_id=user_id),
        defaults={"organisation": organisation, "score": float(score), "comment": comment, "end_user": end_user},
    )
    return feedback, created


def feedback_list(
    *, organisation: Organisation, api_key_id: int | None = None, request_id: str | None = None
) -> QuerySet[Feedback]:
    """The organisation's feedback, newest first; with `api_key_id`, only on that key's requests."""
    qs = Feedback.objects.filter(organisation=organisation)
    if api_key_id is not None:
        own = RequestLog.objects.filter(organisation=organisation, api_key_id=api_key_id).values("request_id")
        qs = qs.filter(request_id__in=own)
    if request_id:
        qs = qs.filter(request_id=request_id)
    return qs.order_by("-created_at", "-id")
