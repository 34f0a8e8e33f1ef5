// The offline client without a relay: the store contract (memory and IndexedDB, the latter through
// fake-indexeddb), backoff, offline writes that survive a restart, and what the close codes make the
// sync loop do (with a scripted socket). tests/web/test_sdk_client.py runs it against a real relay.
import assert from "node:assert/strict";
import { test } from "node:test";
import { IDBFactory } from "fake-indexeddb";
import * as Y from "yjs";
import {
  CertificateCache,
  IndexedDBStore,
  MemoryStore,
  QuickSlotClient,
  backoffDelay,
  bookedDays,
  decodeMessage,
  ed25519PublicKey,
  encodeMessage,
  issueCertificate,
} from "../src/index.js";

const relaySeed = new Uint8Array(32).fill(7);
const deviceSeed = new Uint8Array(32).fill(9);
const DAY = "2027-01-15";

/** A signed-in device's profile, as `login` stores it. @param {string[]} [ownerOf] */
async function profile(ownerOf = []) {
  const now = Date.now();
  const certificate = await issueCertificate({ kid: "k1", seed: relaySeed }, {
    userId: "alice",
    ownerOf,
    devicePublicKey: await ed25519PublicKey(deviceSeed),
    issuedAtMs: now - 3_600_000,
    expiresAtMs: now + 3_600_000,
  });
  const relayKeys = { k1: await ed25519PublicKey(relaySeed) };
  await new CertificateCache(relayKeys).verify(certificate);
  return { relay: "http://relay.invalid", userId: "alice", accessToken: "a.b.c", refreshToken: "r", seed: deviceSeed, certificate, relayKeys };
}

/** @param {() => Promise<import("../src/store.js").Store>} open */
async function storeContract(open) {
  const store = await open();
  await store.batch([
    { table: "outbox", key: "000000000002", value: { n: 2, bytes: Uint8Array.of(1, 2) } },
    { table: "outbox", key: "000000000001", value: { n: 1 } },
    { table: "profile", key: "device", value: { userId: "u" } },
  ]);
  assert.deepEqual((await store.entries("outbox")).map(([k]) => k), ["000000000001", "000000000002"]);
  const two = await store.get("outbox", "000000000002");
  assert.ok(two.bytes instanceof Uint8Array);
  assert.deepEqual([...two.bytes], [1, 2]);
  two.n = 99; // values are copies
  assert.equal((await store.get("outbox", "000000000002")).n, 2);
  await store.batch([{ table: "outbox", key: "000000000001" }, { table: "cursors", key: "epoch", value: "e1" }]);
  assert.deepEqual((await store.entries("outbox")).map(([k]) => k), ["000000000002"]);
  assert.equal(await store.get("documents", "nothing"), undefined);
  await assert.rejects(store.batch([{ table: "outbox", key: "x", value: 1 }, { table: /** @type {any} */ ("nope"), key: "y", value: 2 }]));
  assert.deepEqual((await store.entries("outbox")).map(([k]) => k), ["000000000002"], "a failed batch changes nothing");
  await store.close();
}

test("store contract: MemoryStore", () => storeContract(async () => new MemoryStore()));

test("store contract: IndexedDBStore (fake-indexeddb), and its data survives reopening", async () => {
  const indexedDB = new IDBFactory();
  await storeContract(() => IndexedDBStore.open("qs", { indexedDB }));
  const again = await IndexedDBStore.open("qs", { indexedDB });
  assert.equal(await again.get("cursors", "epoch"), "e1");
  await again.close();
});

test("backoff: exponential, capped, with jitter between half and all of the ceiling", () => {
  const o = { baseMs: 100, maxMs: 5000 };
  assert.equal(backoffDelay(0, o, () => 0), 50);
  assert.equal(backoffDelay(0, o, () => 1), 100);
  assert.equal(backoffDelay(3, o, () => 1), 800);
  assert.equal(backoffDelay(40, o, () => 1), 5000);
  for (let i = 0; i < 50; i++) {
    const d = backoffDelay(4, o);
    assert.ok(d >= 800 && d <= 1600, String(d));
  }
});

