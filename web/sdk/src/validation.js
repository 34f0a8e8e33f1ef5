// Update validation (crdt_core/validation.py): the writer rules every replica enforces, whoever
// carried the update. Reads the update's structs (never applies it), so a refused update leaves the
// document exactly as it was. The rules and their order (first failure wins) are crdt_core's:
//  1. only inserts of new keys into top-level maps (deletion, rewrite, shape; malformed bytes);
//     a struct the document holds under the same Yjs id must hold the same record (rewrite)
//  2. no skipped clocks (missing_deps)
//  3. maps of the document's kind (wrong_map), schema-valid records under the right key (schema)
//  4. certificates verify and sit under their id (bad_certificate)
//  5. each struct's Yjs client id is its signer's (foreign_client)
//  6. signatures verify (relay_only, unknown_certificate, bad_signature, certificate_expired)
//  7. the author may write it (forbidden, unknown_reservation)
//  8. at arrival only: clock_skew, backdated, revoked, and rights narrowed to current roles;
//     a shop's category must exist (unknown_category)
// A reservation's day must lie within a day before to 366 days after its HLC (day_out_of_range,
// checked with the schema); the shop's staff list grants staff rights (shopStaff).

import * as Y from "yjs";
import { CertificateCache, certIdOf, validAt } from "./certs.js";
import { ownsClient } from "./clientids.js";
import { EngineError } from "./engine-error.js";
import { SchemaError, SignatureError, ValidationError } from "./errors.js";
import { Timestamp } from "./hlc.js";
import { openRecord, verifyEnvelope } from "./records.js";
import { CERTS_ROOT, docIdString, parseDocId, parseRecord, rootsOf } from "./schema.js";
import { categoryIds, shopStaff } from "./reader.js";
import { decodeUpdate, stateClocks } from "./yupdate.js";

/** @typedef {import("./certs.js").Certificate} Certificate */
/** @typedef {import("./schema.js").TypedRecord} TypedRecord */
/** @typedef {import("./schema.js").DocId} DocId */

/** Every reason code an update can be refused with. */
export const Reason = Object.freeze({
  MALFORMED: "malformed",
  DELETION: "deletion",
  REWRITE: "rewrite",
  SHAPE: "shape",
  MISSING_DEPS: "missing_deps",
  BAD_DOC: "bad_doc",
  WRONG_MAP: "wrong_map",
  SCHEMA: "schema",
  BAD_CERTIFICATE: "bad_certificate",
  UNKNOWN_CERTIFICATE: "unknown_certificate",
  BAD_SIGNATURE: "bad_signature",
  CERTIFICATE_EXPIRED: "certificate_expired",
  RELAY_ONLY: "relay_only",
  FORBIDDEN: "forbidden",
  UNKNOWN_RESERVATION: "unknown_reservation",
  CLOCK_SKEW: "clock_skew",
  BACKDATED: "backdated",
  REVOKED: "revoked",
  PARTY_TOO_LARGE: "party_too_large", // the relay's arrival refusal only (a party above the slot's capacity that day)
  FOREIGN_CLIENT: "foreign_client",
  DAY_OUT_OF_RANGE: "day_out_of_range",
  UNKNOWN_CATEGORY: "unknown_category", // arrival only
  DUPLICATE_BOOKING: "duplicate_booking", // the relay's arrival refusal only (a second active claim on a slot)
});

/** A reservation's day may lie this many days before its HLC's UTC date... */
export const DAYS_BEFORE_HLC = 1;
/** ... and this many days after it. */
export const DAYS_AFTER_HLC = 366;

/**
 * Whether a reservation written at `hlc` may be for `day` (YYYY-MM-DD).
 * @param {string} day @param {string} hlc
 */
export function dayInRange(day, hlc) {
  const [y, m, d] = day.split("-").map(Number);
  const date = new Date(Date.UTC(2000, m - 1, d));
  date.setUTCFullYear(y);
  const written = Math.floor(Timestamp.parse(hlc).wallMs / 86400000);
  const offset = Math.round(date.getTime() / 86400000) - written;
  return -DAYS_BEFORE_HLC <= offset && offset <= DAYS_AFTER_HLC;
}

