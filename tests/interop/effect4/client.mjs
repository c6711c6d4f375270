// A sync-cf RPC test client on Effect 4 (effect 4.0.0-beta.99, effect/unstable/rpc), for
// test_effect4.py.
//
// LiveStore's release after 0.4.0 speaks the Cloudflare sync protocol through Effect 4's RPC
// framing, which differs from Effect 3's (@effect/rpc 0.75): numeric request ids, a cause that is an
// array of reasons, and so on (see the README next to this file). No LiveStore build on Effect 4 is
// published, so this client declares the same RPC groups (schemas.mjs) and talks to the server
// through the package's own RpcClient, RpcSerialization.json and protocols: the stock socket protocol
// (RpcClient.layerProtocolSocket over effect/unstable/socket's WebSocket) or the HTTP one
// (RpcClient.layerProtocolHttp over FetchHttpClient). The URL is built as sync-cf builds it:
// `URL?storeId=…[&payload=…]&transport=ws|http`.
//
//   stdin  (one JSON object a line):  {"id": 1, "cmd": "push", "events": [...], "backendId": null}
//   stdout (one JSON object a line):  replies carrying the command's "id"
//
// Replies (every command ends with exactly one of ok / failure / error / stopped):
//   {"event":"ok","id":N,"cmd":C,...}               success (push: "value" is the decoded PushAck)
//   {"event":"failure","id":N,"cmd":C,"error":{...}} a typed failure from the RPC's error union,
//                                                    re-encoded with its schema: {"_tag":"ServerAheadError",
//                                                    "minimumExpectedNum":2,"providedNum":0}
//   {"event":"error","id":N,"cmd":C,"kind":K,"error":"..."}  anything else: K is "defect" (a Die
//                                                    cause, a decode failure), "rpc" (RpcClientError:
//                                                    socket, HTTP or protocol error) or "command"
//   {"event":"item","id":N,"response":{...}}        one PullResponse of pull N, re-encoded with its schema
//   {"event":"stopped","id":N,"cmd":"pull"}         pull N ended by a `stop` command
// Unsolicited: {"event":"ready",...} once the RPC client is built; {"event":"fatal",...} before a
// non-zero exit; {"event":"bye"} after `shutdown`.
//
// Commands (they run concurrently; replies are matched by id):
//   push   {events, backendId=null}          SyncWsRpc.Push / SyncHttpRpc.Push with this batch; the
//                                            backendId (a string or null) becomes the Option
//   pull   {cursor=null, live=false}         SyncWsRpc.Pull / SyncHttpRpc.Pull (HTTP has no `live`);
//                                            cursor is null or {backendId, eventSequenceNumber}. Items
//                                            stream as "item" lines; a live pull runs until `stop`
//   stop   {pull}                            interrupt pull N (the client then sends Interrupt)
//   ping                                     SyncHttpRpc.Ping (HTTP only)
//   frames                                   every frame sent and received so far: {"sent":[...],
//                                            "received":[...]} (WebSocket text frames, or HTTP request
//                                            and response bodies), parsed as JSON where possible
//   shutdown                                 close the client (its scope) and exit 0
//
// --url BASE (ws://HOST:PORT/ or http://HOST:PORT/), --store-id, --transport ws|http,
// --sync-payload JSON (or env INTEROP_SYNC_PAYLOAD): the `payload` sent in the URL and in every RPC.
// A watchdog ends the process after --max-lifetime seconds (exit 3); closing stdin shuts it down.
//
// Node 20 has no global WebSocket: the `ws` package's class is installed as globalThis.WebSocket
// before effect/unstable/socket is loaded (layerWebSocketConstructorGlobal reads it).

import { createInterface } from 'node:readline'
import { format, parseArgs } from 'node:util'

