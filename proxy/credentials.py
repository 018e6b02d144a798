"""Which environment variables a deployment may name as its credential (`credential_env`).

An organisation admin chooses both the variable and the deployment's `api_base`, so naming a
variable sends its value, as a Bearer token, to a host of the admin's choosing. Only the variables
the operator lists in STEWARD_CREDENTIAL_ENV_ALLOWED may be named, and Steward's own configuration
never, whatever that list says: `STEWARD_*` (the encryption keys among them) except the
`STEWARD_UPSTREAM_*` names set aside for upstream keys, and the database, Redis, Celery and Django
variables. Checked when a deployment is saved and again when its credential is resolved, so a
deployment saved under a looser list sends nothing once the list is tightened.
"""

from __future__ import annotations

from django.conf import settings

UPSTREAM_PREFIX = "STEWARD_UPSTREAM_"
NEVER_ALLOWED_PREFIXES = (
    "STEWARD_",
    "SECRET_KEY",
    "DATABASE_",
    "REDIS_",
    "CELERY_",
    "DJANGO_",
    "PG",  # libpq's PGPASSWORD, PGPASSFILE, ...
)


def credential_env_is_steward_own(name: str) -> bool:
    upper = name.upper()
    if upper.startswith(UPSTREAM_PREFIX):
        return False
    return upper.startswith(NEVER_ALLOWED_PREFIXES)


def credential_env_allowed(name: str) -> bool:
    """Whether a deployment may read its key from the environment variable `name`."""
    if not name or credential_env_is_steward_own(name):
        return False
    for entry in settings.STEWARD_CREDENTIAL_ENV_ALLOWED:
        if entry.endswith("*"):
            if name.startswith(entry[:-1]):
                return True
        elif name == entry:
            return True
    return False