/** The default back-dating window: 30 days. */
export const MAX_BACKDATE_MS = 30 * 24 * 3600 * 1000;

/**
 * What a user may write.
 * @typedef {{userId: string, admin: boolean, ownerOf: Set<string>, staffOf: Set<string>}} Rights
 */

/**
 * Checks at the moment an update arrives from a writer, by the receiver's clock. A peer passes
 * `{nowMs}` for updates from other peers and no policy for updates from the relay (it judged them).
 * @typedef {object} ArrivalPolicy
 * @property {number} nowMs
 * @property {number} [maxFutureSkewMs] default 60 s
 * @property {number | null} [maxBackdateMs] default 30 days; null: the certificate lifetime alone
 * @property {(cert: Certificate) => boolean} [isRevoked]
 * @property {(userId: string) => (Rights | null)} [currentRights]
 */

/**
 * @typedef {object} AcceptedRecord
 * @property {string} root
 * @property {string} key
 * @property {import("./records.js").Envelope | null} envelope null for certificates
 * @property {TypedRecord | Certificate} record
 * @property {Certificate | null} author null for relay-signed records and certificates
 */

/** @param {string} reason @param {string} detail */
const fail = (reason, detail) => new ValidationError(reason, detail);

/** @param {Certificate} cert @returns {Rights} */
export function rightsOf(cert) {
  return { userId: cert.userId, admin: cert.roles.has("admin"), ownerOf: cert.ownerOf, staffOf: cert.staffOf };
}

/** What both the certificate and the relay's current view grant. @param {Rights} mine @param {Rights | null} current @returns {Rights} */
function narrowed(mine, current) {
  if (current === null) return { userId: mine.userId, admin: false, ownerOf: new Set(), staffOf: new Set() };
  return {
    userId: mine.userId,
    admin: mine.admin && current.admin,
    ownerOf: new Set([...mine.ownerOf].filter((s) => current.ownerOf.has(s))),
    staffOf: new Set([...mine.staffOf].filter((s) => current.staffOf.has(s))),
  };
}

/** @param {Rights} r @param {string | undefined} shop */
const owns = (r, shop) => shop !== undefined && r.ownerOf.has(shop);
/** @param {Rights} r @param {string | undefined} shop */
const staffs = (r, shop) => shop !== undefined && (r.staffOf.has(shop) || r.ownerOf.has(shop));

/**
 * These rights plus staff rights on `shop` when its staff list names the user (never ownership).
 * @param {Rights} r @param {string | undefined} shop @param {Set<string>} staff
 * @returns {Rights}
 */
export function withShopStaff(r, shop, staff) {
  if (shop === undefined || !staff.has(r.userId) || r.staffOf.has(shop)) return r;
  return { ...r, staffOf: new Set([...r.staffOf, shop]) };
}

/** Lookups across the document and the update being validated; reads never change the document. */
class Batch {
  /** @param {Y.Doc} doc @param {DocId} docId @param {CertificateCache} certs */
  constructor(doc, docId, certs) {
    this.doc = doc;
    this.docId = docId;
    this.certs = certs;
    /** @type {Map<string, Certificate>} */
    this.newCerts = new Map();
    /** @type {Map<string, TypedRecord>} */
    this.newReservations = new Map();
  }

  /** @param {string} root @param {string} key @returns {unknown} */
  getValue(root, key) {
    // doc.share.has first: getMap on a missing root would add an (empty) root type to the doc
    return this.doc.share.has(root) ? this.doc.getMap(root).get(key) : undefined;
  }

  /** @param {string} root @param {string} key */
  hasKey(root, key) {
    return this.doc.share.has(root) && this.doc.getMap(root).has(key);
  }

