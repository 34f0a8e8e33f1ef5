"""The web app (web/app) in headless Debian Chromium through Playwright, against a real relay
process that serves it at /app/, with shops made by a ``quickslot`` CLI profile:

* a new user signs up (the device key in IndexedDB is a non-extractable WebCrypto key), finds a
  shop by search, books, and sees "confirmed, final" (screenshots of the main screens at phone and
  desktop width);
* a booking made in one browser shows in a new browser profile of the same user after it logs in
  (the day is listed in the user's document), and counts as one unsynced change, not two;
* wrong password, party 0 and a party above the slot get a clear message on screen;
* a shop named ``<img src=x onerror=alert(1)>``: the name shows as text and no script runs;
* two browser profiles go offline, both book the last seat, come back: one is confirmed, the
  other waitlisted with its place, and a CLI profile counts the same seat taken;
* a booking made offline survives a reload with the network off (the page comes from the service
  worker, with the booking and the unsynced count) and is stored once after reconnecting;
* a cancellation in one browser promotes the waitlisted booking in another, live, with a notice;
* staff confirm and decline from the day view, and the customer's screen follows;
* a booking the relay refuses (its slot shrank while the customer was offline) is listed with the
  reason in words, and a notice says so;
* a slot the shop stops offering while a booking of it waits: the booking says so, and cancels;
* the relay is killed (SIGKILL) as twenty bookings start to flush: after it restarts, each is
  stored exactly once;
* the relay goes down with bookings waiting and comes back: they are sent and confirmed;
* two tabs of one profile: one syncs, the other books through it, both show the same; closing the
  syncing tab hands syncing to the other.

One browser for the module, a fresh context (a browser profile) per user. Skipped, with the
reason, when Chromium, the playwright package or node/npm (to build the app) is missing.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from demos.app import (
    DEMO_SHOPS,
    OPERATOR_EMAIL,
    OPERATOR_PASSWORD,
    DemoShop,
    Profile,
    build_app,
    make_operator,
    seed_catalog,
)
from tests.support.relay_process import PASSWORD, FixedPortRelay, unique_email

playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--no-first-run",
]  # fmt: skip
REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "docs" / "images"
DAY = (_dt.date.today() + _dt.timedelta(days=30)).isoformat()
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
XSS_NAME = "<img src=x onerror=alert(1)>"
TEST_SHOPS = (
    DemoShop("lastseat", "Last Seat Barber", "hair", "1 Corner", (("seat-10", "haircut", "10:00", 30, 1),)),
    DemoShop("shrink", "Shrinking Salon", "hair", "2 Corner", (("cut-11", "haircut", "11:00", 30, 2),)),
    DemoShop("flush", "Flush Hall", "food", "4 Corner", (("hall-20", "hall", "20:00", 120, 100),)),
    DemoShop("gone", "Going Away Spa", "health", "3 Corner", (("spa-12", "massage", "12:00", 60, 2),)),
    DemoShop(
        "xss", XSS_NAME, "food", "<script>alert(2)</script>", (("t-18", "<b>table</b>", "18:00", 60, 4),)
    ),
)


def serve_app(root: Path, shops: tuple[DemoShop, ...], *extra: str) -> Iterator[FixedPortRelay]:
    """Body of a module's relay fixture: the app built, an operator owning ``shops`` (logged in
    with a CLI profile in ``root/operator``), the relay started (with ``extra`` flags) and the
    shops written; skips without Chromium or npm."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (tools/ensure-servers installs it)")
    if shutil.which("npm") is None:
        pytest.skip("node/npm are not installed: the app cannot be built")
    build_app()
    make_operator(root / "data", [s.id for s in shops])
    process = FixedPortRelay(root / "data", *extra)
    process.start()
    try:
        operator = Profile(root / "operator")
        operator.login(process.base_url)
        seed_catalog(operator, shops)
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FixedPortRelay]:
    yield from serve_app(tmp_path_factory.mktemp("apprelay"), (*DEMO_SHOPS, *TEST_SHOPS))


@pytest.fixture(scope="module")
def operator(relay: FixedPortRelay) -> Profile:
    """The shops' owner's CLI profile, logged in by the relay fixture."""
    return Profile(relay.data_dir.parent / "operator")


@pytest.fixture(scope="module")
def browser(relay: FixedPortRelay) -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


