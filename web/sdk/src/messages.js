// The sync protocol's wire codec (crdt_core/messages.py, docs/protocol.md): one msgpack map per
// binary websocket message, {"v": version, "t": type, ...fields}. Decoding refuses, as crdt_core
// does, every input that is not exactly one valid message: field names are global (a name has
// the same msgpack type in every message type), unknown names are ignored, nil is an absent field.
//
// crdt_core reads a message with a streaming unpacker that peeks at type bytes; here the library
// decodes the whole map and the same rules are applied to what it built. Two library behaviours
// would hide what crdt_core sees, so the decoder is told otherwise: map keys are tagged with a
// counter (a repeated field name would otherwise silently overwrite the first), and a str that is
// not UTF-8 becomes an `InvalidText` (refused in a known field, ignored in an unknown one, where
// crdt_core skips the bytes without decoding them).

import { Decoder, ExtData, ExtensionCodec } from "@msgpack/msgpack";
import { Float64, InvalidText, installExactHooks, packInOrder } from "./canonical.js";
import { codePoints } from "./certs.js";

export const PROTOCOL_VERSION = 1;
/** Largest message a relay accepts by default (client to relay). */
export const DEFAULT_MAX_MESSAGE = 1 << 20;
/** Largest message a client accepts by default (relay to client): a sync carries a whole document. */
export const DEFAULT_MAX_DOWNLOAD = 32 << 20;
/** Every integer on the wire is in 0..2**63-1. */
export const MAX_INT = 2n ** 63n - 1n;
export const MAX_ID_LEN = 256;
export const MAX_TOKEN_LEN = 8192;
export const MAX_TEXT_LEN = 256;
export const MAX_CODE_LEN = 64;
export const MAX_REASON_LEN = 1024;
export const MAX_LIMITS = 64;
export const MAX_STAMPS = 4096;
export const MAX_OFFER = 4096;
export const MAX_PROOF_LEN = 128;
export const MAX_CERT_LEN = 4096;
export const MIN_NONCE_LEN = 16;
export const MAX_NONCE_LEN = 64;
export const MAX_FIELDS = 32;

/** Every way a message can be invalid (crdt_core.errors.CodecError). */
export class CodecError extends Error {
  name = "CodecError";
}

// --- close codes, error codes, limits -------------------------------------------------------------

export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  ABNORMAL: 1006,
  POLICY: 1008,
  TOO_BIG: 1009,
  INTERNAL: 1011,
  TRY_AGAIN_LATER: 1013,
  TOKEN_EXPIRED: 4001,
  PROTOCOL_VIOLATION: 4002,
  AUTH_FAILED: 4003,
  AUTH_TIMEOUT: 4008,
  SESSION_REVOKED: 4010,
  ACCOUNT_DISABLED: 4011,
  TOO_FAST: 4029,
});

/** What a client does after a close: reconnect, refresh_token, login or stop. */
const CLOSE_ACTIONS = new Map([
  [1000, "reconnect"],
  [1001, "reconnect"],
  [1006, "reconnect"],
  [1008, "stop"],
  [1009, "stop"],
  [1011, "reconnect"],
  [1013, "reconnect"],
  [4001, "refresh_token"],
  [4002, "reconnect"], // a mangled message in transit looks like a violation; a fresh connection heals it
  [4003, "login"],
  [4008, "reconnect"],
  [4010, "login"],
  [4011, "stop"],
  [4029, "reconnect"],
]);

/** Unknown codes reconnect with backoff: an offline-first client never stops syncing silently. @param {number} code */
export function closeAction(code) {
  return CLOSE_ACTIONS.get(code) ?? "reconnect";
}

/** @param {number} code */
export function isRetryableClose(code) {
  const action = closeAction(code);
  return action === "reconnect" || action === "refresh_token";
}

export const ErrorCode = Object.freeze({
  FORBIDDEN: "forbidden",
  REJECTED: "rejected",
  BAD_DOC: "bad_doc",
  NOT_SUBSCRIBED: "not_subscribed",
  TOO_MANY_DOCS: "too_many_docs",
  DOC_TOO_LARGE: "doc_too_large",
  MISSING_DEPS: "missing_deps",
  INTERNAL: "internal",
  RATE_LIMITED: "rate_limited",
});
const RETRYABLE_ERRORS = new Set(["not_subscribed", "missing_deps", "internal", "rate_limited"]);
const KNOWN_ERRORS = new Set(/** @type {string[]} */ (Object.values(ErrorCode)));

