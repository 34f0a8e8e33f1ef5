// The booking verdict (crdt_core/verdict.py): who is confirmed and who waits, from merged data alone.
// Order: stamped claims by their lowest stamp number, then unstamped ones by (HLC, customer, id).
// Seats: strict first-come, first-served; cancelled and declined claims hold none, a no-show keeps
// the seat it held, and a claim whose party exceeds its open slot's capacity is too_large (no seats,
// no waitlist place, blocks nobody). A customer's claim beyond the slot's per_customer (1 when
// absent) counted claims (not too_large, not duplicate) still active at its HLC is duplicate (no seats, no place, blocks nobody, counts for
// nobody). Final: stamped within the gap-free stamp prefix.

import { compareCodePoints } from "./bytes.js";
import { capacityOn } from "./schema.js";

/** @typedef {import("./schema.js").TypedRecord} TypedRecord */

export const ClaimState = Object.freeze({
  CONFIRMED: "confirmed",
  WAITLISTED: "waitlisted",
  CANCELLED: "cancelled",
  DECLINED: "declined",
  NO_SHOW: "no_show",
  TOO_LARGE: "too_large",
  DUPLICATE: "duplicate",
});

/**
 * A bookings document's claims as typed records: the verdict's only input besides capacities.
 * @typedef {object} BookingsState
 * @property {Map<string, TypedRecord>} reservations by id
 * @property {Map<string, TypedRecord>} events by id
 * @property {Map<number, TypedRecord>} stamps by number
 */

/**
 * @typedef {object} ClaimVerdict
 * @property {string} reservationId
 * @property {string} slot
 * @property {string} customer
 * @property {number} party
 * @property {string} state one of ClaimState
 * @property {number | null} position 1-based waitlist place, for waitlisted claims
 * @property {number | null} stamp
 * @property {boolean} final
 * @property {number} rank 0-based place in the slot's claim order
 * @property {boolean} staffConfirmed
 * @property {boolean} holdsSeats
 */

/** @typedef {{slot: string, capacity: number, seatsTaken: number, claims: ClaimVerdict[]}} SlotVerdict */
/** @typedef {{slots: Map<string, SlotVerdict>, claims: Map<string, ClaimVerdict>, stampPrefix: number}} Verdict */

/** Python compares these tuples element-wise by code point. @param {string[]} a @param {string[]} b */
function compareTuples(a, b) {
  for (let i = 0; i < a.length; i++) {
    const c = compareCodePoints(a[i], b[i]);
    if (c !== 0) return c;
  }
  return 0;
}

/** Where an unstamped claim ranks: (HLC, customer, reservation id). @param {TypedRecord} res */
export function tentativeKey(res) {
  return [res.hlc, res.customer, res.id];
}

/**
 * The order the relay stamps claims that reach it together: their tentative order, so a carrier's
 * update order never changes a verdict a device already showed.
 * @param {Iterable<TypedRecord>} claims
 */
export function stampOrder(claims) {
  return [...claims].sort((a, b) => compareTuples(tentativeKey(a), tentativeKey(b)));
}

/** The too_large test, shared with the relay's party_too_large refusal. @param {number} party @param {number} capacity */
export function exceedsCapacity(party, capacity) {
  return 0 < capacity && capacity < party;
}

/**
 * The duplicate test, shared with the relay's duplicate_booking refusal: `heldEnds` are the end
 * HLCs (null: still active) of the customer's earlier counted claims on the slot; the claim is a
 * repeat when `limit` of them were still active at its HLC.
 * @param {Array<string | null>} heldEnds @param {string} claimHlc @param {number} limit
 */
export function repeatBooking(heldEnds, claimHlc, limit) {
  return heldEnds.filter((end) => end === null || compareCodePoints(end, claimHlc) > 0).length >= limit;
}

/** Highest n such that stamps 1..n are all present. @param {Map<number, unknown>} stamps */
export function stampPrefix(stamps) {
  let n = 0;
  while (stamps.has(n + 1)) n++;
  return n;
}

/**
 * Every reservation in verdict order, with its lowest stamp number (null when unstamped).
 * @param {BookingsState} state
 * @returns {Array<[TypedRecord, number | null]>}
 */