test("offline: bookings and events are written at once, queued, and survive a restart", async () => {
  const indexedDB = new IDBFactory();
  const store = await IndexedDBStore.open("offline", { indexedDB });
  await store.batch([{ table: "profile", key: "device", value: await profile() }]);
  const client = await QuickSlotClient.open({ relay: "http://relay.invalid", store });
  assert.equal(client.user?.userId, "alice");
  /** @type {string[]} */
  const heard = [];
  client.on("waitlisted", (d) => heard.push(`waitlisted:${d.position}`));
  client.on("cancelled", () => heard.push("cancelled"));
  const booked = await client.book({ shop: "s1", day: DAY, slot: "s-9", party: 2 });
  // no slot template known: the claim waits (and is not final until the relay stamps it)
  assert.deepEqual([booked?.state, booked?.position, booked?.final, booked?.pending], ["waitlisted", 1, false, true]);
  assert.deepEqual(heard, ["waitlisted:1"]);
  assert.equal(client.status.pending, 1);
  await client.close();

  const reopened = await QuickSlotClient.open({ relay: "http://relay.invalid", store: await IndexedDBStore.open("offline", { indexedDB }) });
  assert.deepEqual(reopened.reservations().map((r) => [r.reservationId, r.party, r.pending]), [[booked?.reservationId, 2, true]]);
  assert.deepEqual(reopened.outbox().map((e) => [e.action, e.state]), [["book", "pending"]]);
  reopened.on("cancelled", () => heard.push("cancelled"));
  const cancelled = await reopened.cancel(/** @type {string} */ (booked?.reservationId));
  assert.deepEqual([cancelled?.state, cancelled?.endedBy, cancelled?.reason], ["cancelled", "customer", null]);
  assert.deepEqual(heard, ["waitlisted:1", "cancelled"]);
  assert.deepEqual(reopened.outbox().map((e) => e.action), ["book", "cancel"]);
  assert.deepEqual(await reopened.slots("s1", DAY), []); // no templates known yet
  await assert.rejects(reopened.confirm(/** @type {string} */ (booked?.reservationId)), /forbidden/); // not staff: refused before it is queued
  assert.equal(reopened.status.pending, 2);
  await reopened.close();
});

/** A socket that answers like a relay from a script: `welcome` on `auth`, then whatever `onMessage` does. */
function scriptedSocket(/** @type {(socket: any, m: any) => void} */ onMessage, /** @type {any[]} */ sockets) {
  return class FakeSocket extends EventTarget {
    binaryType = "arraybuffer";
    constructor() {
      super();
      sockets.push(this);
      setTimeout(() => this.dispatchEvent(new Event("open")), 0);
    }
    /** @param {Uint8Array} data */
    send(data) {
      onMessage(this, decodeMessage(data));
    }
    /** @param {string} t @param {Record<string, unknown>} fields */
    reply(t, fields) {
      const event = new Event("message");
      Object.assign(event, { data: encodeMessage(t, fields).slice().buffer });
      setTimeout(() => this.dispatchEvent(event), 0);
    }
    /** @param {number} code */
    close(code = 1000) {
      const event = new Event("close");
      Object.assign(event, { code });
      setTimeout(() => this.dispatchEvent(event), 0);
    }
  };
}

