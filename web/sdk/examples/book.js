// Book a seat at a running relay with nothing but the SDK: register (if needed), log in with a
// fresh device key, subscribe to a bookings day, book, wait for the relay's ack and stamp, and
// print the verdict as JSON. Used by tests/web/test_sdk_books_at_relay.py.
//
//   node --experimental-websocket examples/book.js http://127.0.0.1:8000 alice@example.com 'a long password'
//   (Node 22 and browsers have WebSocket without the flag)

import {
  HybridClock,
  RelayError,
  SyncConnection,
  book,
  computeVerdict,
  login,
  readBookings,
  register,
  slotCapacities,
  slotTemplates,
} from "../src/index.js";

const [baseUrl, email, password, shop = "s1", slot = "s-9", party = "2"] = process.argv.slice(2);
try {
  await register(baseUrl, { email, password, displayName: email.split("@")[0] });
} catch (err) {
  if (!(err instanceof RelayError && err.status === 409)) throw err; // already registered
}
const session = await login(baseUrl, { email, password });
const connection = await SyncConnection.open(baseUrl, session);
const day = new Date().toISOString().slice(0, 10);
const docId = `bookings:${shop}:${day}`;
const doc = await connection.subscribe(docId);
const clock = new HybridClock(session.userId.replace(/[^A-Za-z0-9_-]/g, "_").slice(0, 64) || "web");
const { reservation, update } = await book(doc, docId, session, { slot, party: Number(party), hlc: clock.now().encode() });
const stored = await connection.sendUpdate(docId, update);
// seats per slot that day come from the shop's slot templates (none known: the claim waits)
const shopDoc = await connection.subscribe(`shop:${shop}`);
const verdict = computeVerdict(readBookings(doc, docId), slotCapacities(slotTemplates(shopDoc, `shop:${shop}`), day));
connection.close();
const claim = verdict.claims.get(String(reservation.id));
console.log(JSON.stringify({ user: session.userId, doc: docId, reservation: reservation.id, seq: stored.seq, stamps: stored.stamps, claim }));