  /** @param {string} certId @returns {Promise<Certificate | null>} */
  async certificate(certId) {
    const fresh = this.newCerts.get(certId);
    if (fresh !== undefined) return fresh;
    // stored under its id (the hash of its bytes, checked on arrival): a cached one is the one held
    const cached = this.certs.get(certId);
    if (cached !== undefined) return this.hasKey(CERTS_ROOT, certId) ? cached : null;
    const raw = this.getValue(CERTS_ROOT, certId);
    if (!(raw instanceof Uint8Array)) return null;
    return this.certs.verify(raw);
  }

  /** @param {string} resId @returns {TypedRecord | null} */
  reservation(resId) {
    const fresh = this.newReservations.get(resId);
    if (fresh !== undefined) return fresh;
    const raw = this.getValue("reservations", resId);
    if (!(raw instanceof Uint8Array)) return null;
    const env = openRecord(raw, { canonical: false }); // held, so checked when it arrived
    return parseRecord("bookings", "reservations", resId, env.kind, env.fields, env.schemaVersion);
  }
}

/**
 * The writer table (docs/records.md section 8, "Who may write what"): throws forbidden when the author lacks the right.
 * @param {DocId} doc @param {TypedRecord} rec @param {Rights} rights @param {Batch} batch
 */
function checkRights(doc, rec, rights, batch) {
  const shop = "shopId" in doc ? doc.shopId : undefined;
  let ok = false;
  switch (rec.kind) {
    case "category":
      ok = rights.admin;
      break;
    case "shop_summary":
      ok = rights.admin || owns(rights, rec.id);
      break;
    case "shop_profile":
    case "slot":
      ok = rights.admin || staffs(rights, shop);
      break;
    case "staff":
      ok = rights.admin || owns(rights, shop);
      break;
    case "reservation":
      if (rec.customer !== rights.userId) throw fail(Reason.FORBIDDEN, `reservation ${rec.id} is in another customer's name`);
      ok = true;
      break;
    case "event": {
      if (rec.by !== rights.userId) throw fail(Reason.FORBIDDEN, `event ${rec.id} names another author`);
      const target = batch.reservation(rec.reservation);
      if (target === null) throw fail(Reason.UNKNOWN_RESERVATION, `event ${rec.id} refers to an unknown reservation`);
      // confirm, decline, no_show, and event types from a newer schema (inert here): staff only
      ok = rec.type === "cancel" ? target.customer === rights.userId : rights.admin || staffs(rights, shop);
      break;
    }
    case "user_profile":
    case "booked_day":
      ok = doc.kind === "user" && doc.userId === rights.userId;
      break;
  }
  if (!ok) throw fail(Reason.FORBIDDEN, `${rights.userId} may not write this ${rec.kind} in ${docIdString(doc)}`);
}

/** @param {TypedRecord} rec @returns {number | null} */
function hlcMs(rec) {
  return typeof rec.hlc === "string" ? Timestamp.parse(rec.hlc).wallMs : null;
}

/**
 * Accept or refuse a whole update for `doc` (which is not modified).
 * @param {string | DocId} docId
 * @param {Y.Doc} doc the replica's current document
 * @param {Uint8Array} update a Yjs v1 update
 * @param {CertificateCache} trust the trusted relay keys with the certificates verified under them
 * @param {ArrivalPolicy | null} [policy] arrival checks (the relay's, or a peer's for peer updates)
 * @param {Set<string> | null} [shopStaffList] for a bookings document, the users its shop's staff
 *   list names (`shopStaff` of the replica's copy of shop:S); a shop document's is read from `doc`
 * @returns {Promise<{docId: DocId, records: AcceptedRecord[], noop: boolean}>} what the update adds
 * @throws {ValidationError} with `code` one of `Reason`; the caller must not apply the update
 */