#: The device key the SDK keeps in the app's IndexedDB profile, as the page can see it.
DEVICE_KEY = """async () => {
  const db = await new Promise((ok, fail) => {
    const r = indexedDB.open("quickslot-app");
    r.onsuccess = () => ok(r.result);
    r.onerror = () => fail(r.error);
  });
  const profile = await new Promise((ok, fail) => {
    const r = db.transaction("profile").objectStore("profile").get("device");
    r.onsuccess = () => ok(r.result);
    r.onerror = () => fail(r.error);
  });
  db.close();
  const key = profile.seed;
  if (!(key instanceof CryptoKey)) return { type: key?.constructor?.name ?? typeof key };
  const { extractable, algorithm, usages } = key;
  return { type: "CryptoKey", extractable, algorithm: algorithm.name, usages };
}"""


class App:
    """One browser profile (context) with one page on the app; records dialogs and page errors."""

    def __init__(self, browser: Any, relay: FixedPortRelay, viewport: dict[str, int] = DESKTOP) -> None:
        self.context = browser.new_context(viewport=viewport)
        self.context.set_default_timeout(20000)
        self.base = f"{relay.base_url}/app/"
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.page = self.open_page()
        self.email = unique_email("web")

    def open_page(self) -> Any:
        page = self.context.new_page()
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.goto(self.base)
        page.wait_for_selector("body[data-ready]")
        return page

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(str(dialog.message))
        dialog.dismiss()

    def go(self, route: str, page: Any = None) -> None:
        page = page or self.page
        page.evaluate("r => { location.hash = r }", route)

    def log_in(self, email: str, password: str) -> None:
        self.go("#/login")
        self.page.get_by_label("Email").fill(email)
        self.page.get_by_label("Password").fill(password)
        self.page.get_by_role("button", name="Log in").click()
        self.page.get_by_role("heading", name="Find a shop").wait_for()

    def sign_up(self) -> None:
        self.go("#/signup")
        self.page.get_by_label("Email").fill(self.email)
        self.page.get_by_label("Password (at least 10 characters)").fill(PASSWORD)
        self.page.get_by_role("button", name="Sign up").click()
        self.page.get_by_role("heading", name="Find a shop").wait_for()

    def open_day(self, shop: str, day: str = DAY, page: Any = None) -> None:
        page = page or self.page
        self.go(f"#/shop/{shop}/{day}", page)
        try:
            page.locator("li.slot").first.wait_for()
        except playwright_api.TimeoutError:
            raise AssertionError(f"no slots at {shop} on {day}: {page.inner_text('body')!r}") from None

    def book(self, service_at: str, party: int = 1, page: Any = None) -> None:
        page = page or self.page
        page.locator("#party").fill(str(party))
        page.get_by_role("button", name=f"Book {service_at}").click()

    def booking_states(self, page: Any = None) -> list[str]:
        page = page or self.page
        self.go("#/bookings", page)
        page.get_by_role("heading", name="My bookings").wait_for()
        return [str(t) for t in page.locator("li.booking .state").all_inner_texts()]

    def wait_state(self, text: str, page: Any = None) -> None:
        page = page or self.page
        self.go("#/bookings", page)
        page.locator("li.booking .state", has_text=text).first.wait_for()

    def unlabelled(self, page: Any = None) -> list[str]:
        """Form controls on screen that a screen reader could not name (no label, no aria-label)."""
        page = page or self.page
        return list(
            page.evaluate(
                "() => [...document.querySelectorAll('input, select, button')]"
                ".filter(e => !(e.labels?.length || e.getAttribute('aria-label') || e.textContent.trim()))"
                ".map(e => e.outerHTML)"
            )
        )

    def shot(self, name: str, viewport: dict[str, int]) -> None:
        """A screenshot for docs/web.md: written when missing, or always with UPDATE_SCREENSHOTS=1."""
        self.page.set_viewport_size(viewport)
        data = self.page.screenshot(full_page=False)
        path = IMAGES / f"app-{name}.png"
        if os.environ.get("UPDATE_SCREENSHOTS") == "1" or not path.exists():
            IMAGES.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def close(self) -> None:
        self.context.close()


