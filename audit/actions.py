"""The fixed vocabulary of audited actions. Add a member here when a service starts auditing something new."""

from django.db import models


class Action(models.TextChoices):
    # accounts
    ORGANISATION_CREATED = "organisation.created"
    ORGANISATION_SETTINGS_CHANGED = "organisation.settings_changed"
    MEMBER_ADDED = "member.added"
    MEMBER_ROLES_CHANGED = "member.roles_changed"
    MEMBER_REMOVED = "member.removed"
    INVITATION_CREATED = "invitation.created"
    INVITATION_REVOKED = "invitation.revoked"
    INVITATION_ACCEPTED = "invitation.accepted"
    TEAM_CREATED = "team.created"
    TEAM_UPDATED = "team.updated"
    USER_LOGGED_IN = "user.logged_in"
    USER_LOGIN_LOCKED = "user.login_locked"
    API_KEY_CREATED = "api_key.created"
    API_KEY_UPDATED = "api_key.updated"
    API_KEY_REVOKED = "api_key.revoked"
    # registry
    PROMPT_CREATED = "prompt.created"
    PROMPT_UPDATED = "prompt.updated"
    PROMPT_IMPORTED = "prompt.imported"
    PROMPT_VERSION_CREATED = "prompt_version.created"
    LABEL_MOVED = "label.moved"
    LABEL_PROTECTION_CHANGED = "label.protection_changed"
    PROMOTION_REQUESTED = "promotion.requested"
    PROMOTION_APPROVED = "promotion.approved"
    PROMOTION_REJECTED = "promotion.rejected"
    PROMOTION_GATE_CHANGED = "promotion.gate_changed"
    # proxy
    ROUTE_CREATED = "route.created"
    ROUTE_UPDATED = "route.updated"
    ROUTE_DELETED = "route.deleted"
    DEPLOYMENT_CREATED = "deployment.created"
    DEPLOYMENT_UPDATED = "deployment.updated"
    DEPLOYMENT_DELETED = "deployment.deleted"
    DEPLOYMENT_CIRCUIT_OPENED = "deployment.circuit_opened"
    DEPLOYMENT_CIRCUIT_CLOSED = "deployment.circuit_closed"
    PROXY_SETTINGS_CHANGED = "proxy.settings_changed"
    # billing
    PRICE_CHANGED = "price.changed"
    BUDGET_CREATED = "budget.created"
    BUDGET_UPDATED = "budget.updated"
    BUDGET_DELETED = "budget.deleted"
    BUDGET_THRESHOLD_CROSSED = "budget.threshold_crossed"
    BUDGET_FAIL_MODE_CHANGED = "budget.fail_mode_changed"
    WEBHOOK_CONFIGURED = "webhook.configured"
    # safety
    POLICY_CHANGED = "safety.policy_changed"
    MODERATION_RELEASED = "moderation.released"
    MODERATION_REJECTED = "moderation.rejected"
    MODERATION_APPROVAL_RECORDED = "moderation.approval_recorded"  # the first of two required approvals
    MODERATION_ESCALATED = "moderation.escalated"
    # evals
    EVAL_RUN_STARTED = "eval_run.started"
    EVAL_RUN_FINISHED = "eval_run.finished"