test("close codes: transient ones reconnect with backoff, 4003 stops and asks for a login", async () => {
  /** @type {any[]} */
  const sockets = [];
  const WebSocketImpl = scriptedSocket((socket, m) => {
    if (m.t !== "auth") return;
    if (sockets.length === 1) socket.close(1011); // first connection: the relay failed
    else if (sockets.length === 2) socket.reply("welcome", { user: "alice", epoch: "e1", server: "fake", limits: { max_message: 1 << 20 } });
    else socket.close(4003);
  }, sockets);
  const store = new MemoryStore();
  await store.batch([{ table: "profile", key: "device", value: await profile() }]);
  const client = await QuickSlotClient.open({ relay: "http://relay.invalid", store, WebSocketImpl: /** @type {any} */ (WebSocketImpl), backoff: { baseMs: 5, maxMs: 20 } });
  /** @type {string[]} */
  const seen = [];
  for (const type of ["online", "offline", "stopped"]) client.on(type, (d) => seen.push(`${type}${d.code ? `:${d.code}` : ""}`));
  client.start();
  await new Promise((resolve) => client.on("online", resolve));
  assert.equal(sockets.length, 2);
  assert.equal(await store.get("cursors", "epoch"), "e1");
  sockets[1].close(1001); // the relay restarts
  await new Promise((resolve) => client.on("stopped", resolve));
  assert.deepEqual(seen, ["online", "offline:1001", "stopped:4003"]);
  assert.equal(client.status.phase, "stopped");
  assert.match(String(client.status.stoppedBy), /login/);
  await client.close();
});

test("a malformed message from the relay drops the connection (4002) and reconnects; nothing throws", async () => {
  /** @type {any[]} */
  const sockets = [];
  const WebSocketImpl = scriptedSocket((socket, m) => {
    if (m.t !== "auth") return;
    socket.reply("welcome", { user: "alice", epoch: "e1", server: "fake", limits: { max_message: 1 << 20 } });
    if (sockets.length === 1) {
      const garbage = new Event("message"); // not msgpack at all, then a map with no type
      Object.assign(garbage, { data: Uint8Array.of(0xc1, 0xff, 0x00).buffer });
      setTimeout(() => socket.dispatchEvent(garbage), 5);
    }
  }, sockets);
  const store = new MemoryStore();
  await store.batch([{ table: "profile", key: "device", value: await profile() }]);
  const client = await QuickSlotClient.open({ relay: "http://relay.invalid", store, WebSocketImpl: /** @type {any} */ (WebSocketImpl), backoff: { baseMs: 5, maxMs: 20 } });
  /** @type {string[]} */
  const seen = [];
  for (const type of ["online", "offline", "error"]) client.on(type, (d) => seen.push(`${type}${d.code && type !== "error" ? `:${d.code}` : ""}`));
  client.start();
  await new Promise((resolve) => {
    client.on("online", () => {
      if (sockets.length === 2) resolve(undefined);
    });
  });
  assert.deepEqual(seen, ["online", "error", "offline:4002", "online"]);
  await client.close();
});

test("staff actions: an owner confirms, declines and marks a no-show, offline", async () => {
  const store = new MemoryStore();
  await store.batch([{ table: "profile", key: "device", value: await profile(["s1"]) }]);
  const client = await QuickSlotClient.open({ relay: "http://relay.invalid", store });
  assert.deepEqual(client.user?.ownerOf, ["s1"]);
  const ids = [];
  // three slots: one customer holds one active claim per slot (a second is duplicate)
  for (let i = 0; i < 3; i++) ids.push(/** @type {string} */ ((await client.book({ shop: "s1", day: DAY, slot: `s-${9 + i}` }))?.reservationId));
  const confirmed = await client.confirm(ids[0]); // staff acknowledged it; seats still follow the verdict
  assert.deepEqual([confirmed?.state, confirmed?.staffConfirmed], ["waitlisted", true]);
  const declined = await client.decline(ids[1], { reason: "closed <b>today</b>" });
  // what the customer is told: the shop declined, and why (as given, never interpreted)
  assert.deepEqual([declined?.state, declined?.endedBy, declined?.reason], ["declined", "shop", "closed <b>today</b>"]);
  assert.deepEqual(client.reservations().map((r) => [r.state, r.endedBy, r.reason]), [["waitlisted", null, null], ["declined", "shop", "closed <b>today</b>"], ["waitlisted", null, null]]);
  assert.equal((await client.noShow(ids[2]))?.state, "no_show");
  assert.deepEqual(client.outbox().map((e) => e.action), ["book", "book", "book", "confirm", "decline", "no_show"]);
  await assert.rejects(client.cancel("nosuchreservation"), /no reservation/);
  await client.close();
});

