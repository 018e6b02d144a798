"""The README's screenshots, from a throwaway Steward with the demo data and a few hundred requests.

    python -m devtools.screenshots [--out docs/screenshots] [--requests 300] [--keep]

Starts `manage.py run_stack --prepare` on a temporary var/ (SQLite, embedded Redis, the development
upstream, a worker and beat: nothing of the caller's database or Redis is touched), sends requests
through the proxy with the demo API key so the request log and the costs have rows, signs in as the
demo admin through the login form, and saves PNGs with headless Chromium (STEWARD_TEST_CHROMIUM, else
Debian's, else Playwright's; `make test` installs one):

  dashboard.png         /            desktop 1280x900
  phone-navigation.png  /            390x844, the top bar's menu opened (its button with aria-controls)
  request-log.png       /requests/   desktop (the proxy's /proxy/requests/ when there is no /requests/)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from devtools.testenv import ROOT, chromium_executable, free_port

# Settings that would point the throwaway stack at the caller's own servers.
EXTERNAL = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "STEWARD_PUBLIC_URL", "STEWARD_TEST_DATABASE_NAME")
# The worker drains the request log every second, but beat rolls usage up every 30 s: one period
# more, so the pages' figures include the traffic just sent.
ROLLUP_WAIT_SECONDS = 35
QUESTIONS = [
    "Where is my parcel?",
    "How do I reset my password?",
    "Can I change the delivery address after ordering?",
    "Summarise our refund policy in two sentences.",
    "Write a friendly reply to a customer whose order arrived damaged, offering a replacement.",
    "Translate 'thank you for your patience' into French, German and Spanish.",
]


class ScreenshotError(Exception):
    pass


@contextlib.contextmanager
def stack_running(var: Path) -> Iterator[str]:
    """`run_stack --prepare` on `var`; yields its base URL once /readyz says ready."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in EXTERNAL}
    env.update(
        STEWARD_VAR_DIR=str(var),
        PORT=str(port),
        STEWARD_DEV_UPSTREAM_PORT=str(free_port()),
        STEWARD_ENV="dev",
        DJANGO_SETTINGS_MODULE="config.settings",
        PYTHONUNBUFFERED="1",
    )
    var.mkdir(parents=True, exist_ok=True)
    log = var / "run_stack.out"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "run_stack", "--prepare"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if process.poll() is not None:
                raise ScreenshotError(f"run_stack exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError, ValueError):
                if httpx.get(f"{base}/readyz", timeout=2).json().get("status") == "ready":
                    break
            if time.monotonic() > deadline:
                raise ScreenshotError(f"Steward was not ready in 240 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def traffic_send(*, base: str, api_key: str, count: int) -> int:
    """`count` requests through the proxy, as a team's services would send them (chat on two models,
    some streamed, some through the demo prompt); returns how many were answered with 200."""
    rng = random.Random(17)

    def body(i: int) -> dict:
        question = rng.choice(QUESTIONS) + " " + "Please be thorough. " * rng.randint(0, 20)
        if i % 5 == 0:
            variables = {"customer_name": rng.choice(["Ada", "Grace", "Alan", "Edsger"]), "question": question}
            return {"prompt": {"name": "support-reply", "label": "production", "variables": variables}}
        model = "dev-large" if i % 3 == 0 else "dev-small"
        return {"model": model, "stream": i % 7 == 0, "messages": [{"role": "user", "content": question}]}

    bodies = [body(i) for i in range(count)]
    headers = {"Authorization": f"Bearer {api_key}"}

    def send(payload: dict) -> int:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.post(f"{base}/v1/chat/completions", json=payload, headers=headers, timeout=30).status_code
        return 0

    with ThreadPoolExecutor(max_workers=4) as pool:
        return sum(1 for status in pool.map(send, bodies) if status == 200)


def pages_shoot(*, base: str, password: str, out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    from tests.browser import CHROMIUM_ARGS, DESKTOP, PHONE

    executable = chromium_executable()
    if executable is None:
        raise ScreenshotError("no Chromium: set STEWARD_TEST_CHROMIUM, or run `make test` once to install one")
    out.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            desktop = browser.new_context(base_url=base, viewport=DESKTOP)
            desktop.set_default_timeout(20_000)
            page = desktop.new_page()
            _sign_in(page, password)
            page.goto("/")
            _settle(page)
            saved.append(_shoot(page, out / "dashboard.png"))
            response = page.goto("/requests/")
            if response is None or response.status == 404:
                page.goto("/proxy/requests/")
            _settle(page)
            saved.append(_shoot(page, out / "request-log.png"))
            # The phone's session: signed in again, as a person on a phone would be.
            phone = browser.new_context(base_url=base, viewport=PHONE, is_mobile=True, has_touch=True)
            phone.set_default_timeout(20_000)
            page = phone.new_page()
            _sign_in(page, password)
            page.goto("/")
            _settle(page)
            toggle = page.locator("header [aria-controls]:visible, .topbar [aria-controls]:visible").first
            if toggle.count():
                toggle.click()
                page.wait_for_timeout(400)  # a transition, if the menu has one
            else:
                print("no menu button with aria-controls in the top bar: the phone shot shows the page as is")
            saved.append(_shoot(page, out / "phone-navigation.png"))
        finally:
            browser.close()
    return saved


def _sign_in(page, password: str) -> None:
    page.goto("/accounts/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")
    if "/accounts/login/" in page.url:
        raise ScreenshotError("signing in as the demo admin failed")


def _settle(page) -> None:
    page.wait_for_load_state("networkidle")
    # Screenshots should not catch a blinking caret or a focus ring of whatever was clicked last.
    page.evaluate("document.activeElement && document.activeElement.blur && document.activeElement.blur()")


def _shoot(page, path: Path) -> Path:
    page.screenshot(path=str(path))
    print(f"saved {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.screenshots", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--requests", type=int, default=300, help="requests sent through the proxy first")
    parser.add_argument("--keep", action="store_true", help="keep the throwaway var/ directory (its path is printed)")
    args = parser.parse_args(argv)
    var_root = Path(tempfile.mkdtemp(prefix="steward-screenshots-"))
    try:
        with stack_running(var_root / "var") as base:
            credentials = json.loads((var_root / "var" / "demo_credentials.json").read_text())
            print(f"Steward is up at {base}; sending {args.requests} requests through the proxy")
            answered = traffic_send(base=base, api_key=credentials["api_key"], count=args.requests)
            print(f"{answered} answered; waiting {ROLLUP_WAIT_SECONDS} s for the usage roll-ups")
            time.sleep(ROLLUP_WAIT_SECONDS)
            pages_shoot(base=base, password=credentials["admin_password"], out=args.out)
    except ScreenshotError as exc:
        print(f"screenshots: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {var_root}")
        else:
            shutil.rmtree(var_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
