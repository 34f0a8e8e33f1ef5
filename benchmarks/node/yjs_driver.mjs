// Drives Yjs for the engine benchmarks: a long-lived process that the Python adapter
// (benchmarks/adapters/yjs_adapter.py) talks to over stdin/stdout.
//
// Why a driver and not per-call scripts: Node's start-up and the JIT warm-up would swamp every
// measurement. Why timing here: an IPC round trip costs tens of microseconds, more than most of
// the operations measured, so every reply carries `ns`, the time measured in this process around
// the engine work only (process.hrtime.bigint); the adapter's clock advances by that, never by
// the wall time of the round trip. Loops (a transaction per edit of a trace, one update applied
// after another) run here, so they cost what they cost in JavaScript.
//
// Frames, both ways: u32 LE total length, u32 LE header length, a JSON header, then binary blobs
// back to back; `header.blobs` lists their lengths. Updates, state vectors and map values travel
// as blobs, never as base64.
//
// argv[2]: the node_modules directory holding yjs (the suite installs it in bench-results/.node).

import { createRequire } from 'node:module'
import path from 'node:path'

// stdout carries frames only: Yjs and lib0 log through console (e.g. "[yjs] Changed the client-id"
// when a document receives its own client id back), so every console method goes to stderr,
// before yjs is loaded.
for (const method of ['log', 'info', 'warn', 'debug', 'trace']) {
  console[method] = (...args) => process.stderr.write(args.map(String).join(' ') + '\n')
}

const require = createRequire(path.join(process.argv[2], 'noop.js'))
const Y = require('yjs')
const yjsVersion = require('yjs/package.json').version

const docs = new Map()
let nextId = 1

function newDoc (clientId) {
  const doc = new Y.Doc()
  doc.clientID = clientId
  const handle = { doc, last: null, listening: false }
  handle.onUpdate = (update) => { handle.last = update }
  const id = nextId++
  docs.set(id, handle)
  return id
}

function listen (handle, on) {
  if (on && !handle.listening) handle.doc.on('update', handle.onUpdate)
  if (!on && handle.listening) handle.doc.off('update', handle.onUpdate)
  handle.listening = on
  handle.last = null
}

const EMPTY = new Uint8Array([0, 0])

function editText (text, patches) {
  for (const [pos, del, ins] of patches) {
    if (del) text.delete(pos, del)
    if (ins) text.insert(pos, ins)
  }
}

function timed (fn) {
  const t0 = process.hrtime.bigint()
  const out = fn()
  return [out, Number(process.hrtime.bigint() - t0)]
}

