"""The page shell in real headless Chromium: the phone menu, pages that fit a phone, focus kept through
htmx swaps (the model pages' refresh, the prompt editor), checkboxes beside their words, badge colours.

Set STEWARD_SCREENSHOTS=1 to also save docs/screenshots/phone-navigation.png.
"""

from __future__ import annotations

import contextlib
import re
import time

import pytest
from django.utils import timezone

from accounts.roles import Role
from proxy.models import Deployment, RequestLog
from tests.browser import DESKTOP, PHONE, screenshot
from tests.factories import DeploymentFactory, OrganisationFactory, PersonaFactory, PromptVersionFactory, RouteFactory
from tests.helpers import ACTOR

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ALL_ROLES = [r.value for r in Role]
NOWHERE = "http://127.0.0.1:9/v1"  # never called by these tests


@pytest.fixture
def everything(db):
    """An organisation with something on every page (prompts, models, evaluations, policies, keys,
    request log rows with long names), and an admin holding every role who is also a member of a
    second organisation, so the organisation switcher shows."""
    from accounts.services import membership_set
    from tests.api.seed import contract_seed

    contract_seed()
    from accounts.models import Organisation

    organisation = Organisation.objects.get(slug="contract")
    person = PersonaFactory(username="olivia.okonkwo@example.com", organisation=organisation, roles=ALL_ROLES)
    other = OrganisationFactory(name="Globex Corporation International", slug="globex-intl")
    membership_set(organisation=other, user=person.user, roles=[Role.VIEWER.value], actor=ACTOR)
    route = RouteFactory(organisation=organisation, name="a-rather-long-model-route-name-for-phones")
    DeploymentFactory(route=route, name="eu-west-primary-deployment", model="dev-small", api_base=NOWHERE)
    for n in range(3):
        RequestLog.objects.create(
            organisation=organisation,
            request_id=f"req_0123456789abcdef0123456789abcdef{n}",
            endpoint="chat.completions",
            model=route.name,
            status="error" if n else "ok",
            http_status=503 if n else 200,
            error_type="upstream_unavailable" if n else "",
            started_at=timezone.now(),
            deployment_name="eu-west-primary-deployment",
            prompt_tokens=11,
            completion_tokens=7,
            latency_ms=12.5,
            overhead_ms=0.8,
        )
    return person


def _nav_paths(page) -> list[str]:
    return page.eval_on_selector_all("nav[aria-label=Main] a", "links => links.map(a => a.pathname)")


def _assert_inside_viewport(page, locator, what: str) -> None:
    assert locator.is_visible(), f"{what} is not visible"
    box = locator.bounding_box()
    width, height = page.viewport_size["width"], page.viewport_size["height"]
    assert box and box["x"] >= 0 and box["y"] >= 0, f"{what} is off the top or left: {box}"
    assert box["x"] + box["width"] <= width and box["y"] + box["height"] <= height, f"{what} is outside: {box}"


def test_every_page_fits_a_phone_and_the_menu_reaches_every_item(everything, browser_open):
    page = browser_open(everything, viewport=PHONE, next_path="/")
    paths = _nav_paths(page)
    assert len(paths) == 10  # every section, as this persona holds every role
    for path in ["/", *paths]:
        page.goto(path)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{path} is {width} px wide on a {PHONE['width']} px phone"

    page.goto("/prompts/")
    toggle = page.locator("#nav-toggle")
    menu = page.locator("#site-menu")
    assert toggle.get_attribute("aria-controls") == "site-menu"
    assert toggle.get_attribute("aria-expanded") == "false"
    assert not menu.is_visible()
    _assert_inside_viewport(page, toggle, "the menu button")

    toggle.focus()
    page.keyboard.press("Enter")
    assert toggle.get_attribute("aria-expanded") == "true"
    links = page.locator("nav[aria-label=Main] a")
    for i in range(links.count()):
        _assert_inside_viewport(page, links.nth(i), f"menu item {links.nth(i).inner_text()!r}")
    _assert_inside_viewport(page, page.locator("#org-switch"), "the organisation switcher")
    _assert_inside_viewport(page, page.get_by_role("button", name="Log out"), "Log out")
    assert page.locator("nav[aria-label=Main] a[aria-current=page]").inner_text() == "Prompts"
    screenshot(page, "phone-navigation.png", full_page=False)

    # The keyboard walks from the button into the menu; Escape closes it and returns to the button.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Prompts"
    page.keyboard.press("Escape")
    assert toggle.get_attribute("aria-expanded") == "false"
    assert not menu.is_visible()
    assert page.evaluate("document.activeElement.id") == "nav-toggle"

    # The items work: the switcher changes organisation, a link goes to its page, Log out logs out.
    toggle.click()
    page.select_option("#org-switch", label="Globex Corporation International")
    page.wait_for_load_state("load")
    page.locator("#nav-toggle").click()
    assert page.locator("#org-switch option:checked").inner_text() == "Globex Corporation International"
    page.get_by_role("link", name="Models").click()
    page.wait_for_url(re.compile(r"/proxy/"))
    page.locator("#nav-toggle").click()
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(re.compile(r"/accounts/login/"))


