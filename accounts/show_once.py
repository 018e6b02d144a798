"""A secret shown to its creator exactly once, on the page a POST redirects to (POST-redirect-GET).

The POST that makes a secret (an API key, an invitation link) keeps it in the creator's session and
redirects; the GET that follows takes it out of the session and shows it. A reload of that page, or
the browser's back button, finds nothing and says so: the secret never sits in a POST response that a
reload would resubmit (creating another key), nor in any cached page (the views send no-store).

Sessions are stored in the database, so the secret is encrypted with core.crypto while it waits
there; it is removed by the first display, or with the session.
"""

from __future__ import annotations

from core.crypto import secret_decrypt, secret_encrypt

_SESSION_PREFIX = "steward_show_once"


def _session_key(kind: str, object_id: int) -> str:
    return f"{_SESSION_PREFIX}:{kind}:{object_id}"


def show_once_keep(request, *, kind: str, object_id: int, secret: str) -> None:
    """Keep `secret` for one display to this session (`kind` names what it is: "api_key", "invitation")."""
    request.session[_session_key(kind, object_id)] = secret_encrypt(secret)


def show_once_take(request, *, kind: str, object_id: int) -> str | None:
    """The kept secret, removed from the session; None when it was shown already (or never kept here)."""
    sealed = request.session.pop(_session_key(kind, object_id), None)
    if sealed is None:
        return None
    return secret_decrypt(sealed)
