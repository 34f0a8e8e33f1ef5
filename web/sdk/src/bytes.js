// Byte helpers shared by every module: hex (the corpus's and the docs' notation), UTF-8, comparison.

const textEncoder = new TextEncoder();

/** @param {string} text @returns {Uint8Array} */
export function utf8(text) {
  return textEncoder.encode(text);
}

/** @param {Uint8Array} bytes @returns {string} */
export function toHex(bytes) {
  let out = "";
  for (const b of bytes) out += b.toString(16).padStart(2, "0");
  return out;
}

/** @param {string} hex @returns {Uint8Array} */
export function fromHex(hex) {
  if (hex.length % 2 !== 0 || /[^0-9a-fA-F]/.test(hex)) throw new Error("not a hex string");
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** @param {Uint8Array[]} parts @returns {Uint8Array} */
export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** @param {Uint8Array} a @param {Uint8Array} b @returns {boolean} */
export function bytesEqual(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Compare two strings by their UTF-8 bytes, the order crdt_core sorts map keys and ids in
 * (JavaScript's `<` compares UTF-16 code units, which differs above U+FFFF).
 * @param {string} a @param {string} b @returns {number}
 */
export function compareUtf8(a, b) {
  const x = utf8(a);
  const y = utf8(b);
  const n = Math.min(x.length, y.length);
  for (let i = 0; i < n; i++) if (x[i] !== y[i]) return x[i] - y[i];
  return x.length - y.length;
}

/**
 * Python's `<` on str: by code point. For the ASCII ids, HLCs and names QuickSlot compares it is
 * the same as UTF-16 order; for anything else code points keep us equal to crdt_core.
 * @param {string} a @param {string} b @returns {number}
 */
export function compareCodePoints(a, b) {
  // UTF-16 units order like code points except where a surrogate (half of a code point above
  // U+FFFF) meets a unit at or above U+E000: decide that case alone, without building arrays
  // (the verdict sorts every claim by hlc, customer and id, so this runs for each comparison).
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x === y) continue;
    const xs = x >= 0xd800 && x <= 0xdfff;
    const ys = y >= 0xd800 && y <= 0xdfff;
    return xs === ys ? x - y : xs ? 1 : -1;
  }
  return a.length - b.length;
}
