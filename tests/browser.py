"""Real headless Chromium for the browser tests: one launch per test, pages signed in as a persona.

Use the `browser_page` fixture (a page on the live server, desktop size) or `browser_open(persona,
viewport=PHONE)` for a signed-in page at another size. Both need a transactional database, because the
server's threads must see the rows a test creates.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def sign_in(page, persona, next_path: str = "/") -> None:
    """Sign in through the login form, as a person would, and wait for `next_path`."""
    page.goto(f"/accounts/login/?next={next_path}")
    page.fill("#id_username", persona.user.username)
    page.fill("#id_password", persona.password)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(re.escape(next_path) + r"$"))


def screenshot(page, name: str, *, full_page: bool = True) -> None:
    """Save the page as docs/screenshots/`name` when STEWARD_SCREENSHOTS=1 (the README's pictures come
    from `make screenshots`; these are the pages' states a test sets up, kept for review)."""
    if os.environ.get("STEWARD_SCREENSHOTS") != "1":
        return
    folder = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / name), full_page=full_page)
