// What a Yjs v1 update would do, read with Yjs's own decoder (Y.decodeUpdateV2 with the V1 decoder
// class) and struct classes: which top-level map, key and value each struct inserts, and everything
// else (overwrites, sequences, nested types, gaps, a delete set), which the writer rules refuse.
// The same description crdt_core/yupdate.py produces, so validation can mirror crdt_core's rules.

import * as decoding from "lib0/decoding";
import * as Y from "yjs";
import { EngineError } from "./engine-error.js";

/** crdt_core refuses any varuint of 2**53 or more (lib0 reads past it, losing precision). */
const MAX_SAFE = 2 ** 53;
const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }); // keep U+FEFF, as Python

/** @typedef {{client: number, clock: number, root: string, key: string, value: unknown}} MapInsert */
/** @typedef {{client: number, clock: number, length: number, why: string}} OtherStruct */
/**
 * @typedef {object} DecodedUpdate
 * @property {MapInsert[]} inserts
 * @property {OtherStruct[]} others
 * @property {Array<[number, number, number]>} deletes (client, clock, length) of the delete set
 * @property {Map<number, [number, number]>} ranges per client, the [start, end) its structs cover
 */

/** The decoder the last decodeUpdateV2 call made, so we can see whether it read every byte. */
/** @type {any} */
let lastDecoder = null;
class TrackedDecoderV1 extends Y.UpdateDecoderV1 {
  /** @param {any} decoder */
  constructor(decoder) {
    super(decoder);
    lastDecoder = this;
  }

  /**
   * Root names, map keys and text, read as crdt_core reads them: a declared length no larger than
   * the bytes left, and strict UTF-8 (lib0 would put U+FFFD where crdt_core refuses the update).
   */
  readString() {
    const rest = /** @type {decoding.Decoder} */ (/** @type {any} */ (this).restDecoder);
    const length = decoding.readVarUint(rest);
    if (length > rest.arr.length - rest.pos) throw new EngineError(`declared length ${length} exceeds the bytes left`);
    try {
      return strictUtf8.decode(decoding.readUint8Array(rest, length));
    } catch {
      throw new EngineError("string is not UTF-8");
    }
  }
}

/** @param {...(number | undefined)} numbers */
function checkSafe(...numbers) {
  for (const n of numbers) if (n !== undefined && !(n < MAX_SAFE)) throw new EngineError("varuint above 2**53");
}

/**
 * Why an item is not a plain insert of one value, from its content alone (null: it is one value).
 * @param {any} content
 * @returns {{value: unknown, why: string | null}}
 */
function describeContent(content) {
  if (content instanceof Y.ContentAny) {
    const n = content.arr.length;
    return n === 1 ? { value: content.arr[0], why: null } : { value: null, why: `${n} values in one item` };
  }
  if (content instanceof Y.ContentBinary) return { value: content.content, why: null };
  if (content instanceof Y.ContentDeleted) return { value: null, why: "deleted content" };
  if (content instanceof Y.ContentJSON) return { value: null, why: "json content" };
  if (content instanceof Y.ContentString) return { value: null, why: "text content" };
  if (content instanceof Y.ContentEmbed) return { value: null, why: "embed content" };
  if (content instanceof Y.ContentFormat) return { value: null, why: "format content" };
  if (content instanceof Y.ContentType) return { value: null, why: "nested shared type" };
  if (content instanceof Y.ContentDoc) return { value: null, why: "subdocument" };
  return { value: null, why: "unsupported" };
}

/**
 * Describe a Yjs v1 update without applying it.
 * @param {Uint8Array} update
 * @returns {DecodedUpdate}
 * @throws {EngineError} not a well-formed Yjs v1 update (trailing bytes included)
 */
export function decodeUpdate(update) {
  /** @type {{structs: any[], ds: any}} */
  let decoded;
  try {
    decoded = Y.decodeUpdateV2(update, /** @type {any} */ (TrackedDecoderV1));
  } catch (err) {
    throw new EngineError(`not a Yjs v1 update: ${/** @type {Error} */ (err).message}`);
  }
  const rest = lastDecoder.restDecoder;
  if (rest.pos !== rest.arr.length) throw new EngineError(`${rest.arr.length - rest.pos} trailing bytes after the update`);
  /** @type {DecodedUpdate} */
  const out = { inserts: [], others: [], deletes: [], ranges: new Map() };
  for (const struct of decoded.structs) {
    const { client, clock } = struct.id;
    const length = struct.length;
    checkSafe(client, clock, length);
    for (const id of [struct.origin, struct.rightOrigin, struct.parent]) {
      if (id && typeof id === "object") checkSafe(id.client, id.clock);
    }
    if (!(length >= 1)) throw new EngineError("struct of length 0");
    if (struct instanceof Y.GC) out.others.push({ client, clock, length, why: "garbage-collected range" });
    else if (struct instanceof Y.Skip) out.others.push({ client, clock, length, why: "gap (skip)" });
    else {
      let { value, why } = describeContent(struct.content);
      const placed = struct.origin !== null || struct.rightOrigin !== null;
      if (why === null) {
        if (placed) why = "item placed relative to another (overwrites or sequences)";
        else if (typeof struct.parent !== "string") why = "item inside a nested type";
        else if (struct.parentSub === null) why = "item in a top-level sequence, not a map";
      }
      if (why === null) out.inserts.push({ client, clock, root: struct.parent, key: struct.parentSub, value });
      else out.others.push({ client, clock, length, why });
    }
    const seen = out.ranges.get(client);
    out.ranges.set(client, seen ? [Math.min(seen[0], clock), Math.max(seen[1], clock + length)] : [clock, clock + length]);
  }
  for (const [client, items] of decoded.ds.clients) {
    for (const item of items) {
      checkSafe(client, item.clock, item.len);
      out.deletes.push([client, item.clock, item.len]);
    }
  }
  return out;
}

/**
 * `{client -> next clock}` of a document.
 * @param {Y.Doc} doc
 * @returns {Map<number, number>}
 */
export function stateClocks(doc) {
  return Y.decodeStateVector(Y.encodeStateVector(doc));
}