/** Messages a scripted relay answers with: `sync` for every `sub`, at `seq`. @param {any} socket @param {any} m @param {number} seq */
function answerSub(socket, m, seq) {
  socket.reply("sync", { doc: m.fields.doc, update: Y.encodeStateAsUpdate(new Y.Doc()), sv: Uint8Array.of(0), seq });
}

test("4001 refreshes the token and reconnects at once; a sequence gap resyncs the document", async () => {
  /** @type {any[]} */
  const sockets = [];
  /** @type {string[]} */
  const tokens = [];
  let subs = 0;
  const WebSocketImpl = scriptedSocket((socket, m) => {
    if (m.t === "auth") {
      tokens.push(m.fields.token);
      if (m.fields.token === "a.b.c") socket.close(4001);
      else socket.reply("welcome", { user: "alice", epoch: "e2", server: "fake", limits: { max_message: 1 << 20 } });
    } else if (m.t === "sub") {
      answerSub(socket, m, 5);
      if (m.fields.doc !== "catalog") return; // the user's own document, followed too
      subs += 1;
      // seq 6 is missing: the client must ask again
      if (subs === 1) socket.reply("upd", { doc: m.fields.doc, update: Y.encodeStateAsUpdate(new Y.Doc()), seq: 7 });
    }
  }, sockets);
  const realFetch = globalThis.fetch;
  /** @type {any[]} */
  const refreshes = [];
  globalThis.fetch = /** @type {any} */ (async (/** @type {URL} */ url, /** @type {any} */ init) => {
    refreshes.push([String(url), JSON.parse(init.body).refresh_token]);
    return new Response(JSON.stringify({ access_token: "x.y.z", refresh_token: "r2" }), { status: 200 });
  });
  try {
    const store = new MemoryStore();
    await store.batch([{ table: "profile", key: "device", value: await profile() }]);
    const client = await QuickSlotClient.open({ relay: "http://relay.invalid", store, WebSocketImpl: /** @type {any} */ (WebSocketImpl), backoff: { baseMs: 5, maxMs: 20 } });
    await client.watch("catalog");
    client.start();
    await new Promise((resolve) => client.on("online", resolve));
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(tokens, ["a.b.c", "x.y.z"]);
    assert.deepEqual(refreshes, [["http://relay.invalid/api/v1/auth/refresh", "r"]]);
    assert.equal(/** @type {any} */ (await store.get("profile", "device")).refreshToken, "r2");
    assert.equal(subs, 2, "the gap made the client subscribe again");
    assert.equal(await store.get("cursors", "catalog"), 5);
    await client.close();
  } finally {
    globalThis.fetch = realFetch;
  }
});

