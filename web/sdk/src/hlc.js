// Hybrid logical clocks (crdt_core/hlc.py). String form WWWWWWWWWWWWW-CCCCCC-node: 13-digit wall
// milliseconds, 6-digit counter, node id; fixed widths make string order equal timestamp order.

import { SchemaError } from "./errors.js";

const MAX_WALL = 10 ** 13 - 1;
const MAX_COUNTER = 999999;
const HLC_RE = /^([0-9]{13})-([0-9]{6})-([A-Za-z0-9_-]{1,64})$/;
const NODE_RE = /^[A-Za-z0-9_-]{1,64}$/;

/** A stamp: `wallMs`, `counter`, `node`; compare with `compareTimestamps` or by `encode()` string. */
export class Timestamp {
  /** @param {number} wallMs @param {number} counter @param {string} node */
  constructor(wallMs, counter, node) {
    if (!(Number.isInteger(wallMs) && wallMs >= 0 && wallMs <= MAX_WALL && Number.isInteger(counter) && counter >= 0 && counter <= MAX_COUNTER)) {
      throw new SchemaError("HLC timestamp out of range");
    }
    if (!NODE_RE.test(node)) throw new SchemaError("HLC node id malformed");
    this.wallMs = wallMs;
    this.counter = counter;
    this.node = node;
  }

  encode() {
    return `${String(this.wallMs).padStart(13, "0")}-${String(this.counter).padStart(6, "0")}-${this.node}`;
  }

  toString() {
    return this.encode();
  }

  /** @param {unknown} text @returns {Timestamp} */
  static parse(text) {
    // `$` in a JS regex without the m flag matches only at the very end (Python's \Z), so a
    // trailing newline is refused as crdt_core refuses it.
    const m = typeof text === "string" ? HLC_RE.exec(text) : null;
    if (m === null) throw new SchemaError(`not an HLC timestamp: ${JSON.stringify(text)}`);
    return new Timestamp(Number(m[1]), Number(m[2]), m[3]);
  }
}

/** Order of (wall, counter, node), as Python's dataclass ordering. @param {Timestamp} a @param {Timestamp} b */
export function compareTimestamps(a, b) {
  if (a.wallMs !== b.wallMs) return a.wallMs - b.wallMs;
  if (a.counter !== b.counter) return a.counter - b.counter;
  return a.node < b.node ? -1 : a.node > b.node ? 1 : 0;
}

/** Raised by `observe` when a remote clock is too far ahead. */
export class ClockSkewError extends Error {
  name = "ClockSkewError";
}

/** One device's clock; `physicalMs` is injectable so tests and replays are deterministic. */
export class HybridClock {
  /**
   * @param {string} node
   * @param {{physicalMs?: () => number, maxSkewMs?: number, last?: Timestamp}} [options]
   */
  constructor(node, options = {}) {
    new Timestamp(0, 0, node); // validates the node id
    this.node = node;
    this.physicalMs = options.physicalMs ?? (() => Date.now());
    this.maxSkewMs = options.maxSkewMs ?? 60000;
    this.wall = options.last?.wallMs ?? 0;
    this.counter = options.last?.counter ?? 0;
  }

  get last() {
    return new Timestamp(this.wall, this.counter, this.node);
  }

  /** @param {number} wall @param {number} counter */
  advance(wall, counter) {
    if (counter > MAX_COUNTER) {
      wall += 1;
      counter = 0;
    }
    this.wall = wall;
    this.counter = counter;
    return new Timestamp(wall, counter, this.node);
  }

  /** A stamp for a local event: greater than every stamp this clock has issued or seen. */
  now() {
    const phys = this.physicalMs();
    if (phys > this.wall) return this.advance(phys, 0);
    return this.advance(this.wall, this.counter + 1);
  }

  /**
   * Merge a remote stamp; the next `now()` is after it.
   * @param {Timestamp | string} remote
   * @throws {ClockSkewError} the remote stamp is more than maxSkewMs ahead of our physical clock
   */
  observe(remote) {
    const other = typeof remote === "string" ? Timestamp.parse(remote) : remote;
    const phys = this.physicalMs();
    if (other.wallMs - phys > this.maxSkewMs) {
      throw new ClockSkewError(`remote clock ${other.wallMs - phys} ms ahead (limit ${this.maxSkewMs} ms)`);
    }
    const wall = Math.max(this.wall, other.wallMs, phys);
    let counter;
    if (wall === this.wall && wall === other.wallMs) counter = Math.max(this.counter, other.counter) + 1;
    else if (wall === this.wall) counter = this.counter + 1;
    else if (wall === other.wallMs) counter = other.counter + 1;
    else counter = 0;
    return this.advance(wall, counter);
  }
}
