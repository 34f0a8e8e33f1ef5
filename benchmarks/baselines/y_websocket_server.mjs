// The y-websocket baseline server for the relay suite: the reference Yjs websocket server
// (`setupWSConnection` from @y/websocket-server, what `npx y-websocket` runs), bound to loopback.
//
// It is the package's own bin/server.js with two changes a benchmark needs: the host and port
// come from the command line, and the module directory is the suite's npm cache
// (bench-results/.node, installed by benchmarks/relay_bench/node.py), not a node_modules
// beside this file. No persistence (YPERSISTENCE unset): y-websocket keeps documents in memory.
//
//   node benchmarks/baselines/y_websocket_server.mjs --modules DIR/node_modules --port P
import http from 'node:http'
import path from 'node:path'
import { pathToFileURL } from 'node:url'
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
const pkgDir = path.join(modules, '@y', 'websocket-server')
const { setupWSConnection } = await import(pathToFileURL(path.join(pkgDir, 'src', 'utils.js')).href)
const WebSocket = require('ws')

const wss = new WebSocket.Server({ noServer: true })
wss.on('connection', setupWSConnection)

const server = http.createServer((_request, response) => {
  response.writeHead(200, { 'Content-Type': 'text/plain' })
  response.end('okay')
})
server.on('upgrade', (request, socket, head) => {
  wss.handleUpgrade(request, socket, head, ws => { wss.emit('connection', ws, request) })
})
server.listen(port, host, () => {
  console.log(`y-websocket server running at ${host}:${port}`)
})
const stop = () => { server.close(); process.exit(0) }
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
