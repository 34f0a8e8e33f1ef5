/** Bytes that are not a well-formed Yjs update (crdt_core.errors.EngineError). */
export class EngineError extends Error {
  name = "EngineError";
}
