// Runs a corpus in the conformance layout (conformance/README.md) against the SDK, one node:test
// case per corpus case. Shared by the repository corpus (conformance.test.js) and the crdt_core
// cross-check (crosscheck.test.js), which writes the same layout.

import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import * as Y from "yjs";
import {
  CertificateCache,
  CodecError,
  PROTOCOL_VERSION,
  compareTimestamps,
  decodeMessage,
  Float64,
  ValidationError,
  clientIdFor,
  computeVerdict,
  currentTemplates,
  diffVerdicts,
  fromHex,
  openRecord,
  parseRecord,
  perCustomerLimits,
  readBookings,
  SCHEMA_VERSION,
  shopStaff,
  schemaVersionOf,
  slotTemplates,
  slotCapacities,
  toHex,
  validateUpdate,
  Timestamp,
} from "../src/index.js";

/** @param {string} dir @param {string} name @returns {any} */
function load(dir, name) {
  return JSON.parse(readFileSync(join(dir, name), "utf8"));
}

/** @param {Record<string, string>} keys */
function trustOf(keys) {
  return new CertificateCache(Object.fromEntries(Object.entries(keys).map(([kid, hex]) => [kid, fromHex(hex)])));
}

/** @param {any} arrival */
function policyOf(arrival) {
  if (!arrival) return null;
  const rights = arrival.current_rights;
  return {
    nowMs: arrival.now_ms,
    isRevoked: arrival.revoked ? (/** @type {any} */ cert) => arrival.revoked.includes(cert.certId) : undefined,
    currentRights: rights
      ? (/** @type {string} */ user) => {
          const view = rights[user];
          return view ? { userId: user, admin: view.admin, ownerOf: new Set(view.owner_of), staffOf: new Set(view.staff_of) } : null;
        }
      : undefined,
  };
}

/** @param {Uint8Array[]} updates */
function docOf(updates) {
  const doc = new Y.Doc();
  for (const u of updates) Y.applyUpdate(doc, u);
  return doc;
}

/**
 * Validate and compare with `expect` ({valid:false, reason} or {valid:true, records}).
 * @param {string} docId @param {Y.Doc} doc @param {Uint8Array} update @param {any} trust @param {any} arrival @param {any} expect
 * @param {Set<string> | null} [staff] the shop's staff list (a case's `shop`)
 */
async function expectOutcome(docId, doc, update, trust, arrival, expect, staff = null) {
  try {
    const result = await validateUpdate(docId, doc, update, trust, policyOf(arrival), staff);
    const got = result.records.map((r) => [r.root, r.key]).sort((a, b) => (a[0] + "\0" + a[1] < b[0] + "\0" + b[1] ? -1 : 1));
    assert.deepEqual({ valid: true, records: got }, { valid: true, records: expect.records }, "crdt_core accepts differently");
    return result;
  } catch (err) {
    if (!(err instanceof ValidationError)) throw err;
    assert.deepEqual({ valid: false, reason: err.code }, { valid: expect.valid, reason: expect.reason }, err.message);
    return null;
  }
}

/**
 * Register every case of the corpus in `dir` as node tests.
 * @param {string} dir
 * @param {string} label
 */
