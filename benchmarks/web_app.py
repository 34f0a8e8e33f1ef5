"""The web app in Chromium: size, first paint from cache, booking click to screen.

    python -m benchmarks.web_app [--bookings 20] [--loads 5] [--out bench-results/web-app.json]

Starts a relay with the demo shops (tools/app_demo.py) and Debian's Chromium through Playwright
(flags as in the tests), and measures:

* **size**: the built app's files (web/app/dist), raw and gzipped (level 9), the script alone and
  the whole shell the service worker caches;
* **first paint from cache**: after a first visit (sign up, open a shop's day: the service worker
  installed, the documents in IndexedDB), each new page load's first contentful paint and the time
  to ``app-ready`` (the page drawn with this device's data), with the network on (the page from the
  network, script and style from the worker's cache) and off (everything from the cache);
* **booking click to screen**: from the click on Book to the booking's line on screen (the notice
  that names its state), the booking written, signed and stored locally by the SDK; the relay's
  acknowledgement comes later and is not waited for (that is the point of offline-first).

* **catch-up of a 1,000-booking day**: a Node SDK client books 1,000 seats of one slot and syncs;
  then a browser profile that has never seen the day opens it, until the slot shows the 1,000
  seats taken (the day's document fetched, validated, stored and its verdict drawn), and opens it
  again from IndexedDB after a reload; against a fresh ``quickslot`` CLI profile doing the same
  (``slots``, ``sync``, ``slots``: three processes, their wall time).

Prints a JSON summary and writes it to ``--out``. Figures and the machine they came from: docs/web.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gzip
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tools.app_demo import DEMO_SHOPS, DemoShop, Profile, build_app, make_operator, seed_catalog

BIG_DAY = 1000
BIG_SHOP = DemoShop(
    "bighall", "Big Hall", "food", "1 Hall Street", (("hall-10", "hall", "10:00", 60, 2 * BIG_DAY),)
)

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--no-first-run",
]  # fmt: skip
PASSWORD = "benchmark password, not a secret"
CLICK_TO_SCREEN = """async (label) => {
  const notice = document.getElementById("notice");
  const button = [...document.querySelectorAll("button")].find((b) => b.getAttribute("aria-label") === label);
  const before = notice.textContent;
  return await new Promise((resolve) => {
    const started = performance.now();
    const seen = new MutationObserver(() => {
      if (notice.textContent !== before && notice.textContent.startsWith("Booked")) {
        seen.disconnect();
        requestAnimationFrame(() => resolve(performance.now() - started));
      }
    });
    seen.observe(notice, { childList: true, subtree: true, characterData: true });
    button.click();
  });
}"""
PAINT = """() => {
  const fcp = performance.getEntriesByName("first-contentful-paint")[0];
  const ready = performance.getEntriesByName("app-ready")[0];
  return { fcp: fcp ? fcp.startTime : null, ready: ready ? ready.startTime : null };
}"""


def sizes(dist: Path) -> dict[str, int]:
    out = {"raw": 0, "gzip": 0, "script_gzip": 0}
    for f in dist.iterdir():
        data = f.read_bytes()
        packed = len(gzip.compress(data, 9))
        out["raw"] += len(data)
        out["gzip"] += packed
        if f.suffix == ".js" and f.name.startswith("app-"):
            out["script_gzip"] = packed
    return out


def summary(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {
        "n": len(values),
        "median_ms": round(statistics.median(values), 1),
        "p90_ms": round(values[min(len(values) - 1, int(len(values) * 0.9))], 1),
        "min_ms": round(values[0], 1),
    }


def run(bookings: int, loads: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    from tests.support.relay_process import FixedPortRelay

    dist = build_app()
    result: dict[str, Any] = {"size": sizes(dist)}
    day = (_dt.date.today() + _dt.timedelta(days=40)).isoformat()
    with tempfile.TemporaryDirectory(prefix="quickslot-web-bench-") as tmp:
        root = Path(tmp)
        shops = (*DEMO_SHOPS, BIG_SHOP)
        make_operator(root / "data", [s.id for s in shops])
        relay = FixedPortRelay(root / "data", "--max-party", "20")
        relay.start()
        try:
            operator = Profile(root / "operator")
            operator.login(relay.base_url)
            seed_catalog(operator, shops)
            big_day(relay.base_url, day)
            result["catch_up_cli_s"] = cli_catch_up(relay.base_url, root / "cli", day)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
                context = browser.new_context(viewport={"width": 390, "height": 844})
                page = sign_up(context, relay.base_url, "bench@example.com")
                page.wait_for_function("() => navigator.serviceWorker.controller !== null")
                page.evaluate("r => { location.hash = r }", f"#/shop/noodlebar/{day}")
                page.locator("li.slot").first.wait_for()

                clicks = []
                for i in range(bookings):
                    slot = "12:00 lunch table" if i % 2 == 0 else "19:00 dinner table"
                    clicks.append(float(page.evaluate(CLICK_TO_SCREEN, f"Book {slot}")))
                result["click_to_screen"] = summary(clicks)

                url = f"{relay.base_url}/app/#/shop/noodlebar/{day}"
                for label, offline in (("online", False), ("offline", True)):
                    context.set_offline(offline)
                    fcp, ready = [], []
                    for _ in range(loads):
                        page.close()
                        page = context.new_page()
                        page.goto(url)
                        page.wait_for_selector("body[data-ready]")
                        page.locator("li.slot").first.wait_for()
                        marks = page.evaluate(PAINT)
                        fcp.append(float(marks["fcp"]))
                        ready.append(float(marks["ready"]))
                    result[f"first_paint_{label}"] = {"fcp": summary(fcp), "app_ready": summary(ready)}
                context.set_offline(False)
                result["catch_up_browser_s"] = browser_catch_up(browser, relay.base_url, day)
                browser.close()
        finally:
            relay.stop()
    return result


def sign_up(context: Any, relay_url: str, email: str) -> Any:
    """A new page of ``context`` on the app, signed up as ``email``."""
    page = context.new_page()
    page.goto(f"{relay_url}/app/#/signup")
    page.wait_for_selector("body[data-ready]")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password (at least 10 characters)").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    page.get_by_role("heading", name="Find a shop").wait_for()
    return page


def big_day(relay_url: str, day: str) -> None:
    """1,000 bookings of one slot on ``day``, by a Node SDK client, synced."""
    from tests.web.test_sdk_client import Driver

    node = Driver(relay_url)
    try:
        node("register", email="big-day@example.com", password=PASSWORD)
        node("slots", shop=BIG_SHOP.id, day=day)
        node("sync")
        node("stop")
        for _ in range(BIG_DAY):
            node("book", shop=BIG_SHOP.id, day=day, slot="hall-10")
        node("start")
        node("sync", timeout=300, timeoutMs=280000)
    finally:
        node.close()


def cli_catch_up(relay_url: str, home: Path, day: str) -> float:
    cli = Profile(home)
    cli(
        "register",
        "--relay",
        relay_url,
        "--email",
        "cli-catch-up@example.com",
        "--password-stdin",
        stdin=PASSWORD,
    )
    started = time.monotonic()
    cli("slots", BIG_SHOP.id, day)
    cli("sync")
    slots = cli("slots", BIG_SHOP.id, day)["slots"]
    elapsed = time.monotonic() - started
    assert slots[0]["seats_taken"] == BIG_DAY, slots
    return round(elapsed, 2)


def browser_catch_up(browser: Any, relay_url: str, day: str) -> dict[str, float]:
    context = browser.new_context()
    page = sign_up(context, relay_url, "browser-catch-up@example.com")
    taken = f"{BIG_DAY} of {2 * BIG_DAY} seats left"
    started = time.monotonic()
    page.evaluate("r => { location.hash = r }", f"#/shop/{BIG_SHOP.id}/{day}")
    page.locator("li.slot .seats", has_text=taken).wait_for(timeout=120000)
    first = time.monotonic() - started
    started = time.monotonic()
    page.reload()
    page.locator("li.slot .seats", has_text=taken).wait_for(timeout=120000)
    again = time.monotonic() - started
    context.close()
    return {"first_open": round(first, 2), "reload_from_indexeddb": round(again, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bookings", type=int, default=20, help="bookings clicked (default: 20)")
    parser.add_argument("--loads", type=int, default=5, help="page loads per network state (default: 5)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/web-app.json"), help="JSON summary")
    args = parser.parse_args(argv)
    result = run(args.bookings, args.loads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
