"""ASGI entry point.

The OpenAI-compatible API (`/v1/...`) is the hot path: it is served by a lean ASGI application
from `proxy.app` placed ahead of Django, sharing Django's settings, models and services. Every
other path goes through Django's own request cycle.
"""

import os
from importlib import import_module

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from django.conf import settings
from django.core.asgi import get_asgi_application

django_application = get_asgi_application()

# Django imports the URLconf, and with it every view module, on the first request it routes. Done
# here instead, those modules are among what the proxy's startup `gc.freeze()` takes out of the
# collector's walks; left to the first request, they sat in the oldest generation and every full
# collection walked them again (5-6 ms each, every half-second at 64 requests in flight).
import_module(settings.ROOT_URLCONF)

from proxy.app import application as proxy_application  # noqa: E402

PROXY_PREFIX = "/v1/"


async def application(scope, receive, send):
    # `/v1` itself too, so that a client's base URL missing its path gets an OpenAI error, not Django's page.
    if scope["type"] == "http" and (scope["path"].startswith(PROXY_PREFIX) or scope["path"] == "/v1"):
        await proxy_application(scope, receive, send)
        return
    if scope["type"] == "lifespan":
        await proxy_application(scope, receive, send)
        return
    await django_application(scope, receive, send)
