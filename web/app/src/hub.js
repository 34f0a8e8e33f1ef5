// One QuickSlotClient per browser profile, however many tabs are open.
//
// Every tab of the app shares one IndexedDB database. Two clients on it would each keep their own
// outbox numbering and document copies and overwrite each other, so exactly one tab, the leader,
// opens the client and syncs; the others are followers that ask the leader for everything over a
// BroadcastChannel (a call: {call, id, method, args}; its answer: {answer, id, ok, value | error})
// and hear its events ({event, detail}). The leader holds a Web Lock for as long as the tab lives;
// when it closes, the browser grants the lock to the next tab waiting, which opens the client from
// the same database and takes over. Without Web Locks or BroadcastChannel the tab acts alone.

import { IndexedDBStore, QuickSlotClient, RelayError } from "../../sdk/src/index.js";

const LOCK = "quickslot-app-leader";
const CHANNEL = "quickslot-app";
const DATABASE = "quickslot-app";
const CALL_TIMEOUT_MS = 15000;
/** Events a leader passes on to followers (and the page listens to). */
export const EVENTS = [
  "status", "change", "acked", "refused", "confirmed", "waitlisted", "promoted", "demoted", "final",
  "cancelled", "declined", "no_show", "too_large", "stopped", "session",
];  // prettier-ignore
/** Methods a follower may call on the leader. */
const METHODS = new Set([
  "categories", "shops", "shop", "slots", "book", "cancel", "confirm", "decline", "noShow",
  "reservations", "outbox", "dismissRefused", "status", "user", "login", "register", "logout", "syncNow",
]);  // prettier-ignore