export function runCorpus(dir, label) {
  const manifest = load(dir, "manifest.json");
  const keys = load(dir, "keys.json");
  const devices = new Map(keys.devices.map((/** @type {any} */ d) => [d.cert_id, d]));

  test(`${label}: keys and client ids`, async () => {
    assert.equal(manifest.corpus_format, 1);
    for (const { signer, generation, client_id } of keys.client_ids) assert.equal(await clientIdFor(signer, generation), client_id, signer);
    const trust = trustOf(keys.trusted_relay_keys);
    for (const d of keys.devices) {
      const cert = await trust.verify(fromHex(d.certificate)).catch(() => null);
      if (cert) assert.equal(cert.certId, d.cert_id);
    }
  });

  if (existsSync(join(dir, "hlc.json"))) {
    test(`${label}: hlc`, () => {
      const h = load(dir, "hlc.json");
      for (const text of h.valid) assert.equal(Timestamp.parse(text).encode(), text);
      for (const text of h.invalid) assert.throws(() => Timestamp.parse(text), JSON.stringify(text));
      for (const { lower, higher } of h.ordered_pairs) {
        assert.ok(Buffer.compare(Buffer.from(lower), Buffer.from(higher)) < 0, `${lower} < ${higher}`);
        assert.ok(compareTimestamps(Timestamp.parse(lower), Timestamp.parse(higher)) < 0, `${lower} < ${higher}`);
      }
    });
  }

  for (const c of load(dir, "records.json").cases) {
    test(`${label}: records/${c.name}`, async () => {
      const trust = trustOf(keys.trusted_relay_keys);
      // the document: its certificates and context, written under any client (not validated)
      const base = new Y.Doc();
      base.transact(() => {
        for (const id of c.certificates) base.getMap("certs").set(id, fromHex(/** @type {any} */ (devices.get(id)).certificate));
        for (const e of c.context) base.getMap(e.root).set(e.key, fromHex(e.value));
      });
      const state = Y.encodeStateAsUpdate(base);
      // the record arrives in an update written under its signer's generation-0 client id
      const value = fromHex(c.value);
      let signer = c.key;
      if (c.root !== "certs") {
        try {
          signer = openRecord(value).signer;
        } catch {
          signer = c.key; // refused before the client id matters
        }
      }
      const writer = docOf([state]);
      writer.clientID = await clientIdFor(signer, 0);
      const before = Y.encodeStateVector(writer);
      writer.getMap(c.root).set(c.key, value);
      const update = Y.encodeStateAsUpdate(writer, before);
      // the shop's staff list, when the case gives the bookings document's shop document
      let staff = null;
      if (c.shop) {
        const shop = new Y.Doc();
        shop.transact(() => {
          for (const e of c.shop) shop.getMap(e.root).set(e.key, fromHex(e.value));
        });
        staff = shopStaff(shop, "shop:s1");
      }
      const result = await expectOutcome(c.doc, docOf([state]), update, trust, c.arrival, c.expect, staff);
      if (result && c.expect.parsed?.certificate) {
        const cert = /** @type {any} */ (result.records.find((r) => r.root === "certs" && r.key === c.key)).record;
        assert.equal(cert.certId, c.expect.parsed.certificate.cert_id);
        if (c.expect.parsed.certificate.user !== undefined) assert.equal(cert.userId, c.expect.parsed.certificate.user);
      }
      if (result && c.expect.parsed && c.root !== "certs") {
        const env = openRecord(value);
        assert.equal(env.kind, c.expect.parsed.kind);
        assert.equal(env.signer, c.expect.parsed.signer);
        assert.equal(env.schemaVersion, c.expect.parsed.schema_version);
        if (c.expect.parsed.format !== undefined) assert.equal(c.expect.parsed.format, 2);
        if (c.expect.parsed.fields_hex) assert.equal(toHex(env.fieldsRaw), c.expect.parsed.fields_hex);
        if (c.expect.parsed.fields) assert.deepEqual(asJson(env.fields), c.expect.parsed.fields);
      }
    });
  }

  for (const c of load(dir, "updates.json").cases) {
    test(`${label}: updates/${c.name}`, async () => {
      const doc = docOf(c.state.map(fromHex));
      const before = Y.encodeStateAsUpdate(doc);
      await expectOutcome(c.doc, doc, fromHex(c.update), trustOf(keys.trusted_relay_keys), c.arrival, c.expect);
      assert.deepEqual(Y.encodeStateAsUpdate(doc), before, "validation changed the document");
    });
  }

  if (existsSync(join(dir, "messages.json")) && (manifest.protocol_version ?? PROTOCOL_VERSION) !== PROTOCOL_VERSION) {
    test(`${label}: messages`, { skip: `corpus speaks protocol ${manifest.protocol_version}, this SDK ${PROTOCOL_VERSION}` }, () => {});
  } else if (existsSync(join(dir, "messages.json"))) {
    for (const c of load(dir, "messages.json").cases) {
      test(`${label}: messages/${c.name}`, () => {
        const options = c.max_size ? { maxSize: c.max_size } : {};
        if (!c.expect.valid) {
          assert.throws(() => decodeMessage(fromHex(c.hex), options), CodecError);
          return;
        }
        const message = decodeMessage(fromHex(c.hex), options);
        assert.deepEqual(
          { t: message.t, direction: message.direction, fields: asJson(message.fields, true) },
          { t: c.expect.t, direction: c.expect.direction, fields: c.expect.fields },
        );
      });
    }
  }

  for (const c of load(dir, "verdicts.json").cases) {
    test(`${label}: verdicts/${c.name}`, () => {
      const verdict = verdictOf(c.day, c);
      checkVerdict(verdict, c.expect);
    });
  }

  if (existsSync(join(dir, "documents.json"))) {
    for (const c of load(dir, "documents.json").cases) {
      test(`${label}: documents/${c.name}`, () => {
        const shop = docOf(c.shop_state.map(fromHex));
        const day = docOf(c.day_state.map(fromHex));
        const capacities = slotCapacities(slotTemplates(shop, c.shop_doc), c.day);
        assert.deepEqual(Object.fromEntries(capacities), c.expect.capacities);
        assert.equal(schemaVersionOf(day, c.day_doc), c.expect.schema_version);
        checkVerdict(computeVerdict(readBookings(day, c.day_doc), capacities, perCustomerLimits(slotTemplates(shop, c.shop_doc))), c.expect);
      });
    }
  }

  if (existsSync(join(dir, "histories.json"))) {
    for (const c of load(dir, "histories.json").cases) {
      test(`${label}: histories/${c.name}`, () => {
        /** @type {any} */
        let previous = null;
        for (const step of c.steps) {
          const verdict = verdictOf(c.day, step);
          checkVerdict(verdict, step.expect);
          const changes = diffVerdicts(previous, verdict).map((ch) => ({ reservation_id: ch.reservationId, customer: ch.customer, before: ch.before, after: ch.after, kind: ch.kind }));
          assert.deepEqual(changes, step.expect.changes);
          previous = verdict;
        }
      });
    }
  }
}

