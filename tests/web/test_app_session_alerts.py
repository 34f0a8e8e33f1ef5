"""The web app in headless Chromium (as ``test_app_browser.py``, whose helpers it shares), on a
relay of its own whose access tokens live 10 seconds, so the app refreshes its session while the
tests watch:

* the refresh token never reaches script-readable storage: after sign-up it is an ``HttpOnly;
  SameSite=Strict`` cookie on the refresh path only (the token bound to the device key), and
  nothing in localStorage, sessionStorage, IndexedDB or ``document.cookie`` holds it (nor any
  refresh token); a reload keeps the user
  logged in, and the app refreshes through the cookie (the body carries no token) and the cookie
  rotates; logging out clears it and the relay refuses a refresh after;
* a system notification when a booking changes while the page is hidden: the permission is asked
  only on a click (after load it is still undecided, which it would not be had the app asked,
  since headless Chromium denies every request it is not told to grant); with the syncing tab
  hidden but another tab of the app in view, a promotion shows in the page only; with every tab
  hidden (emulated: headless Chromium shows every page as visible, whatever is in front), the
  next promotion caused from another browser shows one through the service worker, read back
  with ``registration.getNotifications()``;
* staff decline with a reason and the customer's booking says "declined by the shop: <reason>",
  as text (a reason written like markup stays text), in the list, the notice and the hidden
  page's notification.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from demos.app import OPERATOR_EMAIL, OPERATOR_PASSWORD, DemoShop
from relay.http.refresh_cookie import COOKIE_NAME, COOKIE_PATH
from tests.support.relay_process import FixedPortRelay
from tests.web.test_app_browser import DESKTOP, PHONE, App, browser, serve_app

__all__ = ["browser"]  # the shared fixture, used with this module's relay

pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

ACCESS_TTL_S = 10
SHOPS = (
    DemoShop(
        "alerts",
        "Alert Barber",
        "hair",
        "5 Corner",
        (("chair-9", "haircut", "09:00", 30, 1), ("chair-10", "shave", "10:00", 30, 1)),
    ),
    DemoShop("declines", "Decline Diner", "food", "6 Corner", (("table-19", "dinner", "19:00", 60, 4),)),
)
DAY = (_dt.date.today() + _dt.timedelta(days=40)).isoformat()
JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")

#: Every string the page's script can read where it keeps things: localStorage, sessionStorage,
#: document.cookie, and every record (keys and values, walked deeply, bytes read as text) of every
#: IndexedDB database of the origin.
READABLE_STORAGE = """async () => {
  const out = [document.cookie];
  for (const s of [localStorage, sessionStorage]) {
    for (let i = 0; i < s.length; i++) out.push(s.key(i), s.getItem(s.key(i)));
  }
  const walk = (v, seen) => {
    if (v === null || v === undefined) return;
    if (typeof v === "string") return void out.push(v);
    if (typeof v !== "object" || seen.has(v)) return;
    seen.add(v);
    if (ArrayBuffer.isView(v)) return void out.push(new TextDecoder("latin1").decode(v));
    if (v instanceof Map) return v.forEach((x, k) => (walk(k, seen), walk(x, seen)));
    for (const k of Object.keys(v)) (out.push(k), walk(v[k], seen));
  };
  const request = (r) =>
    new Promise((ok, fail) => ((r.onsuccess = () => ok(r.result)), (r.onerror = () => fail(r.error))));
  for (const { name } of await indexedDB.databases()) {
    const db = await request(indexedDB.open(name));
    for (const store of db.objectStoreNames) {
      const tx = db.transaction(store);
      walk(await request(tx.objectStore(store).getAll()), new Set());
      walk(await request(tx.objectStore(store).getAllKeys()), new Set());
    }
    db.close();
  }
  return out;
}"""

HIDE_PAGE = """() => {
  Object.defineProperty(document, "visibilityState", { configurable: true, get: () => "hidden" });
  Object.defineProperty(document, "hidden", { configurable: true, get: () => true });
  document.dispatchEvent(new Event("visibilitychange"));
}"""

NOTIFICATIONS = """async () => {
  const registration = await navigator.serviceWorker.getRegistration();
  return (await registration.getNotifications()).map((n) => ({ title: n.title, body: n.body, tag: n.tag }));
}"""


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FixedPortRelay]:
    yield from serve_app(tmp_path_factory.mktemp("sessionrelay"), SHOPS, "--access-ttl", str(ACCESS_TTL_S))


def notifications(page: Any, timeout_s: float = 15.0) -> list[dict[str, str]]:
    """The page's service worker's notifications once there is one (or [] after the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        shown: list[dict[str, str]] = page.evaluate(NOTIFICATIONS)
        if shown or time.monotonic() > deadline:
            return shown
        page.wait_for_timeout(100)


def token_type(token: str) -> str:
    """A JWT's ``typ`` header (``at+jwt``, ``rt+jwt``)."""
    head = token.split(".", 1)[0]
    return str(json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))).get("typ", ""))