/**
 * Whether re-sending after an `err` with `code` can succeed; for codes this version does not know,
 * `fallback` (pass the message's own `retry` flag).
 * @param {string} code @param {boolean} [fallback]
 */
export function isRetryableError(code, fallback = false) {
  return KNOWN_ERRORS.has(code) ? RETRYABLE_ERRORS.has(code) : fallback;
}

export const Limit = Object.freeze({
  MAX_MESSAGE: "max_message",
  MAX_DOCS: "max_docs",
  MAX_DOC: "max_doc",
  RATE: "rate",
  BURST: "burst",
  MAX_INFLIGHT: "max_inflight",
});

// --- field checks -----------------------------------------------------------------------------------

const ID_RE = /^[\x21-\x7e]+$/;
/** Python's str.isprintable: no control, format, surrogate, private-use, unassigned or separator
 * characters, the ASCII space excepted. */
const NOT_PRINTABLE = /(?! )[\p{C}\p{Z}]/u;

/** @param {string} name @param {unknown} value */
function checkInt(name, value) {
  if (!(typeof value === "number" || typeof value === "bigint")) throw new CodecError(`${name} must be an int`);
  if (value < 0 || BigInt(value) > MAX_INT) throw new CodecError(`${name} out of range 0..2**63-1`);
}

/** @param {string} name @param {unknown} value @param {number} [maxLen] */
function checkId(name, value, maxLen = MAX_ID_LEN) {
  if (typeof value !== "string") throw new CodecError(`${name} must be a str`);
  if (value.length < 1 || value.length > maxLen || !ID_RE.test(value)) {
    throw new CodecError(`${name} must be 1..${maxLen} printable ASCII characters without spaces`);
  }
}

/** Whether `doc` may name a document on the wire (its shape only). @param {unknown} doc */
export function isValidDocId(doc) {
  return typeof doc === "string" && doc.length >= 1 && doc.length <= MAX_ID_LEN && ID_RE.test(doc);
}

/** @param {string} name @param {unknown} value @param {number} maxLen @param {boolean} allowEmpty */
function checkText(name, value, maxLen, allowEmpty) {
  if (typeof value !== "string") throw new CodecError(`${name} must be a str`);
  const n = codePoints(value);
  if (n > maxLen || (n === 0 && !allowEmpty)) throw new CodecError(`${name} is too long or empty`);
  if (NOT_PRINTABLE.test(value)) throw new CodecError(`${name} must not contain control characters`);
}

/** @param {string} name @param {unknown} value @param {number} min @param {number} max */
function checkSizedBytes(name, value, min, max) {
  if (!(value instanceof Uint8Array)) throw new CodecError(`${name} must be bytes`);
  if (value.length < min || value.length > max) throw new CodecError(`${name} must be ${min}..${max} bytes long`);
}

/** No Yjs v1 update or state vector is empty. @param {string} name @param {unknown} value */
function checkBytes(name, value) {
  checkSizedBytes(name, value, 1, Number.MAX_SAFE_INTEGER);
}

/** @param {unknown} stamps */
function checkStamps(stamps) {
  for (const [no, reservation] of /** @type {Array<[unknown, unknown]>} */ (stamps)) {
    checkInt("stamp number", no);
    checkId("reservation id", reservation);
  }
}

// --- message types ----------------------------------------------------------------------------------

/**
 * @typedef {object} MessageType
 * @property {"client" | "relay"} direction
 * @property {string[]} fields in wire order, after v and t
 * @property {string[]} required
 * @property {(f: Record<string, any>) => void} check
 */