const handlers = {
  hello () {
    return [{ yjs: yjsVersion, node: process.version }, []]
  },
  new (h) {
    const [id, ns] = timed(() => newDoc(h.client))
    return [{ doc: id, ns }, []]
  },
  write (h, blobs) {
    const handle = docs.get(h.doc)
    listen(handle, true)
    const doc = handle.doc
    const out = []
    const [, ns] = timed(() => {
      for (const tx of h.txs) {
        handle.last = null
        doc.transact(() => {
          for (const [root, key, blob] of tx) doc.getMap(root).set(key, blobs[blob])
        })
        out.push(handle.last || EMPTY)
      }
    })
    return [{ ns }, out]
  },
  edit (h) {
    const handle = docs.get(h.doc)
    listen(handle, h.keep)
    const doc = handle.doc
    const text = doc.getText(h.root)
    const out = []
    const [, ns] = timed(() => {
      if (h.keep) {
        for (const patches of h.txs) {
          handle.last = null
          doc.transact(() => editText(text, patches))
          out.push(handle.last || EMPTY)
        }
      } else {
        for (const patches of h.txs) doc.transact(() => editText(text, patches))
      }
    })
    return [{ ns }, out]
  },
  text (h) {
    return [{ text: docs.get(h.doc).doc.getText(h.root).toString() }, []]
  },
  read (h) {
    const map = docs.get(h.doc).doc.getMap(h.root)
    const keys = []
    const values = []
    for (const [key, value] of map.entries()) {
      if (value instanceof Uint8Array) {
        keys.push(key)
        values.push(value)
      }
    }
    return [{ keys }, values]
  },
  encode (h) {
    const doc = docs.get(h.doc).doc
    const [update, ns] = timed(() => Y.encodeStateAsUpdate(doc))
    return [{ ns }, [update]]
  },
  sv (h) {
    const doc = docs.get(h.doc).doc
    const [sv, ns] = timed(() => Y.encodeStateVector(doc))
    return [{ ns }, [sv]]
  },
  diff (h, blobs) {
    const doc = docs.get(h.doc).doc
    const [update, ns] = timed(() => Y.encodeStateAsUpdate(doc, blobs[0]))
    return [{ ns }, [update]]
  },
  apply (h, blobs) {
    const doc = docs.get(h.doc).doc
    const [, ns] = timed(() => {
      for (const update of blobs) Y.applyUpdate(doc, update)
    })
    return [{ ns }, []]
  },
  merge (h, blobs) {
    const [update, ns] = timed(() => Y.mergeUpdates(blobs))
    return [{ ns }, [update]]
  },
  // A concurrent trace, replayed from a schedule the Python side computed (benchmarks/traces.py):
  // steps are [kind, agent, txn] triples, kind 0 = the agent makes txn's edits in one
  // transaction (its update kept), kind 1 = the agent's document applies txn's update.
  concurrent (h) {
    const ids = []
    for (let a = 0; a < h.agents; a++) ids.push(newDoc(h.clientBase + a))
    const handles = ids.map((id) => docs.get(id))
    const texts = handles.map((handle) => handle.doc.getText(h.root))
    const updates = new Array(h.txns.length)
    for (const handle of handles) listen(handle, true)
    const steps = h.steps
    const [, ns] = timed(() => {
      for (let i = 0; i < steps.length; i += 3) {
        const kind = steps[i]
        const agent = steps[i + 1]
        const txn = steps[i + 2]
        const handle = handles[agent]
        if (kind === 0) {
          handle.last = null
          handle.doc.transact(() => editText(texts[agent], h.txns[txn]))
          updates[txn] = handle.last || EMPTY
        } else {
          Y.applyUpdate(handle.doc, updates[txn])
        }
      }
    })
    const out = texts.map((t) => t.toString())
    for (const id of ids) docs.delete(id)
    return [{ ns, texts: out }, []]
  }
}

// --- framing ---------------------------------------------------------------------------------

let buffer = Buffer.alloc(0)

function send (header, blobs) {
  header.blobs = blobs.map((b) => b.length)
  const json = Buffer.from(JSON.stringify(header))
  const total = 4 + json.length + blobs.reduce((n, b) => n + b.length, 0)
  const head = Buffer.alloc(8)
  head.writeUInt32LE(total, 0)
  head.writeUInt32LE(json.length, 4)
  process.stdout.write(Buffer.concat([head, json, ...blobs.map((b) => Buffer.from(b.buffer, b.byteOffset, b.length))]))
}

function handle (frame) {
  const jsonLength = frame.readUInt32LE(0)
  const header = JSON.parse(frame.subarray(4, 4 + jsonLength).toString('utf8'))
  const blobs = []
  let offset = 4 + jsonLength
  for (const n of header.blobs || []) {
    blobs.push(new Uint8Array(frame.buffer, frame.byteOffset + offset, n))
    offset += n
  }
  for (const id of header.free || []) docs.delete(id)
  try {
    const fn = handlers[header.op]
    if (!fn) throw new Error(`unknown op ${header.op}`)
    const [reply, out] = fn(header, blobs)
    send(reply, out)
  } catch (err) {
    send({ error: String(err && err.stack ? err.stack : err) }, [])
  }
}

process.stdin.on('data', (chunk) => {
  buffer = buffer.length ? Buffer.concat([buffer, chunk]) : chunk
  while (buffer.length >= 4) {
    const total = buffer.readUInt32LE(0)
    if (buffer.length < 4 + total) break
    // Copy the frame out: blobs are kept (as map values, updates) beyond this chunk's lifetime.
    const frame = Buffer.from(buffer.subarray(4, 4 + total))
    buffer = buffer.subarray(4 + total)
    handle(frame)
  }
})
process.stdin.on('end', () => process.exit(0))
