// The QuickSlot web app: customers find a shop, pick a day and book; staff run the day. Everything
// reads and writes through the SDK's offline client (one per browser profile, see hub.js), so the
// app works the same with or without a network; the relay serves it at /app/ (relay/web_app.py).

import { ALERT_EVENTS, alertInBackground, notificationControl, wantsAlert } from "./alerts.js";
import { fill, h } from "./dom.js";
import { CallError, Hub } from "./hub.js";
import { accountErrorInWords, noticeInWords, reasonInWords, stateInWords } from "./words.js";

/** The relay's default --max-party; a larger party is refused at arrival. */
const MAX_PARTY = 20;
const NOTICE_EVENTS = ["promoted", "demoted", "final", "declined", "no_show", "too_large", "refused", "stopped", "cancelled"];

const main = /** @type {HTMLElement} */ (document.getElementById("main"));
const nav = /** @type {HTMLElement} */ (document.getElementById("nav"));
const net = /** @type {HTMLElement} */ (document.getElementById("net"));
const notice = /** @type {HTMLElement} */ (document.getElementById("notice"));

/** @type {Hub} */
let hub;
/** @type {any} the signed-in user, or null */
let user = null;
/** Shop names and slot times seen so far, to name bookings in words. */
const shopNames = new Map();
const slotNames = new Map();
/** @param {any} r a reservation view */
const describe = (r) => `${shopNames.get(r.shop) ?? r.shop} on ${dayLabel(r.day)} at ${slotNames.get(`${r.shop}/${r.slot}`) ?? r.slot}`;
/** @param {any[]} shops */
const learnShops = (shops) => shops.forEach((s) => shopNames.set(s.id, s.name));
/** @param {string} shopId @param {any[]} slots */
const learnSlots = (shopId, slots) => slots.forEach((s) => slotNames.set(`${shopId}/${s.slotId}`, `${s.start} ${s.service}`));

/** A refused outbox entry in words: what it did, where, when. @param {any} e */
function actionInWords(e) {
  const [, shop, day] = String(e.docId).split(":");
  const what = { book: "Booking", cancel: "Cancelling", confirm: "Confirming", decline: "Declining", no_show: "No-show" }[/** @type {string} */ (e.action)] ?? e.action;
  return `${what} at ${shopNames.get(shop) ?? shop} on ${day ? dayLabel(day) : "?"}`;
}

/** The current view's refresh (data changed), set by each view. @type {() => Promise<void>} */
let refreshView = async () => {};

/** Today plus `n` days as YYYY-MM-DD (the device's calendar). @param {number} n */
function dayFromToday(n) {
  const d = new Date();
  d.setDate(d.getDate() + n);
  return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;
}

/** @param {string} day */
function dayLabel(day) {
  const d = new Date(`${day}T12:00:00`);
  return d.toLocaleDateString(undefined, { weekday: "short", day: "numeric", month: "short" });
}

/** @param {string} text */
const errorBox = (text = "") => h("p", { class: "error", role: "alert" }, text);

const TITLE = document.title;

/**
 * Show a notice (something changed); it stays until dismissed or replaced. A tab in the background
 * also marks its title, so the change shows in the tab strip until the tab is looked at.
 * @param {string} text
 */
function showNotice(text) {
  fill(notice, h("span", { class: "notice-text" }, text), " ", h("button", { type: "button", class: "link", on: { click: () => fill(notice) } }, "Dismiss"));
  if (document.hidden) document.title = `(!) ${TITLE}: a booking changed`;
}
document.addEventListener("visibilitychange", () => {
  if (!document.hidden) document.title = TITLE;
});

// --- network status and the unsynced count ---------------------------------------------------------

async function showStatus() {
  const status = user ? await hub.call("status").catch(() => null) : null;
  const offline = navigator.onLine === false || (status !== null && status.phase !== "online" && status.phase !== "connecting");
  const parts = [];
  if (offline) parts.push(h("span", { class: "offline", "data-test": "offline" }, "Offline: changes stay on this device and are sent when the connection returns."));
  if (status && status.pending > 0) {
    parts.push(h("span", { class: "unsynced", "data-test": "unsynced" }, `${status.pending} unsynced change${status.pending === 1 ? "" : "s"}`));
  }
  if (status && status.refused > 0) parts.push(h("a", { href: "#/bookings", class: "refused" }, `${status.refused} refused`));
  if (status?.stoppedBy?.startsWith("login")) parts.push(h("a", { href: "#/login" }, "Log in again to sync"));
  fill(net, ...parts);
  net.hidden = parts.length === 0;
}

