// The offline-first client (docs/web.md, "The client"): documents, outbox, cursors and the signed-in
// device kept in a Store; a sync loop that follows docs/protocol.md's client rules (subscribe and
// catch up, flush the outbox in order and drop an entry only on its ack, refused writes move the
// document to its next Yjs client-id generation and rebuild it from the relay's state, live updates,
// sequence gaps, reconnecting with backoff and jitter after the close codes say so, token refresh);
// and a small app API (catalog, shops, a day's slots with seats left, book, cancel, staff actions,
// my reservations, the outbox) with status and events. client/sync/service.py and client/local/client.py are the
// reference. Everything that arrives from the relay is validated before it touches a document.

import * as Y from "yjs";
import { CertificateCache } from "./certs.js";
import { clientIdFor, GENERATIONS } from "./clientids.js";
import { ed25519PublicKey } from "./crypto.js";
import { openRecord } from "./records.js";
import { ValidationError } from "./errors.js";
import { HybridClock } from "./hlc.js";
import { DEFAULT_MAX_DOWNLOAD, closeAction, decodeMessage, encodeMessage } from "./messages.js";
import { authProof, fromBase64Url, restProofHeaders, toBase64Url } from "./pop.js";
import { bookedDays, readBookings, readMap, shopStaff, slotTemplates } from "./reader.js";
import { REFRESH_COOKIE_HEADER, RelayError, post, login as relayLogin, register as relayRegister } from "./relay-api.js";
import { capacityOn, neededVersion, parseDocId } from "./schema.js";
import { signRecord } from "./records.js";
import { MemoryStore } from "./store.js";
import { Reason, validateUpdate } from "./validation.js";
import { computeVerdict, currentTemplates, diffVerdicts, endingEvent, perCustomerLimits, slotCapacities } from "./verdict.js";
import { newId } from "./booking.js";

/** @typedef {import("./store.js").Store} Store */
/** @typedef {import("./store.js").StoreOp} StoreOp */
/** @typedef {import("./relay-api.js").Session} Session */
/** @typedef {import("./verdict.js").Verdict} Verdict */
/** @typedef {import("./messages.js").Message} Message */

/**
 * One local write the relay has not acknowledged: the Yjs update, and the signed records it carries
 * (so a rebuild can write the same bytes again under the document's next client id).
 * @typedef {object} OutboxEntry
 * @property {string} id zero-padded sequence number: the outbox's order, and the `uid` on the wire
 * @property {string} docId
 * @property {Uint8Array} update
 * @property {Array<{root: string, key: string, raw: Uint8Array}>} records
 * @property {"pending" | "refused"} state
 * @property {string | null} reason why the relay refused it (`schema: ...`, `forbidden: ...`)
 * @property {string} action book, cancel, confirm, decline or no_show; `booked_day` for the
 *   listing of a (shop, day) in the user's document that came with the first booking there
 * @property {string} reservationId (for `booked_day`: the booking that listed the day)
 * @property {number} createdMs
 * @property {string} [signer] the id of the certificate that signed its records (absent in entries
 *   stored before it was kept: read from the records)
 */

/**
 * @typedef {object} Status
 * @property {"idle" | "connecting" | "online" | "offline" | "stopped"} phase idle: not started; offline: waiting to reconnect; stopped: needs the user (see `stoppedBy`)
 * @property {boolean} online
 * @property {number} pending the user's changes (bookings, cancels, staff actions) waiting for an ack; the
 *   day listings (`booked_day` entries) that go with first bookings are not counted
 * @property {number} refused the user's changes the relay refused (day listings not counted)
 * @property {number | null} lastSyncMs when every document was last caught up and the outbox empty
 * @property {string | null} stoppedBy login (log in again) or stop (policy, too big, account disabled), with the close code
 */

const OUTBOX_WIDTH = 12;
const EMPTY_SV = new Uint8Array([0]);

/** @param {number} n */
const outboxKey = (n) => String(n).padStart(OUTBOX_WIDTH, "0");

/** Seconds-level backoff with full jitter: half to all of min(max, base * 2^attempt). @param {number} attempt @param {{baseMs: number, maxMs: number}} o */
export function backoffDelay(attempt, { baseMs, maxMs }, random = Math.random) {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.round(ceiling * (0.5 + random() / 2));
}

/** The certificate id that signed an outbox entry's records. @param {OutboxEntry} entry */
function signerOf(entry) {
  return entry.signer ?? String(openRecord(entry.records[0].raw, { canonical: false }).signer);
}

/** A bookings document id. @param {string} shop @param {string} day */
export const bookingsDoc = (shop, day) => `bookings:${shop}:${day}`;

/** The action of the outbox entry that lists a (shop, day) in the user's document. */
const LIST_DAY = "booked_day";

