// Unit tests of the SDK's own API: what the cross-check cannot see (signing, clocks, encoding edges).
import assert from "node:assert/strict";
import { test } from "node:test";
import * as Y from "yjs";
import {
  CertificateCache,
  ClockSkewError,
  Float64,
  HybridClock,
  SchemaError,
  Timestamp,
  ValidationError,
  canonicalPack,
  capacityOn,
  checkCanonical,
  clientIdFor,
  decodeExact,
  ed25519PublicKey,
  generationOf,
  issueCertificate,
  openRecord,
  parseDocId,
  parseRecord,
  signRecord,
  validateUpdate,
  verifyEnvelope,
} from "../src/index.js";

const NOW = 1_800_000_000_000;
const relaySeed = new Uint8Array(32).fill(7);
const deviceSeed = new Uint8Array(32).fill(9);

async function world() {
  const relayPub = await ed25519PublicKey(relaySeed);
  const cert = await issueCertificate({ kid: "k1", seed: relaySeed }, {
    userId: "alice",
    devicePublicKey: await ed25519PublicKey(deviceSeed),
    issuedAtMs: NOW - 3_600_000,
    expiresAtMs: NOW + 3_600_000,
  });
  const trust = new CertificateCache({ k1: relayPub });
  const parsed = await trust.verify(cert);
  return { cert, trust, certId: parsed.certId };
}

test("canonical msgpack: sorted keys by UTF-8 bytes, smallest ints, floats stay float64", () => {
  const raw = canonicalPack({ b: 1, a: 300, "10": true, "9": null, f: new Float64(45), x: 1.5 });
  const back = decodeExact(raw, "t");
  assert.deepEqual(Object.keys(/** @type {object} */ (back)).sort(), ["10", "9", "a", "b", "f", "x"]);
  assert.ok(/** @type {any} */ (back).f instanceof Float64);
  checkCanonical(raw, back, "t");
  const unsorted = Uint8Array.from([0x82, 0xa1, 0x62, 0x01, 0xa1, 0x61, 0x02]); // {"b":1,"a":2}
  assert.throws(() => checkCanonical(unsorted, decodeExact(unsorted, "t"), "t"), SchemaError);
  const wideInt = Uint8Array.from([0xcd, 0x00, 0x05]); // 5 as uint16
  assert.throws(() => checkCanonical(wideInt, decodeExact(wideInt, "t"), "t"), SchemaError);
});

test("a record signed here opens, verifies, and is bound to its document and key", async () => {
  const { certId } = await world();
  const doc = "bookings:s1:2027-01-15";
  const fields = { id: "r1", slot: "s-9", party: 2, customer: "alice", hlc: "1800000000000-000000-alice" };
  const raw = await signRecord(doc, "r1", "reservation", fields, { signer: certId, seed: deviceSeed }, 1);
  const env = openRecord(raw);
  assert.equal(env.signer, certId);
  const pub = await ed25519PublicKey(deviceSeed);
  await verifyEnvelope(env, doc, "r1", pub);
  await assert.rejects(verifyEnvelope(env, doc, "r2", pub));
  await assert.rejects(verifyEnvelope(env, "bookings:s1:2027-01-16", "r1", pub));
  const rec = parseRecord("bookings", "reservations", "r1", env.kind, env.fields, env.schemaVersion);
  assert.equal(rec.party, 2);
});

test("a device's write under its own client id validates; under another id it is foreign_client", async () => {
  const { cert, trust, certId } = await world();
  const docId = "bookings:s1:2027-01-15";
  const fields = { id: "r1", slot: "s-9", party: 2, customer: "alice", hlc: "1800000000000-000000-alice" };
  const raw = await signRecord(docId, "r1", "reservation", fields, { signer: certId, seed: deviceSeed }, 1);
  /** @param {number} clientId */
  const writeAs = (clientId) => {
    const doc = new Y.Doc();
    doc.clientID = clientId;
    doc.transact(() => {
      doc.getMap("certs").set(certId, cert);
      doc.getMap("reservations").set("r1", raw);
    });
    return Y.encodeStateAsUpdate(doc);
  };
  const mine = await clientIdFor(certId, 0);
  assert.equal(await generationOf(certId, mine), 0);
  const ok = await validateUpdate(docId, new Y.Doc(), writeAs(mine), trust);
  assert.deepEqual(ok.records.map((r) => r.key).sort(), [certId, "r1"].sort());
  await assert.rejects(validateUpdate(docId, new Y.Doc(), writeAs(12345), trust), (err) => err instanceof ValidationError && err.code === "foreign_client");
});

test("HLC: now() is monotonic, observe() moves past a remote stamp, refuses one too far ahead", () => {
  let phys = NOW;
  const clock = new HybridClock("dev1", { physicalMs: () => phys });
  const a = clock.now();
  const b = clock.now();
  assert.ok(b.encode() > a.encode());
  const seen = clock.observe(`${NOW + 5000}-000003-peer`);
  assert.equal(seen.encode(), `${NOW + 5000}-000004-dev1`);
  assert.throws(() => clock.observe(new Timestamp(NOW + 120_000, 0, "x")), ClockSkewError);
  phys = NOW + 10_000;
  assert.equal(clock.now().encode(), `${NOW + 10_000}-000000-dev1`);
});

test("document ids and slot capacity on a weekday", () => {
  assert.deepEqual(parseDocId("bookings:s1:2027-01-15"), { kind: "bookings", shopId: "s1", day: "2027-01-15" });
  assert.throws(() => parseDocId("bookings:s1:2027-02-29"), SchemaError);
  assert.throws(() => parseDocId("shop:a:b"), SchemaError);
  const slot = { active: true, capacity: 4, weekdays: [4] }; // Fridays only
  assert.equal(capacityOn(/** @type {any} */ (slot), "2027-01-15"), 4); // a Friday
  assert.equal(capacityOn(/** @type {any} */ (slot), "2027-01-16"), 0);
  assert.equal(capacityOn(/** @type {any} */ ({ ...slot, active: false }), "2027-01-15"), 0);
});

test("src/ runs in browsers: no Node built-ins, no Buffer or process", async () => {
  const { readdirSync, readFileSync } = await import("node:fs");
  const dir = new URL("../src/", import.meta.url);
  for (const name of readdirSync(dir)) {
    const text = readFileSync(new URL(name, dir), "utf8");
    assert.doesNotMatch(text, /from "node:|require\(|\bBuffer\b|\bprocess\./, name);
  }
});
