// The domain schema (crdt_core/schema.py): document ids, which top-level maps each kind of document
// holds, and one field table per record kind. Tables, not hand-written checks, so this file reads
// line by line against crdt_core and docs/design.md's "Documents".

import { Float64 } from "./canonical.js";
import { codePoints, isWireInt } from "./certs.js";
import { SchemaError } from "./errors.js";

/** The schema version this SDK knows; newer records are stored with their unknown fields inert.
 * Version 2 added the slot field `per_customer` and the user document's `days` map (`booked_day`). */
export const SCHEMA_VERSION = 2;
export const CERTS_ROOT = "certs";

const ID_RE = /^[A-Za-z0-9_-]{1,64}$/;
const HLC_RE = /^[0-9]{13}-[0-9]{6}-[A-Za-z0-9_-]{1,64}$/;
const HHMM_RE = /^([01][0-9]|2[0-3]):[0-5][0-9]$/;
// Terminal control characters: C0, DEL and C1. A multi-line field may hold line feeds only.
const CONTROL_RE = /[\u0000-\u001f\u007f-\u009f]/;
const CONTROL_MULTILINE_RE = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/;

/** Whether text holds a character no text field may hold (line feeds allowed if multiline). @param {string} text */
export function hasControlCharacters(text, multiline = false) {
  return (multiline ? CONTROL_MULTILINE_RE : CONTROL_RE).test(text);
}

/**
 * A parsed document id.
 * @typedef {{kind: "catalog"} | {kind: "shop", shopId: string} | {kind: "user", userId: string} | {kind: "bookings", shopId: string, day: string}} DocId
 */

/** @param {unknown} value @param {string} [what] @returns {string} */
export function checkId(value, what = "id") {
  if (typeof value !== "string" || !ID_RE.test(value)) throw new SchemaError(`${what} must be 1-64 characters of A-Z a-z 0-9 _ -`);
  return value;
}

/** Whether YYYY-MM-DD names a real day (year 1 and later, as Python's date). @param {string} day */
function realDay(day) {
  const [y, m, d] = day.split("-").map(Number);
  if (y < 1 || m < 1 || m > 12 || d < 1) return false;
  const date = new Date(Date.UTC(2000, m - 1, d));
  date.setUTCFullYear(y);
  return date.getUTCMonth() === m - 1 && date.getUTCDate() === d;
}

/**
 * Parse and check a document id; every other spelling is refused.
 * @param {unknown} text
 * @returns {DocId}
 * @throws {SchemaError}
 */
export function parseDocId(text) {
  if (typeof text !== "string" || codePoints(text) > 200) throw new SchemaError("doc id must be a short string");
  if (text === "catalog") return { kind: "catalog" };
  const cut = text.indexOf(":");
  const kind = cut < 0 ? text : text.slice(0, cut);
  const rest = cut < 0 ? "" : text.slice(cut + 1);
  if (kind === "shop") return { kind: "shop", shopId: checkId(rest, "shop id") };
  if (kind === "user") return { kind: "user", userId: checkId(rest, "user id") };
  if (kind === "bookings") {
    const cut2 = rest.indexOf(":");
    const shop = cut2 < 0 ? rest : rest.slice(0, cut2);
    const day = cut2 < 0 ? "" : rest.slice(cut2 + 1);
    checkId(shop, "shop id");
    if (!/^[0-9]{4}-[0-9]{2}-[0-9]{2}$/.test(day)) throw new SchemaError("bookings day must be YYYY-MM-DD");
    if (!realDay(day)) throw new SchemaError(`no such day ${JSON.stringify(day)}`);
    return { kind: "bookings", shopId: shop, day };
  }
  throw new SchemaError(`unknown document kind in ${JSON.stringify(text)}`);
}

/** @param {DocId} doc @returns {string} */
export function docIdString(doc) {
  switch (doc.kind) {
    case "catalog":
      return "catalog";
    case "shop":
      return `shop:${doc.shopId}`;
    case "user":
      return `user:${doc.userId}`;
    case "bookings":
      return `bookings:${doc.shopId}:${doc.day}`;
  }
}

