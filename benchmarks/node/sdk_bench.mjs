// The JavaScript SDK's side of the `web` benchmark suite (benchmarks/suites/web.py): one Node
// process, one JSON command per stdin line, one JSON answer per stdout line. Times are measured
// here, around the SDK calls only (performance.now(), seconds), so process start-up and the pipe
// are never in a sample.
//
//   {"op": "verdict", "docId", "state": hex, "capacities": {slot: n}, "rounds"}
//       -> {"samples": [s], "warm": [s], "states": {state: count}}  read the day into typed
//          records + verdict, on a fresh document (samples) and again on the same one (warm)
//   {"op": "validate", "docId", "update": hex, "trust": {kid: hex}, "rounds"}
//       -> {"samples": [s], "records": n}   validateUpdate against an empty Y.Doc, then apply
//   {"op": "book", "relay", "email", "password", "shop", "day", "slot", "count"}
//       -> {"samples": [s]}  QuickSlotClient.book until the relay's ack of that entry (durable)

import { createInterface } from "node:readline";
import * as Y from "../../web/sdk/node_modules/yjs/dist/yjs.mjs";
import { CertificateCache, QuickSlotClient, computeVerdict, fromHex, readBookings, validateUpdate } from "../../web/sdk/src/index.js";

const seconds = (/** @type {number} */ t0) => (performance.now() - t0) / 1000;

/** @param {any} c */
function verdict(c) {
  const state = fromHex(c.state);
  const capacities = new Map(Object.entries(c.capacities));
  const samples = [];
  const warm = [];
  let last = null;
  for (let i = 0; i < c.rounds; i++) {
    // a fresh document each round (untimed), so every record is decoded again, as crdt_core does
    const doc = new Y.Doc();
    Y.applyUpdate(doc, state);
    let t0 = performance.now();
    last = computeVerdict(readBookings(doc, c.docId), capacities);
    samples.push(seconds(t0));
    // the same document again: what a client pays to recompute after a change (records cached)
    t0 = performance.now();
    computeVerdict(readBookings(doc, c.docId), capacities);
    warm.push(seconds(t0));
  }
  /** @type {Record<string, number>} */
  const states = {};
  for (const claim of last?.claims.values() ?? []) states[claim.state] = (states[claim.state] ?? 0) + 1;
  return { samples, warm, states };
}

/** @param {any} c */
async function validate(c) {
  const update = fromHex(c.update);
  const trusted = Object.fromEntries(Object.entries(c.trust).map(([kid, hex]) => [kid, fromHex(/** @type {string} */ (hex))]));
  const samples = [];
  let records = 0;
  for (let i = 0; i < c.rounds; i++) {
    const doc = new Y.Doc();
    const trust = new CertificateCache(trusted); // a fresh replica's cache, as a new device has
    const t0 = performance.now();
    const result = await validateUpdate(c.docId, doc, update, trust);
    Y.applyUpdate(doc, update);
    samples.push(seconds(t0));
    records = result.records.length;
  }
  return { samples, records };
}

/** @param {any} c */
async function book(c) {
  const client = await QuickSlotClient.open({ relay: c.relay });
  await client.login({ email: c.email, password: c.password });
  client.start();
  await client.slots(c.shop, c.day); // subscribes the shop and the day
  await client.syncNow({ timeoutMs: 60000 });
  /** @type {Map<string, () => void>} */
  const waiting = new Map();
  // the first booking of the day also lists the day in the user's document: its ack is not the booking's
  client.on("acked", ({ entry }) => entry.action !== "booked_day" && waiting.get(entry.reservationId)?.());
  const samples = [];
  for (let i = 0; i < c.count; i++) {
    const t0 = performance.now();
    /** @type {Promise<void> | null} */
    let acked = null;
    const view = await client.book({ shop: c.shop, day: c.day, slot: c.slot, party: 1 });
    // the ack may come before book() returns its view: listen by id as soon as it is known
    acked = new Promise((resolve) => {
      if (!client.outbox().some((e) => e.reservationId === view.reservationId && e.state === "pending")) resolve();
      else waiting.set(view.reservationId, () => resolve());
    });
    await acked;
    samples.push(seconds(t0));
    waiting.delete(view.reservationId);
  }
  await client.close();
  return { samples };
}

const ops = { verdict, validate, book };

for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
  if (!line.trim()) continue;
  const command = JSON.parse(line);
  try {
    const result = await /** @type {any} */ (ops)[command.op](command);
    process.stdout.write(JSON.stringify({ ok: true, ...result }) + "\n");
  } catch (err) {
    process.stdout.write(JSON.stringify({ ok: false, error: String(/** @type {any} */ (err)?.stack ?? err) }) + "\n");
  }
}
