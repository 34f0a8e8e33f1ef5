// The two kinds of failure crdt_core distinguishes below validation, plus validation's own.

/** A value that is not what the schema or wire format says (crdt_core.errors.SchemaError). */
export class SchemaError extends Error {
  name = "SchemaError";
}

/** A signature that does not verify, or a key nobody trusts (crdt_core.errors.SignatureError). */
export class SignatureError extends Error {
  name = "SignatureError";
}

/** An update refused by the writer rules; `code` is one of validation's reason codes. */
export class ValidationError extends Error {
  name = "ValidationError";
  /** @param {string} code @param {string} detail */
  constructor(code, detail) {
    super(`${code}: ${detail}`);
    this.code = code;
    this.detail = detail;
  }
}