// --- navigation -----------------------------------------------------------------------------------

function showNav() {
  const links = user
    ? [["#/", "Shops"], ["#/bookings", "My bookings"], ...(user.staffOf.length || user.ownerOf.length ? [["#/staff", "Staff"]] : [])]
    : [["#/login", "Log in"], ["#/signup", "Sign up"]];
  fill(
    nav,
    links.map(([href, text]) => h("a", { href, "aria-current": location.hash === href || (href === "#/" && !location.hash) ? "page" : false }, text)),
    user ? h("button", { type: "button", class: "link", on: { click: logout } }, "Log out") : null,
  );
}

async function logout() {
  await hub.call("logout");
  user = null;
  location.hash = "#/login";
}

async function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  showNav();
  refreshView = async () => {};
  if (!user && parts[0] !== "signup") return accountView("login");
  switch (parts[0]) {
    case "login":
    case "signup":
      return user ? shopsView() : accountView(parts[0]);
    case "shop":
      return shopView(parts[1], parts[2] || dayFromToday(1));
    case "bookings":
      return bookingsView();
    case "staff":
      return staffView(parts[1], parts[2] || dayFromToday(1));
    default:
      return shopsView();
  }
}

// --- accounts -------------------------------------------------------------------------------------

/** @param {"login" | "signup"} mode */
function accountView(mode) {
  const signup = mode === "signup";
  const error = errorBox();
  const email = h("input", { id: "email", type: "email", autocomplete: "email", required: true });
  const password = h("input", { id: "password", type: "password", autocomplete: signup ? "new-password" : "current-password", required: true, minlength: signup ? 10 : false });
  const name = signup ? h("input", { id: "name", autocomplete: "name" }) : null;
  const submit = h("button", { type: "submit" }, signup ? "Sign up" : "Log in");
  const form = h(
    "form",
    {
      class: "card",
      on: {
        submit: async (e) => {
          e.preventDefault();
          submit.setAttribute("disabled", "");
          fill(error, signup ? "Signing up…" : "Logging in…");
          const address = /** @type {HTMLInputElement} */ (email).value.trim();
          const account = {
            email: address,
            password: /** @type {HTMLInputElement} */ (password).value,
            displayName: (name && /** @type {HTMLInputElement} */ (name).value.trim()) || address.split("@")[0],
          };
          try {
            user = await hub.call(signup ? "register" : "login", account);
            location.hash = "#/";
            await route();
          } catch (err) {
            fill(error, accountErrorInWords(err, signup ? "sign up" : "log in"));
            submit.removeAttribute("disabled");
          }
        },
      },
    },
    h("h2", {}, signup ? "Create an account" : "Log in"),
    h("label", { for: "email" }, "Email"),
    email,
    h("label", { for: "password" }, signup ? "Password (at least 10 characters)" : "Password"),
    password,
    name ? [h("label", { for: "name" }, "Your name (optional)"), name] : null,
    error,
    submit,
    h("p", {}, signup ? h("a", { href: "#/login" }, "I have an account: log in") : h("a", { href: "#/signup" }, "New here? Create an account")),
  );
  fill(main, form);
  /** @type {HTMLInputElement} */ (email).focus();
}

// --- shops ----------------------------------------------------------------------------------------

let search = "";
/** @type {string | null} */
let category = null;

