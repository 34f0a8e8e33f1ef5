// Canonical msgpack: exactly one byte string per value, for everything QuickSlot signs
// (crdt_core/canonical.py). Why: a record is stored as opaque bytes under a key and a second value
// for a key is refused, so if two byte strings could carry the same signed content, anyone holding
// a victim's record could publish a re-framed variant first. A record, its fields and a
// certificate are accepted only in canonical form: smallest int/str/bin/array/map headers, map
// keys sorted by their UTF-8 bytes, floats as float64, no ext types.
//
// The check is "decode, re-encode canonically, compare bytes", as crdt_core does. For that to be
// exact the decoder must keep what JavaScript numbers lose: whether a number was a float on the
// wire (45.0 is a float64 in Python, an integer in JS) and 64-bit integers beyond 2**53.
// So floats decode to `Float64` and 64-bit integers to bigint, and the encoder writes them back.

import { Decoder, Encoder } from "@msgpack/msgpack";
import { compareUtf8 } from "./bytes.js";
import { SchemaError } from "./errors.js";

const MAX_DEPTH = 32;

/** A msgpack float64 as read from the wire: kept apart from integers so re-encoding is exact. */
export class Float64 {
  /** @param {number} value */
  constructor(value) {
    this.value = value;
  }
}

/**
 * What a decoded msgpack value can be here.
 * @typedef {null | boolean | number | bigint | string | Uint8Array | Float64 | MsgValue[] | {[key: string]: MsgValue}} MsgValue
 */

/**
 * @typedef {object} DecodeLimits
 * @property {number} [maxStrLength]
 * @property {number} [maxBinLength]
 * @property {number} [maxArrayLength]
 * @property {number} [maxMapLength]
 */

/**
 * @param {unknown} key
 * @returns {string}
 */
function stringKeysOnly(key) {
  // crdt_core decodes with strict_map_key and then refuses any key that is not text.
  if (typeof key !== "string") throw new SchemaError("map keys must be strings");
  return key;
}

/** The library's decoder, reading float64 as `Float64` (it exposes readF64 as the hook). */
class ExactDecoder extends Decoder {
  /** @param {DecodeLimits} limits */
  constructor(limits) {
    super({ useBigInt64: true, mapKeyConverter: stringKeysOnly, ...limits });
  }
}
// readF64, decodeUtf8String and the encoder hooks below are private in the library's typings
// only; they are plain methods in its JavaScript, which is what subclassing needs.
/** @type {any} */
const decoderHooks = Decoder.prototype;
// fatal: refuse what is not UTF-8; ignoreBOM: keep a leading U+FEFF, as Python does
const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** A msgpack str whose bytes are not UTF-8, kept (not decoded) where it may be ignored. */
export class InvalidText {}

/**
 * Teach a Decoder subclass to read as crdt_core's msgpack does: float64 as `Float64`, and text
 * as strict UTF-8 (the library would substitute U+FFFD where Python refuses the bytes). With
 * `markBadText`, a str that is not UTF-8 decodes to an `InvalidText` instead of failing, for
 * formats where crdt_core skips some values without decoding them (unknown message fields).
 * @param {Function} DecoderClass
 * @param {{markBadText?: boolean}} [options]
 */
export function installExactHooks(DecoderClass, { markBadText = false } = {}) {
  const proto = /** @type {any} */ (DecoderClass.prototype);
  proto.readF64 = function () {
    return new Float64(decoderHooks.readF64.call(this));
  };
  proto.decodeUtf8String = function (/** @type {number} */ byteLength, /** @type {number} */ headerOffset) {
    const start = this.pos + headerOffset;
    decoderHooks.decodeUtf8String.call(this, byteLength, headerOffset); // bounds checks, advances
    try {
      // our own decoding: the library's drops a leading byte-order mark from long strings
      return strictUtf8.decode(this.bytes.subarray(start, start + byteLength));
    } catch (err) {
      if (!markBadText) throw err;
      return new InvalidText();
    }
  };
}
installExactHooks(ExactDecoder);

/**
 * Decode one msgpack value exactly (whole input; trailing bytes refused). 64-bit integers that fit
 * in a JS number come back as numbers, larger ones as bigint, floats as `Float64`.
 * @param {Uint8Array} raw
 * @param {string} what
 * @param {DecodeLimits} [limits]
 * @returns {MsgValue}
 */
