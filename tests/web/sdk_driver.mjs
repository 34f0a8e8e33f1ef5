// Drives one QuickSlotClient for tests/web/test_sdk_client.py: one JSON command per stdin line
// ({"op": ..., ...}), one JSON answer per stdout line ({"ok": true, "result": ...} or
// {"ok": false, "error": ...}); events are printed as they happen ({"event": type, ...}).
//
//   node --experimental-websocket tests/web/sdk_driver.mjs RELAY_URL [--idb]
//   (--idb keeps the client's data in IndexedDB, here fake-indexeddb's in-memory one)

import { createInterface } from "node:readline";
import { IndexedDBStore, MemoryStore, QuickSlotClient, RelayError } from "../../web/sdk/src/index.js";

const [relay, ...flags] = process.argv.slice(2);
let store;
if (flags.includes("--idb")) {
  const { indexedDB } = await import("../../web/sdk/node_modules/fake-indexeddb/build/esm/index.js");
  store = await IndexedDBStore.open("quickslot-test", { indexedDB });
} else store = new MemoryStore();
const client = await QuickSlotClient.open({ relay, store, backoff: { baseMs: 100, maxMs: 1000 }, requestTimeoutMs: 5000 });

/** @param {unknown} value */
const out = (value) => process.stdout.write(JSON.stringify(value, (_k, v) => (v instanceof Uint8Array ? Buffer.from(v).toString("hex") : typeof v === "bigint" ? Number(v) : v)) + "\n");
for (const type of ["online", "offline", "acked", "refused", "confirmed", "waitlisted", "promoted", "demoted", "final", "cancelled", "declined", "stopped", "rebuilt", "error", "refreshed"]) {
  client.on(type, (detail) => out({ event: type, reservation: detail.reservation?.reservationId ?? detail.entry?.reservationId ?? null, position: detail.position ?? null, reason: detail.reason ?? null, code: detail.code ?? null, doc: detail.docId ?? null, generation: detail.generation ?? null, action: detail.entry?.action ?? null }));
}

const ops = {
  async register({ email, password }) {
    try {
      await client.register({ email, password, displayName: email.split("@")[0] });
    } catch (err) {
      if (!(err instanceof RelayError && err.status === 409)) throw err;
    }
    return client.login({ email, password });
  },
  login: ({ email, password }) => client.login({ email, password }),
  start: () => client.start(),
  stop: () => client.stop(),
  sync: ({ timeoutMs = 30000 }) => client.syncNow({ timeoutMs }),
  status: () => client.status,
  categories: () => client.categories(),
  shops: ({ category }) => client.shops({ category }),
  shop: ({ shop }) => client.shop(shop),
  slots: ({ shop, day }) => client.slots(shop, day),
  book: ({ shop, day, slot, party = 1 }) => client.book({ shop, day, slot, party }),
  cancel: ({ reservation }) => client.cancel(reservation),
  reservations: ({ all = false }) => client.reservations({ all }),
  outbox: () => client.outbox(),
  pending: () => client.pendingUpdates(),
  async quit() {
    await client.close();
    setTimeout(() => process.exit(0), 10);
  },
};

for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  const command = JSON.parse(line);
  try {
    out({ ok: true, result: (await ops[command.op](command)) ?? null });
  } catch (err) {
    out({ ok: false, error: String(err?.stack ?? err) });
  }
}
