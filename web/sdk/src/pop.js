// Proof of possession for tokens bound to a device key (docs/protocol.md 1.1, crdt_core/pop.py):
// an Ed25519 signature over "quickslot-relay-pop-v1\0" + msgpack([purpose, aud, jti, time]).

import { packInOrder } from "./canonical.js";
import { concat, utf8 } from "./bytes.js";
import { ed25519Sign } from "./crypto.js";

export const POP_DOMAIN = utf8("quickslot-relay-pop-v1\0");
/** The purpose of a proof for the sync websocket. */
export const SYNC_PURPOSE = "sync";

const BASE64URL = /^[A-Za-z0-9_-]*$/;

/**
 * The bytes of unpadded (or padded) base64url `text`, strictly as crdt_core.b64 decodes it: only the
 * URL-safe alphabet, padding only at the end, no impossible length. Anything else throws, rather
 * than decode many texts to one byte string (`atob` alone would take "+", "/" and spaces).
 * @param {string} text @returns {Uint8Array}
 */
export function fromBase64Url(text) {
  const body = typeof text === "string" ? text.replace(/=+$/, "") : "";
  if (typeof text !== "string" || !BASE64URL.test(body) || body.length % 4 === 1) throw new SyntaxError("not base64url");
  const b64 = body.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (body.length % 4)) % 4);
  return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
}

/** @param {Uint8Array} bytes @returns {string} */
export function toBase64Url(bytes) {
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/**
 * A token's claims, read without verifying it (the relay verifies); null if it is not a JWT.
 * @param {string} token @returns {Record<string, any> | null}
 */
export function tokenClaims(token) {
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const claims = JSON.parse(new TextDecoder().decode(fromBase64Url(parts[1])));
    return claims && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

/**
 * The bytes a proof signs.
 * @param {string | string[]} purpose "sync", or ["rest", METHOD, PATH]
 * @param {string} audience @param {string} jti @param {number} at unix seconds
 */
export function popStatement(purpose, audience, jti, at) {
  return concat(POP_DOMAIN, packInOrder([purpose, audience, jti, at]));
}

/**
 * The `auth` message's proof for a token bound to a device key, or null for a bearer token.
 * @param {string} token @param {import("./crypto.js").PrivateKey} seed the device's private key
 * @param {number} [nowS] unix seconds (the relay accepts ±300 s)
 * @returns {Promise<{proof: Uint8Array, proofTime: number} | null>}
 */
export async function authProof(token, seed, nowS = Math.floor(Date.now() / 1000)) {
  const claims = tokenClaims(token);
  if (!claims || !claims.cnf) return null;
  const proof = await ed25519Sign(popStatement(SYNC_PURPOSE, claims.aud, claims.jti, nowS), seed);
  return { proof, proofTime: nowS };
}

/**
 * The proof headers of one REST call with a bound access token (crdt_core.pop.proof_headers):
 * `Authorization` alone for a bearer token.
 * @param {string} token @param {import("./crypto.js").PrivateKey} seed
 * @param {string} method @param {string} path without the query
 * @param {number} [nowS] unix seconds
 * @returns {Promise<Record<string, string>>}
 */
export async function restProofHeaders(token, seed, method, path, nowS = Math.floor(Date.now() / 1000)) {
  /** @type {Record<string, string>} */
  const headers = { authorization: `Bearer ${token}` };
  const claims = tokenClaims(token);
  if (!claims || !claims.cnf) return headers;
  const proof = await ed25519Sign(popStatement(["rest", method.toUpperCase(), path], claims.aud, claims.jti, nowS), seed);
  headers["QuickSlot-Proof"] = toBase64Url(proof);
  headers["QuickSlot-Proof-Time"] = String(nowS);
  return headers;
}