test("a relay that lost acknowledged updates (a new epoch) gets them back in the catch-up diff", async () => {
  /** @type {any[]} */
  const sockets = [];
  /** @type {Array<[number, number]>} connection and uid of every upd of the bookings day */
  const upds = [];
  const WebSocketImpl = scriptedSocket((socket, m) => {
    if (m.t === "auth") socket.reply("welcome", { user: "alice", epoch: `e${sockets.length}`, server: "fake", limits: { max_message: 1 << 20 } });
    else if (m.t === "sub") answerSub(socket, m, 0); // the relay holds nothing of it (restored from an old backup)
    else if (m.t === "upd") {
      if (m.fields.doc.startsWith("bookings:")) upds.push([sockets.length, m.fields.uid]);
      socket.seqs ??= new Map(); // sequence numbers are per document
      socket.seqs.set(m.fields.doc, (socket.seqs.get(m.fields.doc) ?? 0) + 1);
      socket.reply("ack", { doc: m.fields.doc, uid: m.fields.uid, seq: socket.seqs.get(m.fields.doc) });
    }
  }, sockets);
  const store = new MemoryStore();
  await store.batch([{ table: "profile", key: "device", value: await profile() }]);
  const client = await QuickSlotClient.open({ relay: "http://relay.invalid", store, WebSocketImpl: /** @type {any} */ (WebSocketImpl), backoff: { baseMs: 5, maxMs: 20 } });
  await client.book({ shop: "s1", day: DAY, slot: "s-9" });
  await client.syncNow({ timeoutMs: 5000 }); // the booking, and its day listing (entry 2, in the user's document)
  assert.deepEqual(upds, [[1, 1]], "the outbox entry, and no catch-up diff duplicating it");
  assert.equal(client.status.pending, 0);
  sockets[0].close(1001);
  await new Promise((resolve) => client.on("online", resolve));
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(upds.length, 2);
  assert.equal(upds[1][0], 2);
  assert.ok(upds[1][1] > 10 ** 12, "a catch-up diff, not an outbox entry");
  await client.close();
});

test("a refused subscription is reported and does not keep syncNow waiting", async () => {
  /** @type {any[]} */
  const sockets = [];
  const WebSocketImpl = scriptedSocket((socket, m) => {
    if (m.t === "auth") socket.reply("welcome", { user: "alice", epoch: "e1", server: "fake", limits: { max_message: 1 << 20 } });
    else if (m.t === "sub" && m.fields.doc === "user:bob") socket.reply("err", { code: "forbidden", reason: "not yours", doc: m.fields.doc, retry: false });
    else if (m.t === "sub") answerSub(socket, m, 0);
  }, sockets);
  const store = new MemoryStore();
  await store.batch([{ table: "profile", key: "device", value: await profile() }]);
  const client = await QuickSlotClient.open({ relay: "http://relay.invalid", store, WebSocketImpl: /** @type {any} */ (WebSocketImpl) });
  /** @type {any[]} */
  const errors = [];
  client.on("error", (e) => errors.push([e.docId, e.code]));
  await client.watch("user:bob");
  await client.watch("catalog");
  assert.deepEqual(await client.syncNow({ timeoutMs: 2000 }), { pending: 0, refused: [] });
  assert.deepEqual(errors, [["user:bob", "forbidden"]]);
  await client.close();
});

test("refreshCookie: refresh and logout ask for the cookie, a stored token moves into it, logout proves the bound token", async () => {
  const { ed25519Verify } = await import("../src/crypto.js");
  const { popStatement, toBase64Url } = await import("../src/index.js");
  const b64 = (/** @type {any} */ o) => toBase64Url(new TextEncoder().encode(JSON.stringify(o)));
  const bound = `${b64({ alg: "EdDSA" })}.${b64({ aud: "quickslot", jti: "j1", cnf: { jwk: {} } })}.sig`;
  const realFetch = globalThis.fetch;
  /** @type {any[]} */
  const calls = [];
  globalThis.fetch = /** @type {any} */ (async (/** @type {URL} */ url, /** @type {any} */ init) => {
    calls.push({ path: new URL(url).pathname, headers: init.headers, body: JSON.parse(init.body), credentials: init.credentials });
    if (new URL(url).pathname.endsWith("/logout")) return new Response(null, { status: 204 });
    return new Response(JSON.stringify({ access_token: bound, refresh_token: null }), { status: 200 });
  });
  try {
    const store = new MemoryStore();
    await store.batch([{ table: "profile", key: "device", value: await profile() }]); // kept a token before
    const client = await QuickSlotClient.open({ relay: "http://relay.invalid", store, refreshCookie: true });
    await client.refresh();
    assert.equal(calls[0].headers["QuickSlot-Refresh"], "cookie");
    assert.equal(calls[0].credentials, "same-origin");
    assert.equal(calls[0].body.refresh_token, "r", "the stored token is presented once");
    assert.equal(/** @type {any} */ (await store.get("profile", "device")).refreshToken, null, "and forgotten");
    await client.refresh();
    assert.equal("refresh_token" in calls[1].body, false, "then the cookie alone carries it");
    assert.ok(calls[1].body.device_public_key, "the new access token is bound to the device key");

    assert.equal(await client.logout(), true);
    const out = calls[2];
    assert.equal(out.path, "/api/v1/auth/logout");
    assert.equal(out.headers["QuickSlot-Refresh"], "cookie");
    assert.equal(out.headers.authorization, `Bearer ${bound}`);
    const at = Number(out.headers["QuickSlot-Proof-Time"]);
    const signed = popStatement(["rest", "POST", "/api/v1/auth/logout"], "quickslot", "j1", at);
    const { fromBase64Url } = await import("../src/index.js");
    assert.ok(await ed25519Verify(fromBase64Url(out.headers["QuickSlot-Proof"]), signed, await ed25519PublicKey(deviceSeed)));
    await client.close();
  } finally {
    globalThis.fetch = realFetch;
  }
});

