// Signed records (crdt_core/records.py, record format 2): the only kind of value QuickSlot writes
// into a shared document, stored as exactly the bytes its author signed.
//
// Wire form: canonical msgpack [2, schema_version, kind, fields, signer, signature], where fields is
// the canonical msgpack of the field map, signer a certificate id or "relay:<kid>", and signature
// Ed25519 over "quickslot-record-v2\0" + msgpack([doc_id, key, 2, schema_version, kind, fields, signer]):
// the whole envelope but the signature, bound to its document and key.

import { canonicalPack, checkCanonical, decodeExact } from "./canonical.js";
import { concat, utf8 } from "./bytes.js";
import { codePoints, isWireInt } from "./certs.js";
import { ed25519Sign, ed25519Verify } from "./crypto.js";
import { SchemaError, SignatureError } from "./errors.js";

export const RECORD_DOMAIN = utf8("quickslot-record-v2\0");
export const RECORD_FORMAT = 2;
export const MAX_SCHEMA_VERSION = 999;
export const RELAY_SIGNER_PREFIX = "relay:";
export const MAX_RECORD_BYTES = 16 * 1024;
const LIMITS = { maxBinLength: MAX_RECORD_BYTES, maxStrLength: MAX_RECORD_BYTES, maxArrayLength: 1024, maxMapLength: 256 };

/**
 * An opened (not yet verified) record.
 * @typedef {object} Envelope
 * @property {number} schemaVersion
 * @property {string} kind
 * @property {Uint8Array} fieldsRaw
 * @property {Record<string, import("./canonical.js").MsgValue>} fields exactly as decoded (floats as Float64)
 * @property {string} signer
 * @property {Uint8Array} signature
 * @property {string | null} relayKid the relay key id for relay-signed records, else null
 */

/**
 * What a record's `signer` names for a device (its certificate id) or a relay key.
 * @param {{certId: string} | {kid: string}} signer
 */
export function signerRef(signer) {
  return "certId" in signer ? signer.certId : RELAY_SIGNER_PREFIX + signer.kid;
}

/**
 * @param {string} docId @param {string} key @param {number} schemaVersion @param {string} kind
 * @param {Uint8Array} fieldsRaw @param {string} signer
 */
function signedMessage(docId, key, schemaVersion, kind, fieldsRaw, signer) {
  return concat(RECORD_DOMAIN, canonicalPack([docId, key, RECORD_FORMAT, schemaVersion, kind, fieldsRaw, signer]));
}

/**
 * Encode and sign one record.
 * @param {string} docId @param {string} key @param {string} kind
 * @param {Record<string, unknown>} fields
 * @param {{signer: string, seed: import("./crypto.js").PrivateKey}} author `signer` from signerRef, `seed` its private key (a 32-byte seed or a CryptoKey)
 * @param {number} schemaVersion
 * @returns {Promise<Uint8Array>}
 */
export async function signRecord(docId, key, kind, fields, author, schemaVersion) {
  if (!Number.isInteger(schemaVersion) || schemaVersion < 1 || schemaVersion > MAX_SCHEMA_VERSION) {
    throw new SchemaError(`schema version ${schemaVersion} outside 1..${MAX_SCHEMA_VERSION}`);
  }
  const fieldsRaw = canonicalPack(fields);
  const sig = await ed25519Sign(signedMessage(docId, key, schemaVersion, kind, fieldsRaw, author.signer), author.seed);
  return canonicalPack([RECORD_FORMAT, schemaVersion, kind, fieldsRaw, author.signer, sig]);
}

/**
 * Parse a record's envelope and fields, without checking the signature.
 * `canonical: false` skips the canonical-encoding check (a re-encoding per record): only for
 * reading records a replica already holds, which validation checked when they arrived.
 * @param {Uint8Array} raw
 * @param {{canonical?: boolean}} [options]
 * @returns {Envelope}
 * @throws {SchemaError} not a format-2 record (in canonical form, unless canonical is false)
 */
export function openRecord(raw, { canonical = true } = {}) {
  if (!(raw instanceof Uint8Array) || raw.length > MAX_RECORD_BYTES) {
    throw new SchemaError(`a record is at most ${MAX_RECORD_BYTES} bytes`);
  }
  const outer = decodeExact(raw, "record", LIMITS);
  if (!(Array.isArray(outer) && outer.length === 6)) throw new SchemaError("record envelope malformed");
  if (outer[0] !== RECORD_FORMAT) throw new SchemaError(`record format is not ${RECORD_FORMAT}`);
  const [, version, kind, fieldsRaw, signer, sig] = outer;
  if (!isWireInt(version) || version < 1 || version > MAX_SCHEMA_VERSION) {
    throw new SchemaError("record schema version malformed");
  }
  if (!(typeof kind === "string" && fieldsRaw instanceof Uint8Array)) throw new SchemaError("record kind or fields malformed");
  if (!(typeof signer === "string" && signer.length > 0 && codePoints(signer) <= 80 && sig instanceof Uint8Array && sig.length === 64)) {
    throw new SchemaError("record signer or signature malformed");
  }
  if (canonical) checkCanonical(raw, outer, "record");
  const fields = decodeExact(fieldsRaw, "record fields", LIMITS);
  if (fields === null || typeof fields !== "object" || Array.isArray(fields) || fields instanceof Uint8Array) {
    throw new SchemaError("record fields must be a map");
  }
  if (canonical) checkCanonical(fieldsRaw, fields, "record fields");
  return {
    schemaVersion: version,
    kind,
    fieldsRaw,
    fields: /** @type {Record<string, import("./canonical.js").MsgValue>} */ (fields),
    signer,
    signature: sig,
    relayKid: signer.startsWith(RELAY_SIGNER_PREFIX) ? signer.slice(RELAY_SIGNER_PREFIX.length) : null,
  };
}

/**
 * Throws unless `publicKey` signed this record for (docId, key).
 * @param {Envelope} env @param {string} docId @param {string} key @param {Uint8Array} publicKey
 * @throws {SignatureError}
 */
export async function verifyEnvelope(env, docId, key, publicKey) {
  const message = signedMessage(docId, key, env.schemaVersion, env.kind, env.fieldsRaw, env.signer);
  if (!(await ed25519Verify(env.signature, message, publicKey))) {
    throw new SignatureError(`record ${JSON.stringify(key)} signature does not verify`);
  }
}