/** A call that failed in the leader, carried to a follower with what the page needs to say why. */
export class CallError extends Error {
  /** @param {string} message @param {number | null} status @param {string | null} code */
  constructor(message, status = null, code = null) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export class Hub {
  /** @param {string} relay */
  constructor(relay) {
    this.relay = relay;
    /** @type {QuickSlotClient | null} */
    this.client = null;
    this.leader = false;
    /** Set as soon as this tab holds the lock: calls wait for its client instead of going to another tab. */
    this.leading = false;
    /** @type {Map<string, Set<(detail: any) => void>>} */
    this.listeners = new Map();
    /** @type {Map<number, {method: string, args: any[], resolve: (v: any) => void, reject: (e: any) => void, timer: any}>} */
    this.waiting = new Map();
    this.nextCall = 1;
    /** @type {BroadcastChannel | null} */
    this.channel = typeof BroadcastChannel === "function" ? new BroadcastChannel(CHANNEL) : null;
    /** @type {Promise<void> | null} */
    this.ready = null;
    this.watchingNetwork = false;
    this.channel?.addEventListener("message", (e) => this.heard(e.data));
  }

  /** Become the leader now if no other tab is, else follow (and lead once the leader goes). */
  static async start(relay = location.origin) {
    const hub = new Hub(relay);
    const locks = navigator.locks;
    if (!locks || !hub.channel) {
      await hub.lead();
      return hub;
    }
    const first = await new Promise((resolve) => {
      locks.request(LOCK, { ifAvailable: true }, (lock) => {
        if (!lock) return resolve(false);
        resolve(true);
        return hub.lead().then(() => new Promise(() => {})); // held until the tab goes away
      });
    });
    if (!first) {
      locks.request(LOCK, () => hub.lead().then(() => new Promise(() => {})));
    } else await hub.ready;
    return hub;
  }

  /** Open the client on the shared database and sync. */
  lead() {
    this.leading = true;
    this.ready ??= (async () => {
      const store = await IndexedDBStore.open(DATABASE);
      // the refresh token stays in the relay's HttpOnly cookie, out of reach of this page's script
      const client = await QuickSlotClient.open({ relay: this.relay, store, backoff: { baseMs: 250, maxMs: 5000 }, requestTimeoutMs: 10000, refreshCookie: true });
      for (const type of EVENTS) client.on(type, (detail) => this.emit(type, detail, true));
      this.client = client;
      this.leader = true;
      // calls this tab sent to the leader that went: this tab answers them itself now
      for (const [id, w] of this.waiting) {
        this.waiting.delete(id);
        clearTimeout(w.timer);
        this.local(w.method, w.args).then(w.resolve, w.reject);
      }
      if (client.user && navigator.onLine !== false) client.start();
      if (!this.watchingNetwork) {
        // the browser knows before the socket does: stop at once, and reconnect without backoff
        addEventListener("offline", () => this.client?.stop());
        addEventListener("online", () => this.client?.user && this.client.start());
        this.watchingNetwork = true;
      }
      this.emit("session", { leader: true }, false);
    })();
    return this.ready;
  }

  /** @param {string} type @param {(detail: any) => void} fn */
  on(type, fn) {
    const set = this.listeners.get(type) ?? new Set();
    set.add(fn);
    this.listeners.set(type, set);
    return () => set.delete(fn);
  }

  /** @param {string} type @param {any} detail @param {boolean} share tell the other tabs too */
  emit(type, detail, share) {
    if (share && this.channel) {
      try {
        this.channel.postMessage({ event: type, detail });
      } catch {
        this.channel.postMessage({ event: type, detail: {} });
      }
    }
    for (const fn of this.listeners.get(type) ?? []) {
      try {
        fn(detail);
      } catch (err) {
        console.error(err);
      }
    }
  }

  /** @param {any} m */
  async heard(m) {
    if (!m || typeof m !== "object") return;
    if (m.event && !this.leading) this.emit(m.event, m.detail, false);
    else if (m.call && this.leading) {
      try {
        const value = await this.local(m.method, m.args);
        this.channel?.postMessage({ answer: true, id: m.id, to: m.from, ok: true, value });
      } catch (err) {
        const e = /** @type {any} */ (err);
        this.channel?.postMessage({ answer: true, id: m.id, to: m.from, ok: false, error: String(e?.message ?? e), status: e?.status ?? null, code: e?.code ?? null });
      }
    } else if (m.answer && m.to === this.id) {
      const w = this.waiting.get(m.id);
      if (!w) return;
      this.waiting.delete(m.id);
      clearTimeout(w.timer);
      if (m.ok) w.resolve(m.value);
      else w.reject(new CallError(m.error, m.status, m.code));
    }
  }

  id = Math.random().toString(36).slice(2);

  /**
   * Call the client: here in the leader, through the channel in a follower.
   * @param {string} method @param {...any} args @returns {Promise<any>}
   */
  call(method, ...args) {
    if (this.leading) return this.local(method, args);
    const id = this.nextCall++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new CallError("no answer from the tab that syncs"));
      }, CALL_TIMEOUT_MS);
      this.waiting.set(id, { method, args, resolve, reject, timer });
      this.channel?.postMessage({ call: true, id, from: this.id, method, args });
    });
  }

  /** @param {string} method @param {any[]} args @returns {Promise<any>} */
  async local(method, args) {
    await this.ready;
    const client = /** @type {QuickSlotClient} */ (this.client);
    if (!METHODS.has(method)) throw new CallError(`unknown call ${method}`);
    switch (method) {
      case "status":
        return client.status;
      case "user":
        return client.user;
      case "register":
        try {
          await client.register(args[0]);
        } catch (err) {
          throw asCallError(err);
        }
        return this.local("login", [args[0]]);
      case "login": {
        let user;
        try {
          user = await client.login(args[0]);
        } catch (err) {
          throw asCallError(err);
        }
        if (navigator.onLine !== false) client.start();
        this.emit("session", { user }, true);
        return user;
      }
      case "logout":
        return this.logout();
    }
    const fn = /** @type {any} */ (client)[method];
    return await fn.apply(client, args);
  }

  /**
   * Log out at the relay (its session ends and the refresh cookie is cleared; offline, the relay
   * is not told), then forget the profile: close the client, delete the database, open an empty one.
   */
  async logout() {
    const client = /** @type {QuickSlotClient} */ (this.client);
    if (client.user) await client.logout();
    await client.close();
    await new Promise((resolve) => {
      const request = indexedDB.deleteDatabase(DATABASE);
      request.onsuccess = request.onerror = request.onblocked = () => resolve(null);
    });
    this.ready = null;
    this.leader = false;
    await this.lead();
    this.emit("session", { user: null }, true);
    return null;
  }
}

/** @param {unknown} err */
function asCallError(err) {
  if (err instanceof RelayError) return new CallError(err.message, err.status, /** @type {any} */ (err).code ?? null);
  if (err instanceof TypeError) return new CallError("cannot reach the relay: check the connection", 0, "network");
  return err;
}