/**
 * A relay in memory for `scriptedSocket`: it keeps every document, answers `sub` with what the
 * client lacks and acknowledges every `upd` after applying it (sequence numbers per document).
 */
function memoryRelay(refuse = (/** @type {string} */ _docId) => false) {
  /** @type {Map<string, Y.Doc>} */
  const docs = new Map();
  /** @type {Map<string, number>} */
  const seqs = new Map();
  /** @type {string[]} every document a client subscribed, in order */
  const subscribed = [];
  /** @param {string} docId */
  const doc = (docId) => docs.get(docId) ?? docs.set(docId, new Y.Doc()).get(/** @type {string} */ (docId)) ?? new Y.Doc();
  /** @param {any} socket @param {any} m */
  const onMessage = (socket, m) => {
    const f = m.fields;
    if (m.t === "auth") socket.reply("welcome", { user: "alice", epoch: "e1", server: "fake", limits: { max_message: 1 << 20 } });
    else if (m.t === "sub") {
      subscribed.push(f.doc);
      const d = doc(f.doc);
      socket.reply("sync", { doc: f.doc, update: Y.encodeStateAsUpdate(d, f.sv), sv: Y.encodeStateVector(d), seq: seqs.get(f.doc) ?? 0 });
    } else if (m.t === "upd" && refuse(f.doc)) {
      socket.reply("err", { doc: f.doc, uid: f.uid, code: "forbidden", reason: "forbidden: refused by the test", retry: false });
    } else if (m.t === "upd") {
      Y.applyUpdate(doc(f.doc), f.update);
      seqs.set(f.doc, (seqs.get(f.doc) ?? 0) + 1);
      socket.reply("ack", { doc: f.doc, uid: f.uid, seq: seqs.get(f.doc) });
    }
  };
  return { docs, subscribed, onMessage };
}