def cli_slots(relay: FixedPortRelay, tmp_path: Path, shop: str, day: str) -> list[dict[str, Any]]:
    """A shop's slots on a day as a fresh ``quickslot`` CLI profile sees them after a sync."""
    cli = Profile(tmp_path / "cli")
    email = unique_email("cli")
    cli("register", "--relay", relay.base_url, "--email", email, "--password-stdin", stdin=PASSWORD)
    cli("slots", shop, day)
    cli("sync")
    return list(cli("slots", shop, day)["slots"])


def test_new_user_signs_up_finds_a_shop_books_and_sees_confirmed_final(
    browser: Any, relay: FixedPortRelay
) -> None:
    app = App(browser, relay)
    try:
        app.shot("login-phone", PHONE)
        assert app.unlabelled() == []
        app.page.set_viewport_size(DESKTOP)
        app.sign_up()
        key = app.page.evaluate(DEVICE_KEY)
        assert key == {"type": "CryptoKey", "extractable": False, "algorithm": "Ed25519", "usages": ["sign"]}
        app.page.get_by_label("Search").fill("noodle harbour")
        shops = app.page.get_by_role("list", name="Shops")
        shops.get_by_role("link", name="Noodle Bar").wait_for()
        assert shops.locator("li").count() == 1  # every word matches, in name or place
        app.shot("shops-desktop", DESKTOP)
        app.page.set_viewport_size(DESKTOP)
        shops.get_by_role("link", name="Noodle Bar").click()
        app.open_day("noodlebar")
        app.book("12:00 lunch table", party=2)
        app.page.locator("li.slot[data-slot='lunch-12'] .seats", has_text="6 of 8 seats left").wait_for()
        assert app.unlabelled() == []
        app.shot("shop-day-phone", PHONE)
        app.page.set_viewport_size(DESKTOP)
        app.wait_state("confirmed, final")
        assert app.booking_states() == ["confirmed, final"]
        app.shot("bookings-desktop", DESKTOP)
        app.shot("bookings-phone", PHONE)
        assert app.errors == [] and app.dialogs == []
    finally:
        app.close()


def test_a_booking_shows_in_a_new_browser_of_the_same_user(browser: Any, relay: FixedPortRelay) -> None:
    phone, laptop = App(browser, relay), App(browser, relay)
    try:
        phone.sign_up()
        phone.open_day("noodlebar")
        phone.page.context.set_offline(True)
        phone.book("12:00 lunch table")
        # the first booking of the day also lists the day for the other devices: not a change of the user's
        phone.page.locator("[data-test=unsynced]", has_text="1 unsynced change").wait_for()
        phone.page.context.set_offline(False)
        phone.wait_state("confirmed, final")
        phone.page.locator("[data-test=unsynced]").wait_for(state="detached")
        laptop.log_in(phone.email, PASSWORD)
        laptop.wait_state("confirmed, final")
        assert laptop.booking_states() == ["confirmed, final"]
        assert phone.errors == laptop.errors == [] and phone.dialogs == laptop.dialogs == []
    finally:
        phone.close()
        laptop.close()


def test_bad_input_gets_a_clear_message(browser: Any, relay: FixedPortRelay) -> None:
    app = App(browser, relay)
    try:
        app.sign_up()
        app.open_day("cutabove")
        app.book("10:00 haircut", party=0)
        alert = app.page.locator("main [role=alert]")
        alert.filter(has_text="The party must be at least 1 person.").wait_for()
        app.book("10:00 haircut", party=3)
        alert.filter(has_text="A party of 3 is larger than this slot: it has 2 seats.").wait_for()
        assert app.booking_states() == []  # nothing was written

        app.page.get_by_role("button", name="Log out").click()
        app.page.get_by_role("heading", name="Log in").wait_for()
        app.page.get_by_label("Email").fill(app.email)
        app.page.get_by_label("Password").fill("not the password at all")
        app.page.get_by_role("button", name="Log in").click()
        app.page.locator("main [role=alert]", has_text="Wrong email or password.").wait_for()
        app.page.get_by_label("Password").fill(PASSWORD)
        app.page.get_by_role("button", name="Log in").click()
        app.page.get_by_role("heading", name="Find a shop").wait_for()
    finally:
        app.close()


