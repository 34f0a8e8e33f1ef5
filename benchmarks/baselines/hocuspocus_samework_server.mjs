// The same-work Hocuspocus baseline for the relay suite: @hocuspocus/server with the work the
// QuickSlot relay does on every booking, done the way a Hocuspocus deployment would do it:
//
// * persistence: @hocuspocus/extension-sqlite, a SQLite file (Hocuspocus stores a document's whole
//   state after a debounce, 2 s by default, 10 s at most; it answers and broadcasts an update
//   before it is stored, where QuickSlot acknowledges only what SQLite has committed);
// * authentication: `onAuthenticate` checks the relay's own access token (a JWT signed with
//   EdDSA) against the relay's published keys (its /.well-known/jwks.json), with node:crypto;
// * validation: `beforeHandleMessage` decodes every Yjs update a client sends (the SDK's
//   decodeUpdate) and, for each map value it inserts, opens the record (the SDK's openRecord:
//   format 2 and canonical msgpack) and verifies its Ed25519 signature with node:crypto.verify
//   over the bytes QuickSlot signs (docs/records.md): "quickslot-record-v2\0" + msgpack([doc_id,
//   key, 2, schema_version, kind, fields, signer]). The signer's public key comes from its
//   certificate (in the same update or already in the document), itself verified once against the
//   relay's keys. An update that fails closes the connection, as Hocuspocus does for a hook that
//   throws; nothing of it is applied or broadcast.
//
// What it does not do (QuickSlot does): the writer rules (client ids bound to signers, overwrites),
// the schema and booking rules, stamps, acknowledging only durable writes. So it is a lower bound
// on the cost of the same guarantees on Hocuspocus.
//
// The HTTP server and the command line are baseline_server.mjs's. Modules come from the suite's npm cache,
// installed with `npm ci` from benchmarks/baselines/hocuspocus/package-lock.json; the SDK's from
// web/sdk/node_modules.
//
//   node benchmarks/baselines/hocuspocus_samework_server.mjs --modules DIR/node_modules --port P \
//     --database FILE --jwks URL
import crypto from 'node:crypto'
import { createRequire } from 'node:module'

import { canonicalPack } from '../../web/sdk/src/canonical.js'
import { CertificateCache, certIdOf } from '../../web/sdk/src/certs.js'
import { openRecord, RECORD_DOMAIN, RECORD_FORMAT } from '../../web/sdk/src/records.js'
import { CERTS_ROOT } from '../../web/sdk/src/schema.js'
import { decodeUpdate } from '../../web/sdk/src/yupdate.js'
import { opt, requireModule, serveHocuspocus } from './baseline_server.mjs'

const database = opt('--database', ':memory:')
const jwksUrl = opt('--jwks', null)

const { Hocuspocus } = requireModule('@hocuspocus/server')
const { SQLite } = requireModule('@hocuspocus/extension-sqlite')
const decoding = createRequire(requireModule.resolve('@hocuspocus/server'))('lib0/decoding')

// --- the relay's keys: JWT verification and certificate issuer -------------------------------------

const jwks = jwksUrl ? await (await fetch(jwksUrl)).json() : { keys: [] }
const jwtKeys = new Map()
const trustedKeys = {}
for (const k of jwks.keys) {
  jwtKeys.set(k.kid, crypto.createPublicKey({ key: k, format: 'jwk' }))
  trustedKeys[k.kid] = new Uint8Array(Buffer.from(k.x, 'base64url'))
}
const certs = new CertificateCache(trustedKeys)

const denied = reason => Object.assign(new Error(reason), { reason })

function checkJwt (token) {
  const parts = String(token).split('.')
  if (parts.length !== 3) throw denied('token malformed')
  const header = JSON.parse(Buffer.from(parts[0], 'base64url').toString())
  const key = jwtKeys.get(header.kid)
  if (header.alg !== 'EdDSA' || header.typ !== 'at+jwt' || key === undefined) throw denied('token not ours')
  const signed = Buffer.from(`${parts[0]}.${parts[1]}`)
  if (!crypto.verify(null, signed, key, Buffer.from(parts[2], 'base64url'))) throw denied('bad token signature')
  const claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString())
  if (!(typeof claims.exp === 'number' && claims.exp > Date.now() / 1000)) throw denied('token expired')
  return claims
}

// --- records ------------------------------------------------------------------------------------

const SPKI_ED25519 = Buffer.from('302a300506032b6570032100', 'hex')
const deviceKeys = new Map() // certificate id -> KeyObject of its device key

async function learnCertificate (raw, key) {
  const cert = await certs.verify(raw)
  if (cert.certId !== key) throw denied('certificate stored under another id')
  if (!deviceKeys.has(cert.certId)) {
    deviceKeys.set(cert.certId, crypto.createPublicKey({
      key: Buffer.concat([SPKI_ED25519, Buffer.from(cert.deviceKey)]), format: 'der', type: 'spki'
    }))
  }
}

async function checkUpdate (documentName, document, update) {
  const { inserts, others } = decodeUpdate(update)
  if (others.length) throw denied(`not a record insert: ${others[0].why}`)
  for (const ins of inserts) { // certificates first: a device's first update carries its own
    if (ins.root === CERTS_ROOT) await learnCertificate(ins.value, ins.key)
  }
  for (const ins of inserts) {
    if (ins.root === CERTS_ROOT) continue
    if (!(ins.value instanceof Uint8Array)) throw denied('a record is a byte string')
    const env = openRecord(ins.value)
    if (!deviceKeys.has(env.signer)) {
      const raw = document.getMap(CERTS_ROOT).get(env.signer)
      if (!(raw instanceof Uint8Array)) throw denied(`unknown signer ${env.signer}`)
      await learnCertificate(raw, await certIdOf(raw))
    }
    const message = Buffer.concat([
      RECORD_DOMAIN,
      canonicalPack([documentName, ins.key, RECORD_FORMAT, env.schemaVersion, env.kind, env.fieldsRaw, env.signer])
    ])
    if (!crypto.verify(null, message, deviceKeys.get(env.signer), env.signature)) {
      throw denied(`record ${ins.key}: bad signature`)
    }
  }
}

/** The Yjs update inside a Hocuspocus sync message (step 2 or update), else null. */
function updateOf (data) {
  const d = decoding.createDecoder(data)
  decoding.readVarString(d) // document name
  if (decoding.readVarUint(d) !== 0) return null // not Sync
  const kind = decoding.readVarUint(d)
  return kind === 1 || kind === 2 ? decoding.readVarUint8Array(d) : null
}

// --- the server ---------------------------------------------------------------------------------

const checking = new WeakMap() // connection -> its last check

const hocuspocus = new Hocuspocus({
  quiet: true,
  extensions: [new SQLite({ database })],
  async onAuthenticate ({ token }) {
    return { user: checkJwt(token).sub }
  },
  beforeHandleMessage ({ connection, documentName, document, update }) {
    const inner = updateOf(update)
    if (inner === null || inner.length <= 2) return Promise.resolve()
    // One connection's checks run one after another: a certificate verification awaits, and the
    // next update (signed under that certificate) must not be judged before it is learnt.
    const previous = checking.get(connection) ?? Promise.resolve()
    const done = previous.then(() => checkUpdate(documentName, document, inner))
    checking.set(connection, done.catch(() => {}))
    return done
  }
})
// Let the SQLite extension store what its debounce still holds, then go.
serveHocuspocus(hocuspocus, `hocuspocus same-work server (${jwtKeys.size} relay key(s), SQLite ${database})`, () => {
  hocuspocus.closeConnections()
  setTimeout(() => process.exit(0), 500)
})
