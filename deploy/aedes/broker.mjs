// edgefleet's clustered MQTT broker: aedes nodes that share Redis.
//
// Gateways connect over TLS-PSK (identity = device uuid = MQTT client id) and may use only
// their own topics, $ThingsPro/devices/<uuid>/…. Keys come from the edgefleet server
// (GET /api/v1/broker/psk-file?since=<cursor>: every key at first and every PSK_FULL_SECONDS,
// in between only the keys set and removed since the last answer; then GET
// /api/v1/broker/psk/<uuid> for one the node has not seen yet), so a gateway registered a
// moment ago connects without a restart or a reload, and one deleted or given a new key is
// disconnected. The server's own connection (plain MQTT, on a listener that
// must stay on the private network) is checked by the server itself (POST
// /api/v1/broker/authn). Every call carries a broker-scope API token (mx-api-token).
//
// Nodes find each other through Redis: messages travel on mqemitter-redis, sessions, retained
// messages, subscriptions and wills live in aedes-persistence-redis. A node that dies stops
// its heartbeat, and after HEARTBEAT_SECONDS × ~3 the survivors publish the wills of its
// clients, so the server sees those gateways go offline; the gateways reconnect (through the
// load balancer) to a surviving node and resume their persistent sessions.
//
// Configuration is the environment only (`edgefleet broker-config aedes` writes it):
//   EDGEFLEET_URL, EDGEFLEET_BROKER_TOKEN, BROKER_ID, REDIS_URL, GATEWAY_HOST, GATEWAY_PORT,
//   SERVER_HOST, SERVER_PORT, PSK_HINT, HEALTH_PORT, PSK_REFRESH_SECONDS, HEARTBEAT_SECONDS,
//   MAX_PACKET_BYTES (the protocol's limit: a client announcing a larger packet is disconnected),
//   and optionally PSK_FULL_SECONDS (600: how often the whole key list is fetched anyway)
// The health endpoint (HEALTH_PORT, on SERVER_HOST) answers GET /healthz and GET /clients.
// Logs are one JSON object per line on stdout; keys, passwords and the token never appear.
import http from 'node:http'
import net from 'node:net'
import os from 'node:os'
import tls from 'node:tls'
import { createRequire } from 'node:module'
import { Aedes } from 'aedes'

const require = createRequire(import.meta.url)
const MQEmitterRedis = require('mqemitter-redis')
const Redis = require('ioredis')
const redisPersistence = require('aedes-persistence-redis')

function log (level, msg, fields = {}) {
  process.stdout.write(JSON.stringify({ ts: new Date().toISOString(), level, msg, ...fields }) + '\n')
}

function setting (name, fallback) {
  const v = process.env[name]
  if (v === undefined || v === '') {
    if (fallback === undefined) {
      log('error', `${name} must be set`)
      process.exit(2)
    }
    return fallback
  }
  return v
}

function port (name, fallback) {
  const v = Number(setting(name, fallback))
  if (!Number.isInteger(v) || v < 0 || v > 65535) {
    log('error', `${name} is not a port: ${process.env[name]}`)
    process.exit(2)
  }
  return v
}

const cfg = {
  url: setting('EDGEFLEET_URL').replace(/\/+$/, ''),
  token: setting('EDGEFLEET_BROKER_TOKEN'),
  id: setting('BROKER_ID', os.hostname()),
  redis: setting('REDIS_URL', 'redis://127.0.0.1:6379/0'),
  gatewayHost: setting('GATEWAY_HOST', '0.0.0.0'),
  gatewayPort: port('GATEWAY_PORT', '8883'),
  serverHost: setting('SERVER_HOST', '127.0.0.1'),
  serverPort: port('SERVER_PORT', '18830'),
  pskHint: setting('PSK_HINT', 'edgefleet'),
  healthPort: port('HEALTH_PORT', '0'),
  pskRefreshMs: Number(setting('PSK_REFRESH_SECONDS', '5')) * 1000,
  pskFullMs: Number(setting('PSK_FULL_SECONDS', '600')) * 1000,
  heartbeatMs: Number(setting('HEARTBEAT_SECONDS', '2')) * 1000,
  maxPacketBytes: Number(setting('MAX_PACKET_BYTES', String(256 * 1024 + 1024)))
}
for (const [k, v] of [['PSK_REFRESH_SECONDS', cfg.pskRefreshMs], ['PSK_FULL_SECONDS', cfg.pskFullMs], ['HEARTBEAT_SECONDS', cfg.heartbeatMs], ['MAX_PACKET_BYTES', cfg.maxPacketBytes]]) {
  if (!(v > 0)) {
    log('error', `${k} must be a positive number`)
    process.exit(2)
  }
}