async function shopsView() {
  const input = h("input", { id: "search", type: "search", placeholder: "Name, place or kind of shop", value: search, autocomplete: "off" });
  const chips = h("div", { class: "chips", role: "group", "aria-label": "Categories" });
  const list = h("ul", { class: "list", "aria-label": "Shops" });
  input.addEventListener("input", () => {
    search = /** @type {HTMLInputElement} */ (input).value;
    refreshView();
  });
  fill(main, h("h2", {}, "Find a shop"), h("label", { for: "search" }, "Search"), input, chips, list);
  refreshView = async () => {
    const [categories, shops] = await Promise.all([hub.call("categories"), hub.call("shops")]);
    learnShops(shops);
    fill(
      chips,
      [{ id: null, name: "All" }, ...categories].map((c) =>
        h("button", { type: "button", "aria-pressed": String(category === c.id), on: { click: () => ((category = c.id), refreshView()) } }, c.name),
      ),
    );
    const words = search.toLowerCase().split(/\s+/).filter(Boolean);
    const names = new Map(categories.map((/** @type {any} */ c) => [c.id, c.name]));
    const shown = shops.filter((/** @type {any} */ s) => {
      if (category !== null && s.category !== category) return false;
      const text = [s.id, s.name, s.location, s.category, names.get(s.category) ?? ""].join(" ").toLowerCase();
      return words.every((w) => text.includes(w));
    });
    fill(
      list,
      shown.length === 0
        ? h("li", { class: "empty" }, shops.length === 0 ? "No shops on this device yet: they arrive when the app is online." : "No shop matches.")
        : shown.map((/** @type {any} */ s) =>
            h("li", {}, h("a", { href: `#/shop/${encodeURIComponent(s.id)}/${dayFromToday(1)}`, class: "shop" }, h("strong", {}, s.name), h("span", {}, `${names.get(s.category) ?? s.category} · ${s.location}`))),
          ),
    );
  };
  await refreshView();
}

// --- a shop's day ---------------------------------------------------------------------------------

/** @param {string} shopId @param {string} day */
async function shopView(shopId, day) {
  const title = h("h2", {}, shopId);
  const about = h("p", { class: "about" });
  const days = h("div", { class: "chips", role: "group", "aria-label": "Day" });
  for (let i = 0; i < 7; i++) {
    const d = dayFromToday(i);
    days.append(h("a", { href: `#/shop/${encodeURIComponent(shopId)}/${d}`, class: "chip", "aria-current": d === day ? "date" : false }, i === 0 ? "Today" : dayLabel(d)));
  }
  const picker = h("input", { id: "day", type: "date", value: day, min: dayFromToday(0) });
  picker.addEventListener("change", () => {
    const v = /** @type {HTMLInputElement} */ (picker).value;
    if (v) location.hash = `#/shop/${encodeURIComponent(shopId)}/${v}`;
  });
  const party = h("input", { id: "party", type: "number", min: 1, max: MAX_PARTY, value: 1, inputmode: "numeric" });
  const note = h("input", { id: "note", maxlength: 500, autocomplete: "off" });
  const error = errorBox();
  const list = h("ul", { class: "list slots", "aria-label": "Slots" });
  fill(
    main,
    title,
    about,
    h("label", { for: "day" }, "Day"),
    h("div", { class: "row" }, picker),
    days,
    h("label", { for: "party" }, "Party size"),
    party,
    h("label", { for: "note" }, "Note for the shop (optional)"),
    note,
    error,
    h("h3", {}, `Slots on ${dayLabel(day)}`),
    list,
  );

  /** @param {any} slot */
  async function book(slot) {
    const n = Number(/** @type {HTMLInputElement} */ (party).value);
    if (!Number.isInteger(n) || n < 1) return void fill(error, "The party must be at least 1 person.");
    if (n > slot.capacity) return void fill(error, `A party of ${n} is larger than this slot: it has ${slot.capacity} seat${slot.capacity === 1 ? "" : "s"}.`);
    if (n > MAX_PARTY) return void fill(error, `A party may have at most ${MAX_PARTY} people.`);
    fill(error);
    try {
      const text = /** @type {HTMLInputElement} */ (note).value.trim();
      const view = await hub.call("book", { shop: shopId, day, slot: slot.slotId, party: n, ...(text ? { note: text } : {}) });
      /** @type {HTMLInputElement} */ (note).value = "";
      showNotice(`Booked ${slot.start} ${slot.service} for ${n}: ${stateInWords(view, undefined)}.`);
      await refreshView();
    } catch (err) {
      fill(error, `Could not book: ${String(/** @type {any} */ (err)?.message ?? err)}`);
    }
  }

  refreshView = async () => {
    const [shops, shop, slots, mine] = await Promise.all([hub.call("shops"), hub.call("shop", shopId), hub.call("slots", shopId, day), hub.call("reservations")]);
    learnShops(shops);
    learnSlots(shopId, shop.slots);
    const summary = shops.find((/** @type {any} */ s) => s.id === shopId);
    fill(title, shop.profile?.name ?? summary?.name ?? shopId);
    fill(about, [summary?.location, shop.profile?.description, shop.profile?.hours].filter(Boolean).join(" · "));
    const booked = new Map();
    for (const r of mine) if (r.shop === shopId && r.day === day && !["cancelled", "declined"].includes(r.state)) booked.set(r.slot, r);
    fill(
      list,
      slots.length === 0
        ? h("li", { class: "empty" }, "No slots on this day (or not on this device yet: they arrive when the app is online).")
        : slots.map((/** @type {any} */ s) => {
            const mineHere = booked.get(s.slotId);
            return h(
              "li",
              { class: "slot", "data-slot": s.slotId },
              h("span", { class: "time" }, s.start),
              h("span", { class: "what" }, `${s.service} · ${s.duration} min`),
              h("span", { class: "seats" }, s.seatsLeft === 0 ? "full (waitlist)" : `${s.seatsLeft} of ${s.capacity} seats left`),
              mineHere ? h("span", { class: "mine" }, `You: ${stateInWords(mineHere, undefined)}`) : null,
              h("button", { type: "button", "aria-label": `Book ${s.start} ${s.service}`, on: { click: () => book(s) } }, "Book"),
            );
          }),
    );
  };
  await refreshView();
}