export async function validateUpdate(docId, doc, update, trust, policy = null, shopStaffList = null) {
  /** @type {DocId} */
  let docRef;
  try {
    docRef = typeof docId === "string" ? parseDocId(docId) : docId;
  } catch (err) {
    throw fail(Reason.BAD_DOC, /** @type {Error} */ (err).message);
  }
  const docText = docIdString(docRef);
  let decoded;
  try {
    decoded = decodeUpdate(update);
  } catch (err) {
    if (err instanceof EngineError) throw fail(Reason.MALFORMED, err.message);
    throw err;
  }
  checkStructRuns(decoded);
  const clocks = stateClocks(doc);
  const clockOf = (/** @type {number} */ c) => clocks.get(c) ?? 0;
  for (const other of decoded.others) {
    if (other.clock + other.length <= clockOf(other.client)) continue; // already integrated
    /** @type {string} */
    let reason = other.why.includes("overwrites") ? Reason.REWRITE : Reason.SHAPE;
    if (other.why.includes("skip")) reason = Reason.MISSING_DEPS;
    throw fail(reason, `struct ${other.client}:${other.clock}: ${other.why}`);
  }
  if (decoded.deletes.length > 0) throw fail(Reason.DELETION, "records are never removed");
  for (const [client, [start]] of decoded.ranges) {
    if (start > clockOf(client)) throw fail(Reason.MISSING_DEPS, `client ${client} starts at ${start}, document has ${clockOf(client)}`);
  }

  const fresh = decoded.inserts.filter((ins) => ins.clock >= clockOf(ins.client));
  for (const ins of decoded.inserts) {
    // A struct held under the same id must be the same record: else its writer reused clocks.
    if (ins.clock < clockOf(ins.client) && !sameRecord(heldRecord(doc, ins.root, ins.key), ins.value)) {
      throw fail(Reason.REWRITE, `struct ${ins.client}:${ins.clock} (${ins.root}/${ins.key}) differs from the one held under that id: its writer reused clocks`);
    }
  }
  /** @type {AcceptedRecord[]} */
  const records = [];
  const batch = new Batch(doc, docRef, trust);
  const roots = rootsOf(docRef.kind);
  const seen = new Set();
  for (const ins of fresh) {
    if (!roots.has(ins.root)) throw fail(Reason.WRONG_MAP, `a ${docRef.kind} document has no map ${JSON.stringify(ins.root)}`);
    const where = JSON.stringify([ins.root, ins.key]);
    if (seen.has(where) || batch.hasKey(ins.root, ins.key)) throw fail(Reason.REWRITE, `${ins.root}/${ins.key} already exists`);
    seen.add(where);
    if (!(ins.value instanceof Uint8Array)) throw fail(Reason.SHAPE, `${ins.root}/${ins.key} is not a binary record`);
  }

  // Certificates first: records in the same update may be signed under them.
  for (const ins of fresh) {
    if (ins.root !== CERTS_ROOT) continue;
    const raw = /** @type {Uint8Array} */ (ins.value);
    if (ins.key !== (await certIdOf(raw))) throw fail(Reason.BAD_CERTIFICATE, `certificate stored under ${JSON.stringify(ins.key)}, not its id`);
    await checkClient(ins.client, ins.key, ins.root, ins.key); // a certificate's writer is itself
    let cert;
    try {
      cert = await trust.verify(raw);
    } catch (err) {
      if (err instanceof SchemaError || err instanceof SignatureError) throw fail(Reason.BAD_CERTIFICATE, err.message);
      throw err;
    }
    batch.newCerts.set(ins.key, cert);
    records.push({ root: ins.root, key: ins.key, envelope: null, record: cert, author: null });
  }

  /** @type {Array<[string, string, import("./records.js").Envelope, TypedRecord]>} */
  const typed = [];
  for (const ins of fresh) {
    if (ins.root === CERTS_ROOT) continue;
    let env;
    try {
      env = openRecord(/** @type {Uint8Array} */ (ins.value));
    } catch (err) {
      if (err instanceof SchemaError) throw fail(Reason.SCHEMA, `${ins.root}/${ins.key}: ${err.message}`);
      throw err;
    }
    await checkClient(ins.client, env.signer, ins.root, ins.key);
    let rec;
    try {
      rec = parseRecord(docRef.kind, ins.root, ins.key, env.kind, env.fields, env.schemaVersion);
    } catch (err) {
      if (err instanceof SchemaError) throw fail(Reason.SCHEMA, `${ins.root}/${ins.key}: ${err.message}`);
      throw err;
    }
    if (rec.kind === "reservation") {
      if (docRef.kind === "bookings" && !dayInRange(docRef.day, rec.hlc)) {
        throw fail(Reason.DAY_OUT_OF_RANGE, `reservation ${rec.id} for ${docRef.day} was written at ${rec.hlc}`);
      }
      batch.newReservations.set(rec.id, rec);
    }
    typed.push([ins.root, ins.key, env, rec]);
  }

  let staff = shopStaffList ?? new Set();
  if (docRef.kind === "shop" && typed.some(([, , , rec]) => rec.kind !== "stamp")) staff = shopStaff(doc, docRef);

  for (const [root, key, env, rec] of typed) {
    // before the signature check: a stamp has no HLC, so a device-signed one would otherwise be
    // reported as certificate_expired instead of what it is
    if (rec.kind === "stamp" && env.relayKid === null) throw fail(Reason.RELAY_ONLY, "only the relay stamps");
    const author = await checkSignature(docText, root, key, env, rec, batch, trust);
    if (author === null) {
      if (rec.kind !== "stamp") throw fail(Reason.RELAY_ONLY, "the relay signs only stamps");
      if (batch.reservation(rec.reservation) === null) throw fail(Reason.UNKNOWN_RESERVATION, `stamp ${rec.no} for an unknown reservation`);
    } else {
      let rights = rightsOf(author);
      let granted = staff;
      if (policy) {
        checkArrival(author, rec, policy);
        if (policy.currentRights) {
          const current = policy.currentRights(author.userId);
          rights = narrowed(rights, current);
          if (current === null) granted = new Set(); // not a user at the relay now
        }
        if (rec.kind === "shop_summary") checkCategory(rec, doc, typed);
      }
      checkRights(docRef, rec, withShopStaff(rights, "shopId" in docRef ? docRef.shopId : undefined, granted), batch);
    }
    records.push({ root, key, envelope: env, record: rec, author });
  }
  return { docId: docRef, records, noop: records.length === 0 };
}