def test_a_shop_named_like_markup_shows_as_text_and_runs_no_script(
    browser: Any, relay: FixedPortRelay
) -> None:
    app = App(browser, relay)
    try:
        app.sign_up()
        app.page.get_by_label("Search").fill("<img")
        link = app.page.get_by_role("list", name="Shops").get_by_role("link")
        link.filter(has_text=XSS_NAME).wait_for()
        link.click()
        app.page.get_by_role("heading", name=XSS_NAME).wait_for()
        app.page.locator("li.slot", has_text="<b>table</b>").wait_for()
        app.page.get_by_label("Note for the shop (optional)").fill(
            "<img src=y onerror=alert(3)> by the window"
        )
        app.book("18:00 <b>table</b>")
        app.wait_state("confirmed")
        app.page.locator("li.booking .note", has_text="<img src=y onerror=alert(3)> by the window").wait_for()
        assert app.page.locator("img, script:not([src]), b").count() == 0
        assert app.dialogs == [] and app.errors == []
        # the relay's policy would stop an injected script too: no inline script may run
        assert "script-src 'self'" in str(
            app.page.evaluate("fetch(location.href).then(r => r.headers.get('content-security-policy'))")
        )
    finally:
        app.close()


def test_two_profiles_offline_book_the_last_seat_one_confirmed_one_waitlisted(
    browser: Any, relay: FixedPortRelay, tmp_path: Path
) -> None:
    ann, bob = App(browser, relay), App(browser, relay)
    try:
        for app in (ann, bob):
            app.sign_up()
            app.open_day("lastseat")
            app.page.locator("li.slot .seats", has_text="1 of 1 seats left").wait_for()
            app.context.set_offline(True)
            app.page.locator("[data-test=offline]").wait_for()
            app.book("10:00 haircut")
            app.page.locator("[data-test=unsynced]", has_text="1 unsynced change").wait_for()
            assert app.booking_states() == ["saved on this device, not yet sent"]
        ann.context.set_offline(False)
        ann.wait_state("confirmed, final")
        bob.context.set_offline(False)
        bob.wait_state("waitlisted, place 1")
        ann.page.locator("[data-test=unsynced]").wait_for(state="detached")
        assert ann.booking_states() == ["confirmed, final"]
        assert bob.booking_states() == ["waitlisted, place 1"]

        slots = cli_slots(relay, tmp_path, "lastseat", DAY)
        assert [(s["slot_id"], s["seats_taken"], s["seats_left"]) for s in slots] == [("seat-10", 1, 0)], (
            slots
        )
    finally:
        ann.close()
        bob.close()


def test_reload_offline_opens_from_the_service_worker_and_the_booking_syncs_once(
    browser: Any, relay: FixedPortRelay, tmp_path: Path
) -> None:
    app = App(browser, relay)
    day = (_dt.date.today() + _dt.timedelta(days=31)).isoformat()
    try:
        app.sign_up()
        app.page.wait_for_function("() => navigator.serviceWorker.controller !== null")
        app.open_day("noodlebar", day)
        app.context.set_offline(True)
        app.book("19:00 dinner table", party=3)
        app.page.locator("[data-test=unsynced]", has_text="1 unsynced change").wait_for()
        response = app.page.reload()
        assert response is not None and response.from_service_worker
        app.page.wait_for_selector("body[data-ready]")
        app.page.locator("[data-test=offline]").wait_for()
        app.page.locator("[data-test=unsynced]", has_text="1 unsynced change").wait_for()
        assert app.booking_states() == ["saved on this device, not yet sent"]
        app.shot("offline-phone", PHONE)
        app.context.set_offline(False)
        app.wait_state("confirmed, final")
        app.page.locator("[data-test=unsynced]").wait_for(state="detached")

        taken = {s["slot_id"]: s["seats_taken"] for s in cli_slots(relay, tmp_path, "noodlebar", day)}
        assert taken == {"lunch-12": 0, "dinner-19": 3}  # stored once, not once per reload
        assert app.errors == []
    finally:
        app.close()


def test_two_tabs_of_one_profile_share_one_syncing_client(browser: Any, relay: FixedPortRelay) -> None:
    app = App(browser, relay)
    try:
        app.sign_up()
        second = app.open_page()  # follows the first tab, which syncs
        assert second.evaluate("document.querySelector('nav').innerText").count("My bookings") == 1
        app.open_day("cutabove", page=second)
        app.book("09:00 haircut", page=second)
        app.wait_state("confirmed, final")  # booked in the second tab, shown by the first
        app.wait_state("confirmed, final", page=second)
        app.page.close()  # the syncing tab goes: the second takes over
        app.open_day("cutabove", page=second)
        app.book("10:00 haircut", page=second)
        app.go("#/bookings", second)
        second.locator("li.booking .state", has_text="confirmed, final").nth(1).wait_for()
        assert app.errors == [], app.errors
    finally:
        app.close()


