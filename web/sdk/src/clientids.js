// Yjs client ids bound to signers (crdt_core/clientids.py; docs/records.md, "Yjs client ids"). A signer's ids are derived,
// so any replica can check offline that a struct's client id belongs to the record's signer:
//   clientId(signer, g) = first 53 bits of SHA-256("quickslot-client-v1\0" + signer + "\0" + g16be)
// 53 bits because Yjs keeps client ids in JavaScript numbers.

import { concat, utf8 } from "./bytes.js";
import { sha256 } from "./crypto.js";

export const CLIENT_DOMAIN = utf8("quickslot-client-v1\0");
/** How many client ids one signer has (a device moves to the next after a refusal in a document). */
export const GENERATIONS = 64;

/**
 * The Yjs client id of `signer`'s generation `generation` (0-based).
 * @param {string} signer a certificate id, or "relay:<kid>"
 * @param {number} generation
 * @returns {Promise<number>}
 */
export async function clientIdFor(signer, generation) {
  if (!Number.isInteger(generation) || generation < 0 || generation >= GENERATIONS) {
    throw new RangeError(`generation ${generation} outside 0..${GENERATIONS - 1}`);
  }
  const digest = await sha256(concat(CLIENT_DOMAIN, utf8(signer), new Uint8Array([0, generation >> 8, generation & 0xff])));
  // 56 big-endian bits shifted right by 3: the top 53 bits of the digest's first 7 bytes.
  let value = 0n;
  for (let i = 0; i < 7; i++) value = (value << 8n) | BigInt(digest[i]);
  return Number(value >> 3n);
}

/** @type {Map<string, Promise<Map<number, number>>>} */
const cache = new Map();
const CACHE_LIMIT = 65536;

/**
 * `{client id -> generation}` for every id `signer` may write under, cached per signer (the check
 * runs for every struct of every update).
 * @param {string} signer
 * @returns {Promise<Map<number, number>>}
 */
export function clientIdsOf(signer) {
  let found = cache.get(signer);
  if (found === undefined) {
    found = Promise.all(Array.from({ length: GENERATIONS }, (_, g) => clientIdFor(signer, g))).then(
      (ids) => new Map(ids.map((id, g) => [id, g])),
    );
    if (cache.size >= CACHE_LIMIT) cache.delete(/** @type {string} */ (cache.keys().next().value));
    cache.set(signer, found);
  }
  return found;
}

/**
 * Whether a struct under `clientId` may carry a record signed by `signer`.
 * @param {string} signer @param {number} clientId @returns {Promise<boolean>}
 */
export async function ownsClient(signer, clientId) {
  return (await clientIdsOf(signer)).has(clientId);
}

/**
 * Which generation of `signer` `clientId` is, or null if it is not `signer`'s.
 * @param {string} signer @param {number} clientId @returns {Promise<number | null>}
 */
export async function generationOf(signer, clientId) {
  return (await clientIdsOf(signer)).get(clientId) ?? null;
}