/**
 * A decoded value as the corpus writes it in JSON: floats and ints as numbers, bytes as hex.
 * @param {unknown} value @returns {unknown}
 */
function asJson(value, binAsObject = false) {
  if (value instanceof Float64) return value.value;
  if (value instanceof Uint8Array) return binAsObject ? { bin: toHex(value) } : toHex(value);
  if (typeof value === "bigint") return Number(value); // as JSON.parse reads the corpus's big ints
  if (Array.isArray(value)) return value.map((v) => asJson(v, binAsObject));
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, asJson(v, binAsObject)]));
  }
  return value;
}

/** @param {string} day @param {any} c a case or step with slots, reservations, events, stamps */
function verdictOf(day, c) {
  /** @param {string} kind @param {string} root @param {string} key @param {any} fields */
  // the corpus says these records are valid (some from a newer schema, e.g. new event types), so
  // they are typed as a newer version would write them: unknown values are kept, and inert
  const typed = (kind, root, key, fields) => parseRecord(kind === "slot" ? "shop" : "bookings", root, key, kind, fields, SCHEMA_VERSION + 1);
  const templates = currentTemplates(
    new Map(c.slots.map((/** @type {any} */ s) => {
      const { key, ...fields } = s;
      return [key, typed("slot", "slots", key, { service: "x", start: "10:00", duration: 30, ...fields })];
    })),
  );
  const state = {
    reservations: new Map(c.reservations.map((/** @type {any} */ r) => [r.id, typed("reservation", "reservations", r.id, r)])),
    events: new Map(c.events.map((/** @type {any} */ e) => [e.id, typed("event", "events", e.id, e)])),
    stamps: new Map(c.stamps.map((/** @type {any} */ s) => [s.no, { kind: "stamp", extra: {}, schemaVersion: 1, no: s.no, reservation: s.reservation, at: 0 }])),
  };
  return computeVerdict(state, slotCapacities(templates, day), perCustomerLimits(templates));
}

/** @param {any} verdict @param {any} expect */
function checkVerdict(verdict, expect) {
  assert.equal(verdict.stampPrefix, expect.stamp_prefix);
  /** @type {Record<string, any>} */
  const got = {};
  for (const [rid, cv] of verdict.claims) {
    const want = expect.claims[rid] ?? {};
    const row = { state: cv.state, position: cv.position, stamp: cv.stamp, final: cv.final, rank: cv.rank, holds_seats: cv.holdsSeats, staff_confirmed: cv.staffConfirmed };
    // compare only what the corpus states (the repository corpus lists five fields)
    got[rid] = Object.fromEntries(Object.keys(want).map((k) => [k, /** @type {any} */ (row)[k]]));
  }
  assert.deepEqual(got, expect.claims);
}
