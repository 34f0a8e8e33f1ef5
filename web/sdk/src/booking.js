// Writing signed records into a document as a signed-in device (crdt_core/authoring.py): every
// write goes under the device's own Yjs client id (generation g of the document), carries the
// device's certificate when the document lacks it, and is validated before it touches the document,
// so the SDK never produces an update another replica would refuse.

import * as Y from "yjs";
import { clientIdFor } from "./clientids.js";
import { signRecord } from "./records.js";
import { neededVersion, parseDocId } from "./schema.js";
import { validateUpdate } from "./validation.js";

/** @typedef {import("./relay-api.js").Session} Session */
/** @typedef {{root: string, key: string, kind: string, fields: Record<string, unknown>}} NewRecord */

/** A random 96-bit record id, so two offline devices never collide in practice. */
export function newId() {
  return Array.from(globalThis.crypto.getRandomValues(new Uint8Array(12)), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Sign `records` and write them into `doc` in one transaction; returns the update to send.
 * @param {Y.Doc} doc @param {string} docId @param {Session} session @param {NewRecord[]} records
 * @param {{generation?: number, nowMs?: number, shopStaff?: Set<string> | null}} [options] generation: the document's current one; shopStaff: the users the shop's staff list names (a bookings document)
 *   (it moves on after the relay refused a write there); nowMs: judged as a peer would at arrival
 * @returns {Promise<Uint8Array>}
 * @throws {import("./errors.js").ValidationError} the write would be refused (nothing is written)
 */
export async function writeRecords(doc, docId, session, records, { generation = 0, nowMs = Date.now(), shopStaff = null } = {}) {
  const scratch = new Y.Doc();
  Y.applyUpdate(scratch, Y.encodeStateAsUpdate(doc));
  scratch.clientID = await clientIdFor(session.certId, generation);
  /** @type {Array<NewRecord & {raw: Uint8Array}>} */
  const signed = [];
  for (const r of records) {
    const raw = await signRecord(docId, r.key, r.kind, r.fields, { signer: session.certId, seed: session.seed }, neededVersion(r.kind, r.fields));
    signed.push({ ...r, raw });
  }
  const before = Y.encodeStateVector(scratch);
  scratch.transact(() => {
    const certs = scratch.getMap("certs");
    if (!certs.has(session.certId)) certs.set(session.certId, session.certificate);
    for (const r of signed) scratch.getMap(r.root).set(r.key, r.raw);
  });
  const update = Y.encodeStateAsUpdate(scratch, before);
  await validateUpdate(parseDocId(docId), doc, update, session.trust, { nowMs }, shopStaff);
  Y.applyUpdate(doc, update);
  return update;
}

/**
 * Book `party` seats of `slot` in a bookings document, in the session user's name.
 * @param {Y.Doc} doc @param {string} docId @param {Session} session
 * @param {{slot: string, party: number, hlc: string, note?: string, id?: string, generation?: number}} booking
 * @returns {Promise<{reservation: Record<string, unknown>, update: Uint8Array}>}
 */
export async function book(doc, docId, session, { slot, party, hlc, note, id = newId(), generation = 0 }) {
  /** @type {Record<string, unknown>} */
  const reservation = { id, slot, party, customer: session.userId, hlc };
  if (note !== undefined) reservation.note = note;
  const update = await writeRecords(doc, docId, session, [{ root: "reservations", key: id, kind: "reservation", fields: reservation }], { generation });
  return { reservation, update };
}