def test_a_cancellation_promotes_the_waitlisted_booking_in_another_browser_live(
    browser: Any, relay: FixedPortRelay
) -> None:
    ann, bob = App(browser, relay), App(browser, relay)
    day = (_dt.date.today() + _dt.timedelta(days=32)).isoformat()
    try:
        for app in (ann, bob):
            app.sign_up()
            app.open_day("physio", day)
            app.book("08:00 physiotherapy")
        ann.wait_state("confirmed, final")
        bob.wait_state("waitlisted, place 1")
        ann.page.locator("li.booking").get_by_role("button", name="Cancel").click()
        ann.page.locator("li.booking .state", has_text="cancelled").wait_for()
        # bob's page, untouched, follows: the notice and the new state
        bob.page.locator("#notice", has_text="moved up from the waitlist: it is confirmed").wait_for()
        bob.page.locator("li.booking .state", has_text="confirmed, final").wait_for()
        assert ann.errors == [] and bob.errors == []
    finally:
        ann.close()
        bob.close()


def test_staff_confirm_and_decline_and_the_customer_screen_follows(
    browser: Any, relay: FixedPortRelay
) -> None:
    carl, staff = App(browser, relay), App(browser, relay)
    day = (_dt.date.today() + _dt.timedelta(days=33)).isoformat()
    try:
        carl.sign_up()
        carl.open_day("cutabove", day)
        carl.book("09:00 haircut")
        carl.book("10:00 haircut")
        carl.go("#/bookings")
        carl.page.locator("li.booking .state", has_text="confirmed, final").nth(1).wait_for()

        staff.log_in(OPERATOR_EMAIL, OPERATOR_PASSWORD)
        staff.page.get_by_role("link", name="Staff").click()
        staff.go(f"#/staff/cutabove/{day}")
        rows = staff.page.get_by_role("list", name="The day's bookings").locator("li.booking")
        rows.nth(1).wait_for()
        assert rows.count() == 2
        rows.nth(0).get_by_role("button", name="Confirm").click()
        rows.nth(0).locator(".state", has_text="confirmed by the shop").wait_for()
        rows.nth(1).get_by_role("button", name="Decline").click()
        rows.nth(1).get_by_role("button", name="Decline booking").click()  # no reason given
        rows.nth(1).locator(".state", has_text="declined by the shop").wait_for()
        staff.shot("staff-desktop", DESKTOP)
        assert staff.unlabelled() == []

        carl.page.locator("li.booking .state", has_text="confirmed, final, confirmed by the shop").wait_for()
        carl.page.locator("li.booking .state", has_text="declined by the shop").wait_for()
        carl.page.locator("#notice", has_text="was declined by the shop").wait_for()
        assert carl.errors == [] and staff.errors == []
    finally:
        carl.close()
        staff.close()


def test_a_booking_the_relay_refuses_is_listed_with_the_reason_in_words(
    browser: Any, relay: FixedPortRelay, operator: Profile
) -> None:
    app = App(browser, relay)
    try:
        app.sign_up()
        app.open_day("shrink")
        app.context.set_offline(True)
        app.book("11:00 haircut", party=2)
        app.page.locator("[data-test=unsynced]", has_text="1 unsynced change").wait_for()
        slot = ["--service", "haircut", "--start", "11:00", "--duration", "30", "--capacity", "1"]
        operator.many([["slot", "add", "shrink", "cut-11", *slot], ["sync"]])  # the slot shrinks meanwhile
        app.context.set_offline(False)
        app.page.locator("#notice", has_text="The relay refused a change").wait_for()
        app.go("#/bookings")
        refused = app.page.locator("section", has_text="Refused by the relay")
        refused.locator("li", has_text="the party is larger than this slot allows").wait_for()
        app.page.locator("#net", has_text="1 refused").wait_for()
        assert app.page.locator("[data-test=unsynced]").count() == 0
        refused.get_by_role("button", name="Dismiss").click()
        refused.wait_for(state="detached")
        assert app.errors == []
    finally:
        app.close()