/** @type {Record<string, MessageType>} keyed by t, with the two directions of "upd" apart */
const TYPES = {
  auth: {
    direction: "client",
    fields: ["token", "proof", "proof_time"],
    required: ["token"],
    check: (f) => {
      checkId("token", f.token, MAX_TOKEN_LEN);
      if (f.proof !== undefined) checkSizedBytes("proof", f.proof, 1, MAX_PROOF_LEN);
      if (f.proof_time !== undefined) checkInt("proof_time", f.proof_time);
    },
  },
  hello: {
    direction: "client",
    fields: ["nonce", "cert"],
    required: ["nonce", "cert"],
    check: (f) => {
      checkSizedBytes("nonce", f.nonce, MIN_NONCE_LEN, MAX_NONCE_LEN);
      checkSizedBytes("cert", f.cert, 1, MAX_CERT_LEN);
    },
  },
  challenge: {
    direction: "relay",
    fields: ["nonce", "cert", "proof"],
    required: ["nonce", "cert", "proof"],
    check: (f) => {
      checkSizedBytes("nonce", f.nonce, MIN_NONCE_LEN, MAX_NONCE_LEN);
      checkSizedBytes("cert", f.cert, 1, MAX_CERT_LEN);
      checkSizedBytes("proof", f.proof, 1, MAX_PROOF_LEN);
    },
  },
  sub: {
    direction: "client",
    fields: ["doc", "sv"],
    required: ["doc", "sv"],
    check: (f) => {
      checkId("doc", f.doc);
      checkBytes("sv", f.sv);
    },
  },
  "upd/client": {
    direction: "client",
    fields: ["doc", "uid", "update"],
    required: ["doc", "uid", "update"],
    check: (f) => {
      checkId("doc", f.doc);
      checkInt("uid", f.uid);
      checkBytes("update", f.update);
    },
  },
  unsub: { direction: "client", fields: ["doc"], required: ["doc"], check: (f) => checkId("doc", f.doc) },
  welcome: {
    direction: "relay",
    fields: ["user", "epoch", "server", "limits", "token", "docs"],
    required: ["user", "epoch", "server", "limits"],
    check: (f) => {
      if (f.token !== undefined) checkId("token", f.token, MAX_TOKEN_LEN);
      if (f.docs !== undefined) for (const d of f.docs) checkId("doc", d);
      checkId("user", f.user);
      checkId("epoch", f.epoch);
      checkText("server", f.server, MAX_TEXT_LEN, false);
      for (const [name, value] of Object.entries(f.limits)) {
        checkId("limit name", name, MAX_CODE_LEN);
        checkInt(`limit ${name}`, value);
      }
    },
  },
  sync: {
    direction: "relay",
    fields: ["doc", "update", "sv", "seq", "digest"],
    required: ["doc", "update", "sv", "seq"],
    check: (f) => {
      checkId("doc", f.doc);
      checkBytes("update", f.update);
      checkBytes("sv", f.sv);
      checkInt("seq", f.seq);
      if (f.digest !== undefined) checkSizedBytes("digest", f.digest, 1, MAX_PROOF_LEN);
    },
  },
  "upd/relay": {
    direction: "relay",
    fields: ["doc", "update", "seq"],
    required: ["doc", "update", "seq"],
    check: (f) => {
      checkId("doc", f.doc);
      checkBytes("update", f.update);
      checkInt("seq", f.seq);
    },
  },
  ack: {
    direction: "relay",
    fields: ["doc", "uid", "seq"],
    required: ["doc", "uid", "seq"],
    check: (f) => {
      checkId("doc", f.doc);
      checkInt("uid", f.uid);
      checkInt("seq", f.seq);
    },
  },
  stamp: {
    direction: "relay",
    fields: ["doc", "seq", "update", "stamps"],
    required: ["doc", "seq", "update", "stamps"],
    check: (f) => {
      checkId("doc", f.doc);
      checkInt("seq", f.seq);
      checkBytes("update", f.update);
      checkStamps(f.stamps);
    },
  },
  stamped: {
    direction: "relay",
    fields: ["doc", "seq", "uid", "update", "stamp", "stamps"],
    required: ["doc", "seq", "stamp", "stamps"],
    check: (f) => {
      checkId("doc", f.doc);
      checkInt("seq", f.seq);
      if (BigInt(f.seq) >= MAX_INT) throw new CodecError("seq must leave room for the stamp update's seq + 1");
      if ((f.uid === undefined) === (f.update === undefined)) {
        throw new CodecError("a stamped carries exactly one of 'uid' (an ack) or 'update' (someone else's)");
      }
      if (f.uid !== undefined) checkInt("uid", f.uid);
      if (f.update !== undefined) checkBytes("update", f.update);
      checkBytes("stamp", f.stamp);
      checkStamps(f.stamps);
    },
  },
  err: {
    direction: "relay",
    fields: ["code", "reason", "doc", "uid", "retry"],
    required: ["code", "reason", "retry"],
    check: (f) => {
      checkId("code", f.code, MAX_CODE_LEN);
      checkText("reason", f.reason, MAX_REASON_LEN, true);
      if (f.doc !== undefined) checkId("doc", f.doc);
      if (f.uid !== undefined) checkInt("uid", f.uid);
      if (typeof f.retry !== "boolean") throw new CodecError("retry must be a bool");
    },
  },
};

