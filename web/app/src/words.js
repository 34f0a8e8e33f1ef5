// What the app says: booking states, refusal reasons and relay errors in words.

/** Why the relay (or this device) refused a write, by reason code. */
const REASONS = {
  party_too_large: "the party is larger than this slot allows",
  forbidden: "this account may not do that",
  schema: "the booking was not well formed",
  backdated: "it was made too long ago on a device whose login has expired",
  certificate_expired: "this device's login had expired: log in again",
  unknown_certificate: "this device's login is not known to the relay: log in again",
  revoked: "this device was logged out",
  clock_skew: "this device's clock is too far off",
  unknown_reservation: "the booking it refers to does not exist",
  foreign_client: "it was written under another device's identity",
  bad_signature: "its signature did not check out",
};

/** A reason as a person reads it: `party_too_large: ...` becomes words. @param {string | null} reason */
export function reasonInWords(reason) {
  if (!reason) return "no reason given";
  const code = reason.split(/[:\s]/, 1)[0];
  return /** @type {Record<string, string>} */ (REASONS)[code] ?? reason;
}

/** The reason the shop gave, after a colon (shown as text, whatever it holds). @param {string | null | undefined} reason */
const because = (reason) => (reason && reason.trim() ? `: ${reason.trim()}` : "");

/**
 * A booking's state in words.
 * @param {{state: string, position: number | null, final: boolean, staffConfirmed: boolean, pending: boolean, endedBy?: string | null, reason?: string | null}} view
 * @param {{state: string, reason: string | null} | undefined} refused the outbox entry the relay refused, if any
 */
export function stateInWords(view, refused) {
  if (refused) return `refused: ${reasonInWords(refused.reason)}`;
  if (view.pending) return "saved on this device, not yet sent";
  switch (view.state) {
    case "confirmed":
      if (!view.final) return "confirmed, waiting for the shop's sequence";
      return view.staffConfirmed ? "confirmed, final, confirmed by the shop" : "confirmed, final";
    case "waitlisted":
      return `waitlisted, place ${view.position ?? "?"}`;
    case "cancelled":
      return view.endedBy === "shop" ? `cancelled by the shop${because(view.reason)}` : "cancelled";
    case "declined":
      return `declined by the shop${because(view.reason)}`;
    case "no_show":
      return "marked as not come (no-show)";
    case "too_large":
      return "refused: the party is larger than the slot";
    default:
      return view.state;
  }
}

/**
 * What changed, for the notice.
 * @param {string} kind @param {any} detail @param {(r: any) => string} describe a booking in words
 */
export function noticeInWords(kind, detail, describe = (r) => `${r.shop} on ${r.day} (${r.slot})`) {
  const r = detail?.reservation;
  const what = r ? `Your booking at ${describe(r)}` : "A booking";
  switch (kind) {
    case "promoted":
      return `${what} moved up from the waitlist: it is confirmed.`;
    case "demoted":
      return `${what} lost its seat to an earlier booking: waitlisted, place ${detail.position ?? "?"}.`;
    case "waitlisted":
      return `${what} is waitlisted, place ${detail.position ?? "?"}.`;
    case "final":
      return `${what} is confirmed and final.`;
    case "declined":
      return `${what} was declined by the shop${because(r?.reason)}.`;
    case "cancelled":
      return r?.endedBy === "shop" ? `${what} was cancelled by the shop${because(r?.reason)}.` : `${what} is cancelled.`;
    case "no_show":
      return `${what} was marked as no-show.`;
    case "too_large":
      return `${what} is refused: the party is larger than the slot.`;
    case "refused":
      return `The relay refused a change: ${reasonInWords(detail?.reason ?? null)}.`;
    case "stopped":
      return "Syncing stopped: log in again.";
    default:
      return `${what} changed.`;
  }
}

/** A failed account call in words. @param {any} err */
export function accountErrorInWords(err, action = "log in") {
  const status = err?.status;
  const raw = String(err?.message ?? err);
  const detail = raw.replace(/^\d+ [a-z_]+: ?/, "");
  if (status === 0) return "Cannot reach the relay: check the connection and try again.";
  if (status === 401) return "Wrong email or password.";
  if (status === 409) return "An account with this email exists already: log in instead.";
  if (status === 429) return "Too many attempts: wait a minute and try again.";
  if (status === 403) return "This account is disabled.";
  if (status === 400 || status === 422) return `Could not ${action}: ${detail || "check what you typed"}.`;
  return `Could not ${action}: ${detail || raw}.`;
}
