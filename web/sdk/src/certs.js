// Device certificates (crdt_core/certs.py): the relay vouches for a device key, so any replica can
// check authorship offline with nothing but the relay's public keys.
//
// Wire form: canonical msgpack [1, body, kid, signature], body = canonical msgpack of
// {u, r, o, s, k, iat, exp}, signature = Ed25519 by relay key `kid` over "quickslot-cert-v1\0" + body.
// The certificate id is the first 16 bytes of SHA-256 of the whole wire form, in hex.

import { canonicalPack, checkCanonical, decodeExact } from "./canonical.js";
import { concat, toHex, utf8 } from "./bytes.js";
import { ed25519PublicKey, ed25519Sign, ed25519Verify, sha256 } from "./crypto.js";
import { SchemaError, SignatureError } from "./errors.js";

export const CERT_DOMAIN = utf8("quickslot-cert-v1\0");
export const CERT_FORMAT = 1;
export const MAX_CERT_BYTES = 4096;
const ROLES = new Set(["admin"]);

/**
 * A verified certificate.
 * @typedef {object} Certificate
 * @property {string} certId
 * @property {string} userId
 * @property {Set<string>} roles
 * @property {Set<string>} ownerOf
 * @property {Set<string>} staffOf
 * @property {Uint8Array} deviceKey
 * @property {number} issuedAtMs
 * @property {number} expiresAtMs
 * @property {string} issuerKid
 * @property {Uint8Array} raw
 */

/** Relay public keys a replica trusts: `{kid: raw 32-byte Ed25519 key}`. @typedef {Record<string, Uint8Array>} TrustedKeys */

/** Certificate ids by the certificate's bytes: every update that carries a certificate names it
 * again, and WebCrypto's digest costs a thread hop per call (about half a millisecond in Node). */
const idsOfBytes = new Map();
const IDS_KEPT = 4096;

/** @param {Uint8Array} raw @returns {Promise<string>} */
export async function certIdOf(raw) {
  const bytes = String.fromCharCode(...raw);
  let id = idsOfBytes.get(bytes);
  if (id === undefined) {
    id = toHex((await sha256(raw)).subarray(0, 16));
    if (idsOfBytes.size >= IDS_KEPT) idsOfBytes.delete(idsOfBytes.keys().next().value);
    idsOfBytes.set(bytes, id);
  }
  return id;
}

/** Python's len() on str counts code points, not UTF-16 units. @param {string} s */
export function codePoints(s) {
  let n = 0;
  for (const _ of s) n++;
  return n;
}

/** @param {unknown} value @param {string} what @returns {Set<string>} */
function strList(value, what) {
  if (!Array.isArray(value) || value.length > 1000) throw new SchemaError(`certificate ${what} must be a list`);
  for (const item of value) {
    if (typeof item !== "string" || codePoints(item) < 1 || codePoints(item) > 64) {
      throw new SchemaError(`certificate ${what} holds a bad entry`);
    }
  }
  return new Set(/** @type {string[]} */ (value));
}

/** @param {unknown} v @returns {v is number} an integer on the wire (not a float, not a bool) */
export function isWireInt(v) {
  return (typeof v === "number" && Number.isInteger(v)) || typeof v === "bigint";
}

/**
 * Verify a certificate against the trusted relay keys.
 * @param {Uint8Array} raw
 * @param {TrustedKeys} trustedKeys
 * @returns {Promise<Certificate>}
 * @throws {SchemaError} not a certificate, or not canonical
 * @throws {SignatureError} unknown key id, or a signature that does not verify
 */