test("booked days: the first booking in a (shop, day) lists it once; another device of the user follows the listed days after one sync", async () => {
  const relay = memoryRelay();
  const WebSocketImpl = /** @type {any} */ (scriptedSocket(relay.onMessage, []));
  const open = async () => {
    const store = new MemoryStore();
    await store.batch([{ table: "profile", key: "device", value: await profile() }]);
    return QuickSlotClient.open({ relay: "http://relay.invalid", store, WebSocketImpl, backoff: { baseMs: 5, maxMs: 20 } });
  };
  const OLD = "2027-01-10"; // settled when the laptop syncs (its clock says 2027-01-13): listed, not fetched there
  const phone = await open();
  const first = await phone.book({ shop: "s1", day: DAY, slot: "s-9" });
  const second = await phone.book({ shop: "s1", day: DAY, slot: "s-10" }); // the day is listed already
  const other = await phone.book({ shop: "s2", day: DAY, slot: "x" });
  const old = await phone.book({ shop: "s1", day: OLD, slot: "s-9" });
  const listings = [...phone.entries.values()].filter((e) => e.docId === "user:alice");
  assert.deepEqual(listings.map((e) => e.action), ["booked_day", "booked_day", "booked_day"], "one listing per (shop, day): s1 and s2 on DAY, s1 on OLD");
  // only the user's devices hold the user's document: the listings are not handed to carriers
  assert.deepEqual(phone.pendingUpdates().map((u) => u.docId), [`bookings:s1:${DAY}`, `bookings:s1:${DAY}`, `bookings:s2:${DAY}`, `bookings:s1:${OLD}`]);
  assert.deepEqual(bookedDays(/** @type {Y.Doc} */ (phone.docs.get("user:alice")?.doc), "alice"), [
    { shop: "s1", day: OLD }, { shop: "s1", day: DAY }, { shop: "s2", day: DAY },
  ]);  // prettier-ignore
  // the listing is bookkeeping: the outbox and the counts show the user's four bookings
  assert.deepEqual(phone.outbox().map((e) => e.action), ["book", "book", "book", "book"]);
  assert.equal(phone.status.pending, 4);
  await phone.syncNow({ timeoutMs: 5000 });
  assert.equal(phone.entries.size, 0);
  await phone.close();

  const laptop = await open();
  assert.deepEqual(laptop.reservations(), []);
  const realNow = Date.now;
  Date.now = () => new Date(2027, 0, 13, 12).getTime(); // the fake relay checks no times
  try {
    await laptop.syncNow({ timeoutMs: 5000 });
  } finally {
    Date.now = realNow;
  }
  const shown = laptop.reservations().map((r) => r.reservationId).sort();
  assert.deepEqual(shown, [first, second, other].map((r) => r?.reservationId).sort());
  assert.ok(!shown.includes(/** @type {string} */ (old?.reservationId)));
  assert.ok(relay.subscribed.includes("shop:s2"), "a listed day's shop is followed (its slots make the verdict)");
  assert.ok(!laptop.docs.has(`bookings:s1:${OLD}`));
  // the day lists on the laptop now too: its first booking there writes no second listing
  await laptop.book({ shop: "s2", day: DAY, slot: "x" });
  assert.deepEqual([...laptop.entries.values()].map((e) => e.docId), [`bookings:s2:${DAY}`]);
  await laptop.close();
});

test("booked days: a listing the relay refuses is dropped, not shown; the next booking that day lists the day again", async () => {
  let refusing = true;
  const relay = memoryRelay((docId) => refusing && docId === "user:alice");
  const store = new MemoryStore();
  await store.batch([{ table: "profile", key: "device", value: await profile() }]);
  const client = await QuickSlotClient.open({ relay: "http://relay.invalid", store, WebSocketImpl: /** @type {any} */ (scriptedSocket(relay.onMessage, [])), backoff: { baseMs: 5, maxMs: 20 } });
  /** @type {string[]} */
  const errors = [];
  client.on("error", (e) => errors.push(`${e.docId} ${e.code}`));
  await client.book({ shop: "s1", day: DAY, slot: "s-9" });
  const result = await client.syncNow({ timeoutMs: 5000 });
  assert.deepEqual([result.pending, result.refused], [0, []]);
  assert.deepEqual([client.status.refused, client.entries.size, client.outbox()], [0, 0, []]);
  assert.deepEqual(errors, ["user:alice forbidden"]);
  assert.deepEqual(bookedDays(/** @type {Y.Doc} */ (client.docs.get("user:alice")?.doc), "alice"), [], "rebuilt from the relay's copy");
  refusing = false;
  await client.book({ shop: "s1", day: DAY, slot: "s-10" });
  assert.deepEqual([...client.entries.values()].map((e) => e.action), ["book", "booked_day"]);
  await client.syncNow({ timeoutMs: 5000 });
  assert.equal(bookedDays(/** @type {Y.Doc} */ (relay.docs.get("user:alice")), "alice").length, 1);
  await client.close();
});