def test_desktop_keeps_one_bar_with_no_menu_button(owner, other_organisation, everything, browser_open):
    from accounts.services import membership_set

    membership_set(organisation=other_organisation, user=owner.user, roles=[Role.VIEWER.value], actor=ACTOR)
    # Long names wrap the bar rather than widen the page.
    page = browser_open(everything, viewport=DESKTOP, next_path="/prompts/")
    assert page.evaluate("document.documentElement.scrollWidth") <= DESKTOP["width"]

    page = browser_open(owner, viewport=DESKTOP, next_path="/prompts/")
    assert not page.locator("#nav-toggle").is_visible()
    links = page.locator("nav[aria-label=Main] a")
    tops = {round(links.nth(i).bounding_box()["y"]) for i in range(links.count())}
    assert len(tops) == 1, "the navigation wrapped onto a second line at 1280 px"
    for what in ("#org-switch", "button:has-text('Log out')"):
        box = page.locator(what).bounding_box()
        assert box["x"] + box["width"] <= DESKTOP["width"]
        assert abs(box["y"] + box["height"] / 2 - (min(tops) + 10)) < 20, f"{what} is not on the bar's line"
    assert page.evaluate("document.documentElement.scrollWidth") <= DESKTOP["width"]
    assert page.locator("header.topbar").bounding_box()["height"] < 60
    # The API documentation is linked from every page.
    page.get_by_role("link", name="API docs").click()
    page.wait_for_url(re.compile(r"/api/docs/$"))


# --- focus through swaps ---------------------------------------------------------------------


def _count_swaps(page) -> None:
    page.evaluate("window.stewardSwaps = 0; document.addEventListener('htmx:afterSettle', () => window.stewardSwaps++)")


def test_the_model_pages_refresh_keeps_focus(admin, organisation, browser_open):
    route = RouteFactory(organisation=organisation, name="refreshing")
    deployment = DeploymentFactory(route=route, name="primary", model="dev-small", api_base=NOWHERE, weight=1)
    page = browser_open(admin, next_path=f"/proxy/models/{route.id}/")
    _count_swaps(page)

    # A control inside the refreshing table: the refresh brings a changed table and focus stays.
    page.focus(f"#deployment-edit-{deployment.id}")
    Deployment.objects.filter(pk=deployment.pk).update(weight=7)
    started = time.monotonic()
    page.wait_for_function("window.stewardSwaps >= 1", timeout=12_000)
    assert page.locator("#deployment-table td", has_text=re.compile(r"^7$")).count() == 1, "the table did not refresh"
    assert page.evaluate("document.activeElement.id") == f"deployment-edit-{deployment.id}"
    # Keyboard use goes on from there: the next Tab is the table's Delete button, not the page's top.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == f"deployment-delete-{deployment.id}"

    # A control next to the region keeps focus through refreshes too (> 5 s).
    page.focus("text=Add deployment")
    swaps = page.evaluate("window.stewardSwaps")
    Deployment.objects.filter(pk=deployment.pk).update(weight=8)
    page.wait_for_function(f"window.stewardSwaps > {swaps}", timeout=12_000)
    assert time.monotonic() - started > 5
    assert page.evaluate("document.activeElement.textContent") == "Add deployment"

    # The list of models refreshes the same way.
    page.goto("/proxy/models/")
    _count_swaps(page)
    page.focus(f"#route-link-{route.id}")
    Deployment.objects.filter(pk=deployment.pk).update(weight=9)
    page.wait_for_function("window.stewardSwaps >= 1", timeout=12_000)
    assert page.locator("#route-table", has_text="weight 9").count() == 1
    assert page.evaluate("document.activeElement.id") == f"route-link-{route.id}"