export function claimOrder(state) {
  /** @type {Map<string, number>} */
  const stampOf = new Map();
  for (const [no, stamp] of state.stamps) {
    const held = stampOf.get(stamp.reservation);
    if (state.reservations.has(stamp.reservation) && (held === undefined || no < held)) stampOf.set(stamp.reservation, no);
  }
  const all = [...state.reservations.values()];
  const stamped = all.filter((r) => stampOf.has(r.id)).sort((a, b) => /** @type {number} */ (stampOf.get(a.id)) - /** @type {number} */ (stampOf.get(b.id)));
  const tentative = stampOrder(all.filter((r) => !stampOf.has(r.id)));
  return [...stamped.map((r) => /** @type {[TypedRecord, number | null]} */ ([r, stampOf.get(r.id) ?? null])), ...tentative.map((r) => /** @type {[TypedRecord, number | null]} */ ([r, null]))];
}

/**
 * (terminal state or null for active, staff confirmed): the earliest cancel/decline by (HLC, id)
 * wins; else a no_show; a confirm only records that staff acknowledged it.
 * @param {TypedRecord[]} events
 * @returns {[string | null, boolean, string | null]} and the HLC of the event that ended it
 */
function status(events) {
  const ending = endingEvent(events);
  let noShow = false;
  let confirmed = false;
  for (const ev of events) {
    if (ev.type === "no_show") noShow = true;
    else if (ev.type === "confirm") confirmed = true;
  }
  if (ending !== null) return [ending.type === "cancel" ? ClaimState.CANCELLED : ClaimState.DECLINED, confirmed, ending.hlc];
  return [noShow ? ClaimState.NO_SHOW : null, confirmed, null];
}

/**
 * The cancel or decline that ended a reservation: the earliest by (HLC, id) among its events, or
 * null. Its `by` (who: the customer or the shop's staff) and `reason` are what a customer is told.
 * @param {Iterable<TypedRecord>} events one reservation's events
 * @returns {TypedRecord | null}
 */
export function endingEvent(events) {
  /** @type {TypedRecord | null} */
  let ending = null;
  for (const ev of events) {
    if ((ev.type === "cancel" || ev.type === "decline") && (ending === null || compareTuples([ev.hlc, ev.id], [ending.hlc, ending.id]) < 0)) ending = ev;
  }
  return ending;
}

/**
 * The verdict for one bookings document.
 * @param {BookingsState} state
 * @param {Map<string, number> | Record<string, number>} capacities seats per slot id on the document's day
 *   (`slotCapacities`); a slot with no known template has capacity 0, so its claims wait
 * @param {Map<string, number> | Record<string, number>} [limits] active claims one customer may hold
 *   per slot id (`perCustomerLimits`); a slot missing here allows 1
 * @returns {Verdict}
 */
export function computeVerdict(state, capacities, limits = new Map()) {
  const cap = capacities instanceof Map ? capacities : new Map(Object.entries(capacities));
  const lim = limits instanceof Map ? limits : new Map(Object.entries(limits));
  /** @type {Map<string, TypedRecord[]>} */
  const eventsOf = new Map();
  for (const ev of state.events.values()) eventsOf.set(ev.reservation, [...(eventsOf.get(ev.reservation) ?? []), ev]);
  const prefix = stampPrefix(state.stamps);
  /** @type {Map<string, Array<[TypedRecord, number | null]>>} */
  const bySlot = new Map();
  for (const [res, no] of claimOrder(state)) bySlot.set(res.slot, [...(bySlot.get(res.slot) ?? []), [res, no]]);

  /** @type {Map<string, SlotVerdict>} */
  const slots = new Map();
  /** @type {Map<string, ClaimVerdict>} */
  const claims = new Map();
  for (const slot of [...bySlot.keys()].sort(compareCodePoints)) {
    const capacity = Math.max(0, cap.get(slot) ?? 0);
    const limit = lim.get(slot) ?? 1;
    /** @type {Map<string, Array<string | null>>} per customer: end HLCs of its counted claims */
    const held = new Map();
    let left = capacity;
    let blocked = false;
    let waiting = 0;
    /** @type {ClaimVerdict[]} */
    const out = [];
    /** @type {Array<[TypedRecord, number | null]>} */ (bySlot.get(slot)).forEach(([res, no], rank) => {
      const [terminal, staffOk, endHlc] = status(eventsOf.get(res.id) ?? []);
      /** @type {number | null} */
      let position = null;
      let holds = false;
      let stateNow;
      const tooLarge = exceedsCapacity(res.party, capacity);
      const mine = held.get(res.customer) ?? [];
      held.set(res.customer, mine);
      const repeat = !tooLarge && repeatBooking(mine, res.hlc, limit);
      if (!repeat && !tooLarge) mine.push(endHlc); // a too_large claim holds nothing: it counts for nothing
      if (terminal === ClaimState.CANCELLED || terminal === ClaimState.DECLINED) stateNow = terminal;
      else if (tooLarge) stateNow = ClaimState.TOO_LARGE; // skipped by the walk
      else if (repeat) stateNow = ClaimState.DUPLICATE; // skipped by the walk
      else if (!blocked && res.party <= left) {
        left -= res.party;
        holds = true;
        stateNow = terminal ?? ClaimState.CONFIRMED;
      } else {
        blocked = true;
        stateNow = terminal ?? ClaimState.WAITLISTED;
        if (stateNow === ClaimState.WAITLISTED) position = ++waiting; // a blocked no-show is not queued
      }
      /** @type {ClaimVerdict} */
      const cv = {
        reservationId: res.id,
        slot,
        customer: res.customer,
        party: res.party,
        state: stateNow,
        position: stateNow === ClaimState.WAITLISTED ? position : null,
        stamp: no,
        final: no !== null && no <= prefix,
        rank,
        staffConfirmed: staffOk,
        holdsSeats: holds,
      };
      out.push(cv);
      claims.set(res.id, cv);
    });
    slots.set(slot, { slot, capacity, seatsTaken: capacity - left, claims: out });
  }
  return { slots, claims, stampPrefix: prefix };
}

