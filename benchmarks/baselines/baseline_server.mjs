// What the Node baseline servers share: their command line, the packages from the suite's npm
// cache (`--modules`), and a loopback-bound HTTP server that hands each upgraded websocket to the
// server under test. (Hocuspocus's own `Server` class would listen on every interface: it passes
// `address` where Node expects `host`.)
import http from 'node:http'
import path from 'node:path'
import { createRequire } from 'node:module'

const args = process.argv.slice(2)

/** The value after `--name` on the command line, else `fallback`. */
export const opt = (name, fallback) => {
  const i = args.indexOf(name)
  return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback
}

/** The `--modules` directory (the suite's npm cache) and a `require` resolving from it. */
export const modules = path.resolve(opt('--modules', 'node_modules'))
export const requireModule = createRequire(path.join(modules, 'noop.js'))

/**
 * Serve the websocket server `wss` (made with `noServer: true`) on `--host`/`--port`; `banner` is
 * logged once listening; SIGTERM and SIGINT close the listener and call `onStop`.
 */
export function serveLoopback (wss, banner, onStop = () => process.exit(0)) {
  const host = opt('--host', '127.0.0.1')
  const port = parseInt(opt('--port', '1234'), 10)
  const server = http.createServer((_request, response) => {
    response.writeHead(200, { 'Content-Type': 'text/plain' })
    response.end('okay')
  })
  server.on('upgrade', (request, socket, head) => {
    wss.handleUpgrade(request, socket, head, ws => { wss.emit('connection', ws, request) })
  })
  server.listen(port, host, () => {
    console.log(`${banner} running at ${host}:${port}`)
  })
  const stop = () => {
    server.close()
    onStop()
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
}

/** Serve a `Hocuspocus` instance: each websocket goes to `handleConnection`. */
export function serveHocuspocus (hocuspocus, banner, onStop) {
  const { WebSocketServer } = createRequire(requireModule.resolve('@hocuspocus/server'))('ws')
  const wss = new WebSocketServer({ noServer: true })
  wss.on('connection', (ws, request) => {
    ws.on('error', () => {})
    hocuspocus.handleConnection(ws, request)
  })
  serveLoopback(wss, banner, onStop)
}
