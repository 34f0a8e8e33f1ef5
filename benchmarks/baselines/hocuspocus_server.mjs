// The Hocuspocus baseline server for the relay suite: @hocuspocus/server's `Hocuspocus` (the
// collaboration backend of Tiptap; y-protocols with the document name in front of every message
// and an auth message first), bound to loopback. No extensions: no persistence, no auth hook
// (every token is accepted), documents kept in memory while someone is connected.
//
// Its own `Server` class would listen on every interface (it passes `address` where Node expects
// `host`), so this script makes the HTTP server itself and hands each upgraded websocket to
// `Hocuspocus.handleConnection`, which is what `Server` does. Modules come from the suite's npm
// cache (bench-results/.node/hocuspocus, installed by benchmarks/relay_bench/node.py).
//
//   node benchmarks/baselines/hocuspocus_server.mjs --modules DIR/node_modules --port P
import http from 'node:http'
import path from 'node:path'
import { createRequire } from 'node:module'

const args = process.argv.slice(2)
const opt = (name, fallback) => {
  const i = args.indexOf(name)
  return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback
}
const modules = path.resolve(opt('--modules', 'node_modules'))
const host = opt('--host', '127.0.0.1')
const port = parseInt(opt('--port', '1234'), 10)

const require = createRequire(path.join(modules, 'noop.js'))
const { Hocuspocus } = require('@hocuspocus/server')
const serverRequire = createRequire(require.resolve('@hocuspocus/server'))
const { WebSocketServer } = serverRequire('ws')

const hocuspocus = new Hocuspocus({ quiet: true })
const wss = new WebSocketServer({ noServer: true })
wss.on('connection', (ws, request) => {
  ws.on('error', () => {})
  hocuspocus.handleConnection(ws, request)
})

const server = http.createServer((_request, response) => {
  response.writeHead(200, { 'Content-Type': 'text/plain' })
  response.end('okay')
})
server.on('upgrade', (request, socket, head) => {
  wss.handleUpgrade(request, socket, head, ws => { wss.emit('connection', ws, request) })
})
server.listen(port, host, () => {
  console.log(`hocuspocus server running at ${host}:${port}`)
})
const stop = () => { server.close(); process.exit(0) }
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