const PREFIX = '$ThingsPro/devices/'
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

// --- the server's API --------------------------------------------------------------------

async function api (method, path, body) {
  const res = await fetch(cfg.url + path, {
    method,
    headers: { 'mx-api-token': cfg.token, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
    signal: AbortSignal.timeout(10000)
  })
  return res
}

// --- pre-shared keys ---------------------------------------------------------------------

let keys = new Map() // uuid -> Buffer
let keysLoaded = false
let cursor = '' // the server's cursor after its last answer: only what changed since is asked
let lastFull = 0
const fetching = new Set()

// The answer: "# cursor=<n> full|changes", then "<uuid>:<hex>" lines (every key when full)
// and, for changes, "-<uuid>" for a key removed.
async function refreshKeys () {
  const full = !keysLoaded || Date.now() - lastFull >= cfg.pskFullMs
  let res
  try {
    res = await api('GET', `/api/v1/broker/psk-file?since=${full ? '' : cursor}`)
  } catch (err) {
    log('warning', 'PSK store not fetched', { error: String(err.cause?.code || err.message) })
    return
  }
  if (res.status !== 200) {
    log('warning', 'PSK store not fetched', { status: res.status })
    return
  }
  const lines = (await res.text()).split('\n')
  const head = /^# cursor=(\d+) (full|changes)$/.exec(lines[0])
  if (!head) {
    log('warning', 'PSK store not fetched', { error: 'unexpected answer' })
    return
  }
  const removed = []
  if (head[2] === 'full') {
    const next = new Map()
    for (const line of lines.slice(1)) {
      const i = line.indexOf(':')
      if (i > 0) next.set(line.slice(0, i), Buffer.from(line.slice(i + 1).trim(), 'hex'))
    }
    for (const [id, key] of keys) {
      const now = next.get(id)
      if (!now || !now.equals(key)) removed.push(id)
    }
    keys = next
    lastFull = Date.now()
  } else {
    for (const line of lines.slice(1)) {
      if (line.startsWith('-')) {
        const id = line.slice(1).trim()
        if (keys.delete(id)) removed.push(id)
        continue
      }
      const i = line.indexOf(':')
      if (i <= 0) continue
      const id = line.slice(0, i)
      const key = Buffer.from(line.slice(i + 1).trim(), 'hex')
      const old = keys.get(id)
      if (old && !old.equals(key)) removed.push(id)
      keys.set(id, key)
    }
  }
  cursor = head[1]
  if (!keysLoaded) log('info', 'PSK store loaded', { gateways: keys.size })
  keysLoaded = true
  for (const id of removed) kick(id, 'its key was removed or changed')
}

// A handshake with an identity the node does not know yet: fetch that one key, so the
// gateway's next attempt (seconds later) succeeds. pskCallback itself must answer at once.
function fetchKey (id) {
  if (fetching.has(id) || !UUID.test(id)) return
  fetching.add(id)
  api('GET', `/api/v1/broker/psk/${id}`)
    .then(async (res) => {
      if (res.status === 200) {
        const body = await res.json()
        keys.set(id, Buffer.from(body.psk, 'hex'))
      } else if (res.status !== 404) {
        log('warning', 'key not fetched', { gateway: id, status: res.status })
      }
    })
    .catch((err) => log('warning', 'key not fetched', { gateway: id, error: String(err.message) }))
    .finally(() => setTimeout(() => fetching.delete(id), 1000))
}

// --- the broker --------------------------------------------------------------------------

function redisOptions () {
  const u = new URL(cfg.redis)
  return {
    host: u.hostname,
    port: Number(u.port || 6379),
    db: Number(u.pathname.slice(1) || 0),
    username: u.username ? decodeURIComponent(u.username) : undefined,
    password: u.password ? decodeURIComponent(u.password) : undefined,
    ...(u.protocol === 'rediss:' ? { tls: {} } : {})
  }
}

// ioredis 5.8+ may send its ready check (INFO) after the subscriber connection has entered
// subscriber mode, which Redis refuses and which crashed a node at start (redis/ioredis#2037):
// the subscriber connection skips the check
// (mqemitter-redis makes its own connections with auto-pipelining: so do these)
const mq = MQEmitterRedis({
  subConn: new Redis({ ...redisOptions(), enableAutoPipelining: true, enableReadyCheck: false }),
  pubConn: new Redis({ ...redisOptions(), enableAutoPipelining: true })
})
const persistence = redisPersistence(redisOptions())
const aedes = await Aedes.createBroker({
  id: cfg.id,
  mq,
  persistence,
  heartbeatInterval: cfg.heartbeatMs,
  maxClientsIdLength: 64,
  queueLimit: 100,
  drainTimeout: 30000
})

// what each connection may do: a gateway (PSK identity) its own topics; the server all
// gateways' topics; nothing else
const GATEWAY = Symbol('gateway')
const SUPERUSER = Symbol('superuser')

function own (id, topic) {
  return Boolean(id) && topic.startsWith(PREFIX + id + '/') // wildcards after it match only its own
}

aedes.authenticate = (client, username, password, callback) => {
  const identity = client.conn?.pskIdentity
  if (identity) {
    if (client.id !== identity) {
      log('info', 'connection refused', { gateway: identity, client: client.id, reason: 'the client id must be the PSK identity' })
      return callback(null, false)
    }
    client[GATEWAY] = identity
    return callback(null, true)
  }
  api('POST', '/api/v1/broker/authn', {
    username: username || '',
    password: password ? password.toString() : '',
    clientid: client.id,
    peerhost: client.conn?.remoteAddress || ''
  })
    .then(async (res) => {
      const body = res.status === 200 ? await res.json() : {}
      if (body.result !== 'allow') {
        log('info', 'connection refused', { user: username, client: client.id, status: res.status })
        return callback(null, false)
      }
      if (body.is_superuser) client[SUPERUSER] = true
      else client[GATEWAY] = client.id // a gateway that logs in with its key (plain listener)
      callback(null, true)
    })
    .catch((err) => {
      log('warning', 'authentication unavailable', { client: client.id, error: String(err.message) })
      const e = new Error('server unavailable')
      e.returnCode = 3 // "server unavailable": the client retries
      callback(e, false)
    })
}

// Wills across the cluster. A will is stored under the node the client was connected to.
// (1) A node dies and its gateways reconnect to the others within seconds, before the
// survivors declare it dead and publish its wills: those wills would then say "0" for
// gateways that are online again. So a gateway that connects deletes its wills stored under
// any other node. (2) A gateway reconnects elsewhere while its old connection is still open on
// a live node, which then closes it (a takeover): its will would land after the new
// connection's "1". A will of a connection that was taken over is not published.
const seenNodes = new Set()
const lastConnect = new Map() // client id -> time of its newest connection on another node
aedes.mq.on('$SYS/+/heartbeat', (packet, done) => {
  seenNodes.add(packet.payload.toString())
  done()
})
aedes.mq.on('$SYS/+/new/clients', (packet, done) => {
  const node = packet.topic.split('/')[1]
  if (node !== aedes.id) {
    lastConnect.set(packet.payload.toString(), Date.now())
    if (lastConnect.size > 100000) lastConnect.clear()
  }
  done()
})
const connectedAt = Symbol('connectedAt')
aedes.on('clientReady', (client) => {
  client[connectedAt] = Date.now()
  lastConnect.delete(client.id)
  if (!client[GATEWAY]) return
  for (const node of seenNodes) {
    if (node !== aedes.id) {
      aedes.persistence.delWill({ id: client.id, brokerId: node })
        .catch((err) => log('warning', 'stale will not deleted', { client: client.id, error: String(err.message) }))
    }
  }
})

aedes.authorizePublish = (client, packet, callback) => {
  if (!client) return callback(null) // the broker's own (wills of a dead node, $SYS)
  if (packet === client.will && (lastConnect.get(client.id) ?? 0) >= client[connectedAt]) {
    log('info', 'will of a connection taken over elsewhere not published', { client: client.id })
    return callback(new Error('taken over'))
  }
  if (client[SUPERUSER] ? packet.topic.startsWith(PREFIX) : own(client[GATEWAY], packet.topic)) {
    return callback(null)
  }
  log('info', 'publish refused', { client: client.id, topic: packet.topic })
  callback(new Error('not authorised'))
}

aedes.authorizeSubscribe = (client, sub, callback) => {
  const ok = client[SUPERUSER] ? sub.topic.startsWith(PREFIX) : own(client[GATEWAY], sub.topic)
  if (!ok) log('info', 'subscription refused', { client: client.id, topic: sub.topic })
  callback(null, ok ? sub : null)
}

function kick (id, reason) {
  const client = aedes.clients[id]
  if (client && client[GATEWAY] === id) {
    log('info', 'gateway disconnected', { gateway: id, reason })
    client.close()
  }
}

aedes.on('clientError', (client, err) => log('debug', 'client error', { client: client?.id, error: err.message }))
aedes.on('connectionError', (client, err) => log('debug', 'connection error', { client: client?.id, error: err.message }))

// --- listeners ---------------------------------------------------------------------------

// aedes has no packet size limit: it would buffer a packet of any announced size (up to MQTT's
// 256 MB) before looking at it. So each connection's parser is checked as soon as it has read
// a packet's remaining length, and a packet over the limit closes the connection before its
// body is read (Mosquitto's max_packet_size does the same).
function handle (conn, req) {
  const client = aedes.handle(conn, req)
  const parser = client._parser
  const parseLength = parser._parseLength
  parser._parseLength = function () {
    const done = parseLength.call(this)
    if (done && this.packet.length > cfg.maxPacketBytes) {
      log('info', 'packet too large: connection closed', { client: client.id, bytes: this.packet.length, limit: cfg.maxPacketBytes })
      this._emitError(new Error('packet too large'))
    }
    return done
  }
  return client
}

const gateways = tls.createServer({
  pskIdentityHint: cfg.pskHint,
  ciphers: 'ECDHE-PSK:PSK:!aNULL', // ECDHE-PSK first: DHE-PSK costs far more CPU a handshake
  honorCipherOrder: true,
  minVersion: 'TLSv1.2',
  pskCallback (socket, identity) {
    const key = keys.get(identity)
    if (!key) {
      fetchKey(identity)
      return null
    }
    socket.pskIdentity = identity
    return key
  }
}, handle)
gateways.on('tlsClientError', (err, socket) => {
  // a key changed since it was fetched: fetch it again for the next attempt
  if (socket.pskIdentity) fetchKey(socket.pskIdentity)
  log('debug', 'TLS handshake failed', { error: err.code || err.message })
})
const server = net.createServer(handle)

let health = null
if (cfg.healthPort) {
  health = http.createServer((req, res) => {
    const clients = Object.values(aedes.clients)
    const ok = keysLoaded && !aedes.closed
    const body = req.url === '/clients'
      ? { id: aedes.id, gateways: clients.filter((c) => c[GATEWAY]).map((c) => c.id).sort() }
      : { id: aedes.id, status: ok ? 'ok' : 'starting', clients: clients.length, keys: keys.size }
    res.writeHead(req.url === '/clients' || ok ? 200 : 503, { 'content-type': 'application/json' })
    res.end(JSON.stringify(body))
  })
}

function listen (srv, p, host, what) {
  return new Promise((resolve) => {
    srv.once('error', (err) => {
      log('error', `${what} cannot listen on ${host}:${p}: ${err.code === 'EADDRINUSE' ? 'the port is in use' : err.message}`)
      process.exit(1)
    })
    srv.listen(p, host, () => resolve())
  })
}

await refreshKeys()
const refresher = setInterval(refreshKeys, cfg.pskRefreshMs)
await listen(gateways, cfg.gatewayPort, cfg.gatewayHost, 'gateway listener (TLS-PSK)')
await listen(server, cfg.serverPort, cfg.serverHost, 'server listener')
if (health) await listen(health, cfg.healthPort, cfg.serverHost, 'health endpoint')
log('info', 'broker ready', {
  id: aedes.id,
  gateways: `${cfg.gatewayHost}:${cfg.gatewayPort}`,
  server: `${cfg.serverHost}:${cfg.serverPort}`,
  health: cfg.healthPort || null
})

function shutdown (signal) {
  log('info', 'stopping', { signal })
  clearInterval(refresher)
  for (const srv of [gateways, server, health]) srv?.close()
  aedes.close(() => {
    persistence.destroy?.(() => {})
    mq.close?.(() => {})
    process.exit(0)
  })
  setTimeout(() => process.exit(0), 5000).unref()
}
process.on('SIGTERM', () => shutdown('SIGTERM'))
process.on('SIGINT', () => shutdown('SIGINT'))
