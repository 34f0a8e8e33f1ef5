// The SDK's side of tests/web/test_sdk_differential.py: one long-lived process that judges many
// histories, so the differential test pays Node's start-up once, not once per history.
//
// Protocol, one JSON object per line each way:
//   in:  {"trust": {kid: hex}}                            -> {"ok": true}
//   in:  {"begin": true}, step, step, ..., {"end": true}  -> {"results": [result, ...]}
// Steps are judged as they arrive, so the SDK works while Python is still writing the history.
// A history starts with no documents. Steps, in order:
//   {"r": replica, "d": doc id, "u": base64 update, "p": policy | null}
//       validate `u` for that replica's copy of `d` (a fresh Y.Doc the first time) and apply it
//       only if it is accepted: {"ok": [[root, key], ...] sorted, "noop": bool} or {"no": reason}
//   {"day": replica, "shop": replica, "dd": day doc id, "sd": shop doc id, "date": "YYYY-MM-DD"}
//       the verdict of that replica's day under its shop's capacities that day:
//       {"caps": {slot: capacity | null}, "prefix": n, "claims": {id: [state, position, stamp,
//        final, rank, holdsSeats, staffConfirmed]}}
// A policy is {"now": ms, "revoked": [cert id], "rights": {user: [admin, ownerOf, staffOf]}}
// (the last two optional). Anything but a ValidationError is reported as {"crash": message}.

import { createInterface } from "node:readline";
// the SDK's own copy of Yjs (the file its `import "yjs"` resolves to), so there is one Yjs
import * as Y from "../../web/sdk/node_modules/yjs/dist/yjs.mjs";
import {
  CertificateCache,
  ValidationError,
  computeVerdict,
  fromHex,
  readBookings,
  slotCapacities,
  slotTemplates,
  validateUpdate,
} from "../../web/sdk/src/index.js";

/** @type {CertificateCache | null} */
let trust = null;

/** @param {any} p */
function policyOf(p) {
  if (!p) return undefined;
  /** @type {any} */
  const policy = { nowMs: p.now };
  if (p.revoked) {
    const revoked = new Set(p.revoked);
    policy.isRevoked = (/** @type {any} */ cert) => revoked.has(cert.certId);
  }
  if (p.rights) {
    policy.currentRights = (/** @type {string} */ user) => {
      const r = p.rights[user];
      return r ? { userId: user, admin: r[0], ownerOf: new Set(r[1]), staffOf: new Set(r[2]) } : null;
    };
  }
  return policy;
}

/** @param {string} a @param {string} b */
const byBytes = (a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b));

/** @type {Map<string, Y.Doc>} */
let docs = new Map();
/** @type {any[]} */
let results = [];

/** @param {string} replica @param {string} docId */
function docOf(replica, docId) {
  const name = `${replica}\n${docId}`;
  let doc = docs.get(name);
  if (doc === undefined) docs.set(name, (doc = new Y.Doc({ gc: true })));
  return doc;
}

/** @param {any} step */
async function judge(step) {
  if (step.u !== undefined) {
    const doc = docOf(step.r, step.d);
    const update = new Uint8Array(Buffer.from(step.u, "base64"));
    try {
      const got = await validateUpdate(step.d, doc, update, /** @type {CertificateCache} */ (trust), policyOf(step.p));
      Y.applyUpdate(doc, update);
      const records = got.records.map((r) => [r.root, r.key]).sort((x, y) => byBytes(x[0], y[0]) || byBytes(x[1], y[1]));
      return { ok: records, noop: got.noop };
    } catch (err) {
      if (!(err instanceof ValidationError)) throw err;
      return { no: err.code };
    }
  }
  const capacities = slotCapacities(slotTemplates(docOf(step.shop, step.sd), step.sd), step.date);
  const verdict = computeVerdict(readBookings(docOf(step.day, step.dd), step.dd), capacities);
  /** @type {Record<string, any[]>} */
  const claims = {};
  for (const [id, c] of verdict.claims) claims[id] = [c.state, c.position, c.stamp, c.final, c.rank, c.holdsSeats, c.staffConfirmed];
  return { caps: Object.fromEntries(capacities), prefix: verdict.stampPrefix, claims };
}

for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
  if (!line.trim()) continue;
  const message = JSON.parse(line);
  if (message.trust) {
    trust = new CertificateCache(Object.fromEntries(Object.entries(message.trust).map(([kid, hex]) => [kid, fromHex(/** @type {string} */ (hex))])));
    process.stdout.write('{"ok":true}\n');
  } else if (message.begin) {
    docs = new Map();
    results = [];
  } else if (message.end) {
    process.stdout.write(JSON.stringify({ results }) + "\n");
  } else {
    try {
      results.push(await judge(message));
    } catch (err) {
      results.push({ crash: String(/** @type {any} */ (err)?.stack ?? err) });
    }
  }
}
