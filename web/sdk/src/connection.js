// A minimal sync connection to a relay (docs/protocol.md 5.1-5.5): authenticate, subscribe to
// documents (sync step 1 and 2), send updates and wait for their ack, and apply what the relay
// sends. Everything the relay sends is validated (with no arrival policy: the relay judged it on
// arrival) before it is applied. Uses the platform's WebSocket (browsers; Node 22, or Node 20 with
// --experimental-websocket), or the one passed in.

import * as Y from "yjs";
import { DEFAULT_MAX_DOWNLOAD, decodeMessage, encodeMessage } from "./messages.js";
import { authProof } from "./pop.js";
import { validateUpdate } from "./validation.js";

/** @typedef {import("./relay-api.js").Session} Session */
/** @typedef {import("./messages.js").Message} Message */

/** The relay answered a request with `err` (or closed): `code` is its error code. */
export class SyncError extends Error {
  name = "SyncError";
  /** @param {string} code @param {string} reason */
  constructor(code, reason) {
    super(`${code}: ${reason}`);
    this.code = code;
  }
}

export class SyncConnection {
  /**
   * @param {WebSocket} socket @param {Session} session
   */
  constructor(socket, session) {
    this.socket = socket;
    this.session = session;
    /** @type {Map<string, Y.Doc>} live documents */
    this.docs = new Map();
    /** @type {Array<{match: (m: Message) => boolean, resolve: (m: Message) => void, reject: (e: Error) => void}>} */
    this.waiters = [];
    this.nextUid = 1;
    /** @type {Error | null} */
    this.failure = null;
    /** @type {Message | null} */
    this.welcome = null;
    /** Messages handled one at a time, in order (validation is async). */
    this.inbox = Promise.resolve();
    socket.binaryType = "arraybuffer";
    socket.addEventListener("message", (event) => {
      this.inbox = this.inbox.then(() => this.receive(/** @type {MessageEvent} */ (event).data)).catch((err) => this.fail(err));
    });
    socket.addEventListener("close", (event) => this.fail(new SyncError(`close_${/** @type {CloseEvent} */ (event).code}`, /** @type {CloseEvent} */ (event).reason)));
  }

  /**
   * Connect to `<relay>/api/v1/sync` and authenticate with an `auth` message (with the proof a
   * bound token needs); resolves once the relay said `welcome`.
   * @param {string} baseUrl the relay's http(s) URL @param {Session} session
   * @param {{WebSocketImpl?: typeof WebSocket}} [options]
   */
  static async open(baseUrl, session, { WebSocketImpl = globalThis.WebSocket } = {}) {
    const url = new URL("/api/v1/sync", baseUrl);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocketImpl(url);
    const connection = new SyncConnection(socket, session);
    await new Promise((resolve, reject) => {
      socket.addEventListener("open", resolve, { once: true });
      socket.addEventListener("error", () => reject(new SyncError("connect_failed", String(url))), { once: true });
    });
    const proof = await authProof(session.accessToken, session.seed);
    const welcome = connection.expect((m) => m.t === "welcome");
    connection.send("auth", { token: session.accessToken, proof: proof?.proof, proof_time: proof?.proofTime });
    connection.welcome = await welcome;
    return connection;
  }

  /** @param {string} t @param {Record<string, unknown>} fields */
  send(t, fields) {
    this.socket.send(/** @type {Uint8Array<ArrayBuffer>} */ (encodeMessage(t, fields)));
  }

  /** @param {(m: Message) => boolean} match @returns {Promise<Message>} */
  expect(match) {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => this.waiters.push({ match, resolve, reject }));
  }

  /** @param {Error} err */
  fail(err) {
    this.failure ??= err;
    for (const w of this.waiters.splice(0)) w.reject(this.failure);
  }

  /** @param {ArrayBuffer} data */
  async receive(data) {
    const message = decodeMessage(new Uint8Array(data), { maxSize: DEFAULT_MAX_DOWNLOAD });
    const f = message.fields;
    // what the relay stored: apply to the live document, validated first
    const doc = typeof f.doc === "string" ? this.docs.get(f.doc) : undefined;
    if (doc && message.t === "upd") await this.applyFromRelay(f.doc, doc, f.update);
    if (doc && message.t === "stamp") await this.applyFromRelay(f.doc, doc, f.update);
    if (doc && message.t === "stamped") {
      if (f.update) await this.applyFromRelay(f.doc, doc, f.update);
      await this.applyFromRelay(f.doc, doc, f.stamp);
    }
    const index = this.waiters.findIndex((w) => w.match(message));
    if (index >= 0) this.waiters.splice(index, 1)[0].resolve(message);
  }

  /** @param {string} docId @param {Y.Doc} doc @param {Uint8Array} update */
  async applyFromRelay(docId, doc, update) {
    await validateUpdate(docId, doc, update, this.session.trust, null);
    Y.applyUpdate(doc, update);
  }

  /**
   * Subscribe: send our state vector, apply the relay's answer; the document is then live.
   * @param {string} docId @param {Y.Doc} [doc]
   * @returns {Promise<Y.Doc>}
   */
  async subscribe(docId, doc = new Y.Doc()) {
    const answer = this.expect((m) => m.fields.doc === docId && (m.t === "sync" || (m.t === "err" && m.fields.uid === undefined)));
    this.send("sub", { doc: docId, sv: Y.encodeStateVector(doc) });
    const message = await answer;
    if (message.t === "err") throw new SyncError(message.fields.code, message.fields.reason);
    await this.applyFromRelay(docId, doc, message.fields.update);
    this.docs.set(docId, doc);
    return doc;
  }

  /**
   * Send an update of a live document and wait for the relay to store it (`ack`, or `stamped`
   * whose stamp update is applied before this resolves).
   * @param {string} docId @param {Uint8Array} update
   * @returns {Promise<{seq: number, stamps: Array<[number, string]>}>}
   */
  async sendUpdate(docId, update) {
    const uid = this.nextUid++;
    const answer = this.expect((m) => m.fields.uid === uid && (m.t === "ack" || m.t === "stamped" || m.t === "err"));
    this.send("upd", { doc: docId, uid, update });
    const message = await answer;
    if (message.t === "err") throw new SyncError(message.fields.code, message.fields.reason);
    return { seq: message.fields.seq, stamps: message.fields.stamps ?? [] };
  }

  close() {
    this.socket.close(1000);
  }
}
