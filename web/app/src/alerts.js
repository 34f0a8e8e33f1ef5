// System notifications: when a booking of mine changes while the app is in the background (the tab
// hidden: another tab in front, the window minimised, the phone's screen on another app), the page's
// own notice goes unseen, so the change is also shown as a notification of the operating system.
//
// * Which changes: my booking promoted from the waitlist, demoted to it, declined by the shop or
//   cancelled by the shop, and a change of mine the relay refused. Not my own cancellations, not
//   the routine "confirmed" or "final" (they follow what I just did while I look).
// * When: only while the page is hidden (document.visibilityState) and no other tab of the app is
//   in view (asked over a BroadcastChannel at that moment: a tab that went away without a word
//   does not answer), and only in the tab that syncs (one notification however many tabs are
//   open; each is tagged by booking and kind, so a repeat replaces the last one).
// * How: through the service worker's registration.showNotification where there is one (the only
//   way on Android, and it lets a click bring the app back: sw.js), else `new Notification`.
// * Permission: asked only when the person presses the button for it (browsers ignore or punish a
//   request on load), never by itself.

import { h } from "./dom.js";

/** Kinds of change that may deserve a notification (with `wantsAlert` deciding per booking). */
export const ALERT_EVENTS = ["promoted", "demoted", "declined", "cancelled", "refused"];

/**
 * Whether a change is one the customer should hear about in the background.
 * @param {string} kind @param {any} detail the client event's detail
 */
export function wantsAlert(kind, detail) {
  const r = detail?.reservation;
  if (kind === "refused") return true;
  if (kind === "cancelled") return r?.endedBy === "shop";
  return ALERT_EVENTS.includes(kind);
}

/** Tabs of the app ask each other whether one is in view (`otherTabInView`). */
const peers = typeof BroadcastChannel === "function" ? new BroadcastChannel("quickslot-app-visibility") : null;
const ANSWER_MS = 150;
/** @type {Set<(visible: boolean) => void>} */
const asking = new Set();
peers?.addEventListener("message", (e) => {
  const m = e.data;
  if (m?.ask) peers.postMessage({ visible: document.visibilityState === "visible" });
  else if (typeof m?.visible === "boolean") for (const heard of asking) heard(m.visible);
});

/** Whether another tab of the app (this browser profile) is in view now; false alone. */
function otherTabInView() {
  if (!peers) return Promise.resolve(false);
  return new Promise((resolve) => {
    const heard = (/** @type {boolean} */ visible) => visible && done(true);
    const done = (/** @type {boolean} */ answer) => {
      asking.delete(heard);
      clearTimeout(timer);
      resolve(answer);
    };
    const timer = setTimeout(() => done(false), ANSWER_MS);
    asking.add(heard);
    peers.postMessage({ ask: true });
  });
}

/** Whether this browser can show notifications at all. */
export function canNotify() {
  return typeof Notification === "function";
}

/**
 * Show `body` as a system notification if the page is hidden, no other tab of the app is in view
 * and notifications are allowed.
 * Resolves to true when one was shown.
 * @param {string} body @param {string} tag one per booking and kind: a newer one replaces it
 */
export async function alertInBackground(body, tag) {
  if (document.visibilityState !== "hidden" || !canNotify() || Notification.permission !== "granted") return false;
  if (await otherTabInView()) return false; // the page's notice shows there
  const options = { body, tag, icon: "icon.svg", lang: document.documentElement.lang || undefined, data: { url: location.href } };
  const registration = "serviceWorker" in navigator ? await navigator.serviceWorker.getRegistration() : undefined;
  if (registration?.active) {
    await registration.showNotification("QuickSlot", options);
  } else {
    new Notification("QuickSlot", options);
  }
  return true;
}

/**
 * The control that asks for permission (on a click only), or says what was decided; null when the
 * browser has no notifications. `onChange` runs after the person answered.
 * @param {() => void} onChange
 */
export function notificationControl(onChange) {
  if (!canNotify()) return null;
  const permission = Notification.permission;
  if (permission === "granted") return h("p", { class: "hint", "data-test": "notify-on" }, "Notifications are on: changes to your bookings show even when the app is in the background.");
  if (permission === "denied") return h("p", { class: "hint" }, "Notifications are blocked for this site: allow them in the browser's site settings to hear about changes in the background.");
  return h(
    "button",
    {
      type: "button",
      class: "link",
      "data-test": "notify-ask",
      on: { click: () => Notification.requestPermission().then(onChange, onChange) },
    },
    "Notify me when a booking changes while the app is in the background",
  );
}
