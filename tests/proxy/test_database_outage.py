"""The proxy while PostgreSQL is unreachable: what its in-process caches hold is still served, and
what needs the database (a key it has not seen yet) gets a 503 to retry, not an internal error."""

from __future__ import annotations

import requests
from django.db import connection

from core.invalidation import _registry
from tests.helpers import free_port


def test_warm_traffic_is_served_and_a_cold_key_gets_a_503_until_the_database_returns(proxy, api_key_factory, settings):
    body = {"model": "dev-small", "messages": [{"role": "user", "content": "hi"}]}
    url = f"{proxy.url}/chat/completions"

    def ask(secret):
        return requests.post(url, json=body, headers={"Authorization": f"Bearer {secret}"}, timeout=30)

    _, cold = api_key_factory(name="not-yet-seen")
    # Let this process's caches see every change the setup made (the poller would, within 0.5 s,
    # and drop what the next request caches), and trust them (a busy machine delays the poller).
    _registry.poll_once()
    assert ask(proxy.secret).status_code == 200  # warms the caches for this key, route and prices
    database = settings.DATABASES["default"]
    real_port = database["PORT"]
    database["PORT"] = str(free_port())  # new connections go nowhere
    try:
        with connection.cursor() as cursor:  # and the server's open ones are cut
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        refused = ask(cold)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "database_unavailable"
        assert refused.headers["retry-after"] == "1"
        _registry.poll_once()
        assert ask(proxy.secret).status_code == 200
    finally:
        database["PORT"] = real_port
    assert ask(cold).status_code == 200
    connection.close()  # the next test on this worker opens its own, whatever the kill reached