def _focus_becomes(page, element_id: str) -> None:
    """Focus moves once htmx has settled the new content (a few ms after the swap): wait for it."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    with contextlib.suppress(PlaywrightTimeout):  # the assertion below says where focus went instead
        page.wait_for_function(f"document.activeElement.id === {element_id!r}", timeout=3000)
    assert page.evaluate("document.activeElement.id || document.activeElement.tagName") == element_id


def test_the_editor_keeps_focus_through_its_actions(prompt_engineer, organisation, browser_open):
    version = PromptVersionFactory(prompt__organisation=organisation, prompt__name="focus-kept")
    page = browser_open(prompt_engineer, next_path=f"/prompts/{version.prompt.name}/edit/")
    active = "document.activeElement.id"

    # Add message, pressed from the keyboard: the new message's template has focus.
    page.focus("#content-1")
    for _ in range(20):
        if page.evaluate(active) == "add-message":
            break
        page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    page.wait_for_selector("#content-2")
    _focus_becomes(page, "content-2")
    page.keyboard.type("Third {{ order_id }}")

    # Move the third message up: it is now second and its "up" button still has focus.
    page.focus("#msg-up-2")
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelector('#content-1').value.startsWith('Third')")
    _focus_becomes(page, "msg-up-1")
    # Up again reaches the top, where "up" is disabled: focus is on its "down" button.
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelector('#content-0').value.startsWith('Third')")
    _focus_becomes(page, "msg-down-0")

    # Remove the first message: focus goes to the neighbour that took its place, inside the editor.
    page.focus("#msg-remove-0")
    page.keyboard.press("Enter")
    page.wait_for_function("!document.querySelector('#content-2')")
    _focus_becomes(page, "msg-remove-0")
    assert page.evaluate("document.querySelector('#editor').contains(document.activeElement)")

    # Remove the last message: its neighbour before it.
    page.focus("#msg-remove-1")
    page.keyboard.press("Enter")
    page.wait_for_function("!document.querySelector('#content-1')")
    _focus_becomes(page, "msg-remove-0")

    # Add rows for detected variables: the first new row's name has focus.
    page.fill("#content-0", "Hi {{ customer_name }}, about {{ order_id }}")
    rows = page.locator("tr.variable").count()
    page.focus("#detect-variables")
    page.keyboard.press("Enter")
    page.wait_for_function(f"document.querySelectorAll('tr.variable').length > {rows}")
    _focus_becomes(page, f"var-name-{rows}")
    assert page.input_value(f"#var-name-{rows}") == "order_id"

    # Typing somewhere and having the form re-rendered (a failed save) keeps the caret where it was.
    page.fill("#id_temperature", "warm")
    page.focus("#id_commit_message")
    page.keyboard.type("abc")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("Enter")
    page.wait_for_selector("#editor-error")
    _focus_becomes(page, "id_commit_message")
    assert page.evaluate("document.activeElement.selectionStart") == 2


# --- forms and badges ------------------------------------------------------------------------


# Where the first words after a label's checkbox are drawn (the middle of their line), or null.
WORDS_AFTER_THE_BOX = """label => {
  const mark = label.querySelector('input').getBoundingClientRect();
  const range = document.createRange();
  range.selectNodeContents(label);
  const boxes = [...range.getClientRects()].filter(b => b.width > 2 && b.left >= mark.right - 1);
  return boxes.length ? {x: boxes[0].left, y: boxes[0].top + boxes[0].height / 2} : null;
}"""


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_checkboxes_sit_beside_their_words(admin, viewer, browser_open, viewport):
    from accounts.models import Membership

    page = browser_open(admin, viewport=viewport, next_path="/accounts/api-keys/new/")
    membership = Membership.objects.get(user=viewer.user)
    checked = 0
    for path in ("/accounts/api-keys/new/", f"/accounts/members/{membership.pk}/"):
        page.goto(path)
        boxes = page.locator("main form input[type=checkbox]")
        assert boxes.count() > 0, path
        for i in range(boxes.count()):
            box = boxes.nth(i)
            label = box.locator("xpath=ancestor::label[1]")
            words = label.evaluate(WORDS_AFTER_THE_BOX)
            mark = box.bounding_box()
            assert words, f"{path}: checkbox {i} has no words in its label"
            assert mark["width"] < 30, f"{path}: checkbox {i} is {mark['width']} px wide"
            gap = words["x"] - (mark["x"] + mark["width"])
            assert 0 <= gap < 16, f"{path}: checkbox {i} is {gap} px from its words"
            middle = mark["y"] + mark["height"] / 2
            assert abs(words["y"] - middle) < 8, f"{path}: checkbox {i} is not on its words' line"
            checked += 1
    assert checked >= 3


def _luminance(rgb: tuple[int, int, int]) -> float:
    channels = [c / 255 for c in rgb]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _rgb(css: str) -> tuple[int, int, int]:
    return tuple(int(n) for n in re.findall(r"\d+", css)[:3])


def test_health_badges_have_distinct_colours_with_contrast(admin, organisation, browser_open, dev_upstream):
    from core.redis import redis_client
    from proxy.health import deployments_check_all

    route = RouteFactory(organisation=organisation, name="badges")
    healthy = DeploymentFactory(route=route, name="checked", api_base=dev_upstream.url)
    deployments_check_all()
    never = DeploymentFactory(route=route, name="never-checked", api_base=dev_upstream.url)
    down = DeploymentFactory(route=route, name="tripped", api_base=NOWHERE)
    probing = DeploymentFactory(route=route, name="cooling", api_base=NOWHERE)
    now_ms = int(time.time() * 1000)
    # The circuit hashes the proxy keeps (proxy.health's docstring): one open, one past its cooldown.
    redis_client().hset(f"stw:h:{down.id}", mapping={"state": "open", "fails": 5, "until": now_ms + 600_000})
    redis_client().hset(f"stw:h:{probing.id}", mapping={"state": "open", "fails": 5, "until": now_ms - 1000})
    page = browser_open(admin, next_path=f"/proxy/models/{route.id}/")
    styles = {}
    for deployment, word in ((healthy, "healthy"), (never, "unknown"), (down, "down"), (probing, "probing")):
        badge = page.locator(f"tr[data-deployment='{deployment.name}'] .badge")
        assert badge.inner_text() == word
        styles[word] = badge.evaluate("b => { const s = getComputedStyle(b); return [s.color, s.backgroundColor] }")
    backgrounds = {word: _rgb(bg) for word, (_, bg) in styles.items()}
    assert len(set(backgrounds.values())) == 4, backgrounds
    for word, (fg, bg) in styles.items():
        light, dark = sorted((_luminance(_rgb(fg)), _luminance(_rgb(bg))), reverse=True)
        assert (light + 0.05) / (dark + 0.05) >= 4.5, f"{word}: contrast too low"
    red, green = backgrounds["down"], backgrounds["healthy"]
    assert red[0] > red[1] and green[1] > green[0], backgrounds


def test_a_copy_button_copies_its_targets_text_and_says_so(admin, browser_open):
    page = browser_open(admin, next_path="/prompts/")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    # The contract's markup (CONTRACTS.md), as a page would render it.
    page.evaluate(
        """() => document.querySelector('main').insertAdjacentHTML('beforeend',
        '<code id="secret-to-copy">stw_live_abc123</code>'
        + '<button type="button" class="copy" data-copy-target="#secret-to-copy">Copy</button>')"""
    )
    button = page.locator("button.copy")
    button.click()
    page.wait_for_function("document.querySelector('button.copy').textContent === 'Copied'")
    assert page.evaluate("navigator.clipboard.readText()") == "stw_live_abc123"
    assert page.locator("#steward-status[role=status]").text_content() == "Copied"
    page.wait_for_function("document.querySelector('button.copy').textContent === 'Copy'", timeout=5000)