/**
 * One field: its type, whether required, and bounds.
 * @typedef {object} FieldSpec
 * @property {string} name
 * @property {"str"|"id"|"hlc"|"int"|"float"|"bool"|"hhmm"|"day"|"weekdays"|"enum"|"url"} type
 * @property {boolean} required
 * @property {number} maxLen
 * @property {number | null} lo
 * @property {number | null} hi
 * @property {Set<string> | null} values for enums
 * @property {boolean} multiline text that may hold line feeds
 * @property {number} since the schema version that added the field
 */

/**
 * @param {string} name @param {FieldSpec["type"]} type
 * @param {{required?: boolean, maxLen?: number, lo?: number, hi?: number, values?: string[], multiline?: boolean, since?: number}} [opts]
 * @returns {FieldSpec}
 */
function field(name, type, opts = {}) {
  return {
    name,
    type,
    required: opts.required ?? true,
    maxLen: opts.maxLen ?? 200,
    lo: opts.lo ?? null,
    hi: opts.hi ?? null,
    values: opts.values ? new Set(opts.values) : null,
    multiline: opts.multiline ?? false,
    since: opts.since ?? 1,
  };
}

/**
 * Check one field's value; returns it as the app sees it (floats as numbers, weekdays sorted, unique).
 * @param {FieldSpec} spec @param {unknown} value @param {number} schemaVersion
 * @returns {unknown}
 */
