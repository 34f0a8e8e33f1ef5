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
 * A device's private key: a non-extractable WebCrypto `CryptoKey` where the runtime does Ed25519
 * (the page can sign with it but never read it), else the raw 32-byte seed.
 * @typedef {CryptoKey | Uint8Array} PrivateKey
 */

/**
 * Sign with a device's private key, or a raw 32-byte Ed25519 seed (how keys.json stores keys).
 * Signing is deterministic (RFC 8032), so WebCrypto and noble give the same bytes.
 * @param {Uint8Array} message @param {PrivateKey} key @returns {Promise<Uint8Array>}
 */
export async function ed25519Sign(message, key) {
  if (key instanceof Uint8Array) return noble.signAsync(message, key);
  return new Uint8Array(await subtle.sign({ name: "Ed25519" }, key, /** @type {BufferSource} */ (message)));
}

/**
 * A fresh device key: non-extractable in WebCrypto where the runtime has Ed25519 (stored as the
 * CryptoKey itself: IndexedDB keeps CryptoKeys by structured clone, without exposing the key), else
 * a random seed used by @noble/ed25519.
 * @param {{extractable?: boolean}} [options] extractable: force a raw seed (tools, tests)
 * @returns {Promise<{privateKey: PrivateKey, publicKey: Uint8Array}>}
 */
export async function newDeviceKey({ extractable = false } = {}) {
  if (!extractable && (await hasWebEd25519())) {
    try {
      const pair = /** @type {CryptoKeyPair} */ (await subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]));
      return { privateKey: pair.privateKey, publicKey: new Uint8Array(await subtle.exportKey("raw", pair.publicKey)) };
    } catch {
      // a runtime that verifies Ed25519 but cannot make keys: fall back to a seed
    }
  }
  const seed = globalThis.crypto.getRandomValues(new Uint8Array(32));
  return { privateKey: seed, publicKey: await noble.getPublicKeyAsync(seed) };
}

/** @param {Uint8Array} seed @returns {Promise<Uint8Array>} the raw public key of a seed */
export async function ed25519PublicKey(seed) {
  return noble.getPublicKeyAsync(seed);
}