// --- decoding -----------------------------------------------------------------------------------------

/** msgpack's type family of a decoded value (what crdt_core reads off a value's first byte). @param {unknown} v */
function family(v) {
  if (v === null) return "nil";
  if (typeof v === "boolean") return "bool";
  if (typeof v === "number" || typeof v === "bigint") return "int";
  if (v instanceof Float64) return "float";
  if (typeof v === "string" || v instanceof InvalidText) return "str";
  if (v instanceof Uint8Array) return "bin";
  if (Array.isArray(v)) return "array";
  if (v instanceof ExtData || v instanceof Date) return "ext";
  return "map";
}

/** The msgpack family of every defined field name, whatever the message type. */
const FIELD_FAMILY = new Map(
  Object.entries({
    v: "int", t: "str", token: "str", doc: "str", sv: "bin", uid: "int", update: "bin", user: "str",
    epoch: "str", server: "str", limits: "map", seq: "int", stamps: "array", stamp: "bin", code: "str",
    reason: "str", retry: "bool", nonce: "bin", cert: "bin", proof: "bin", proof_time: "int",
    docs: "array", digest: "bin",
  }), // prettier-ignore
);

/** Every ext type decodes to ExtData: crdt_core skips (unknown field) or refuses (known) them unread. */
class OpaqueExtensions extends ExtensionCodec {
  /** @param {Uint8Array} data @param {number} type */
  decode(data, type) {
    return new ExtData(type, data);
  }
}

const KEY_MARK = "\u0000";
let keySerial = 0;

/**
 * A map key tagged with a serial number, so a repeated key is a second entry, not an overwrite.
 * @param {unknown} key
 */
function tagKey(key) {
  keySerial += 1;
  const text = typeof key === "string" ? `s${key}` : "o"; // "o": not a (UTF-8) string
  return `${KEY_MARK}${keySerial}${KEY_MARK}${text}`;
}

/** @param {Record<string, unknown>} map @returns {Array<[string | null, unknown]>} entries, null for non-text keys */
function entriesOf(map) {
  return Object.entries(map).map(([tagged, value]) => {
    const text = tagged.slice(tagged.indexOf(KEY_MARK, 1) + 1);
    return [text.startsWith("s") ? text.slice(1) : null, value];
  });
}

class MessageDecoder extends Decoder {
  constructor() {
    super({ useBigInt64: true, mapKeyConverter: tagKey, extensionCodec: new OpaqueExtensions() });
  }
}
installExactHooks(MessageDecoder, { markBadText: true });

/** @param {unknown} value @returns {unknown} safe 64-bit ints as numbers */
function asNumber(value) {
  return typeof value === "bigint" && value <= BigInt(Number.MAX_SAFE_INTEGER) && value >= 0n ? Number(value) : value;
}

/**
 * Read a known field's value: structure checks that apply whatever the message type.
 * @param {string} name @param {unknown} value
 */
function readField(name, value) {
  if (value instanceof InvalidText) throw new CodecError(`field ${name} is not UTF-8`);
  if (name === "limits") {
    const entries = entriesOf(/** @type {Record<string, unknown>} */ (value));
    if (entries.length > MAX_LIMITS) throw new CodecError(`limits has more than ${MAX_LIMITS} entries`);
    /** @type {Record<string, unknown>} */
    const out = {};
    for (const [key, v] of entries) {
      if (key === null) throw new CodecError("a limit name must be str");
      if (Object.hasOwn(out, key)) throw new CodecError(`duplicate limit ${key}`);
      if (family(v) !== "int") throw new CodecError(`limit ${key} must be int`);
      out[key] = asNumber(v);
    }
    return out;
  }
  if (name === "docs") {
    const docs = /** @type {unknown[]} */ (value);
    if (docs.length > MAX_OFFER) throw new CodecError(`more than ${MAX_OFFER} docs`);
    for (const d of docs) if (family(d) !== "str" || d instanceof InvalidText) throw new CodecError("a doc id must be str");
    return docs;
  }
  if (name === "stamps") {
    const stamps = /** @type {unknown[]} */ (value);
    if (stamps.length > MAX_STAMPS) throw new CodecError(`more than ${MAX_STAMPS} stamps`);
    return stamps.map((pair) => {
      if (!Array.isArray(pair) || pair.length !== 2) throw new CodecError("a stamp is a [number, reservation id] pair");
      if (family(pair[0]) !== "int") throw new CodecError("a stamp number must be int");
      if (family(pair[1]) !== "str" || pair[1] instanceof InvalidText) throw new CodecError("a reservation id must be str");
      return [asNumber(pair[0]), pair[1]];
    });
  }
  return asNumber(value);
}