// --- my bookings ----------------------------------------------------------------------------------

async function bookingsView() {
  const list = h("ul", { class: "list bookings", "aria-label": "My bookings" });
  const refusedList = h("div");
  const notify = h("div", { class: "notify" });
  const showControl = () => fill(notify, notificationControl(showControl));
  showControl();
  fill(main, h("h2", {}, "My bookings"), notify, refusedList, list);
  refreshView = async () => {
    const [mine, outbox, shops] = await Promise.all([hub.call("reservations"), hub.call("outbox"), hub.call("shops")]);
    learnShops(shops);
    for (const shopId of new Set(mine.map((/** @type {any} */ r) => r.shop))) learnSlots(shopId, (await hub.call("shop", shopId)).slots);
    // which slots each day still offers: a booking of a slot the shop stopped offering says so
    const offered = new Map();
    for (const key of new Set(mine.map((/** @type {any} */ r) => `${r.shop}/${r.day}`))) {
      const [shopId, day] = key.split("/");
      offered.set(key, new Set((await hub.call("slots", shopId, day)).map((/** @type {any} */ s) => s.slotId)));
    }
    /** @param {any} r */
    const gone = (r) => ["confirmed", "waitlisted"].includes(r.state) && !r.pending && !offered.get(`${r.shop}/${r.day}`)?.has(r.slot);
    const refused = new Map(outbox.filter((/** @type {any} */ e) => e.state === "refused").map((/** @type {any} */ e) => [e.reservationId, e]));
    mine.sort((/** @type {any} */ a, /** @type {any} */ b) => (a.day + a.slot < b.day + b.slot ? -1 : 1));
    const orphans = [...refused.values()].filter((e) => !mine.some((/** @type {any} */ r) => r.reservationId === e.reservationId));
    fill(
      refusedList,
      orphans.length || refused.size
        ? h(
            "section",
            { class: "card" },
            h("h3", {}, "Refused by the relay"),
            h("ul", {}, [...refused.values()].map((e) => h("li", {}, `${actionInWords(e)}: ${reasonInWords(e.reason)}`))),
            h("button", { type: "button", on: { click: async () => (await hub.call("dismissRefused"), refreshView()) } }, "Dismiss"),
          )
        : null,
    );
    fill(
      list,
      mine.length === 0
        ? h("li", { class: "empty" }, "No bookings yet. Bookings made on your other devices appear here once this device has synced.")
        : mine.map((/** @type {any} */ r) =>
            h(
              "li",
              { class: "booking", "data-reservation": r.reservationId },
              h("a", { href: `#/shop/${encodeURIComponent(r.shop)}/${r.day}` }, describe(r)),
              h("span", {}, `party of ${r.party}`),
              h("strong", { class: "state" }, stateInWords(r, refused.get(r.reservationId))),
              gone(r) ? h("span", { class: "gone" }, "The shop no longer offers this slot on this day: ask the shop, or cancel.") : null,
              r.note ? h("span", { class: "note" }, r.note) : null,
              ["confirmed", "waitlisted"].includes(r.state)
                ? h("button", { type: "button", on: { click: async () => (await hub.call("cancel", r.reservationId), refreshView()) } }, "Cancel")
                : null,
            ),
          ),
    );
  };
  await refreshView();
}

