// SHA-256 and Ed25519 through WebCrypto (browsers and Node 20 have both), with @noble/ed25519 for
// runtimes whose WebCrypto lacks Ed25519 (older Safari, some embedded webviews).

import * as noble from "@noble/ed25519";

const subtle = globalThis.crypto.subtle;

/** @param {Uint8Array} data @returns {Promise<Uint8Array>} */
export async function sha256(data) {
  return new Uint8Array(await subtle.digest("SHA-256", /** @type {BufferSource} */ (data)));
}

/** @type {Promise<boolean> | null} */
let webEd25519 = null;

/** Whether this runtime's WebCrypto does Ed25519 (asked once). */
function hasWebEd25519() {
  webEd25519 ??= subtle
    .importKey("raw", new Uint8Array(32).fill(1), { name: "Ed25519" }, false, ["verify"])
    .then(
      () => true,
      () => false,
    );
  return webEd25519;
}

/** Imported verification keys by their raw bytes (a replica sees a few signers over and over). */
const verifyKeys = new Map();
const VERIFY_KEYS_KEPT = 1024;

/** @param {Uint8Array} publicKey @returns {Promise<CryptoKey>} */
async function verifyKey(publicKey) {
  const id = String.fromCharCode(...publicKey);
  let key = verifyKeys.get(id);
  if (key === undefined) {
    key = await subtle.importKey("raw", /** @type {BufferSource} */ (publicKey), { name: "Ed25519" }, false, ["verify"]);
    if (verifyKeys.size >= VERIFY_KEYS_KEPT) verifyKeys.delete(verifyKeys.keys().next().value);
    verifyKeys.set(id, key);
  }
  return key;
}

/**
 * Whether `signature` is `publicKey`'s Ed25519 signature of `message`. Malformed keys and
 * signatures are simply "does not verify", as in crdt_core.
 * @param {Uint8Array} signature @param {Uint8Array} message @param {Uint8Array} publicKey
 * @returns {Promise<boolean>}
 */
export async function ed25519Verify(signature, message, publicKey) {
  if (publicKey.length !== 32 || signature.length !== 64) return false;
  try {
    if (await hasWebEd25519()) {
      const key = await verifyKey(publicKey);
      return await subtle.verify({ name: "Ed25519" }, key, /** @type {BufferSource} */ (signature), /** @type {BufferSource} */ (message));
    }
    return await noble.verifyAsync(signature, message, publicKey);
  } catch {
    return false;
  }
}

/**
 * Sign with a raw 32-byte Ed25519 seed (how keys.json and devices store private keys).
 * Signing is deterministic (RFC 8032), so WebCrypto and noble give the same bytes.
 * @param {Uint8Array} message @param {Uint8Array} seed @returns {Promise<Uint8Array>}
 */
export async function ed25519Sign(message, seed) {
  return noble.signAsync(message, seed);
}

/** @param {Uint8Array} seed @returns {Promise<Uint8Array>} the raw public key of a seed */
export async function ed25519PublicKey(seed) {
  return noble.getPublicKeyAsync(seed);
}