def refresh_cookie(app: App, relay: FixedPortRelay) -> dict[str, Any] | None:
    cookies = [c for c in app.context.cookies(relay.base_url + COOKIE_PATH) if c["name"] == COOKIE_NAME]
    assert len(cookies) <= 1, cookies
    return cookies[0] if cookies else None


def assert_no_refresh_token_readable(app: App, token: str) -> None:
    strings = [str(s) for s in app.page.evaluate(READABLE_STORAGE)]
    assert not [s for s in strings if token in s], "the refresh token is readable by page script"
    kinds = {token_type(t) for s in strings for t in JWT.findall(s)}
    assert kinds == {"at+jwt"}, (
        kinds
    )  # the access token is there (the walk reads IndexedDB); no refresh token


def test_the_refresh_token_is_an_httponly_cookie_and_a_reload_stays_logged_in(
    browser: Any, relay: FixedPortRelay
) -> None:
    app = App(browser, relay)
    try:
        app.sign_up()
        cookie = refresh_cookie(app, relay)
        assert cookie is not None
        assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", COOKIE_PATH)
        assert cookie["secure"] is False  # plain http on loopback; Secure everywhere else
        assert token_type(cookie["value"]) == "rt+jwt"
        payload = cookie["value"].split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        assert claims["cnf"]["jwk"]["crv"] == "Ed25519"  # bound to the device key, like the access token
        assert_no_refresh_token_readable(app, cookie["value"])

        # a reload keeps the user logged in; the short-lived access token then expires and the app
        # refreshes through the cookie alone
        def refreshed(response: Any) -> bool:
            return bool(response.url.endswith(COOKIE_PATH) and response.status == 200)

        with app.page.expect_response(refreshed, timeout=(ACCESS_TTL_S + 20) * 1000) as answer:
            app.page.reload()
            app.page.wait_for_selector("body[data-ready]")
            app.page.get_by_role("button", name="Log out").wait_for()
        request = answer.value.request
        assert request.headers.get("quickslot-refresh") == "cookie"
        assert "refresh_token" not in (request.post_data_json or {})
        assert answer.value.json()["refresh_token"] is None
        rotated = refresh_cookie(app, relay)
        assert rotated is not None and rotated["value"] != cookie["value"] and rotated["httpOnly"]
        app.page.get_by_role("heading", name="Find a shop").wait_for()
        assert_no_refresh_token_readable(app, rotated["value"])

        app.page.get_by_role("button", name="Log out").click()
        app.page.get_by_role("heading", name="Log in").wait_for()
        assert refresh_cookie(app, relay) is None  # cleared by the relay
        status = app.page.evaluate(
            """() => fetch("/api/v1/auth/refresh", {method: "POST", body: "{}", headers:
                 {"content-type": "application/json", "QuickSlot-Refresh": "cookie"}}).then(r => r.status)"""
        )
        assert status == 401
        assert app.errors == [] and app.dialogs == []
    finally:
        app.close()