// --- staff ----------------------------------------------------------------------------------------

/** @param {string | undefined} shopId @param {string} day */
async function staffView(shopId, day) {
  const shops = [...new Set([...(user?.ownerOf ?? []), ...(user?.staffOf ?? [])])].sort();
  if (shops.length === 0) return void fill(main, h("p", {}, "This account is not staff of any shop."));
  const shop = shopId && shops.includes(shopId) ? shopId : shops[0];
  const select = h("select", { id: "staff-shop" }, shops.map((s) => h("option", { value: s, selected: s === shop }, s)));
  const picker = h("input", { id: "staff-day", type: "date", value: day });
  const go = () => (location.hash = `#/staff/${encodeURIComponent(/** @type {HTMLSelectElement} */ (select).value)}/${/** @type {HTMLInputElement} */ (picker).value || day}`);
  select.addEventListener("change", go);
  picker.addEventListener("change", go);
  const error = errorBox();
  const list = h("ul", { class: "list bookings", "aria-label": "The day's bookings" });
  fill(main, h("h2", {}, "The day's bookings"), h("label", { for: "staff-shop" }, "Shop"), select, h("label", { for: "staff-day" }, "Day"), picker, error, list);
  /** @param {string} method @param {string} id @param {{reason?: string}} [options] */
  const act = async (method, id, options) => {
    try {
      await hub.call(method, id, ...(options ? [options] : []));
      fill(error);
    } catch (err) {
      fill(error, `Could not ${method}: ${String(/** @type {any} */ (err)?.message ?? err)}`);
    }
    await refreshView();
  };
  /** The booking being declined, and the reason typed so far (kept when the list redraws). */
  let declining = { id: "", reason: "" };
  /** Decline: first a reason for the customer (optional; they see it as written), in the row. @param {string} id */
  const declineForm = (id) => {
    const input = h("input", { id: "decline-reason", maxlength: 500, autocomplete: "off", value: declining.reason });
    input.addEventListener("input", () => (declining.reason = /** @type {HTMLInputElement} */ (input).value));
    return h(
      "form",
      {
        class: "decline",
        on: {
          submit: (e) => {
            e.preventDefault();
            const reason = declining.reason.trim();
            declining = { id: "", reason: "" };
            act("decline", id, reason ? { reason } : undefined);
          },
        },
      },
      h("label", { for: "decline-reason" }, "Reason for the customer (optional)"),
      input,
      h("button", { type: "submit" }, "Decline booking"),
      h("button", { type: "button", class: "link", on: { click: () => ((declining = { id: "", reason: "" }), refreshView()) } }, "Keep it"),
    );
  };
  refreshView = async () => {
    learnSlots(shop, await hub.call("slots", shop, day)); // keeps the shop and the day in sync
    const all = (await hub.call("reservations", { all: true })).filter((/** @type {any} */ r) => r.shop === shop && r.day === day);
    all.sort((/** @type {any} */ a, /** @type {any} */ b) => (a.slot + (a.stamp ?? "") < b.slot + (b.stamp ?? "") ? -1 : 1));
    const typing = document.activeElement?.id === "decline-reason";
    fill(
      list,
      all.length === 0
        ? h("li", { class: "empty" }, "No bookings on this day.")
        : all.map((/** @type {any} */ r) => {
            const open = r.state === "confirmed" || r.state === "waitlisted";
            return h(
              "li",
              { class: "booking", "data-reservation": r.reservationId },
              h("span", {}, `${slotNames.get(`${shop}/${r.slot}`) ?? r.slot} · party of ${r.party}`),
              h("strong", { class: "state" }, stateInWords(r, undefined)),
              r.note ? h("span", { class: "note" }, r.note) : null,
              h(
                "span",
                { class: "actions" },
                open && !r.staffConfirmed ? h("button", { type: "button", on: { click: () => act("confirm", r.reservationId) } }, "Confirm") : null,
                open && declining.id !== r.reservationId
                  ? h("button", { type: "button", on: { click: () => ((declining = { id: r.reservationId, reason: "" }), refreshView()) } }, "Decline")
                  : null,
                r.state === "confirmed" ? h("button", { type: "button", on: { click: () => act("noShow", r.reservationId) } }, "No-show") : null,
              ),
              open && declining.id === r.reservationId ? declineForm(r.reservationId) : null,
            );
          }),
    );
    // a redraw while the reason is typed (something synced) keeps the cursor in it
    const input = /** @type {HTMLInputElement | null} */ (document.getElementById("decline-reason"));
    if (input && (typing || document.activeElement === document.body)) {
      input.focus();
      input.setSelectionRange(input.value.length, input.value.length);
    }
  };
  await refreshView();
}