def test_bookings_made_while_the_relay_is_down_are_sent_when_it_returns(
    browser: Any, relay: FixedPortRelay, operator: Profile
) -> None:
    app = App(browser, relay)
    day = (_dt.date.today() + _dt.timedelta(days=34)).isoformat()
    # one customer books the lunch table three times: the slot must allow that many claims each
    lunch = ["--service", "lunch table", "--start", "12:00", "--duration", "60", "--capacity", "8"]
    operator.many([["slot", "add", "noodlebar", "lunch-12", *lunch, "--per-customer", "3"], ["sync"]])
    try:
        app.sign_up()
        app.open_day("noodlebar", day)
        relay.stop()
        app.page.locator("[data-test=offline]").wait_for()
        for _ in range(3):
            app.book("12:00 lunch table")
        app.page.locator("[data-test=unsynced]", has_text="3 unsynced changes").wait_for()
        relay.start()
        app.page.locator("[data-test=unsynced]").wait_for(state="detached", timeout=30000)
        app.page.locator("[data-test=offline]").wait_for(state="detached")
        app.go("#/bookings")
        app.page.locator("li.booking .state", has_text="confirmed, final").nth(2).wait_for()
        assert app.booking_states() == ["confirmed, final"] * 3
        assert app.errors == []
    finally:
        app.close()


def test_two_tabs_opened_at_once_both_start_at_once(browser: Any, relay: FixedPortRelay) -> None:
    context = browser.new_context()
    try:
        pages = [context.new_page() for _ in range(3)]
        for page in pages:
            page.goto(f"{relay.base_url}/app/", wait_until="commit")
        # the followers' first calls reach the leader while it is still opening its client
        for page in pages:
            page.wait_for_selector("body[data-ready]", timeout=30_000)
            page.get_by_role("heading", name="Log in").wait_for(timeout=10_000)
    finally:
        context.close()


def test_a_slot_removed_while_a_booking_waits_is_said_in_words(
    browser: Any, relay: FixedPortRelay, operator: Profile
) -> None:
    app = App(browser, relay)
    try:
        app.sign_up()
        app.open_day("gone")
        app.context.set_offline(True)
        app.book("12:00 massage")
        app.page.locator("[data-test=unsynced]", has_text="1 unsynced change").wait_for()
        slot = ["--service", "massage", "--start", "12:00", "--duration", "60", "--capacity", "0"]
        operator.many([["slot", "add", "gone", "spa-12", *slot], ["sync"]])  # the shop stops offering it
        app.context.set_offline(False)
        app.page.locator("[data-test=unsynced]").wait_for(state="detached")
        app.page.locator("li.slot").wait_for(state="detached")  # the day offers nothing now
        app.go("#/bookings")
        booking = app.page.locator("li.booking")
        booking.locator(".gone", has_text="The shop no longer offers this slot on this day").wait_for()
        booking.get_by_role("button", name="Cancel").click()
        booking.locator(".state", has_text="cancelled").wait_for()
        assert booking.locator(".gone").count() == 0
        assert app.errors == []
    finally:
        app.close()


def test_the_relay_killed_mid_flush_loses_and_doubles_nothing(
    browser: Any, relay: FixedPortRelay, operator: Profile, tmp_path: Path
) -> None:
    app = App(browser, relay)
    count = 20
    # one customer books the hall twenty times: the slot must allow that many claims per customer
    hall = ["--service", "hall", "--start", "20:00", "--duration", "120", "--capacity", "100"]
    operator.many([["slot", "add", "flush", "hall-20", *hall, "--per-customer", "100"], ["sync"]])
    try:
        app.sign_up()
        app.open_day("flush")
        app.context.set_offline(True)
        for _ in range(count):
            app.book("20:00 hall")
        app.page.locator("[data-test=unsynced]", has_text=f"{count} unsynced changes").wait_for()
        app.context.set_offline(False)
        unsent = "n => parseInt(document.querySelector('[data-test=unsynced]')?.textContent ?? '0') < n"
        app.page.wait_for_function(unsent, arg=count)  # the first acks are in
        assert relay.proc is not None
        relay.proc.kill()  # SIGKILL in the middle of the flush: no shutdown, no last commit
        relay.proc.wait()
        relay.start()
        app.page.locator("[data-test=unsynced]").wait_for(state="detached", timeout=30000)
        taken = {s["slot_id"]: s["seats_taken"] for s in cli_slots(relay, tmp_path, "flush", DAY)}
        assert taken == {"hall-20": count}
        assert app.errors == []
    finally:
        app.close()