export function decodeExact(raw, what, limits = {}) {
  let value;
  try {
    value = new ExactDecoder(limits).decode(raw);
  } catch (err) {
    throw new SchemaError(`${what} is not valid msgpack: ${/** @type {Error} */ (err).message}`);
  }
  return normalise(value, 0);
}

/**
 * @param {unknown} value
 * @param {number} depth
 * @returns {MsgValue}
 */
function normalise(value, depth) {
  if (depth > MAX_DEPTH) throw new SchemaError("value nested too deeply");
  if (typeof value === "bigint") {
    return value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
  }
  if (Array.isArray(value)) return value.map((v) => normalise(v, depth + 1));
  if (value === null || typeof value !== "object" || value instanceof Uint8Array || value instanceof Float64) {
    return /** @type {MsgValue} */ (value);
  }
  if (Object.getPrototypeOf(value) !== Object.prototype) {
    // an ext type (a timestamp becomes a Date): crdt_core has no canonical form for those
    throw new SchemaError("ext types have no canonical msgpack form");
  }
  /** @type {{[key: string]: MsgValue}} */
  const out = {};
  for (const [k, v] of Object.entries(value)) out[k] = normalise(v, depth + 1);
  return out;
}

/** The library's encoder, taught to write `Float64` as float64 and any bigint as a 64-bit int. */
class CanonicalEncoder extends Encoder {}
/** @type {any} */
const encoderHooks = Encoder.prototype;
/** @type {any} */ (CanonicalEncoder.prototype).encodeObject = function (/** @type {unknown} */ object, /** @type {number} */ depth) {
  if (object instanceof Float64) encoderHooks.encodeNumberAsFloat.call(this, object.value);
  else if (typeof object === "bigint") encoderHooks.encodeBigInt64.call(this, object);
  else encoderHooks.encodeObject.call(this, object, depth);
};

/**
 * msgpack bytes of a value as given (map keys in insertion order, bigint as a 64-bit int, `Float64`
 * as float64): for wire messages, whose encoders write fields in a fixed order.
 * @param {unknown} value
 * @returns {Uint8Array}
 */
export function packInOrder(value) {
  return new CanonicalEncoder().encode(value);
}

/**
 * Rebuild a value with every map's keys in UTF-8 byte order, refusing what has no canonical form.
 * @param {unknown} value
 * @param {number} depth
 * @returns {unknown}
 */
function sortedCopy(value, depth) {
  if (depth > MAX_DEPTH) throw new SchemaError("value nested too deeply");
  if (value === null || typeof value === "boolean" || typeof value === "string") return value;
  if (typeof value === "number") {
    if (!Number.isFinite(value) && !Number.isNaN(value)) return new Float64(value);
    return Number.isSafeInteger(value) || !Number.isInteger(value) ? value : BigInt(value);
  }
  if (typeof value === "bigint") {
    return value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
  }
  if (value instanceof Uint8Array || value instanceof Float64) return value;
  if (Array.isArray(value)) return value.map((v) => sortedCopy(v, depth + 1));
  if (typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype) {
    /** @type {Record<string, unknown>} */
    const out = {};
    const keys = Object.keys(/** @type {object} */ (value)).sort(compareUtf8);
    for (const k of keys) out[k] = sortedCopy(/** @type {Record<string, unknown>} */ (value)[k], depth + 1);
    // The encoder writes a map in Object.keys order, and JS objects list integer-like keys ("9")
    // before the others whatever their insertion order; the proxy lists them in UTF-8 order.
    return new Proxy(out, { ownKeys: () => keys });
  }
  throw new SchemaError(`${Object.prototype.toString.call(value)} has no canonical msgpack form`);
}

/**
 * The canonical msgpack bytes of a value (maps, arrays, strings, Uint8Array, integers, floats,
 * booleans, null). Map keys are written in UTF-8 byte order.
 * @param {unknown} value
 * @returns {Uint8Array}
 */
export function canonicalPack(value) {
  return new CanonicalEncoder().encode(sortedCopy(value, 0));
}

/**
 * Refuse `raw` unless it is the canonical encoding of what it decoded to (crdt_core.check_canonical).
 * A duplicate key, a float32, an unsorted map or a non-minimal header all show up as a difference.
 * @param {Uint8Array} raw
 * @param {MsgValue} decoded
 * @param {string} what
 */
export function checkCanonical(raw, decoded, what) {
  const again = canonicalPack(decoded);
  if (again.length !== raw.length || again.some((b, i) => b !== raw[i])) {
    throw new SchemaError(`${what} is not in canonical msgpack form`);
  }
}