/**
 * The record the document holds at root/key (undefined: none, or not a record).
 * @param {Y.Doc} doc @param {string} root @param {string} key @returns {Uint8Array | undefined}
 */
function heldRecord(doc, root, key) {
  const value = doc.share.has(root) ? doc.getMap(root).get(key) : undefined;
  return value instanceof Uint8Array ? value : undefined;
}

/** @param {Uint8Array | undefined} held @param {unknown} value */
function sameRecord(held, value) {
  if (held === undefined || !(value instanceof Uint8Array) || held.length !== value.length) return false;
  return held.every((byte, i) => byte === value[i]);
}

/**
 * Arrival rule: a shop's category must be one the catalogue defines (or this update adds).
 * @param {TypedRecord} rec @param {Y.Doc} doc @param {Array<[string, string, unknown, TypedRecord]>} typed
 */
function checkCategory(rec, doc, typed) {
  if (typed.some(([, , , other]) => other.kind === "category" && other.id === rec.category)) return;
  if (!categoryIds(doc).has(rec.category)) {
    throw fail(Reason.UNKNOWN_CATEGORY, `shop ${rec.id} names category ${JSON.stringify(rec.category)}, which the catalogue does not define`);
  }
}

/**
 * Rule 5: the struct's Yjs client id must be one of the signer's.
 * @param {number} client @param {string} signer @param {string} root @param {string} key
 */
async function checkClient(client, signer, root, key) {
  if (!(await ownsClient(signer, client))) {
    throw fail(Reason.FOREIGN_CLIENT, `${root}/${key} is written under Yjs client ${client}, not one of ${signer}'s`);
  }
}

