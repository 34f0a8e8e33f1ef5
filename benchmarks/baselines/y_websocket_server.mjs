// The y-websocket baseline server for the relay suite: the reference Yjs websocket server
// (`setupWSConnection` from @y/websocket-server, what `npx y-websocket` runs), bound to loopback.
//
// It is the package's own bin/server.js with two changes a benchmark needs: the host and port
// come from the command line, and the module directory is the suite's npm cache
// (bench-results/.node, installed by benchmarks/relay_bench/node.py), not a node_modules
// beside this file. No persistence (YPERSISTENCE unset): y-websocket keeps documents in memory.
//
//   node benchmarks/baselines/y_websocket_server.mjs --modules DIR/node_modules --port P
import path from 'node:path'
import { pathToFileURL } from 'node:url'

import { modules, requireModule, serveLoopback } from './baseline_server.mjs'

const pkgDir = path.join(modules, '@y', 'websocket-server')
const { setupWSConnection } = await import(pathToFileURL(path.join(pkgDir, 'src', 'utils.js')).href)
const WebSocket = requireModule('ws')

const wss = new WebSocket.Server({ noServer: true })
wss.on('connection', setupWSConnection)
serveLoopback(wss, 'y-websocket server')