def test_a_promotion_while_the_app_is_hidden_shows_a_system_notification(
    browser: Any, relay: FixedPortRelay
) -> None:
    ann, bob = App(browser, relay), App(browser, relay)
    try:
        for app in (ann, bob):
            app.sign_up()
            app.open_day("alerts")
            app.book("09:00 haircut")
            app.book("10:00 shave")
        ann.go("#/bookings")
        ann.page.locator("li.booking .state", has_text="confirmed, final").nth(1).wait_for()
        bob.go("#/bookings")
        bob.page.locator("li.booking .state", has_text="waitlisted, place 1").nth(1).wait_for()

        # never asked on load: headless Chromium denies any request it was not told to grant
        assert bob.page.evaluate("Notification.permission") == "default"
        ask = bob.page.locator("[data-test=notify-ask]")
        ask.wait_for()
        bob.context.grant_permissions(["notifications"], origin=relay.base_url)
        ask.click()  # the person asks for it
        bob.page.locator("[data-test=notify-on]").wait_for()
        bob.page.wait_for_function("() => navigator.serviceWorker.controller !== null")
        second = bob.open_page()  # a second tab of bob's, following the first (which syncs)
        bob.go("#/bookings", second)

        # the syncing tab hidden, the other in view: the change shows there, no notification
        bob.page.evaluate(HIDE_PAGE)
        ann.page.locator("li.booking", has_text="09:00").get_by_role("button", name="Cancel").click()
        second.locator("#notice", has_text="moved up from the waitlist").wait_for()
        bob.page.locator("#notice", has_text="moved up from the waitlist").wait_for()
        assert notifications(bob.page, timeout_s=1.0) == []

        # every tab hidden: the next change is a system notification
        second.evaluate(HIDE_PAGE)
        ann.page.locator("li.booking", has_text="10:00").get_by_role("button", name="Cancel").click()
        shown = notifications(bob.page)
        assert len(shown) == 1, shown
        assert shown[0]["title"] == "QuickSlot" and shown[0]["tag"].startswith("promoted:")
        assert "moved up from the waitlist: it is confirmed" in shown[0]["body"]
        assert "Alert Barber" in shown[0]["body"] and "10:00 shave" in shown[0]["body"]
        assert ann.errors == [] and bob.errors == []
    finally:
        ann.close()
        bob.close()


def test_staff_decline_with_a_reason_and_the_customer_sees_it_as_text(
    browser: Any, relay: FixedPortRelay
) -> None:
    carl, staff = App(browser, relay), App(browser, relay)
    reason = "<b>Closed</b> that evening: a burst pipe"
    try:
        carl.context.grant_permissions(["notifications"], origin=relay.base_url)
        carl.sign_up()
        carl.page.wait_for_function("() => navigator.serviceWorker.controller !== null")
        carl.open_day("declines", DAY)
        carl.book("19:00 dinner", party=2)
        carl.wait_state("confirmed, final")

        staff.log_in(OPERATOR_EMAIL, OPERATOR_PASSWORD)
        staff.go(f"#/staff/declines/{DAY}")
        row = staff.page.get_by_role("list", name="The day's bookings").locator("li.booking").first
        row.wait_for()
        row.get_by_role("button", name="Decline").click()
        staff.page.get_by_label("Reason for the customer (optional)").fill(reason)
        assert staff.unlabelled() == []
        staff.shot("staff-decline-desktop", DESKTOP)
        carl.page.evaluate(HIDE_PAGE)  # carl looks elsewhere meanwhile
        row.get_by_role("button", name="Decline booking").click()
        row.locator(".state", has_text=f"declined by the shop: {reason}").wait_for()

        carl.page.locator("li.booking .state", has_text=f"declined by the shop: {reason}").wait_for()
        carl.page.locator("#notice", has_text=f"was declined by the shop: {reason}.").wait_for()
        assert carl.page.locator("main b, #notice b").count() == 0  # text, never markup
        carl.shot("declined-phone", PHONE)
        shown = notifications(carl.page)
        assert [n["tag"].split(":")[0] for n in shown] == ["declined"], shown
        assert shown[0]["body"].endswith(f"was declined by the shop: {reason}.")
        assert carl.errors == [] and staff.errors == []
    finally:
        carl.close()
        staff.close()
