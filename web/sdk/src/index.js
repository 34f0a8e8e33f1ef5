// QuickSlot Sync client SDK: the same records, validation and verdicts as crdt_core, in JavaScript.
export { Float64, canonicalPack, checkCanonical, decodeExact } from "./canonical.js";
export { fromHex, toHex } from "./bytes.js";
export { CertificateCache, certIdOf, issueCertificate, parseCertificate, validAt } from "./certs.js";
export { GENERATIONS, clientIdFor, clientIdsOf, generationOf, ownsClient } from "./clientids.js";
export { ed25519PublicKey, newDeviceKey } from "./crypto.js";
export { SchemaError, SignatureError, ValidationError } from "./errors.js";
export { EngineError } from "./engine-error.js";
export { ClockSkewError, HybridClock, Timestamp, compareTimestamps } from "./hlc.js";
export {
  CloseCode,
  CodecError,
  DEFAULT_MAX_DOWNLOAD,
  DEFAULT_MAX_MESSAGE,
  ErrorCode,
  Limit,
  PROTOCOL_VERSION,
  closeAction,
  decodeMessage,
  encodeMessage,
  isRetryableClose,
  isRetryableError,
  isValidDocId,
} from "./messages.js";
export { RECORD_FORMAT, openRecord, signRecord, signerRef, verifyEnvelope } from "./records.js";
export { CERTS_ROOT, MAPS, RECORD_KINDS, SCHEMA_VERSION, capacityOn, docIdString, hasControlCharacters, neededVersion, parseDocId, parseRecord, rootsOf, stampKey } from "./schema.js";
export { bookedDays, categoryIds, readBookings, readMap, schemaVersionOf, shopStaff, slotTemplates } from "./reader.js";
export { DAYS_AFTER_HLC, DAYS_BEFORE_HLC, MAX_BACKDATE_MS, Reason, dayInRange, rightsOf, validateUpdate, withShopStaff } from "./validation.js";
export {
  ClaimState,
  claimOrder,
  computeVerdict,
  currentTemplates,
  diffVerdicts,
  exceedsCapacity,
  newestPer,
  perCustomerLimits,
  repeatBooking,
  slotCapacities,
  stampOrder,
  stampPrefix,
  tentativeKey,
} from "./verdict.js";
export { decodeUpdate, stateClocks } from "./yupdate.js";
export { book, newId, writeRecords } from "./booking.js";
export { SyncConnection, SyncError } from "./connection.js";
export { authProof, fromBase64Url, popStatement, restProofHeaders, toBase64Url, tokenClaims } from "./pop.js";
export { REFRESH_COOKIE_HEADER, RelayError, fetchRelayKeys, login, register } from "./relay-api.js";
export { IndexedDBStore, MemoryStore, TABLES } from "./store.js";
export { QuickSlotClient, backoffDelay, bookingsDoc, followedFrom } from "./client.js";