export async function parseCertificate(raw, trustedKeys) {
  if (!(raw instanceof Uint8Array) || raw.length > MAX_CERT_BYTES) {
    throw new SchemaError("certificate must be at most 4 KiB of bytes");
  }
  const limits = { maxBinLength: MAX_CERT_BYTES, maxStrLength: MAX_CERT_BYTES };
  const outer = decodeExact(raw, "certificate", limits);
  // The format must be the integer 1: `true` or 1.0 would be a second byte string (a second id)
  // for the same relay-signed statement.
  if (!(Array.isArray(outer) && outer.length === 4 && outer[0] === CERT_FORMAT)) {
    throw new SchemaError("certificate envelope malformed");
  }
  const [, body, kid, sig] = outer;
  if (!(body instanceof Uint8Array && typeof kid === "string" && sig instanceof Uint8Array)) {
    throw new SchemaError("certificate envelope has wrong field types");
  }
  checkCanonical(raw, outer, "certificate");
  const pub = Object.hasOwn(trustedKeys, kid) ? trustedKeys[kid] : undefined;
  if (pub === undefined) throw new SignatureError(`certificate signed by unknown relay key ${JSON.stringify(kid)}`);
  if (!(await ed25519Verify(sig, concat(CERT_DOMAIN, body), pub))) {
    throw new SignatureError("certificate signature does not verify");
  }
  const fields = decodeExact(body, "certificate body", limits);
  if (fields === null || typeof fields !== "object" || Array.isArray(fields) || fields instanceof Uint8Array) {
    throw new SchemaError("certificate body must be a map");
  }
  checkCanonical(body, fields, "certificate body");
  const { u: user, k: device, iat, exp } = /** @type {Record<string, unknown>} */ (fields);
  if (!(typeof user === "string" && codePoints(user) > 0 && codePoints(user) <= 64)) {
    throw new SchemaError("certificate user id malformed");
  }
  if (!(device instanceof Uint8Array && device.length === 32)) throw new SchemaError("certificate device key malformed");
  if (!isWireInt(iat) || !isWireInt(exp) || exp <= iat) throw new SchemaError("certificate validity malformed");
  const f = /** @type {Record<string, unknown>} */ (fields);
  // an absent list is empty, but a nil one is malformed (crdt_core reads fields.get(name, []))
  const listField = (/** @type {string} */ name) => (Object.hasOwn(f, name) ? f[name] : []);
  const roles = strList(listField("r"), "roles");
  return {
    certId: await certIdOf(raw),
    userId: user,
    roles: new Set([...roles].filter((r) => ROLES.has(r))),
    ownerOf: strList(listField("o"), "owned shops"),
    staffOf: strList(listField("s"), "staffed shops"),
    deviceKey: device,
    issuedAtMs: Number(iat),
    expiresAtMs: Number(exp),
    issuerKid: kid,
    raw,
  };
}

/** @param {Certificate} cert @param {number} ms */
export function validAt(cert, ms) {
  return cert.issuedAtMs <= ms && ms < cert.expiresAtMs;
}

/**
 * Verified certificates by id, so a document's certificates are checked once, not per update.
 * Remembers the key set it verified under: a cache built under one key set never vouches under another.
 */
export class CertificateCache {
  /** @param {TrustedKeys} trustedKeys @param {number} [limit] */
  constructor(trustedKeys, limit = 10000) {
    this.trustedKeys = { ...trustedKeys };
    this.limit = limit;
    /** @type {Map<string, Certificate>} */
    this.byId = new Map();
  }

  /** @param {string} certId */
  get(certId) {
    return this.byId.get(certId);
  }

  /** @param {Uint8Array} raw @returns {Promise<Certificate>} */
  async verify(raw) {
    const id = await certIdOf(raw);
    const found = this.byId.get(id);
    if (found !== undefined) return found;
    const cert = await parseCertificate(raw, this.trustedKeys);
    if (this.byId.size >= this.limit) this.byId.delete(/** @type {string} */ (this.byId.keys().next().value));
    this.byId.set(id, cert);
    return cert;
  }
}

/**
 * The relay's side, for tests and tools: sign a device key for a user; returns the wire bytes.
 * @param {{kid: string, seed: Uint8Array}} relayKey
 * @param {{userId: string, roles?: string[], ownerOf?: string[], staffOf?: string[], devicePublicKey: Uint8Array, issuedAtMs: number, expiresAtMs: number}} claims
 * @returns {Promise<Uint8Array>}
 */
export async function issueCertificate(relayKey, claims) {
  if (claims.devicePublicKey.length !== 32) throw new SchemaError("device key must be 32 raw Ed25519 bytes");
  if (claims.expiresAtMs <= claims.issuedAtMs) throw new SchemaError("certificate expires before it is issued");
  const body = canonicalPack({
    u: claims.userId,
    r: [...(claims.roles ?? [])].sort(),
    o: [...(claims.ownerOf ?? [])].sort(),
    s: [...(claims.staffOf ?? [])].sort(),
    k: claims.devicePublicKey,
    iat: claims.issuedAtMs,
    exp: claims.expiresAtMs,
  });
  const sig = await ed25519Sign(concat(CERT_DOMAIN, body), relayKey.seed);
  const raw = canonicalPack([CERT_FORMAT, body, relayKey.kid, sig]);
  await parseCertificate(raw, { [relayKey.kid]: await ed25519PublicKey(relayKey.seed) });
  return raw;
}