const writeErr = (...args) => process.stderr.write(`${format(...args)}\n`)
for (const name of ['log', 'info', 'warn', 'error', 'debug', 'trace', 'dir', 'table']) {
  console[name] = writeErr
}
const emit = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`)

const exitSoon = (code) => {
  process.stdout.write('', () => process.exit(code))
  setTimeout(() => process.exit(code), 500).unref()
}
const fail = (message, code = 2) => {
  emit({ event: 'fatal', error: String(message) })
  exitSoon(code)
}

const { values: opts } = parseArgs({
  options: {
    url: { type: 'string' },
    'store-id': { type: 'string', default: 'effect4-store' },
    transport: { type: 'string', default: 'ws' },
    'sync-payload': { type: 'string' },
    'max-lifetime': { type: 'string', default: '120' },
    'log-frames': { type: 'boolean', default: false },
    selfcheck: { type: 'boolean', default: false },
  },
  strict: true,
})

setTimeout(() => fail(`max lifetime of ${opts['max-lifetime']} s exceeded`, 3), Number(opts['max-lifetime']) * 1000).unref()

// ---------------------------------------------------------------------------------------------------------
// Network tap: every WebSocket frame and HTTP body, in both directions (the `frames` command).
const FRAME_LIMIT = 2000
const frames = { sent: [], received: [] }
const record = (list, direction, data) => {
  const text = typeof data === 'string' ? data : Buffer.from(data).toString('utf8')
  if (opts['log-frames']) writeErr(`[${direction}] ${text.slice(0, 2000)}`)
  let value
  try {
    value = JSON.parse(text)
  } catch {
    value = { unparsed: text }
  }
  list.push(value)
  if (list.length > FRAME_LIMIT) list.shift()
}

const { WebSocket: WsWebSocket } = await import('ws')
class TappedWebSocket extends WsWebSocket {
  constructor(...args) {
    super(...args)
    this.addEventListener('message', (ev) => record(frames.received, 'frame in', ev.data))
  }

  send(data, ...rest) {
    record(frames.sent, 'frame out', data)
    return super.send(data, ...rest)
  }
}
globalThis.WebSocket = TappedWebSocket

const baseFetch = globalThis.fetch
globalThis.fetch = async (input, init) => {
  if (init?.body !== undefined && init.body !== null) {
    record(frames.sent, 'http out', typeof init.body === 'string' ? init.body : new Uint8Array(init.body))
  }
  const res = await baseFetch(input, init)
  record(frames.received, `http ${res.status} in`, await res.clone().text())
  return res
}

// ---------------------------------------------------------------------------------------------------------
// Effect 4 (imported only now, after the polyfill).
const { Cause, Deferred, Effect, Exit, Fiber, Layer, Option, Schema, Stream } = await import('effect')
const { RpcClient, RpcSerialization } = await import('effect/unstable/rpc')
const { Socket } = await import('effect/unstable/socket')
const { FetchHttpClient, HttpClient, HttpClientRequest, UrlParams } = await import('effect/unstable/http')
const schemas = await import('./schemas.mjs')

if (opts.selfcheck) {
  const { readFileSync } = await import('node:fs')
  const effectVersion = JSON.parse(
    readFileSync(new URL('./node_modules/effect/package.json', import.meta.url), 'utf8'),
  ).version
  emit({
    event: 'selfcheck',
    node: process.version,
    effect: effectVersion,
    rpcClient: typeof RpcClient.make,
    webSocket: typeof globalThis.WebSocket,
  })
  exitSoon(0)
  await new Promise(() => {})
}

if (opts.url === undefined) fail('--url is required')
const transport = opts.transport
if (transport !== 'ws' && transport !== 'http') fail(`unknown --transport ${transport}`)
const storeId = opts['store-id']

const syncPayloadText = opts['sync-payload'] ?? process.env.INTEROP_SYNC_PAYLOAD
let payload
if (syncPayloadText !== undefined && syncPayloadText !== '') {
  try {
    payload = JSON.parse(syncPayloadText)
  } catch (error) {
    fail(`--sync-payload is not JSON: ${error}`)
  }
}
// `payload` is an optional key: absent, not undefined, when there is none.
const storeFields = payload === undefined ? { storeId } : { storeId, payload }

const urlParams = UrlParams.fromInput(Schema.encodeSync(schemas.SearchParams)({ ...storeFields, transport }))

const Group = transport === 'ws' ? schemas.SyncWsRpc : schemas.SyncHttpRpc
const tag = (name) => `${transport === 'ws' ? 'SyncWsRpc' : 'SyncHttpRpc'}.${name}`

const ProtocolLive =
  transport === 'ws'
    ? RpcClient.layerProtocolSocket().pipe(
        Layer.provide(Socket.layerWebSocket(`${opts.url}?${UrlParams.toString(urlParams)}`)),
        Layer.provide(Socket.layerWebSocketConstructorGlobal),
        Layer.provide(RpcSerialization.layerJson),
      )
    : RpcClient.layerProtocolHttp({
        url: opts.url,
        transformClient: HttpClient.mapRequest((request) =>
          request.pipe(
            HttpClientRequest.appendUrlParams(urlParams),
            HttpClientRequest.setHeaders({ 'x-livestore-store-id': storeId }),
          ),
        ),
      }).pipe(Layer.provide(RpcSerialization.layerJson), Layer.provide(FetchHttpClient.layer))

// ---------------------------------------------------------------------------------------------------------
// Results as JSON lines.
const encodePullResponse = Schema.encodeSync(Schema.toCodecJson(schemas.PullResponse))
const encodePushAck = Schema.encodeSync(Schema.toCodecJson(schemas.PushAck))
const encodePong = Schema.encodeSync(Schema.toCodecJson(schemas.Pong))
const typedErrors = {
  ServerAheadError: Schema.encodeSync(Schema.toCodecJson(schemas.ServerAheadError)),
  BackendIdMismatchError: Schema.encodeSync(Schema.toCodecJson(schemas.BackendIdMismatchError)),
  UnknownError: Schema.encodeSync(Schema.toCodecJson(schemas.UnknownError)),
}

const isTypedError = (error) =>
  error instanceof schemas.ServerAheadError ||
  error instanceof schemas.BackendIdMismatchError ||
  error instanceof schemas.UnknownError

// A cause's message without its JavaScript stack frames (they name only Effect internals).
const withoutStack = (text) =>
  text
    .split('\n')
    .filter((line) => !/^\s+at .*(:\d+:\d+\)?|\(native\)|<anonymous>\)?)$/.test(line))
    .join('\n')

const describeCause = (cause) => {
  const found = Cause.findError(cause)
  if (found._tag === 'Success') {
    const error = found.success
    if (isTypedError(error)) return { event: 'failure', error: typedErrors[error._tag](error) }
    const reason = error?.reason
    return {
      event: 'error',
      kind: error?._tag === 'RpcClientError' ? 'rpc' : 'failure',
      error: String(error?.message ?? error),
      ...(reason === undefined ? {} : { reason: String(reason?._tag ?? reason) }),
    }
  }
  if (Cause.hasInterruptsOnly(cause)) return { event: 'error', kind: 'interrupt', error: withoutStack(Cause.pretty(cause)) }
  return { event: 'error', kind: 'defect', error: withoutStack(Cause.pretty(cause)) }
}

const optionOf = (value) => (value === null || value === undefined ? Option.none() : Option.some(value))

// ---------------------------------------------------------------------------------------------------------
const main = Effect.gen(function* () {
  const context = yield* Layer.build(ProtocolLive)
  const client = yield* RpcClient.make(Group).pipe(Effect.provide(context))
  const done = yield* Deferred.make()
  const pulls = new Map() // command id -> { fiber, stopped }

  const run = (msg, effect, onSuccess) => {
    const fiber = Effect.runFork(Effect.exit(effect))
    fiber.addObserver((exit) => {
      const result = exit.value // Effect.exit never fails
      const pull = pulls.get(msg.id)
      pulls.delete(msg.id)
      if (pull?.stopped) {
        emit({ event: 'stopped', id: msg.id, cmd: msg.cmd })
      } else if (Exit.isSuccess(result)) {
        emit({ event: 'ok', id: msg.id, cmd: msg.cmd, ...onSuccess(result.value) })
      } else {
        emit({ id: msg.id, cmd: msg.cmd, ...describeCause(result.cause) })
      }
    })
    return fiber
  }

  const commands = {
    push: (msg) =>
      run(
        msg,
        client[tag('Push')]({ ...storeFields, batch: msg.events ?? [], backendId: optionOf(msg.backendId) }),
        (ack) => ({ value: encodePushAck(ack) }),
      ),
    pull: (msg) => {
      let items = 0
      const request = {
        ...storeFields,
        cursor: optionOf(msg.cursor),
        ...(transport === 'ws' ? { live: msg.live === true } : {}),
      }
      const effect = client[tag('Pull')](request).pipe(
        Stream.runForEach((response) =>
          Effect.sync(() => {
            items++
            emit({ event: 'item', id: msg.id, response: encodePullResponse(response) })
          }),
        ),
      )
      const entry = { fiber: undefined, stopped: false }
      pulls.set(msg.id, entry)
      entry.fiber = run(msg, effect, () => ({ items }))
    },
    stop: (msg) => {
      const entry = pulls.get(msg.pull)
      if (entry === undefined) {
        emit({ event: 'error', id: msg.id, cmd: msg.cmd, kind: 'command', error: `no running pull ${msg.pull}` })
        return
      }
      entry.stopped = true
      Effect.runFork(Fiber.interrupt(entry.fiber)).addObserver(() =>
        emit({ event: 'ok', id: msg.id, cmd: msg.cmd, pull: msg.pull }),
      )
    },
    ping: (msg) => {
      if (transport !== 'http') {
        emit({ event: 'error', id: msg.id, cmd: msg.cmd, kind: 'command', error: 'ping is an HTTP RPC' })
        return
      }
      run(msg, client['SyncHttpRpc.Ping'](storeFields), (pong) => ({ value: encodePong(pong) }))
    },
    frames: (msg) => emit({ event: 'ok', id: msg.id, cmd: msg.cmd, sent: frames.sent, received: frames.received }),
    shutdown: () => Effect.runFork(Deferred.succeed(done, undefined)),
  }

  const rl = createInterface({ input: process.stdin })
  rl.on('line', (line) => {
    if (line.trim() === '') return
    let msg
    try {
      msg = JSON.parse(line)
    } catch (error) {
      emit({ event: 'error', id: null, kind: 'command', error: `bad command line: ${error}` })
      return
    }
    const handler = commands[msg.cmd]
    if (handler === undefined) {
      emit({ event: 'error', id: msg.id ?? null, cmd: msg.cmd, kind: 'command', error: `unknown command ${msg.cmd}` })
      return
    }
    try {
      handler(msg)
    } catch (error) {
      emit({ event: 'error', id: msg.id ?? null, cmd: msg.cmd, kind: 'command', error: String(error?.stack ?? error) })
    }
  })
  rl.on('close', () => Effect.runFork(Deferred.succeed(done, undefined)))

  emit({ event: 'ready', storeId, transport, url: opts.url })
  yield* Deferred.await(done)
})

Effect.runPromiseExit(Effect.scoped(main)).then((exit) => {
  if (Exit.isSuccess(exit)) {
    emit({ event: 'bye' })
    exitSoon(0)
  } else {
    fail(`client failed: ${Cause.pretty(exit.cause)}`)
  }
})