function checkField(spec, value, schemaVersion) {
  const where = `field ${JSON.stringify(spec.name)}`;
  switch (spec.type) {
    case "str":
    case "url":
      if (typeof value !== "string" || codePoints(value) > spec.maxLen) throw new SchemaError(`${where} must be text of at most ${spec.maxLen} characters`);
      if (spec.type === "url" && value && !/^https?:\/\//.test(value)) throw new SchemaError(`${where} must be an http(s) URL`);
      if (hasControlCharacters(value, spec.multiline)) throw new SchemaError(`${where} holds a control character`);
      return value;
    case "id":
      return checkId(value, where);
    case "hlc":
      if (typeof value !== "string" || !HLC_RE.test(value)) throw new SchemaError(`${where} must be an HLC timestamp string`);
      return value;
    case "day":
      if (typeof value !== "string" || !/^[0-9]{4}-[0-9]{2}-[0-9]{2}$/.test(value)) throw new SchemaError(`${where} must be a day YYYY-MM-DD`);
      if (!realDay(value)) throw new SchemaError(`no such day ${JSON.stringify(value)}`);
      return value;
    case "hhmm":
      if (typeof value !== "string" || !HHMM_RE.test(value)) throw new SchemaError(`${where} must be HH:MM`);
      return value;
    case "bool":
      if (typeof value !== "boolean") throw new SchemaError(`${where} must be true or false`);
      return value;
    case "weekdays":
      if (!Array.isArray(value) || value.length > 7 || value.some((d) => !isWireInt(d) || d < 0 || d > 6)) {
        throw new SchemaError(`${where} must be a list of weekday numbers 0-6`);
      }
      return [...new Set(value.map(Number))].sort((a, b) => a - b);
    case "enum":
      if (typeof value !== "string" || codePoints(value) > 32) throw new SchemaError(`${where} must be one of its values`);
      // a value this version does not know is accepted only from a newer version (where it is inert)
      if (!spec.values?.has(value) && schemaVersion <= SCHEMA_VERSION) throw new SchemaError(`${where} must be one of its values`);
      return value;
    case "int":
      if (!isWireInt(value)) throw new SchemaError(`${where} must be an integer`);
      return inRange(spec, value, where);
    case "float": {
      // crdt_core accepts an int or a float here (float(value)); NaN is refused
      const n = value instanceof Float64 ? value.value : isWireInt(value) ? Number(value) : NaN;
      if (Number.isNaN(n)) throw new SchemaError(`${where} must be a number`);
      return inRange(spec, n, where);
    }
  }
}

/** @param {FieldSpec} spec @param {number | bigint} value @param {string} where */
function inRange(spec, value, where) {
  if (spec.lo !== null && value < spec.lo) throw new SchemaError(`${where} must be at least ${spec.lo}`);
  if (spec.hi !== null && value > spec.hi) throw new SchemaError(`${where} must be at most ${spec.hi}`);
  return typeof value === "bigint" ? value : value;
}

/**
 * A record kind: its name, the map it lives in, its fields and which field its key must equal.
 * @typedef {object} RecordKind
 * @property {string} kind
 * @property {FieldSpec[]} fields
 * @property {string | null} keyField
 * @property {number} [since] the schema version that added the kind (default 1)
 */

const NAME = field("name", "str", { maxLen: 120 });
const HLC = field("hlc", "hlc");

/** @type {Record<string, RecordKind>} */
export const RECORD_KINDS = {
  category: { kind: "category", keyField: null, fields: [field("id", "id"), NAME, field("icon", "str", { required: false, maxLen: 64 }), HLC] },
  shop_summary: {
    kind: "shop_summary",
    keyField: null,
    fields: [
      field("id", "id"),
      NAME,
      field("category", "id"),
      field("location", "str", { maxLen: 200 }),
      field("lat", "float", { lo: -90, hi: 90 }),
      field("lon", "float", { lo: -180, hi: 180 }),
      field("rating", "float", { required: false, lo: 0, hi: 5 }),
      field("active", "bool"),
      HLC,
    ],
  },
  shop_profile: {
    kind: "shop_profile",
    keyField: null,
    fields: [
      NAME,
      field("description", "str", { maxLen: 2000, multiline: true }),
      field("address", "str", { maxLen: 300 }),
      field("lat", "float", { lo: -90, hi: 90 }),
      field("lon", "float", { lo: -180, hi: 180 }),
      field("image_url", "url", { required: false, maxLen: 500 }),
      field("hours", "str", { maxLen: 300 }),
      HLC,
    ],
  },
  slot: {
    kind: "slot",
    keyField: null,
    fields: [
      field("id", "id"),
      field("service", "str", { maxLen: 120 }),
      field("start", "hhmm"),
      field("duration", "int", { lo: 1, hi: 24 * 60 }),
      field("capacity", "int", { lo: 0, hi: 10000 }),
      field("weekdays", "weekdays", { required: false }),
      field("active", "bool"),
      HLC,
      field("per_customer", "int", { required: false, lo: 1, hi: 100, since: 2 }),
    ],
  },
  staff: {
    kind: "staff",
    keyField: null,
    fields: [field("user", "id"), field("role", "enum", { values: ["staff", "owner"] }), field("active", "bool"), HLC],
  },
  reservation: {
    kind: "reservation",
    keyField: "id",
    fields: [field("id", "id"), field("slot", "id"), field("party", "int", { lo: 1, hi: 100 }), field("customer", "id"), HLC, field("note", "str", { required: false, maxLen: 500 })],
  },
  event: {
    kind: "event",
    keyField: "id",
    fields: [
      field("id", "id"),
      field("reservation", "id"),
      field("type", "enum", { values: ["cancel", "confirm", "decline", "no_show"] }),
      field("by", "id"),
      HLC,
      field("reason", "str", { required: false, maxLen: 500 }),
    ],
  },
  stamp: {
    kind: "stamp",
    keyField: null,
    fields: [field("no", "int", { lo: 1, hi: 2 ** 53 }), field("reservation", "id"), field("at", "int", { lo: 0, hi: 2 ** 53 })],
  },
  booked_day: { kind: "booked_day", keyField: null, since: 2, fields: [field("shop", "id"), field("day", "day"), HLC] },
  user_profile: {
    kind: "user_profile",
    keyField: null,
    fields: [
      field("display_name", "str", { maxLen: 120 }),
      field("email", "str", { required: false, maxLen: 254 }),
      field("phone", "str", { required: false, maxLen: 40 }),
      field("locale", "str", { required: false, maxLen: 20 }),
      HLC,
    ],
  },
};

/** Which record kind each map of each document kind holds. @type {Record<DocId["kind"], Record<string, string>>} */
export const MAPS = {
  catalog: { categories: "category", shops: "shop_summary" },
  shop: { profile: "shop_profile", slots: "slot", staff: "staff" },
  bookings: { reservations: "reservation", events: "event", stamps: "stamp" },
  user: { profile: "user_profile", days: "booked_day" },
};

/** The top-level maps a document of this kind may hold (its record maps and `certs`). @param {DocId["kind"]} kind */
export function rootsOf(kind) {
  return new Set([...Object.keys(MAPS[kind]), CERTS_ROOT]);
}

/** Stamps are keyed by their number, zero-padded to 16 digits so keys sort like numbers. @param {number} no */
export function stampKey(no) {
  return String(no).padStart(16, "0");
}

/**
 * A typed record: its known fields (absent optional ones are null), plus `kind`, `extra` (fields
 * from a newer schema version) and `schemaVersion`.
 * @typedef {{kind: string, extra: Record<string, unknown>, schemaVersion: number} & Record<string, any>} TypedRecord
 */

/**
 * Type-check one record's fields for the map it is stored in.
 * @param {DocId["kind"]} docKind @param {string} root @param {string} key @param {string} recordKind
 * @param {Record<string, unknown>} fields @param {number} schemaVersion
 * @returns {TypedRecord}
 * @throws {SchemaError}
 */
export function parseRecord(docKind, root, key, recordKind, fields, schemaVersion) {
  const kindName = Object.hasOwn(MAPS[docKind], root) ? MAPS[docKind][root] : undefined;
  if (kindName === undefined) throw new SchemaError(`a ${docKind} document has no map ${JSON.stringify(root)}`);
  const spec = RECORD_KINDS[kindName];
  if (recordKind !== spec.kind) throw new SchemaError(`a ${JSON.stringify(recordKind)} record cannot live in map ${JSON.stringify(root)}`);
  if (schemaVersion < (spec.since ?? 1)) throw new SchemaError(`${recordKind} records exist from schema version ${spec.since}`);
  if (spec.kind !== "stamp") checkId(key, "record key");
  /** @type {TypedRecord} */
  const record = { kind: spec.kind, extra: {}, schemaVersion };
  const fieldsThen = spec.fields.filter((f) => f.since <= schemaVersion); // later fields are unknown ones
  for (const f of spec.fields) if (f.since > schemaVersion) record[f.name] = null;
  for (const f of fieldsThen) {
    if (Object.hasOwn(fields, f.name)) record[f.name] = checkField(f, fields[f.name], schemaVersion);
    else if (f.required) throw new SchemaError(`${spec.kind}: field ${JSON.stringify(f.name)} is required`);
    else record[f.name] = null;
  }
  const known = new Set(fieldsThen.map((f) => f.name));
  for (const [name, value] of Object.entries(fields)) if (!known.has(name)) record.extra[name] = value;
  if (Object.keys(record.extra).length > 0 && schemaVersion <= SCHEMA_VERSION) {
    throw new SchemaError(`${spec.kind}: unknown fields ${Object.keys(record.extra).sort()} in schema version ${schemaVersion}`);
  }
  if (spec.keyField !== null && record[spec.keyField] !== key) {
    throw new SchemaError(`${recordKind} stored under ${JSON.stringify(key)} but its ${spec.keyField} says otherwise`);
  }
  if (spec.kind === "stamp" && key !== stampKey(record.no)) throw new SchemaError(`stamp ${record.no} stored under key ${JSON.stringify(key)}`);
  return record;
}

/**
 * The lowest schema version that holds every field a record of `kind` sets: what to sign it as, so
 * replicas of older versions read it whole whenever they can.
 * @param {string} kind @param {Record<string, unknown>} fields
 */
export function neededVersion(kind, fields) {
  const spec = RECORD_KINDS[kind];
  let version = spec?.since ?? 1;
  for (const f of spec?.fields ?? []) if (fields[f.name] !== undefined && fields[f.name] !== null) version = Math.max(version, f.since);
  return version;
}

/**
 * Seats a slot template offers on a day (0 when inactive or not offered that weekday).
 * @param {TypedRecord} slot a `slot` record @param {string} day YYYY-MM-DD
 */
export function capacityOn(slot, day) {
  if (!slot.active) return 0;
  if (slot.weekdays !== null && slot.weekdays !== undefined) {
    const [y, m, d] = day.split("-").map(Number);
    const date = new Date(Date.UTC(2000, m - 1, d));
    date.setUTCFullYear(y);
    const weekday = (date.getUTCDay() + 6) % 7; // 0 = Monday, as Python's date.weekday()
    if (!slot.weekdays.includes(weekday)) return 0;
  }
  return slot.capacity;
}
