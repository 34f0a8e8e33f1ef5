// The Hocuspocus baseline server for the relay suite: @hocuspocus/server's `Hocuspocus` (the
// collaboration backend of Tiptap; y-protocols with the document name in front of every message
// and an auth message first), bound to loopback. No extensions: no persistence, no auth hook
// (every token is accepted), documents kept in memory while someone is connected.
//
// The HTTP server and the command line are baseline_server.mjs's. Modules come from the suite's
// npm cache (bench-results/.node/hocuspocus, installed by benchmarks/relay_bench/node.py).
//
//   node benchmarks/baselines/hocuspocus_server.mjs --modules DIR/node_modules --port P
import { requireModule, serveHocuspocus } from './baseline_server.mjs'

const { Hocuspocus } = requireModule('@hocuspocus/server')
serveHocuspocus(new Hocuspocus({ quiet: true }), 'hocuspocus server')
