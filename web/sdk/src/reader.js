// Typed reads of a document's records (crdt_core/reader.py): what a client feeds its verdict and
// views. Validation already checked whatever a replica holds, so reading neither re-verifies
// signatures nor re-checks canonical form; a record that does not parse (a newer, incompatible
// schema, say) is skipped rather than breaking the view.

import * as Y from "yjs";
import { SchemaError } from "./errors.js";
import { openRecord } from "./records.js";
import { CERTS_ROOT, SCHEMA_VERSION, parseDocId, parseRecord, rootsOf } from "./schema.js";
import { currentTemplates, newestPer } from "./verdict.js";

/** @typedef {import("./schema.js").TypedRecord} TypedRecord */
/** @typedef {import("./schema.js").DocId} DocId */

/** @param {string | DocId} docId @returns {DocId} */
const asDocId = (docId) => (typeof docId === "string" ? parseDocId(docId) : docId);

/**
 * Every parseable record of one map, by key (an absent map reads as empty and is not created).
 * @param {Y.Doc} doc @param {string | DocId} docId @param {string} root
 * @returns {Map<string, TypedRecord>}
 */
export function readMap(doc, docId, root) {
  const ref = asDocId(docId);
  /** @type {Map<string, TypedRecord>} */
  const out = new Map();
  if (!doc.share.has(root)) return out;
  for (const [key, raw] of doc.getMap(root).entries()) {
    if (!(raw instanceof Uint8Array)) continue;
    const record = parsedRecord(raw, ref.kind, root, key);
    if (record !== null) out.set(key, record);
  }
  return out;
}

/**
 * Records already parsed, by the value Yjs holds (the same Uint8Array each time a map is read):
 * a client recomputes a day's verdict after every change, and decoding every record again made
 * each booking cost a little more than the one before.
 * @type {WeakMap<Uint8Array, {kind: string, root: string, key: string, record: TypedRecord | null}>}
 */
const parsed = new WeakMap();

/**
 * The typed record `raw` holds under `root`/`key` of a document of `kind`, or null if it does not
 * parse. @param {Uint8Array} raw @param {string} kind @param {string} root @param {string} key
 * @returns {TypedRecord | null}
 */
function parsedRecord(raw, kind, root, key) {
  const hit = parsed.get(raw);
  if (hit && hit.kind === kind && hit.root === root && hit.key === key) return hit.record;
  let record = null;
  try {
    const env = openRecord(raw, { canonical: false });
    record = parseRecord(/** @type {any} */ (kind), root, key, env.kind, env.fields, env.schemaVersion);
  } catch (err) {
    if (!(err instanceof SchemaError)) throw err;
  }
  parsed.set(raw, { kind, root, key, record });
  return record;
}

/**
 * The document's schema version: the highest its records were written in (0 if empty), capped at
 * the version this SDK knows, so one record claiming 999 cannot push a document past its readers.
 * @param {Y.Doc} doc @param {string | DocId} docId
 */
export function schemaVersionOf(doc, docId) {
  let best = 0;
  for (const root of rootsOf(asDocId(docId).kind)) {
    if (root === CERTS_ROOT || !doc.share.has(root)) continue;
    for (const raw of doc.getMap(root).values()) {
      if (!(raw instanceof Uint8Array)) continue;
      try {
        best = Math.max(best, Math.min(openRecord(raw, { canonical: false }).schemaVersion, SCHEMA_VERSION));
      } catch (err) {
        if (!(err instanceof SchemaError)) throw err;
      }
    }
  }
  return best;
}

/**
 * A bookings document's claims as typed records: the verdict's input besides capacities.
 * @param {Y.Doc} doc @param {string | DocId} docId
 * @returns {import("./verdict.js").BookingsState}
 */
export function readBookings(doc, docId) {
  const ref = asDocId(docId);
  /** @type {Map<number, TypedRecord>} */
  const stamps = new Map();
  for (const stamp of readMap(doc, ref, "stamps").values()) stamps.set(stamp.no, stamp);
  return { reservations: readMap(doc, ref, "reservations"), events: readMap(doc, ref, "events"), stamps };
}

/**
 * The current template of every slot of a shop document (newest HLC, then record key, wins).
 * @param {Y.Doc} doc @param {string | DocId} shopDocId
 * @returns {Map<string, TypedRecord>}
 */
export function slotTemplates(doc, shopDocId) {
  return currentTemplates(readMap(doc, shopDocId, "slots"));
}

/**
 * Users the shop's staff list names as active staff or owners (per user, the newest entry by HLC
 * then record key): they have staff rights on the shop, whatever their certificate says.
 * @param {Y.Doc} doc @param {string | DocId} shopDocId
 * @returns {Set<string>}
 */
export function shopStaff(doc, shopDocId) {
  const current = newestPer(readMap(doc, shopDocId, "staff"), (e) => e.user);
  return new Set([...current].filter(([, e]) => e.active).map(([user]) => user));
}

/**
 * The category ids the catalogue document defines.
 * @param {Y.Doc} doc
 * @returns {Set<string>}
 */
export function categoryIds(doc) {
  return new Set([...readMap(doc, "catalog", "categories").values()].map((c) => c.id));
}

/**
 * The (shop id, day) pairs a user's document lists (`booked_day` records): the bookings documents
 * a new device of the user fetches to show the bookings made on other devices.
 * @param {Y.Doc} doc the user's document @param {string} userId
 * @returns {Array<{shop: string, day: string}>} sorted by day, then shop
 */
export function bookedDays(doc, userId) {
  const seen = new Map();
  for (const r of readMap(doc, `user:${userId}`, "days").values()) seen.set(`${r.day} ${r.shop}`, { shop: r.shop, day: r.day });
  return [...seen.keys()].sort().map((k) => seen.get(k));
}