/**
 * A decoded message: its type, direction, and the fields its type carries (absent ones left out).
 * @typedef {{t: string, direction: "client" | "relay", fields: Record<string, any>}} Message
 */

/**
 * Decode one wire message.
 * @param {Uint8Array} data the payload of one binary websocket message
 * @param {{maxSize?: number}} [options] refuse larger inputs before reading them
 * @returns {Message}
 * @throws {CodecError} for every input that is not exactly one valid message
 */
export function decodeMessage(data, { maxSize = DEFAULT_MAX_MESSAGE } = {}) {
  if (!(data instanceof Uint8Array)) throw new CodecError("a message is bytes");
  if (data.length > maxSize) throw new CodecError(`message of ${data.length} bytes exceeds the limit of ${maxSize}`);
  if (data.length === 0) throw new CodecError("empty message");
  let top;
  try {
    top = new MessageDecoder().decode(data);
  } catch (err) {
    throw new CodecError(`malformed msgpack: ${/** @type {Error} */ (err).message}`);
  }
  if (family(top) !== "map") throw new CodecError("a message must be a msgpack map");
  const entries = entriesOf(/** @type {Record<string, unknown>} */ (top));
  if (entries.length > MAX_FIELDS) throw new CodecError(`more than ${MAX_FIELDS} fields`);
  /** @type {Record<string, any>} */
  const fields = {};
  const seen = new Set();
  for (const [name, value] of entries) {
    if (name === null) throw new CodecError("a field name must be str");
    if (seen.has(name)) throw new CodecError(`duplicate field ${name}`);
    seen.add(name);
    const want = FIELD_FAMILY.get(name);
    if (want === undefined || value === null) continue; // unknown: forward compatibility; nil: absent
    if (family(value) !== want) throw new CodecError(`field ${name} must be ${want}, not ${family(value)}`);
    fields[name] = readField(name, value);
  }
  return build(fields);
}

/** @param {Record<string, any>} fields @returns {Message} */
function build(fields) {
  if (fields.v === undefined) throw new CodecError("missing protocol version 'v'");
  if (fields.v !== PROTOCOL_VERSION) throw new CodecError(`unsupported protocol version ${fields.v}`);
  const t = fields.t;
  if (t === undefined) throw new CodecError("missing message type 't'");
  let key = t;
  if (t === "upd") {
    if ((fields.uid === undefined) === (fields.seq === undefined)) {
      throw new CodecError("an upd carries exactly one of 'uid' (to the relay) or 'seq' (from it)");
    }
    key = fields.uid !== undefined ? "upd/client" : "upd/relay";
  }
  // "upd/client" and "upd/relay" are this table's names for the two directions, not wire types
  const type = (t === "upd" || !t.startsWith("upd/")) && Object.hasOwn(TYPES, key) ? TYPES[key] : undefined;
  if (type === undefined) throw new CodecError(`unknown message type ${JSON.stringify(t)}`);
  for (const name of type.required) if (fields[name] === undefined) throw new CodecError(`${t} message without '${name}'`);
  /** @type {Record<string, any>} */
  const own = {};
  for (const name of type.fields) if (fields[name] !== undefined) own[name] = fields[name];
  type.check(own);
  return { t, direction: type.direction, fields: own };
}

/**
 * The wire bytes of a message: {v, t, fields in their defined order}, absent fields left out.
 * Refuses a message that would not decode (crdt_core's messages validate when built).
 * @param {string} t @param {Record<string, any>} fields
 * @returns {Uint8Array}
 */
export function encodeMessage(t, fields) {
  const key = t === "upd" ? (fields.uid !== undefined && fields.uid !== null ? "upd/client" : "upd/relay") : t;
  const type = Object.hasOwn(TYPES, key) ? TYPES[key] : undefined;
  if (type === undefined || (t !== "upd" && key.startsWith("upd/"))) throw new CodecError(`unknown message type ${JSON.stringify(t)}`);
  /** @type {Record<string, any>} */
  const body = { v: PROTOCOL_VERSION, t };
  for (const name of type.fields) {
    const value = fields[name];
    if (value === undefined || value === null) continue;
    body[name] = value;
  }
  const wire = packInOrder(body);
  decodeMessage(wire, { maxSize: Number.MAX_SAFE_INTEGER });
  return wire;
}
