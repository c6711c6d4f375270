// A long-running LiveStore 0.4.0 client process for the gateway interop tests.
//
// It runs a full, unmodified LiveStore store (@livestore/adapter-node, in-memory storage) whose sync
// backend is the real `makeWsSync` or `makeHttpSync` from @livestore/sync-cf 0.4.0, pointed at a URL
// given on the command line. test_interop.py drives it through stdin and reads its reports on stdout:
//
//   stdin  (one JSON object a line):  {"id": 1, "cmd": "commit", "prefix": "A", "count": 2}
//   stdout (one JSON object a line):  {"event": "ok", "id": 1, ...} or {"event": "error", "id": 1, "error": "..."}
//
// Unsolicited stdout lines: {"event":"ready", ...} once the store has booted, {"event":"fatal", ...} before a
// non-zero exit. Everything the libraries log goes to stderr, so stdout carries only these JSON lines.
//
// Commands (each reply carries the command's "id"):
//   commit   {prefix, count, start=1, together=false}  commit todoCreated events with ids PREFIX-START.. ;
//                                                      together=true commits them in one store.commit call
//   wait     {rows, timeout=30}     wait until the store has at least `rows` rows, the sync backend has
//                                    confirmed at least `rows` events and nothing is pending upstream
//   dump                           rows (rowid order), confirmed eventlog (seqNum order), sync state, counters
//   waitconnected {timeout=30}     wait until the sync backend reports isConnected
//   waitpending {count, timeout}   wait until at least `count` events are pending upstream in the leader
//   waitupstream {head, rows=0, timeout}  wait until the sync backend has confirmed events up to seqNum
//                                    `head` and the session shows at least `rows` rows (whatever is pending:
//                                    a read-only client's commits stay pending)
//   status                         sync state and network status
//   waitrefused {count=1, timeout}  wait until the server has refused at least `count` WebSocket handshakes
//                                    (HTTP 4xx instead of 101: the auth tests' refused clients)
//   hold     {on: bool}            hold outgoing WebSocket Push frames (network-level test instrumentation)
//   waitheld {count=1, timeout}    wait until at least `count` Push frames are being held
//   release                        send every held Push frame now, in order
//   shutdown                       shut the store down and exit 0
//
// --sync-payload JSON (or env INTEROP_SYNC_PAYLOAD) sets the store's syncPayload, e.g.
// {"instanceId":"app-1","authToken":"<JWT>"} or {"instanceId":"svc-1","serverBypass":"<token>"}.
//
// The process never hangs: every wait has a timeout, and a watchdog ends the process after
// --max-lifetime seconds (exit 3). Closing stdin also shuts the client down.
//
// Node 20 has no global WebSocket and the 0.4.0 client then fails silently, so this file installs the
// `ws` package's WebSocket as globalThis.WebSocket BEFORE it imports any LiveStore module (dynamic imports).

import { format } from 'node:util'
import { createInterface } from 'node:readline'
import { parseArgs } from 'node:util'