/**
 * The current template of every slot: the greatest (HLC, record key) wins (how capacity changes).
 * @param {Map<string, TypedRecord> | Record<string, TypedRecord>} slotRecords `slot` records by record key
 * @returns {Map<string, TypedRecord>}
 */
export function currentTemplates(slotRecords) {
  return newestPer(slotRecords, (rec) => rec.id);
}

/**
 * Per logical id (`ident`), the record that supersedes the others: the greatest (HLC, record key).
 * @param {Map<string, TypedRecord> | Record<string, TypedRecord>} records by record key
 * @param {(rec: TypedRecord) => string} ident
 * @returns {Map<string, TypedRecord>}
 */
export function newestPer(records, ident) {
  const entries = records instanceof Map ? [...records] : Object.entries(records);
  /** @type {Map<string, [string, string, TypedRecord]>} */
  const best = new Map();
  for (const [key, rec] of entries) {
    const held = best.get(ident(rec));
    if (held === undefined || compareTuples([rec.hlc, key], [held[0], held[1]]) > 0) best.set(ident(rec), [rec.hlc, key, rec]);
  }
  return new Map([...best].map(([id, [, , rec]]) => [id, rec]));
}

/**
 * Per slot id, the active claims one customer may hold on it on one day (the verdict's `limits`):
 * the current template's `per_customer`, 1 when absent.
 * @param {Map<string, TypedRecord>} templates from currentTemplates
 */
export function perCustomerLimits(templates) {
  return new Map([...templates].map(([slot, rec]) => [slot, rec.per_customer ?? 1]));
}

/**
 * Seats per slot id on `day` from the current templates (the verdict's `capacities`).
 * @param {Map<string, TypedRecord>} templates from currentTemplates @param {string} day YYYY-MM-DD
 */
export function slotCapacities(templates, day) {
  return new Map([...templates].map(([slot, rec]) => [slot, capacityOn(rec, day)]));
}

/**
 * A claim whose state changed between two verdicts: what a client notifies its user about. `kind`:
 * new, promoted, demoted, confirmed, waitlisted, cancelled, declined, no_show, too_large, duplicate,
 * final, moved.
 * @typedef {{reservationId: string, customer: string, before: string | null, after: string, kind: string}} VerdictChange
 */

/**
 * @param {Verdict | null} old @param {Verdict} next
 * @returns {VerdictChange[]}
 */
export function diffVerdicts(old, next) {
  /** @type {VerdictChange[]} */
  const changes = [];
  for (const rid of [...next.claims.keys()].sort(compareCodePoints)) {
    const after = /** @type {ClaimVerdict} */ (next.claims.get(rid));
    const before = old?.claims.get(rid);
    let kind;
    if (before === undefined) kind = "new";
    else if (before.state !== after.state) {
      if (after.state === ClaimState.CONFIRMED && before.state === ClaimState.WAITLISTED) kind = "promoted";
      else if (after.state === ClaimState.WAITLISTED && before.state === ClaimState.CONFIRMED) kind = "demoted";
      else kind = after.state;
    } else if (after.final && !before.final) kind = "final";
    else if (after.position !== before.position) kind = "moved";
    else continue;
    changes.push({ reservationId: rid, customer: after.customer, before: before ? before.state : null, after: after.state, kind });
  }
  return changes;
}