/**
 * Each client's structs in one update must form one gap-free run of clocks, never overlapping: a
 * client listed twice could otherwise slip a gap past missing_deps (which sees the merged range).
 * @param {import("./yupdate.js").DecodedUpdate} decoded
 */
function checkStructRuns(decoded) {
  /** @type {Map<number, Array<[number, number]>>} */
  const runs = new Map();
  const add = (/** @type {number} */ client, /** @type {number} */ clock, /** @type {number} */ length) => {
    const list = runs.get(client) ?? [];
    list.push([clock, length]);
    runs.set(client, list);
  };
  for (const ins of decoded.inserts) add(ins.client, ins.clock, 1);
  for (const other of decoded.others) add(other.client, other.clock, other.length);
  for (const [client, spans] of runs) {
    spans.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    let expected = spans[0][0];
    for (const [clock, length] of spans) {
      if (clock !== expected) throw fail(Reason.MALFORMED, `client ${client}'s structs overlap or leave a gap at clock ${clock}`);
      expected = clock + length;
    }
  }
}

/**
 * Verify a record's signature; returns its author's certificate, or null if the relay signed it.
 * @param {string} docId @param {string} root @param {string} key
 * @param {import("./records.js").Envelope} env @param {TypedRecord} rec @param {Batch} batch @param {CertificateCache} trust
 * @returns {Promise<Certificate | null>}
 */
async function checkSignature(docId, root, key, env, rec, batch, trust) {
  if (env.relayKid !== null) {
    const relayKey = Object.hasOwn(trust.trustedKeys, env.relayKid) ? trust.trustedKeys[env.relayKid] : undefined;
    if (relayKey === undefined) throw fail(Reason.BAD_SIGNATURE, `${root}/${key} claims unknown relay key ${JSON.stringify(env.relayKid)}`);
    try {
      await verifyEnvelope(env, docId, key, relayKey);
    } catch (err) {
      throw fail(Reason.BAD_SIGNATURE, /** @type {Error} */ (err).message);
    }
    return null;
  }
  let author;
  try {
    author = await batch.certificate(env.signer);
  } catch (err) {
    if (err instanceof SchemaError || err instanceof SignatureError) throw fail(Reason.BAD_CERTIFICATE, err.message);
    throw err;
  }
  if (author === null) throw fail(Reason.UNKNOWN_CERTIFICATE, `${root}/${key} is signed under a certificate not in the document`);
  try {
    await verifyEnvelope(env, docId, key, author.deviceKey);
  } catch (err) {
    throw fail(Reason.BAD_SIGNATURE, /** @type {Error} */ (err).message);
  }
  const at = hlcMs(rec);
  if (at === null || !validAt(author, at)) throw fail(Reason.CERTIFICATE_EXPIRED, `${root}/${key} was written outside its certificate's validity`);
  return author;
}

/**
 * Arrival rules: no HLC from the future, none older than min(maxBackdateMs, the certificate's
 * lifetime), no revoked certificate.
 * @param {Certificate} author @param {TypedRecord} rec @param {ArrivalPolicy} policy
 */
function checkArrival(author, rec, policy) {
  const at = /** @type {number} */ (hlcMs(rec));
  const skew = policy.maxFutureSkewMs ?? 60000;
  if (at - policy.nowMs > skew) throw fail(Reason.CLOCK_SKEW, `record stamped ${at - policy.nowMs} ms in the future`);
  const lifetime = author.expiresAtMs - author.issuedAtMs;
  const limit = policy.maxBackdateMs === undefined ? MAX_BACKDATE_MS : policy.maxBackdateMs;
  const window = limit === null ? lifetime : Math.min(limit, lifetime);
  if (policy.nowMs - at > window) throw fail(Reason.BACKDATED, `record dated ${policy.nowMs - at} ms ago, beyond the back-dating window of ${window} ms`);
  if (policy.isRevoked && policy.isRevoked(author)) throw fail(Reason.REVOKED, `certificate ${author.certId} is revoked`);
}