// --- start ----------------------------------------------------------------------------------------

function registerServiceWorker() {
  if (!("serviceWorker" in navigator)) return;
  // The relay's CSP requires Trusted Types for script URLs: one policy that allows only the worker.
  const tt = /** @type {any} */ (window).trustedTypes;
  const policy = tt?.createPolicy("quickslot-sw", {
    createScriptURL: (/** @type {string} */ url) => {
      if (url !== "./sw.js") throw new TypeError(`unexpected script ${url}`);
      return url;
    },
  });
  navigator.serviceWorker.register(policy ? policy.createScriptURL("./sw.js") : "./sw.js", { scope: "./" }).catch((err) => console.warn("service worker", err));
}

let pending = false;
/** Refresh the view and the status once per frame at most, whatever burst of events came. */
function soon() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(async () => {
    pending = false;
    try {
      await Promise.all([refreshView(), showStatus()]);
    } catch (err) {
      if (!(err instanceof CallError)) console.error(err);
    }
  });
}

async function start() {
  registerServiceWorker();
  hub = await Hub.start();
  user = await hub.call("user");
  for (const type of ["change", "status", "acked", "refused"]) hub.on(type, soon);
  for (const type of NOTICE_EVENTS) {
    hub.on(type, (detail) => {
      if (type === "cancelled" && detail?.reservation?.endedBy !== "shop") return; // my own: I know
      showNotice(noticeInWords(type, detail, describe));
      soon();
    });
  }
  // in the background, the tab that syncs also tells the system (alerts.js)
  for (const type of ALERT_EVENTS) {
    hub.on(type, (detail) => {
      if (!hub.leading || !wantsAlert(type, detail)) return;
      const tag = `${type}:${detail?.reservation?.reservationId ?? detail?.entry?.id ?? ""}`;
      alertInBackground(noticeInWords(type, detail, describe), tag).catch((err) => console.warn("notification", err));
    });
  }
  hub.on("session", async () => {
    user = await hub.call("user");
    await route();
    soon();
  });
  addEventListener("online", soon);
  addEventListener("offline", soon);
  addEventListener("hashchange", () =>
    route().then(
      () => {
        // a new page: screen readers and keyboards start at its content, not where the old one was
        if (!main.contains(document.activeElement)) main.focus({ preventScroll: true });
        soon();
      },
      (err) => fill(main, errorBox(`Could not show this page: ${String(err?.message ?? err)}`)),
    ),
  );
  await route();
  await showStatus();
  document.body.dataset.ready = "1";
  performance.mark("app-ready"); // benchmarks/web_app.py: first paint with the data from this device
}

start().catch((err) => {
  fill(main, errorBox(`The app could not start: ${String(err?.message ?? err)}`));
});