/** A date as YYYY-MM-DD on the device's calendar. @param {Date} d */
const localDay = (d) => `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;

/**
 * The first day still followed when the user's document lists it: days at least two days before
 * `now` (the device's calendar) are settled and not fetched on a device that never held them.
 * @param {number} nowMs
 */
export function followedFrom(nowMs) {
  const d = new Date(nowMs);
  d.setDate(d.getDate() - 1);
  return localDay(d);
}

/**
 * Sign nothing new: write already-signed records (with the certificate if the document lacks it)
 * under the device's id for `generation`, validated before it touches `doc`. Returns the update,
 * or null when the document already holds every key.
 * @param {Y.Doc} doc @param {string} docId @param {Session} session
 * @param {Array<{root: string, key: string, raw: Uint8Array}>} records @param {number} generation
 * @param {{certId: string, certificate: Uint8Array}} [signer] the certificate that signed `records`
 *   (default the session's): the update goes under that certificate's client id
 * @param {Set<string> | null} [staff] the shop's staff list, for a bookings document (`staffFor`)
 */
async function writeSigned(doc, docId, session, records, generation, signer = session, staff = null) {
  const missing = records.filter((r) => !doc.getMap(r.root).has(r.key));
  if (missing.length === 0) return null;
  const scratch = new Y.Doc();
  Y.applyUpdate(scratch, Y.encodeStateAsUpdate(doc));
  scratch.clientID = await clientIdFor(signer.certId, generation);
  const before = Y.encodeStateVector(scratch);
  scratch.transact(() => {
    const certs = scratch.getMap("certs");
    if (!certs.has(signer.certId)) certs.set(signer.certId, signer.certificate);
    for (const r of missing) scratch.getMap(r.root).set(r.key, r.raw);
  });
  const update = Y.encodeStateAsUpdate(scratch, before);
  await validateUpdate(parseDocId(docId), doc, update, session.trust, { nowMs: Date.now() }, staff);
  Y.applyUpdate(doc, update);
  return update;
}

export class QuickSlotClient {
  /**
   * @param {string} relay @param {Store} store
   * @param {{WebSocketImpl?: typeof WebSocket, backoff?: {baseMs: number, maxMs: number}, requestTimeoutMs?: number, refreshCookie?: boolean}} options
   */
  constructor(relay, store, options) {
    this.relay = relay;
    this.store = store;
    /** The refresh token lives in the relay's HttpOnly cookie, not in the store (a page on the relay's origin). */
    this.refreshCookie = options.refreshCookie ?? false;
    this.WebSocketImpl = options.WebSocketImpl ?? globalThis.WebSocket;
    this.backoff = options.backoff ?? { baseMs: 250, maxMs: 30000 };
    this.requestTimeoutMs = options.requestTimeoutMs ?? 20000;
    /** @type {Session | null} */
    this.session = null;
    /** @type {Map<string, {doc: Y.Doc, generation: number, rebuild: boolean}>} */
    this.docs = new Map();
    /** @type {Map<string, OutboxEntry>} */
    this.entries = new Map();
    this.nextEntry = 1;
    /** @type {Map<string, Verdict>} the last verdict of each bookings day, for events */
    this.verdicts = new Map();
    /** @type {WeakMap<Verdict, Map<string, any>>} the ending events of a verdict's day (`endingsOf`) */
    this.endings = new WeakMap();
    /** @type {Map<string, Set<(detail: any) => void>>} */
    this.listeners = new Map();
    /** @type {Status} */
    this.statusValue = { phase: "idle", online: false, pending: 0, refused: 0, lastSyncMs: null, stoppedBy: null };
    this.running = false;
    this.attempt = 0;
    /** @type {any} the current connection's state */
    this.conn = null;
    /** @type {ReturnType<typeof setTimeout> | null} */
    this.retryTimer = null;
    /** Work on documents runs one step at a time (validation and storage are async). */
    this.queue = Promise.resolve();
    /** @type {HybridClock | null} */
    this.clock = null;
    /** @type {import("./certs.js").Certificate | null} the device certificate */
    this.rights = null;
  }

  /**
   * Open a client for `relay` on `store` (default: a MemoryStore), loading whatever the store
   * kept: the signed-in device, documents, outbox. `refreshCookie`: a browser page served by the
   * relay keeps its refresh token in the relay's HttpOnly cookie, out of reach of page script and
   * out of the store (docs/web.md); elsewhere (node, another origin) it stays in the store.
   * @param {{relay: string, store?: Store, WebSocketImpl?: typeof WebSocket, backoff?: {baseMs: number, maxMs: number}, requestTimeoutMs?: number, refreshCookie?: boolean}} options
   */
  static async open({ relay, store = new MemoryStore(), ...options }) {
    const client = new QuickSlotClient(relay, store, options);
    await client.load();
    return client;
  }

  async load() {
    const profile = await this.store.get("profile", "device");
    if (profile) await this.adopt(profile);
    for (const [docId, saved] of await this.store.entries("documents")) {
      const doc = new Y.Doc();
      Y.applyUpdate(doc, saved.state);
      this.docs.set(docId, { doc, generation: saved.generation, rebuild: saved.rebuild });
      if (parseDocId(docId).kind === "bookings") this.verdicts.set(docId, this.verdictOf(docId));
    }
    for (const [key, entry] of await this.store.entries("outbox")) {
      this.entries.set(key, entry);
      this.nextEntry = Math.max(this.nextEntry, Number(key) + 1);
    }
    if (this.session) await this.followBookedDays();
    this.updateStatus({});
  }

  /** @param {any} profile */
  async adopt(profile) {
    const trust = new CertificateCache(profile.relayKeys);
    const cert = await trust.verify(profile.certificate);
    // profiles stored before the public key was kept hold a raw seed
    const publicKey = profile.publicKey ?? (await ed25519PublicKey(profile.seed));
    this.session = { ...profile, publicKey, certificates: profile.certificates ?? {}, certId: cert.certId, trust };
    this.rights = cert;
    this.clock = new HybridClock(cert.certId);
  }

  // --- account -----------------------------------------------------------------------------------

  /** @param {{email: string, password: string, displayName: string}} account */
  register(account) {
    return relayRegister(this.relay, account);
  }

  /**
   * Log in with a fresh device key and keep the device in the store.
   * @param {{email: string, password: string}} credentials
   */
  async login(credentials) {
    const session = await relayLogin(this.relay, credentials, { refreshCookie: this.refreshCookie });
    const profile = {
      relay: this.relay,
      userId: session.userId,
      accessToken: session.accessToken,
      refreshToken: session.refreshToken,
      seed: session.seed,
      publicKey: session.publicKey,
      certificate: session.certificate,
      // earlier certificates whose records still wait: a rebuild writes them again under their ids
      certificates: this.signersStillNeeded(session.certId),
      relayKeys: session.trust.trustedKeys,
    };
    await this.store.batch([{ table: "profile", key: "device", value: profile }]);
    await this.adopt(profile);
    await this.followBookedDays();
    this.updateStatus({ stoppedBy: null });
    return this.user;
  }

  /**
   * The earlier certificates (by id) that signed pending outbox entries, for a new login whose
   * certificate is `certId`.
   * @param {string} certId @returns {Record<string, Uint8Array>}
   */
  signersStillNeeded(certId) {
    const s = this.session;
    if (!s) return {};
    const held = { ...s.certificates, [s.certId]: s.certificate };
    /** @type {Record<string, Uint8Array>} */
    const kept = {};
    for (const entry of this.entries.values()) {
      const signer = signerOf(entry);
      if (entry.state === "pending" && signer !== certId && held[signer]) kept[signer] = held[signer];
    }
    return kept;
  }

  /** The signed-in user and the rights its certificate carries, or null. */
  get user() {
    if (!this.session || !this.rights) return null;
    const c = this.rights;
    return { userId: this.session.userId, admin: c.roles.has("admin"), ownerOf: [...c.ownerOf].sort(), staffOf: [...c.staffOf].sort() };
  }

  /**
   * Rotate the refresh token (close 4001); a refused refresh means: log in again. With
   * `refreshCookie` the browser sends the cookie and keeps the new one; a token still in the store
   * (kept before the cookie) is presented once, and the relay moves it into the cookie.
   */
  async refresh() {
    const s = this.requireSession();
    const body = { device_public_key: toBase64Url(s.publicKey), ...(s.refreshToken ? { refresh_token: s.refreshToken } : {}) };
    const response = await post(this.relay, "/api/v1/auth/refresh", body, this.refreshCookie ? REFRESH_COOKIE_HEADER : {});
    if (response.status !== 200) throw new RelayError(response.status, "refresh_refused", "log in again");
    const answer = await response.json();
    const profile = { ...(await this.store.get("profile", "device")), accessToken: answer.access_token, refreshToken: answer.refresh_token ?? null };
    // A renewed certificate carries the account's current grants, but has another id (other Yjs
    // client ids): the old one is kept for as long as pending entries it signed may need writing
    // again (a rebuild writes them under their signer's ids), as after a new login.
    if (answer.device_certificate) {
      try {
        const renewed = fromBase64Url(answer.device_certificate);
        const cert = await s.trust.verify(renewed);
        if (cert.certId !== s.certId) {
          profile.certificates = this.signersStillNeeded(cert.certId);
          profile.certificate = renewed;
        }
      } catch {}
    }
    await this.store.batch([{ table: "profile", key: "device", value: profile }]);
    await this.adopt(profile);
    this.emit("refreshed", {});
  }

  /**
   * Log out at the relay (its session family is revoked, and the refresh cookie cleared) and stop
   * syncing; the caller forgets the store. An expired access token is refreshed once first. Never
   * throws: offline, the relay is not told (the refresh token dies when it expires, or with the
   * cookie the next login replaces).
   */
  async logout() {
    this.stop();
    const path = "/api/v1/auth/logout";
    const attempt = async () => {
      const s = this.requireSession();
      const headers = { ...(await restProofHeaders(s.accessToken, s.seed, "POST", path)), ...(this.refreshCookie ? REFRESH_COOKIE_HEADER : {}) };
      return post(this.relay, path, {}, headers);
    };
    try {
      let response = await attempt();
      if (response.status === 401) {
        await this.refresh();
        response = await attempt();
      }
      return response.status === 204;
    } catch {
      return false;
    }
  }

  requireSession() {
    if (!this.session) throw new Error("not logged in");
    return this.session;
  }

  // --- status and events -------------------------------------------------------------------------

  /** @returns {Status} */
  get status() {
    return { ...this.statusValue };
  }

  /**
   * Listen to an event; returns a function that stops listening. Events: `status`, `online`,
   * `offline`, `change` ({docId}), `acked` ({entry}), `refused` ({entry, reason}), `confirmed`,
   * `waitlisted` ({position}), `promoted`, `demoted`, `final`, `cancelled`, `declined`, `no_show`,
   * `too_large`, `duplicate` (each with {reservation}), `stopped` ({code, action}), `refreshed` (the token was rotated), `error` ({docId, code, reason}).
   * @param {string} type @param {(detail: any) => void} listener
   */
  on(type, listener) {
    const set = this.listeners.get(type) ?? new Set();
    set.add(listener);
    this.listeners.set(type, set);
    return () => set.delete(listener);
  }

  /** @param {string} type @param {any} [detail] */
  emit(type, detail = {}) {
    for (const listener of this.listeners.get(type) ?? []) {
      try {
        listener(detail);
      } catch {}
    }
  }

  /** @param {Partial<Status>} change */
  updateStatus(change) {
    const entries = [...this.entries.values()].filter((e) => e.action !== LIST_DAY);
    const next = {
      ...this.statusValue,
      ...change,
      pending: entries.filter((e) => e.state === "pending").length,
      refused: entries.filter((e) => e.state === "refused").length,
    };
    next.online = next.phase === "online";
    const changed = JSON.stringify(next) !== JSON.stringify(this.statusValue);
    this.statusValue = next;
    if (changed) this.emit("status", this.status);
  }

  // --- documents ---------------------------------------------------------------------------------

  /**
   * Keep `docId` on this device and in sync (subscribed whenever online); returns its Y.Doc.
   * @param {string} docId
   */
  async watch(docId) {
    await this.hold([docId]);
    return /** @type {{doc: Y.Doc}} */ (this.docs.get(docId)).doc;
  }

  /**
   * Take the documents this device lacks into `docs` at once (before any await, so a sync loop
   * waiting for every document sees them), then store and subscribe them.
   * @param {string[]} docIds
   */
  async hold(docIds) {
    const fresh = [...new Set(docIds)].filter((docId) => (parseDocId(docId), !this.docs.has(docId)));
    if (fresh.length === 0) return;
    for (const docId of fresh) this.docs.set(docId, { doc: new Y.Doc(), generation: 0, rebuild: false });
    await this.store.batch(fresh.map((docId) => this.docOp(docId)));
    if (this.conn?.welcomed) for (const docId of fresh) this.subscribe(docId);
  }

  /**
   * Follow the user's own document and the days it lists (`booked_day`, written with the first
   * booking in a (shop, day) by whichever device made it), with their shops: the bookings the
   * user made on other devices show in `reservations()` after a sync, without opening each day.
   * A listed day at least two days past (`followedFrom`) is not fetched unless this device holds
   * it already. Runs on login and load, and whenever the user's document changes.
   * @param {number} [nowMs]
   */
  followBookedDays(nowMs = Date.now()) {
    const s = this.session;
    if (!s) return Promise.resolve();
    const userDoc = `user:${s.userId}`;
    const docs = [userDoc];
    const held = this.docs.get(userDoc);
    if (held) {
      const from = followedFrom(nowMs);
      for (const { shop, day } of bookedDays(held.doc, s.userId)) {
        const docId = bookingsDoc(shop, day);
        if (day < from && !this.docs.has(docId)) continue;
        docs.push(`shop:${shop}`, docId);
      }
    }
    return this.hold(docs);
  }

  /** @param {string} docId @returns {StoreOp} */
  docOp(docId) {
    const s = /** @type {{doc: Y.Doc, generation: number, rebuild: boolean}} */ (this.docs.get(docId));
    return { table: "documents", key: docId, value: { state: Y.encodeStateAsUpdate(s.doc), generation: s.generation, rebuild: s.rebuild } };
  }

  /** @param {string} docId */
  verdictOf(docId) {
    const ref = parseDocId(docId);
    if (ref.kind !== "bookings") throw new Error("not a bookings document");
    const day = /** @type {Y.Doc} */ (this.docs.get(docId)?.doc);
    const shopId = `shop:${ref.shopId}`;
    const shop = this.docs.get(shopId)?.doc;
    const templates = shop ? slotTemplates(shop, shopId) : new Map();
    return computeVerdict(readBookings(day, docId), slotCapacities(templates, ref.day), perCustomerLimits(templates));
  }

  /**
   * For a bookings document, the users its shop's staff list names (from this device's copy of the
   * shop document): they have staff rights there. Null for other documents.
   * @param {string} docId @returns {Set<string> | null}
   */
  staffFor(docId) {
    const ref = parseDocId(docId);
    if (ref.kind !== "bookings") return null;
    const shop = this.docs.get(`shop:${ref.shopId}`)?.doc;
    return shop ? shopStaff(shop, `shop:${ref.shopId}`) : null;
  }

  /** A document changed: tell listeners, and what changed for the user's own reservations. @param {string} docId */
  changed(docId) {
    this.emit("change", { docId });
    const ref = parseDocId(docId);
    if (ref.kind === "user" && docId === `user:${this.session?.userId}`) {
      this.followBookedDays().catch((err) => this.emit("error", { docId, code: "client", reason: String(err?.message ?? err) }));
    }
    const days = ref.kind === "bookings" ? [docId] : ref.kind === "shop" ? [...this.docs.keys()].filter((d) => d.startsWith(`bookings:${ref.shopId}:`)) : [];
    for (const day of days) {
      const next = this.verdictOf(day);
      const before = this.verdicts.get(day);
      this.verdicts.set(day, next);
      for (const change of diffVerdicts(before ?? null, next)) {
        if (change.customer !== this.session?.userId) continue;
        const claim = next.claims.get(change.reservationId);
        const reservation = this.view(day, change.reservationId);
        const kind = change.kind === "new" || change.kind === "moved" ? change.after : change.kind;
        this.emit(kind, { reservation, position: claim?.position ?? null });
        if (claim?.final && change.kind !== "final" && !before?.claims.get(change.reservationId)?.final) this.emit("final", { reservation });
      }
    }
  }

  // --- the app API: reading ----------------------------------------------------------------------

  /** Categories of the catalog (the catalog is kept in sync from now on). */
  async categories() {
    const doc = await this.watch("catalog");
    return [...readMap(doc, "catalog", "categories").values()]
      .map((c) => ({ id: c.id, name: c.name, icon: c.icon }))
      .sort((a, b) => (a.id < b.id ? -1 : 1));
  }

  /** Active shops of the catalog, optionally of one category. @param {{category?: string}} [filter] */
  async shops({ category } = {}) {
    const doc = await this.watch("catalog");
    return [...readMap(doc, "catalog", "shops").values()]
      .filter((s) => s.active && (category === undefined || s.category === category))
      .map((s) => ({ id: s.id, name: s.name, category: s.category, location: s.location, lat: s.lat, lon: s.lon, rating: s.rating }))
      .sort((a, b) => (a.id < b.id ? -1 : 1));
  }

  /** A shop's profile and current slot templates (kept in sync from now on). @param {string} shopId */
  async shop(shopId) {
    const docId = `shop:${shopId}`;
    const doc = await this.watch(docId);
    const profile = [...readMap(doc, docId, "profile").values()].sort((a, b) => (a.hlc < b.hlc ? 1 : -1))[0] ?? null;
    const slots = [...currentTemplates(readMap(doc, docId, "slots")).values()].map((s) => ({
      slotId: s.id, service: s.service, start: s.start, duration: s.duration, capacity: s.capacity, weekdays: s.weekdays, active: s.active,
    }));  // prettier-ignore
    return { shopId, profile, slots: slots.sort((a, b) => (a.start + a.slotId < b.start + b.slotId ? -1 : 1)) };
  }

  /**
   * A shop's slots on a day with the seats the verdict leaves (the shop and the day are kept in
   * sync from now on).
   * @param {string} shopId @param {string} day YYYY-MM-DD
   */
  async slots(shopId, day) {
    const docId = bookingsDoc(shopId, day);
    await this.watch(`shop:${shopId}`);
    await this.watch(docId);
    const shopDoc = /** @type {Y.Doc} */ (this.docs.get(`shop:${shopId}`)?.doc);
    const verdict = this.verdictOf(docId);
    const out = [];
    for (const s of currentTemplates(slotTemplates(shopDoc, `shop:${shopId}`)).values()) {
      const capacity = capacityOn(s, day);
      if (capacity <= 0) continue;
      const taken = verdict.slots.get(s.id)?.seatsTaken ?? 0;
      out.push({ slotId: s.id, service: s.service, start: s.start, duration: s.duration, capacity, seatsTaken: taken, seatsLeft: Math.max(0, capacity - taken) });
    }
    return out.sort((a, b) => (a.start + a.slotId < b.start + b.slotId ? -1 : 1));
  }

  /**
   * @param {string} docId @param {string} reservationId
   * @param {Map<string, any>} [read] the day's reservations already read (a caller viewing many at once reads them once)
   */
  view(docId, reservationId, read) {
    const ref = /** @type {{kind: "bookings", shopId: string, day: string}} */ (parseDocId(docId));
    const verdict = this.verdicts.get(docId) ?? this.verdictOf(docId);
    const doc = /** @type {Y.Doc} */ (this.docs.get(docId)?.doc);
    const res = (read ?? readMap(doc, docId, "reservations")).get(reservationId);
    if (!res) return null;
    const claim = verdict.claims.get(reservationId);
    const outbox = [...this.entries.values()].filter((e) => e.reservationId === reservationId && e.docId === docId);
    const ending = claim?.state === "cancelled" || claim?.state === "declined" ? this.endingsOf(docId, verdict, doc).get(reservationId) ?? null : null;
    return {
      reservationId, shop: ref.shopId, day: ref.day, slot: res.slot, party: res.party, customer: res.customer, note: res.note,
      state: claim?.state ?? "waitlisted", position: claim?.position ?? null, stamp: claim?.stamp ?? null, final: claim?.final ?? false, staffConfirmed: claim?.staffConfirmed ?? false,
      pending: outbox.some((e) => e.state === "pending"),
      // who ended a cancelled or declined booking (the customer, or the shop's staff) and the reason they gave
      endedBy: ending ? (ending.type === "decline" || ending.by !== res.customer ? "shop" : "customer") : null,
      reason: ending?.reason ?? null,
    };  // prettier-ignore
  }

  /**
   * The event that ended each ended reservation of a bookings day (`endingEvent`), read once per
   * verdict (a new verdict comes with every change of the day).
   * @param {string} docId @param {Verdict} verdict @param {Y.Doc} doc
   * @returns {Map<string, any>}
   */
  endingsOf(docId, verdict, doc) {
    let endings = this.endings.get(verdict);
    if (!endings) {
      /** @type {Map<string, any[]>} */
      const byReservation = new Map();
      for (const ev of readMap(doc, docId, "events").values()) byReservation.set(ev.reservation, [...(byReservation.get(ev.reservation) ?? []), ev]);
      endings = new Map();
      for (const [id, events] of byReservation) {
        const ending = endingEvent(events);
        if (ending) endings.set(id, ending);
      }
      this.endings.set(verdict, endings);
    }
    return endings;
  }

  /**
   * Reservations in the bookings days this device holds: the user's own (default), or all of them
   * (staff views). @param {{all?: boolean}} [options]
   */
  reservations({ all = false } = {}) {
    const out = [];
    for (const docId of [...this.docs.keys()].sort()) {
      if (parseDocId(docId).kind !== "bookings") continue;
      const read = readMap(/** @type {Y.Doc} */ (this.docs.get(docId)?.doc), docId, "reservations");
      for (const id of read.keys()) {
        const v = this.view(docId, id, read);
        if (v && (all || v.customer === this.session?.userId)) out.push(v);
      }
    }
    return out;
  }

  /**
   * The user's changes in the outbox, oldest first: pending writes and the ones the relay refused
   * (with the reason). The day listings that go with first bookings (`booked_day`) are bookkeeping
   * and not listed; one the relay refuses is dropped (the next booking that day lists it again).
   */
  outbox() {
    return [...this.entries.values()].filter((e) => e.action !== LIST_DAY).map((e) => ({ id: e.id, docId: e.docId, action: e.action, reservationId: e.reservationId, state: e.state, reason: e.reason }));
  }

  /**
   * The signed updates still waiting for the relay, oldest first, for another device to carry
   * (store-and-forward, docs/web.md): any replica validates them as it would from this device, and
   * a carrier that reaches the relay gets them stamped. They stay in this outbox until the relay
   * acknowledges them to this device too (a re-send of what it holds is acknowledged as such).
   * Day listings (`booked_day`, in the user's own document) are not handed over: only the user's
   * devices hold that document; they go to the relay from this device.
   * @returns {Array<{docId: string, update: Uint8Array}>}
   */
  pendingUpdates() {
    return [...this.entries.values()].filter((e) => e.state === "pending" && e.action !== LIST_DAY).map((e) => ({ docId: e.docId, update: e.update }));
  }

  /** Forget the refused entries (after showing them). */
  async dismissRefused() {
    const refused = [...this.entries.values()].filter((e) => e.state === "refused");
    for (const e of refused) this.entries.delete(e.id);
    await this.store.batch(refused.map((e) => ({ table: "outbox", key: e.id })));
    this.updateStatus({});
  }

  // --- the app API: writing ----------------------------------------------------------------------

  /**
   * Book `party` seats of `slot` at `shop` on `day`, offline or online: the booking is written to the
   * day and queued; the verdict says at once whether it is (tentatively) confirmed or waitlisted.
   * @param {{shop: string, day: string, slot: string, party?: number, note?: string}} booking
   */
  async book({ shop, day, slot, party = 1, note }) {
    const s = this.requireSession();
    const docId = bookingsDoc(shop, day);
    await this.hold([`shop:${shop}`, docId, `user:${s.userId}`]);
    const id = newId();
    /** @type {Record<string, unknown>} */
    const fields = { id, slot, party, customer: s.userId, hlc: this.now() };
    if (note !== undefined) fields.note = note;
    await this.write(docId, "book", id, [{ root: "reservations", key: id, kind: "reservation", fields }], { shop, day, hlc: String(fields.hlc) });
    return this.view(docId, id);
  }

  /** Cancel one of the user's reservations. @param {string} reservationId @param {{reason?: string}} [o] */
  cancel(reservationId, { reason } = {}) {
    return this.event(reservationId, "cancel", reason);
  }

  /** Staff: confirm a reservation. @param {string} reservationId */
  confirm(reservationId) {
    return this.event(reservationId, "confirm");
  }

  /** Staff: decline a reservation. @param {string} reservationId @param {{reason?: string}} [o] */
  decline(reservationId, { reason } = {}) {
    return this.event(reservationId, "decline", reason);
  }

  /** Staff: the customer did not come. @param {string} reservationId */
  noShow(reservationId) {
    return this.event(reservationId, "no_show");
  }

  /** @param {string} reservationId @param {string} type @param {string} [reason] */
  async event(reservationId, type, reason) {
    const s = this.requireSession();
    const docId = [...this.docs.keys()].find((d) => d.startsWith("bookings:") && this.docs.get(d)?.doc.getMap("reservations").has(reservationId));
    if (!docId) throw new Error(`no reservation ${reservationId} on this device`);
    const id = newId();
    /** @type {Record<string, unknown>} */
    const fields = { id, reservation: reservationId, type, by: s.userId, hlc: this.now() };
    if (reason !== undefined) fields.reason = reason;
    await this.write(docId, type, reservationId, [{ root: "events", key: id, kind: "event", fields }]);
    return this.view(docId, reservationId);
  }

  now() {
    if (!this.clock) throw new Error("not logged in");
    return this.clock.now().encode();
  }

  /**
   * Sign records, write them under the document's client id, and store the document with the new
   * outbox entry in one batch. `listDay`: a booking, which also lists its (shop, day) in the user's
   * document (a `booked_day` record with the booking's `hlc`, its own outbox entry, the same batch)
   * unless that document lists the day already.
   * @param {string} docId @param {string} action @param {string} reservationId
   * @param {Array<{root: string, key: string, kind: string, fields: Record<string, unknown>}>} records
   * @param {{shop: string, day: string, hlc: string}} [listDay]
   */
  write(docId, action, reservationId, records, listDay) {
    return this.serial(async () => {
      const s = this.requireSession();
      const writes = [{ docId, action, records }];
      const userDoc = `user:${s.userId}`;
      const listed = listDay && bookedDays(/** @type {{doc: Y.Doc}} */ (this.docs.get(userDoc)).doc, s.userId).some((d) => d.shop === listDay.shop && d.day === listDay.day);
      if (listDay && !listed) {
        const key = newId();
        writes.push({ docId: userDoc, action: LIST_DAY, records: [{ root: "days", key, kind: "booked_day", fields: { shop: listDay.shop, day: listDay.day, hlc: listDay.hlc } }] });
      }
      // sign everything first; each update is validated before it touches its document
      const prepared = [];
      for (const w of writes) {
        const state = /** @type {{doc: Y.Doc, generation: number, rebuild: boolean}} */ (this.docs.get(w.docId));
        if (state.generation >= GENERATIONS) throw new Error("this device used every client id of this document: log in again");
        const signed = [];
        for (const r of w.records) {
          signed.push({ root: r.root, key: r.key, raw: await signRecord(w.docId, r.key, r.kind, r.fields, { signer: s.certId, seed: s.seed }, neededVersion(r.kind, r.fields)) });
        }
        prepared.push({ ...w, state, signed });
      }
      /** @type {OutboxEntry[]} */
      const entries = [];
      for (const w of prepared) {
        const update = /** @type {Uint8Array} */ (await writeSigned(w.state.doc, w.docId, s, w.signed, w.state.generation, s, this.staffFor(w.docId)));
        entries.push({ id: outboxKey(this.nextEntry++), docId: w.docId, update, records: w.signed, state: "pending", reason: null, action: w.action, reservationId, createdMs: Date.now(), signer: s.certId });
      }
      for (const entry of entries) this.entries.set(entry.id, entry);
      await this.store.batch([...entries.map((e) => this.docOp(e.docId)), ...entries.map((e) => ({ table: /** @type {const} */ ("outbox"), key: e.id, value: e }))]);
      this.updateStatus({});
      for (const entry of entries) this.changed(entry.docId);
      this.flush();
      return entries[0];
    });
  }

  /** Run document work one step at a time. @template T @param {() => Promise<T>} work @returns {Promise<T>} */
  serial(work) {
    const run = this.queue.then(work);
    this.queue = run.then(() => {}, () => {});
    return run;
  }

  // --- the sync loop -----------------------------------------------------------------------------

  /** Start syncing (and keep at it, reconnecting as the close codes say, until `stop`). */
  start() {
    this.requireSession();
    if (this.running) return;
    this.running = true;
    this.connect();
  }

  /** Stop syncing and close the connection. */
  stop() {
    this.running = false;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    const conn = this.conn;
    this.conn = null;
    if (conn) {
      conn.closed = true;
      clearInterval(conn.watchdog);
      try {
        conn.socket.close(1000);
      } catch {}
    }
    if (this.statusValue.phase !== "stopped") this.updateStatus({ phase: "idle" });
  }

  async close() {
    this.stop();
    await this.queue;
    await this.store.close();
  }

  /**
   * Start if needed and wait until every document is caught up and no pending entry is waiting
   * for an ack (refused ones are done). Resolves with the outbox summary; rejects on timeout or
   * when the client stopped (log in again, or a permanent close).
   * @param {{timeoutMs?: number}} [options]
   */
  syncNow({ timeoutMs = 30000 } = {}) {
    this.start();
    return new Promise((resolve, reject) => {
      const check = () => {
        if (this.statusValue.phase === "stopped") finish(new Error(`stopped: ${this.statusValue.stoppedBy}`));
        else if (this.idle()) finish(null);
      };
      const timer = setTimeout(() => finish(new Error("sync timed out")), timeoutMs);
      const offStatus = this.on("status", check);
      const offAck = this.on("synced", check);
      /** @param {Error | null} err */
      const finish = (err) => {
        clearTimeout(timer);
        offStatus();
        offAck();
        if (err) reject(err);
        else resolve({ pending: this.statusValue.pending, refused: this.outbox().filter((e) => e.state === "refused") });
      };
      check();
    });
  }

  idle() {
    const c = this.conn;
    if (!c?.welcomed || [...this.entries.values()].some((e) => e.state === "pending")) return false;
    for (const docId of this.docs.keys()) {
      const sub = c.subs.get(docId);
      if (sub?.refused) continue;
      if (!sub?.live || this.docs.get(docId)?.rebuild) return false;
    }
    return c.inflight.size === 0;
  }

  connect() {
    if (!this.running) return;
    const s = this.requireSession();
    this.updateStatus({ phase: "connecting" });
    const url = new URL("/api/v1/sync", this.relay);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    let socket;
    try {
      socket = new this.WebSocketImpl(url);
    } catch {
      this.scheduleReconnect(1006);
      return;
    }
    socket.binaryType = "arraybuffer";
    const conn = {
      socket, welcomed: false, closed: false, lastHeard: Date.now(), inbox: Promise.resolve(),
      /** @type {Map<string, {pending: number, live: boolean, rebuilding: boolean, refused: boolean, cursor: number | null}>} */ subs: new Map(),
      /** @type {Map<number, string>} uid -> entry id */ inflight: new Map(),
      /** @type {ReturnType<typeof setInterval> | undefined} */ watchdog: undefined,
      maxInflight: 64,
    };  // prettier-ignore
    this.conn = conn;
    socket.addEventListener("open", async () => {
      const proof = await authProof(s.accessToken, s.seed);
      this.send(conn, "auth", { token: s.accessToken, proof: proof?.proof, proof_time: proof?.proofTime });
    });
    socket.addEventListener("message", (event) => {
      conn.lastHeard = Date.now();
      conn.inbox = conn.inbox
        .then(() => (conn.closed ? undefined : this.serial(() => this.receive(conn, /** @type {MessageEvent} */ (event).data))))
        .catch((err) => {
          this.emit("error", { code: "client", reason: String(err?.stack ?? err) });
          this.drop(conn, 4002);
        });
    });
    socket.addEventListener("close", (event) => this.lost(conn, /** @type {CloseEvent} */ (event).code));
    socket.addEventListener("error", () => {});
    // no answer for a while to a sub or upd: the connection is dead (protocol.md 9)
    conn.watchdog = setInterval(() => {
      const waiting = conn.inflight.size > 0 || [...conn.subs.values()].some((x) => x.pending > 0) || !conn.welcomed;
      if (waiting && Date.now() - conn.lastHeard > this.requestTimeoutMs) this.drop(conn, 1001);
    }, Math.min(1000, this.requestTimeoutMs));
  }

  /** Give up on a connection (no answer in time, or a message this client could not handle) and act as if closed with `code`. @param {any} conn @param {number} code */
  drop(conn, code) {
    try {
      conn.socket.close(1000); // browsers allow only 1000 and 3000-4999 from scripts
    } catch {}
    this.lost(conn, code);
  }

  /** The connection ended: decide what to do from the close code (protocol.md 7). @param {any} conn @param {number} code */
  lost(conn, code) {
    if (conn.closed) return;
    conn.closed = true;
    clearInterval(conn.watchdog);
    if (this.conn === conn) this.conn = null;
    const wasOnline = conn.welcomed;
    if (!this.running) return;
    const action = closeAction(code);
    if (action === "login" || action === "stop") {
      this.running = false;
      this.updateStatus({ phase: "stopped", stoppedBy: `${action} (close ${code})` });
      this.emit("stopped", { code, action });
      if (wasOnline) this.emit("offline", { code });
      return;
    }
    this.updateStatus({ phase: "offline" });
    if (wasOnline) this.emit("offline", { code });
    if (action === "refresh_token") {
      this.refresh().then(
        () => this.connect(),
        (err) => {
          if (err instanceof RelayError && err.status < 500) {
            this.running = false;
            this.updateStatus({ phase: "stopped", stoppedBy: "login (refresh refused)" });
            this.emit("stopped", { code, action: "login" });
          } else this.scheduleReconnect(1006);
        },
      );
      return;
    }
    this.scheduleReconnect(code);
  }

  /** @param {number} code */
  scheduleReconnect(code) {
    const longest = code === 4029 || code === 4002;
    const delay = longest ? backoffDelay(30, this.backoff) : backoffDelay(this.attempt++, this.backoff);
    this.updateStatus({ phase: "offline" });
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.connect();
    }, delay);
  }

  /** @param {any} conn @param {string} t @param {Record<string, unknown>} fields */
  send(conn, t, fields) {
    if (conn.closed) return;
    conn.socket.send(encodeMessage(t, fields));
  }

  /**
   * Send `sub`: with the document's state vector, or with the empty one (the relay's whole
   * document) when it waits for a rebuild and none of its updates is unanswered.
   * @param {string} docId
   */
  subscribe(docId) {
    const conn = this.conn;
    if (!conn?.welcomed) return;
    const rebuild = this.readyToRebuild(conn, docId);
    const state = /** @type {{doc: Y.Doc}} */ (this.docs.get(docId));
    const sub = conn.subs.get(docId) ?? { pending: 0, live: false, rebuilding: false, refused: false, cursor: null };
    sub.pending += 1;
    sub.live = false;
    sub.cursor = null;
    sub.rebuilding = rebuild;
    sub.refused = false;
    conn.subs.set(docId, sub);
    this.send(conn, "sub", { doc: docId, sv: rebuild ? EMPTY_SV : Y.encodeStateVector(state.doc) });
  }

  /** @param {any} conn @param {ArrayBuffer} data */
  async receive(conn, data) {
    const m = decodeMessage(new Uint8Array(data), { maxSize: DEFAULT_MAX_DOWNLOAD });
    const f = m.fields;
    if (m.t === "welcome") return this.welcomed(conn, f);
    if (!conn.welcomed) throw new Error(`${m.t} before welcome`);
    const sub = typeof f.doc === "string" ? conn.subs.get(f.doc) : undefined;
    switch (m.t) {
      case "sync":
        if (!sub || sub.pending === 0) throw new Error("sync with no sub");
        return this.synced(conn, f.doc, sub, f.update, f.seq, f.sv);
      case "upd":
        if (sub) await this.fromRelay(conn, f.doc, sub, f.update, f.seq);
        return;
      case "stamp":
        if (sub) await this.fromRelay(conn, f.doc, sub, f.update, f.seq);
        return;
      case "ack":
        return this.acked(conn, f.doc, sub, f.uid, f.seq);
      case "stamped":
        if (f.uid !== undefined) await this.acked(conn, f.doc, sub, f.uid, f.seq);
        else if (sub) await this.fromRelay(conn, f.doc, sub, f.update, f.seq);
        if (sub) await this.fromRelay(conn, f.doc, sub, f.stamp, f.seq + 1);
        return;
      case "err":
        return this.refusedBy(conn, f, sub);
    }
  }

  /** @param {any} conn @param {Record<string, any>} f */
  async welcomed(conn, f) {
    conn.welcomed = true;
    conn.maxInflight = Math.max(1, Math.min(64, f.limits?.max_inflight ?? 64));
    this.attempt = 0;
    const epoch = await this.store.get("cursors", "epoch");
    if (epoch !== f.epoch) {
      // another storage lineage: old sequence numbers mean nothing (protocol.md 5.8)
      const old = await this.store.entries("cursors");
      await this.store.batch([...old.map(([key]) => ({ table: /** @type {const} */ ("cursors"), key })), { table: "cursors", key: "epoch", value: f.epoch }]);
    }
    this.updateStatus({ phase: "online", stoppedBy: null });
    this.emit("online", { epoch: f.epoch });
    for (const docId of this.docs.keys()) this.subscribe(docId);
  }

  /** A document flagged for a rebuild can ask for the relay's whole state once none of its updates is unanswered. @param {any} conn @param {string} docId */
  readyToRebuild(conn, docId) {
    if (!this.docs.get(docId)?.rebuild) return false;
    for (const entryId of conn.inflight.values()) if (entryId === `catchup:${docId}` || this.entries.get(entryId)?.docId === docId) return false;
    return true;
  }

  /** @param {any} conn @param {string} docId @param {any} sub @param {Uint8Array} update @param {number} seq @param {Uint8Array} relaySv */
  async synced(conn, docId, sub, update, seq, relaySv) {
    sub.pending -= 1;
    const rebuilding = sub.rebuilding;
    if (sub.pending > 0) {
      await this.apply(conn, docId, sub, update); // an older answer: deliver it, wait for the last
      return;
    }
    sub.rebuilding = false;
    if (rebuilding) await this.rebuild(docId, update);
    else if (!(await this.apply(conn, docId, sub, update))) return;
    if (this.readyToRebuild(conn, docId)) return this.subscribe(docId); // caught up; now the rebuild
    if (!rebuilding && !this.docs.get(docId)?.rebuild) this.catchUp(conn, docId, relaySv);
    sub.live = true;
    sub.cursor = seq;
    await this.store.batch([{ table: "cursors", key: docId, value: seq }]);
    this.flush();
    this.emit("synced", { docId });
  }

  /**
   * Sync step 2 the other way (protocol.md 5.2): send what this copy holds and the relay lacks,
   * beyond the pending outbox entries (they go next, in order). Normally nothing: it matters when
   * the relay lost acknowledged updates (restored from a backup, a new epoch).
   * @param {any} conn @param {string} docId @param {Uint8Array} relaySv
   */
  catchUp(conn, docId, relaySv) {
    const state = this.docs.get(docId);
    if (!state) return;
    const known = Y.decodeStateVector(relaySv);
    for (const entry of this.entries.values()) {
      if (entry.docId !== docId || entry.state !== "pending") continue;
      const { from, to } = Y.parseUpdateMeta(entry.update);
      for (const [client, clock] of from) if ((known.get(client) ?? 0) >= clock) known.set(client, Math.max(known.get(client) ?? 0, to.get(client) ?? 0));
    }
    const sv = Y.encodeStateVector(new Map([...known].filter(([, clock]) => clock > 0)));
    const diff = Y.encodeStateAsUpdate(state.doc, sv);
    if (Y.parseUpdateMeta(diff).to.size === 0) return;
    conn.catchUps = (conn.catchUps ?? 0) + 1;
    const uid = 10 ** OUTBOX_WIDTH + conn.catchUps;
    conn.inflight.set(uid, `catchup:${docId}`);
    this.send(conn, "upd", { doc: docId, uid, update: diff });
  }

  /**
   * Validate an update from the relay (no arrival rules: the relay judged it) and apply it. One
   * that does not apply is missing something (resync) or conflicts with this copy (rebuild from the
   * relay's state, protocol.md 5.10 rule 5). Returns whether it applied.
   * @param {any} conn @param {string} docId @param {any} sub @param {Uint8Array} update
   */
  async apply(conn, docId, sub, update) {
    const state = this.docs.get(docId);
    if (!state) return false;
    try {
      const { noop } = await validateUpdate(parseDocId(docId), state.doc, update, this.requireSession().trust, null, this.staffFor(docId));
      if (noop) return true;
    } catch (err) {
      if (!(err instanceof ValidationError)) throw err;
      this.emit("error", { docId, code: "relay_update_conflict", reason: err.message });
      if (err.code !== Reason.MISSING_DEPS) {
        state.rebuild = true;
        await this.store.batch([this.docOp(docId)]);
      }
      if (sub.pending === 0) this.subscribe(docId);
      return false;
    }
    Y.applyUpdate(state.doc, update);
    await this.store.batch([this.docOp(docId)]);
    this.changed(docId);
    return true;
  }

  /** A live `upd` or `stamp` at `seq`: apply, keep the cursor, resync on a gap. @param {any} conn @param {string} docId @param {any} sub @param {Uint8Array} update @param {number} seq */
  async fromRelay(conn, docId, sub, update, seq) {
    if (!(await this.apply(conn, docId, sub, update))) return;
    this.advance(conn, docId, sub, seq);
  }

  /** @param {any} conn @param {string} docId @param {any} sub @param {number} seq */
  advance(conn, docId, sub, seq) {
    if (!sub?.live || sub.cursor === null) return;
    if (seq === sub.cursor + 1) {
      sub.cursor = seq;
      this.store.batch([{ table: "cursors", key: docId, value: seq }]).catch(() => {});
    } else if (seq > sub.cursor + 1) this.subscribe(docId); // a gap: resync
  }

  /** The relay stored our update durably: only now does its entry leave the outbox. @param {any} conn @param {string} docId @param {any} sub @param {number} uid @param {number} seq */
  async acked(conn, docId, sub, uid, seq) {
    const entryId = conn.inflight.get(uid);
    if (entryId === undefined) throw new Error(`ack for unknown uid ${uid}`);
    conn.inflight.delete(uid);
    const entry = this.entries.get(entryId);
    if (entry) {
      this.entries.delete(entryId);
      await this.store.batch([{ table: "outbox", key: entryId }]);
      this.updateStatus({});
      this.emit("acked", { entry, seq });
    }
    this.advance(conn, docId, sub, seq);
    this.afterAnswer(conn, docId);
  }

  /** @param {any} conn @param {string} docId */
  afterAnswer(conn, docId) {
    const sub = conn.subs.get(docId);
    if (sub?.live && this.readyToRebuild(conn, docId)) this.subscribe(docId);
    this.flush();
    if (this.idle()) this.updateStatus({ lastSyncMs: Date.now() });
    this.emit("synced", { docId });
  }

  /** @param {any} conn @param {Record<string, any>} f @param {any} sub */
  async refusedBy(conn, f, sub) {
    if (f.uid !== undefined) {
      const entryId = conn.inflight.get(f.uid);
      if (entryId === undefined) throw new Error(`err for unknown uid ${f.uid}`);
      conn.inflight.delete(f.uid);
      const entry = this.entries.get(entryId);
      if (entryId.startsWith("catchup:") && !f.retry) {
        // what this copy held beyond the outbox was refused: rebuild from the relay's state
        const state = this.docs.get(f.doc);
        if (state) state.rebuild = true;
        if (state) await this.store.batch([this.docOp(f.doc)]);
        this.emit("error", { docId: f.doc, code: f.code, reason: f.reason });
      } else if (entry && !f.retry && entry.action === LIST_DAY) {
        // a day listing refused for good: nothing for the user to do; drop it and rebuild without it
        this.entries.delete(entry.id);
        const state = this.docs.get(entry.docId);
        if (state) state.rebuild = true;
        await this.store.batch([{ table: "outbox", key: entry.id }, ...(state ? [this.docOp(entry.docId)] : [])]);
        this.emit("error", { docId: f.doc, code: f.code, reason: f.reason });
      } else if (entry && !f.retry) {
        // refused for good: keep it, listed with its reason; rebuild the document without it (5.10)
        entry.state = "refused";
        entry.reason = f.reason;
        const state = this.docs.get(entry.docId);
        if (state) state.rebuild = true;
        await this.store.batch([{ table: "outbox", key: entry.id, value: entry }, ...(state ? [this.docOp(entry.docId)] : [])]);
        this.updateStatus({});
        this.emit("refused", { entry, reason: f.reason, reservation: this.view(entry.docId, entry.reservationId) });
      } else if (entry && (f.code === "not_subscribed" || f.code === "missing_deps")) {
        if (sub && sub.pending === 0) this.subscribe(f.doc); // resync, then the entry goes again
      } else if (entry) {
        const delay = backoffDelay(this.attempt++, this.backoff);
        setTimeout(() => this.flush(), delay);
        conn.retryAfter = Date.now() + delay;
      }
      this.afterAnswer(conn, f.doc);
      return;
    }
    if (f.doc !== undefined) {
      if (!sub || sub.pending === 0) throw new Error("err with no sub");
      sub.pending -= 1;
      sub.refused = sub.pending === 0 && !f.retry; // forbidden, bad_doc, too_many_docs: not synced on this connection
      this.emit("error", { docId: f.doc, code: f.code, reason: f.reason });
      if (sub.pending === 0 && f.retry) setTimeout(() => this.conn === conn && this.subscribe(f.doc), backoffDelay(this.attempt++, this.backoff));
      return;
    }
    this.emit("error", { code: f.code, reason: f.reason });
  }

  /** Send every pending entry of live documents, in outbox order, up to the relay's in-flight limit. */
  flush() {
    const conn = this.conn;
    if (!conn?.welcomed || conn.closed || (conn.retryAfter ?? 0) > Date.now()) return;
    const sent = new Set(conn.inflight.values());
    for (const entry of this.entries.values()) {
      if (conn.inflight.size >= conn.maxInflight) break;
      if (entry.state !== "pending" || sent.has(entry.id)) continue;
      const sub = conn.subs.get(entry.docId);
      if (!sub?.live || this.docs.get(entry.docId)?.rebuild) continue;
      const uid = Number(entry.id);
      conn.inflight.set(uid, entry.id);
      this.send(conn, "upd", { doc: entry.docId, uid, update: entry.update });
    }
  }

  /**
   * Make the relay's whole document this device's copy (protocol.md 5.10 rule 3): validate it, move
   * to the next generation if the old copy held structs under the current id the relay lacks, and
   * write again, as new entries, the records of pending entries the relay lacks.
   * @param {string} docId @param {Uint8Array} update
   */
  async rebuild(docId, update) {
    const s = this.requireSession();
    const state = /** @type {{doc: Y.Doc, generation: number, rebuild: boolean}} */ (this.docs.get(docId));
    const fresh = new Y.Doc();
    await validateUpdate(parseDocId(docId), fresh, update, s.trust, null, this.staffFor(docId));
    Y.applyUpdate(fresh, update);
    // the ids this device wrote under: its certificate's, and those of earlier certificates whose
    // records still wait (after a new login); any that the relay lacks structs of moves the document on
    const pending = [...this.entries.values()].filter((e) => e.docId === docId && e.state === "pending");
    const held = Y.decodeStateVector(Y.encodeStateVector(state.doc));
    const relayHolds = Y.decodeStateVector(Y.encodeStateVector(fresh));
    for (const signer of new Set([s.certId, ...pending.map(signerOf)])) {
      const mine = await clientIdFor(signer, state.generation);
      if ((held.get(mine) ?? 0) > (relayHolds.get(mine) ?? 0)) {
        state.generation += 1;
        break;
      }
    }
    state.doc = fresh;
    state.rebuild = false;
    /** @type {StoreOp[]} */
    const ops = [];
    for (const entry of [...this.entries.values()]) {
      if (entry.docId !== docId || entry.state !== "pending") continue;
      let rewritten = null;
      try {
        const signer = signerOf(entry);
        const certificate = signer === s.certId ? s.certificate : s.certificates?.[signer];
        if (certificate === undefined) throw new ValidationError(Reason.UNKNOWN_CERTIFICATE, "the certificate that signed it is no longer on this device");
        if (state.generation < GENERATIONS) rewritten = await writeSigned(fresh, docId, s, entry.records, state.generation, { certId: signer, certificate }, this.staffFor(docId));
      } catch (err) {
        if (!(err instanceof ValidationError)) throw err;
        entry.state = "refused";
        entry.reason = `${err.code}: ${err.message}`;
        ops.push({ table: "outbox", key: entry.id, value: entry });
        this.emit("refused", { entry, reason: entry.reason, reservation: null });
        continue;
      }
      if (rewritten === null) {
        this.entries.delete(entry.id); // the relay holds it already (an ack was lost)
        ops.push({ table: "outbox", key: entry.id });
      } else {
        entry.update = rewritten;
        ops.push({ table: "outbox", key: entry.id, value: entry });
      }
    }
    ops.push(this.docOp(docId));
    await this.store.batch(ops);
    this.updateStatus({});
    this.emit("rebuilt", { docId, generation: state.generation });
    this.changed(docId);
  }
}
