// The device key: non-extractable where WebCrypto does Ed25519, kept in IndexedDB as the CryptoKey
// itself, and signing exactly as a raw seed would; the strict base64url the REST calls decode with.
import assert from "node:assert/strict";
import { test } from "node:test";
import { IDBFactory } from "fake-indexeddb";
import { IndexedDBStore, authProof, fromBase64Url, newDeviceKey, openRecord, signRecord, toBase64Url, verifyEnvelope } from "../src/index.js";
import { ed25519Sign } from "../src/crypto.js";

const subtle = globalThis.crypto.subtle;

test("a new device key is a non-extractable CryptoKey whose signatures verify under its public key", async () => {
  const { privateKey, publicKey } = await newDeviceKey();
  assert.ok(privateKey instanceof CryptoKey, "Node 20 has Ed25519 in WebCrypto");
  assert.equal(privateKey.extractable, false);
  await assert.rejects(subtle.exportKey("pkcs8", privateKey));
  assert.equal(publicKey.length, 32);
  const message = new TextEncoder().encode("hello");
  const signature = await ed25519Sign(message, privateKey);
  const key = await subtle.importKey("raw", /** @type {BufferSource} */ (publicKey), { name: "Ed25519" }, false, ["verify"]);
  assert.ok(await subtle.verify({ name: "Ed25519" }, key, /** @type {BufferSource} */ (signature), message));
});

test("where a raw seed is wanted (or WebCrypto has no Ed25519) the key is a seed, and both sign alike", async () => {
  const { privateKey, publicKey } = await newDeviceKey({ extractable: true });
  assert.ok(privateKey instanceof Uint8Array && privateKey.length === 32);
  // the same key imported into WebCrypto signs the same bytes (Ed25519 is deterministic)
  const pkcs8 = new Uint8Array([0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20, ...privateKey]);
  const web = await subtle.importKey("pkcs8", pkcs8, { name: "Ed25519" }, false, ["sign"]);
  const message = new TextEncoder().encode("same bytes");
  assert.deepEqual(await ed25519Sign(message, web), await ed25519Sign(message, privateKey));
  assert.equal(toBase64Url(publicKey).length, 43);
});

test("IndexedDB keeps the CryptoKey itself: after reopening it still signs records and proofs", async () => {
  const indexedDB = new IDBFactory();
  const { privateKey, publicKey } = await newDeviceKey();
  const store = await IndexedDBStore.open("device", { indexedDB });
  await store.batch([{ table: "profile", key: "device", value: { seed: privateKey, publicKey } }]);
  await store.close();
  const again = await IndexedDBStore.open("device", { indexedDB });
  const kept = await again.get("profile", "device");
  await again.close();
  assert.ok(kept.seed instanceof CryptoKey && kept.seed.extractable === false);
  const raw = await signRecord("shop:s1", "p", "shop", { name: "x" }, { signer: "c".repeat(32), seed: kept.seed }, 1);
  await verifyEnvelope(openRecord(raw, { canonical: false }), "shop:s1", "p", kept.publicKey); // throws if not
  const token = ["e30", toBase64Url(new TextEncoder().encode(JSON.stringify({ aud: "relay", jti: "j", cnf: {} }))), "sig"].join(".");
  const proof = await authProof(token, kept.seed, 1_800_000_000);
  assert.equal(proof?.proof.length, 64);
});

test("base64url is decoded strictly, as crdt_core.b64 does", () => {
  for (const [text, hex] of [["", ""], ["AQ", "01"], ["AQ==", "01"], ["-_8", "fbff"], ["AQID", "010203"]]) {
    assert.equal(Buffer.from(fromBase64Url(text)).toString("hex"), hex, text);
  }
  for (const bad of ["a+b", "ab/c", "a b", "ab\n", "A", "AQ=A", "=AQ", "AQ%3D", "AQ.", "ÀQ"]) {
    assert.throws(() => fromBase64Url(bad), SyntaxError, JSON.stringify(bad));
  }
});