// ---------------------------------------------------------------------------------------------------------
// stdout is the protocol channel: route every console method to stderr.
const writeErr = (...args) => process.stderr.write(`${format(...args)}\n`)
for (const name of ['log', 'info', 'warn', 'error', 'debug', 'trace', 'dir', 'table']) {
  console[name] = writeErr
}
const emit = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`)

const fail = (message, code = 2) => {
  emit({ event: 'fatal', error: String(message) })
  // Let stdout drain before exiting.
  process.stdout.write('', () => process.exit(code))
  setTimeout(() => process.exit(code), 500).unref()
}

const { values: opts } = parseArgs({
  options: {
    url: { type: 'string' },
    'store-id': { type: 'string', default: 'interop-store' },
    'client-id': { type: 'string', default: 'client-A' },
    transport: { type: 'string', default: 'ws' },
    'blocking-initial-sync': { type: 'boolean', default: false },
    'boot-timeout': { type: 'string', default: '30' },
    'max-lifetime': { type: 'string', default: '120' },
    'poll-interval': { type: 'string', default: '1000' },
    'log-frames': { type: 'boolean', default: false },
    // JSON for the store's `syncPayload`, e.g. {"instanceId":"app-1","authToken":"<JWT>"}. The env var
    // INTEROP_SYNC_PAYLOAD is read when the flag is absent (keeps tokens out of `ps` output).
    'sync-payload': { type: 'string' },
    // 'shutdown' turns a stopped sync loop into a fatal exit the test sees at once (the default,
    // 'ignore', would leave the client silently offline).
    'on-sync-error': { type: 'string', default: 'shutdown' },
    selfcheck: { type: 'boolean', default: false },
  },
  strict: true,
})

const maxLifetimeMs = Number(opts['max-lifetime']) * 1000
setTimeout(() => fail(`max lifetime of ${opts['max-lifetime']} s exceeded`, 3), maxLifetimeMs).unref()

// ---------------------------------------------------------------------------------------------------------
// WebSocket polyfill with a small network tap (counts frames, can hold Push frames).
const { WebSocket: WsWebSocket } = await import('ws')

const counters = {
  wsOpened: 0,
  wsClosed: 0,
  framesIn: 0,
  framesOut: 0,
  pushesSent: 0,
  pullsSent: 0,
  serverAheadErrors: 0,
  backendIdMismatchErrors: 0,
  unknownErrors: 0,
  // Handshakes the server answered with an HTTP status instead of 101 (auth refusals): no socket.
  wsRefused: 0,
  httpRequests: 0,
  httpPushes: 0,
  httpPulls: 0,
}
const refusedStatuses = [] // HTTP status of each refused WebSocket handshake, in order (last 20)
const held = [] // [{ socket, data }]
let holdPushes = false

const inspectOutgoing = (text) => {
  try {
    const msg = JSON.parse(text)
    if (msg?._tag === 'Request') {
      if (String(msg.tag).endsWith('.Push')) counters.pushesSent++
      if (String(msg.tag).endsWith('.Pull')) counters.pullsSent++
      return msg
    }
  } catch {}
  return undefined
}

const inspectIncoming = (text) => {
  if (text.includes('"ServerAheadError"')) counters.serverAheadErrors++
  if (text.includes('"BackendIdMismatchError"')) counters.backendIdMismatchErrors++
  if (text.includes('"UnknownError"')) counters.unknownErrors++
}

class TappedWebSocket extends WsWebSocket {
  constructor(...args) {
    super(...args)
    this.addEventListener('open', () => {
      counters.wsOpened++
    })
    this.addEventListener('close', () => {
      counters.wsClosed++
    })
    // ws reports a non-101 answer to the upgrade as an 'error' ("Unexpected server response: 401")
    // followed by 'close'; an extra listener does not change how LiveStore sees it.
    this.on('error', (err) => {
      const m = /Unexpected server response: (\d+)/.exec(String(err?.message ?? ''))
      if (m === null) return
      counters.wsRefused++
      refusedStatuses.push(Number(m[1]))
      if (refusedStatuses.length > 20) refusedStatuses.shift()
      if (opts['log-frames']) writeErr(`[handshake refused] ${m[1]}`)
    })
    this.addEventListener('message', (ev) => {
      counters.framesIn++
      const text = typeof ev.data === 'string' ? ev.data : Buffer.from(ev.data).toString('utf8')
      inspectIncoming(text)
      if (opts['log-frames']) writeErr(`[frame in] ${text.slice(0, 2000)}`)
    })
  }

  send(data, ...rest) {
    counters.framesOut++
    const text = typeof data === 'string' ? data : Buffer.from(data).toString('utf8')
    if (opts['log-frames']) writeErr(`[frame out] ${text.slice(0, 2000)}`)
    const msg = inspectOutgoing(text)
    if (holdPushes && msg !== undefined && String(msg.tag).endsWith('.Push')) {
      held.push({ socket: this, data, rest })
      return
    }
    return super.send(data, ...rest)
  }
}

globalThis.WebSocket = TappedWebSocket

// Node < 24 bundles undici 6 for its built-in fetch. @effect/platform-node (loaded by adapter-node) imports
// the npm undici 7, which installs ITS Agent as the process-wide global dispatcher; Node 20's built-in
// fetch then fails every request that carries an explicit content-length (as Effect's FetchHttpClient
// sends) with "invalid content-length header", so the HTTP transport could never sync. Use undici 7's
// own fetch there: it matches that dispatcher. (Node 24+ bundles undici 7 and needs nothing.)
const bundledUndiciMajor = Number(String(process.versions.undici ?? '0').split('.')[0])
const baseFetch = bundledUndiciMajor < 7 ? (await import('undici')).fetch : globalThis.fetch

globalThis.fetch = async (input, init) => {
  counters.httpRequests++
  const body = typeof init?.body === 'string' ? init.body : init?.body instanceof Uint8Array ? Buffer.from(init.body).toString('utf8') : undefined
  if (body !== undefined) {
    if (body.includes('SyncHttpRpc.Push')) counters.httpPushes++
    if (body.includes('SyncHttpRpc.Pull')) counters.httpPulls++
    if (opts['log-frames']) writeErr(`[http out] ${body.slice(0, 2000)}`)
  }
  const res = await baseFetch(input, init)
  if (res.headers.get('content-type')?.includes('json')) {
    const text = await res.clone().text()
    inspectIncoming(text)
    if (opts['log-frames']) writeErr(`[http ${res.status}] ${text.slice(0, 2000)}`)
  }
  return res
}

// ---------------------------------------------------------------------------------------------------------
// LiveStore (imported only now, after the polyfill).
const { makeAdapter } = await import('@livestore/adapter-node')
const { createStorePromise, makeSchema, makeShutdownDeferred, State, StoreInternalsSymbol } = await import(
  '@livestore/livestore'
)
const { makeWsSync, makeHttpSync } = await import('@livestore/sync-cf/client')
const { Cause, Deferred, Effect, Exit } = await import('effect')
// The app's table and events, shared with event_schemas.mjs (which prints their JSON Schemas).
const { events, todos } = await import('./app_events.mjs')
const materializers = State.SQLite.materializers(events, {
  'v1.TodoCreated': ({ id, text }) => todos.insert({ id, text }),
})
const schema = makeSchema({ state: State.SQLite.makeState({ tables: { todos }, materializers }), events })

if (opts.selfcheck) {
  emit({
    event: 'selfcheck',
    node: process.version,
    webSocket: typeof globalThis.WebSocket,
    makeWsSync: typeof makeWsSync,
    makeHttpSync: typeof makeHttpSync,
    createStorePromise: typeof createStorePromise,
  })
  process.exit(0)
}

if (opts.url === undefined) fail('--url is required')
const transport = opts.transport
if (transport !== 'ws' && transport !== 'http') fail(`unknown --transport ${transport}`)

const syncPayloadText = opts['sync-payload'] ?? process.env.INTEROP_SYNC_PAYLOAD
let syncPayload
if (syncPayloadText !== undefined && syncPayloadText !== '') {
  try {
    syncPayload = JSON.parse(syncPayloadText)
  } catch (error) {
    fail(`--sync-payload is not JSON: ${error}`)
  }
}

const backend =
  transport === 'ws'
    ? makeWsSync({ url: opts.url })
    : makeHttpSync({ url: opts.url, livePull: { pollInterval: Number(opts['poll-interval']) } })

const adapter = makeAdapter({
  storage: { type: 'in-memory' },
  clientId: opts['client-id'],
  sessionId: 'static',
  sync: {
    backend,
    onSyncError: opts['on-sync-error'],
    ...(opts['blocking-initial-sync']
      ? { initialSyncOptions: { _tag: 'Blocking', timeout: Number(opts['boot-timeout']) * 1000 } }
      : {}),
  },
})

const withTimeout = (promise, ms, what) =>
  new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`timeout after ${ms} ms: ${what}`)), ms)
    promise.then(
      (v) => {
        clearTimeout(t)
        resolve(v)
      },
      (e) => {
        clearTimeout(t)
        reject(e)
      },
    )
  })

let store
let shuttingDown = false
const bootStart = Date.now()

// The store shuts itself down on a sync error (onSyncError: 'shutdown') or a backendId mismatch: report
// that as fatal at once instead of letting the test wait for rows that never come.
const shutdownDeferred = await Effect.runPromise(makeShutdownDeferred)
Effect.runPromise(Effect.exit(Deferred.await(shutdownDeferred))).then((exit) => {
  if (shuttingDown) return
  const why = Exit.isSuccess(exit) ? `intentional: ${JSON.stringify(exit.value)}` : Cause.pretty(exit.cause)
  fail(`the store shut down by itself: ${why}`, 4)
})

try {
  store = await withTimeout(
    createStorePromise({
      adapter,
      schema,
      storeId: opts['store-id'],
      disableDevtools: true,
      shutdownDeferred,
      ...(syncPayload === undefined ? {} : { syncPayload }),
    }),
    // LiveStore's own Blocking timeout is boot-timeout; give it room to act first.
    Number(opts['boot-timeout']) * 1000 + 5000,
    'store boot',
  )
} catch (error) {
  fail(`boot failed: ${error?.stack ?? error}`)
  await new Promise(() => {})
}

const leader = store[StoreInternalsSymbol].clientSession.leaderThread

// Listed in SQLite rowid order, i.e. the order this client last (re)materialised them in. After a rebase
// that is not necessarily the eventlog order (rolled-back rows are re-inserted later), so the tests
// compare the synced ORDER on the confirmed eventlog and the rows as a set.
const readRows = () => store.query({ query: 'SELECT id, text FROM todos ORDER BY rowid', bindValues: {} })

const leaderSyncState = async () => {
  const s = await Effect.runPromise(leader.syncState.get)
  return {
    upstreamHead: s.upstreamHead.global,
    localHead: s.localHead.global,
    pending: s.pending.length,
  }
}

const networkStatus = async () => {
  const s = await Effect.runPromise(leader.networkStatus.get)
  return { isConnected: s.isConnected }
}

const confirmedEvents = async (until) => {
  if (until === 0) return []
  const out = []
  const iterable = store.events({ until: { global: until, client: 0, rebaseGeneration: 0 } })
  for await (const ev of iterable) {
    out.push({
      seqNum: ev.seqNum?.global ?? ev.seqNum,
      parentSeqNum: ev.parentSeqNum?.global ?? ev.parentSeqNum,
      name: ev.name,
      args: ev.args,
      clientId: ev.clientId,
    })
  }
  return out
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

const waitFor = async (predicate, timeoutMs, what) => {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const result = await predicate()
    if (result) return result
    if (Date.now() > deadline) throw new Error(`timeout after ${timeoutMs} ms waiting for ${what}`)
    await sleep(25)
  }
}

const snapshot = async () => ({
  rowCount: readRows().length,
  sync: await leaderSyncState(),
  network: await networkStatus(),
  held: held.length,
  counters: { ...counters },
  refusedStatuses: [...refusedStatuses],
})

const commands = {
  commit: async ({ prefix, count, start = 1, together = false, text }) => {
    const evs = []
    for (let i = start; i < start + count; i++) {
      const id = `${prefix}-${i}`
      evs.push(events.todoCreated({ id, text: text ?? `${id} from ${opts['client-id']}` }))
    }
    if (together) store.commit(...evs)
    else for (const ev of evs) store.commit(ev)
    return { committed: evs.length, rowCount: readRows().length }
  },
  wait: async ({ rows, timeout = 30 }) => {
    const started = Date.now()
    await waitFor(
      async () => {
        if (readRows().length < rows) return false
        const s = await leaderSyncState()
        return s.pending === 0 && s.upstreamHead >= rows
      },
      timeout * 1000,
      `${rows} rows confirmed by the sync backend`,
    )
    return { waitedMs: Date.now() - started, ...(await snapshot()) }
  },
  waitconnected: async ({ timeout = 30 }) => {
    const started = Date.now()
    await waitFor(async () => (await networkStatus()).isConnected, timeout * 1000, 'isConnected')
    return { waitedMs: Date.now() - started, ...(await snapshot()) }
  },
  waitpending: async ({ count, timeout = 10 }) => {
    await waitFor(async () => (await leaderSyncState()).pending >= count, timeout * 1000, `${count} pending`)
    return snapshot()
  },
  waitupstream: async ({ head, rows = 0, timeout = 10 }) => {
    const started = Date.now()
    await waitFor(
      async () => readRows().length >= rows && (await leaderSyncState()).upstreamHead >= head,
      timeout * 1000,
      `upstream head ${head} and ${rows} rows`,
    )
    return { waitedMs: Date.now() - started, ...(await snapshot()) }
  },
  dump: async () => {
    const sync = await leaderSyncState()
    return {
      rows: readRows(),
      events: await confirmedEvents(sync.upstreamHead),
      ...(await snapshot()),
    }
  },
  status: async () => snapshot(),
  waitrefused: async ({ count = 1, timeout = 10 }) => {
    const started = Date.now()
    await waitFor(() => counters.wsRefused >= count, timeout * 1000, `${count} refused handshake(s)`)
    return { waitedMs: Date.now() - started, ...(await snapshot()) }
  },
  hold: async ({ on = true }) => {
    holdPushes = Boolean(on)
    return { holding: holdPushes }
  },
  waitheld: async ({ count = 1, timeout = 10 }) => {
    await waitFor(() => held.length >= count, timeout * 1000, `${count} held Push frame(s)`)
    return { held: held.length }
  },
  release: async () => {
    holdPushes = false
    const frames = held.splice(0)
    let sent = 0
    for (const { socket, data, rest } of frames) {
      // A frame held on a socket that has closed since is dropped: the client retries the push itself.
      if (socket.readyState === WsWebSocket.OPEN) {
        WsWebSocket.prototype.send.call(socket, data, ...rest)
        sent++
      }
    }
    return { released: sent, dropped: frames.length - sent }
  },
  shutdown: async () => {
    await shutdown(0)
  },
}

const shutdown = async (code) => {
  if (shuttingDown) return
  shuttingDown = true
  try {
    await withTimeout(store.shutdownPromise(), 10_000, 'store shutdown')
  } catch (error) {
    writeErr('shutdown error:', error)
  }
  emit({ event: 'bye' })
  process.stdout.write('', () => process.exit(code))
  setTimeout(() => process.exit(code), 500).unref()
}

emit({
  event: 'ready',
  clientId: opts['client-id'],
  storeId: opts['store-id'],
  transport,
  bootMs: Date.now() - bootStart,
  ...(await snapshot()),
})

// Commands run one at a time, in arrival order.
let queue = Promise.resolve()
const rl = createInterface({ input: process.stdin })
rl.on('line', (line) => {
  if (line.trim() === '') return
  let msg
  try {
    msg = JSON.parse(line)
  } catch (error) {
    emit({ event: 'error', id: null, error: `bad command line: ${error}` })
    return
  }
  queue = queue.then(async () => {
    const handler = commands[msg.cmd]
    if (handler === undefined) {
      emit({ event: 'error', id: msg.id ?? null, cmd: msg.cmd, error: `unknown command ${msg.cmd}` })
      return
    }
    try {
      const result = await handler(msg)
      emit({ event: 'ok', id: msg.id ?? null, cmd: msg.cmd, ...result })
    } catch (error) {
      let extra = {}
      try {
        extra = await snapshot()
      } catch {}
      emit({ event: 'error', id: msg.id ?? null, cmd: msg.cmd, error: String(error?.message ?? error), ...extra })
    }
  })
})
rl.on('close', () => {
  queue.then(() => shutdown(0))
})
