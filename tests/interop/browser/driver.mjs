// Drives headless Chromium (Debian's /usr/bin/chromium through playwright-core) for test_browser.py.
//
// One process is one browser. Each page runs in its own browser context (no shared storage), loads
// the bundled LiveStore app (app.js, built by build.mjs) from the URL the test gives, and is watched
// through a Chrome DevTools Protocol session: every request the page makes (WebSocket handshakes,
// fetches, CORS preflights) with its headers, the answers' statuses and headers, failures, and the
// page's console. The app itself is not modified or wrapped; only page.evaluate calls reach into it.
//
//   stdin  (one JSON object a line):  {"id": 1, "cmd": "open", "page": "A", "url": "http://..."}
//   stdout (one JSON object a line):  {"event": "ok", "id": 1, ...} or {"event": "error", "id": 1, "error": "..."}
//
// Unsolicited: {"event":"ready", "browser": VERSION} once Chromium runs; {"event":"fatal", ...} before
// a non-zero exit. Diagnostics go to stderr.
//
// Commands (each reply carries the command's "id"):
//   open   {page, url, boot=true, timeout=30}  open `url` in a new context; with boot, wait until
//                                               app.booted resolved (the store is running)
//   commit {page, prefix, count, start=1}      app.commit: todoCreated events PREFIX-START..
//   wait   {page, rows, timeout=30}            until the page has >= rows rows, the sync backend
//                                               confirmed >= rows events and nothing is pending
//   waitconnected {page, timeout=30}           until the sync backend reports isConnected
//   waitnet {page, kind, status?, method?, count=1, timeout=30}
//                                               until `count` observed requests match (see `net`)
//   status {page}                               app.snapshot()
//   dump   {page}                               app.dump(): rows, confirmed eventlog, snapshot
//   net    {page}                               what the page sent and got on the network, and its
//                                               console: {requests: [...], console: [...]}
//   close  {page}                               shut the store down and close the page's context
//   shutdown                                    close the browser and exit 0
//
// Every wait has a timeout, and --max-lifetime ends the process in any case (exit 3). Closing stdin
// also shuts the browser down.

import { createInterface } from 'node:readline'
import { format, parseArgs } from 'node:util'

import { chromium } from 'playwright-core'

const writeErr = (...args) => process.stderr.write(`${format(...args)}\n`)
for (const name of ['log', 'info', 'warn', 'error', 'debug', 'trace']) console[name] = writeErr
const emit = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`)

let browser
let shuttingDown = false
const fail = (message, code = 2) => {
  emit({ event: 'fatal', error: String(message) })
  const exit = () => process.stdout.write('', () => process.exit(code))
  if (browser === undefined) exit()
  else browser.close().finally(exit)
  setTimeout(() => process.exit(code), 5000).unref()
}

const { values: opts } = parseArgs({
  options: {
    chromium: { type: 'string', default: '/usr/bin/chromium' },
    'max-lifetime': { type: 'string', default: '120' },
  },
  strict: true,
})
setTimeout(() => fail(`max lifetime of ${opts['max-lifetime']} s exceeded`, 3), Number(opts['max-lifetime']) * 1000).unref()

// playwright-core launches with a fresh temporary --user-data-dir of its own (and removes it on close),
// headless, without the sandbox; the flags below are the ones this machine's Chromium needs besides.
try {
  browser = await chromium.launch({
    executablePath: opts.chromium,
    headless: true,
    chromiumSandbox: false,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    timeout: 30_000,
  })
} catch (error) {
  fail(`cannot launch ${opts.chromium}: ${error?.message ?? error}`)
  await new Promise(() => {})
}
browser.on('disconnected', () => {
  if (!shuttingDown) fail('the browser disconnected')
})

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

// -------------------------------------------------------------------------------------------------
// Pages and what they do on the network

const pages = new Map() // name -> {context, page, requests: Map(requestId -> record), console: []}

const headersOf = (h) => Object.fromEntries(Object.entries(h ?? {}).map(([k, v]) => [k.toLowerCase(), v]))

// One record per request, in the order the page made them:
//   {kind: 'websocket'|'preflight'|'fetch'|'other', method, url, requestHeaders, status, responseHeaders,
//    error, corsError}
const watchNetwork = async (context, page, entry) => {
  const cdp = await context.newCDPSession(page)
  const record = (id, fields) => {
    let r = entry.requests.get(id)
    if (r === undefined) {
      r = { kind: 'other', method: null, url: null, requestHeaders: {}, status: null, responseHeaders: {}, error: null, corsError: null }
      entry.requests.set(id, r)
    }
    Object.assign(r, fields)
    return r
  }
  cdp.on('Network.requestWillBeSent', (e) => {
    // A CORS preflight is an OPTIONS request the page never made itself (Chromium reports it with
    // the type of the request it precedes, or none).
    const preflight = e.request.method === 'OPTIONS' && 'Access-Control-Request-Method' in (e.request.headers ?? {})
    const kind = preflight || e.type === 'Preflight' ? 'preflight' : e.type === 'Fetch' ? 'fetch' : 'other'
    record(e.requestId, { kind, method: e.request.method, url: e.request.url, requestHeaders: headersOf(e.request.headers) })
  })
  // The headers the network stack really sent (Origin, Sec-Fetch-*, ...), which requestWillBeSent lacks.
  cdp.on('Network.requestWillBeSentExtraInfo', (e) => {
    const r = record(e.requestId, {})
    Object.assign(r.requestHeaders, headersOf(e.headers))
  })
  cdp.on('Network.responseReceived', (e) => {
    record(e.requestId, { status: e.response.status, responseHeaders: headersOf(e.response.headers) })
  })
  cdp.on('Network.responseReceivedExtraInfo', (e) => {
    const r = record(e.requestId, {})
    if (r.status === null) r.status = e.statusCode
    Object.assign(r.responseHeaders, headersOf(e.headers))
  })
  cdp.on('Network.loadingFailed', (e) => {
    record(e.requestId, { error: e.errorText, corsError: e.corsErrorStatus?.corsError ?? null })
  })
  cdp.on('Network.webSocketCreated', (e) => {
    record(e.requestId, { kind: 'websocket', method: 'GET', url: e.url })
  })
  cdp.on('Network.webSocketWillSendHandshakeRequest', (e) => {
    record(e.requestId, { requestHeaders: headersOf(e.request.headers) })
  })
  cdp.on('Network.webSocketHandshakeResponseReceived', (e) => {
    record(e.requestId, { status: e.response.status, responseHeaders: headersOf(e.response.headers) })
  })
  // A refused handshake (any status but 101) gets no webSocketHandshakeResponseReceived: Chromium
  // reports it as a frame error, "Error during WebSocket handshake: Unexpected response code: 403".
  cdp.on('Network.webSocketFrameError', (e) => {
    const refused = /Unexpected response code: (\d+)/.exec(e.errorMessage ?? '')
    const r = record(e.requestId, { error: e.errorMessage })
    if (refused !== null && r.status === null) r.status = Number(refused[1])
  })
  await cdp.send('Network.enable')
}

const matches = (r, { kind, status, method }) =>
  r.kind === kind && (status === undefined || r.status === status) && (method === undefined || r.method === method)

const pageOf = (name) => {
  const entry = pages.get(name)
  if (entry === undefined) throw new Error(`no page ${name}`)
  return entry
}

const evaluate = (name, fn, arg) => pageOf(name).page.evaluate(fn, arg)

const syncedAtLeast = (rows) => async (snap) =>
  snap.rowCount >= rows && snap.sync.pending === 0 && snap.sync.upstreamHead >= rows

const snapshotOf = async (name) => {
  const snap = await evaluate(name, () => window.app.snapshot())
  const fatal = await evaluate(name, () => window.app.fatal)
  if (fatal !== null) throw new Error(`the store shut down by itself: ${fatal}`)
  return snap
}

const commands = {
  open: async ({ page: name, url, boot = true, timeout = 30 }) => {
    if (pages.has(name)) throw new Error(`page ${name} is already open`)
    const context = await browser.newContext()
    const page = await context.newPage()
    const entry = { context, page, requests: new Map(), console: [] }
    pages.set(name, entry)
    page.on('console', (msg) => {
      entry.console.push(`${msg.type()}: ${msg.text()}`)
      if (entry.console.length > 500) entry.console.shift()
    })
    page.on('pageerror', (error) => entry.console.push(`pageerror: ${error?.stack ?? error}`))
    await watchNetwork(context, page, entry)
    const started = Date.now()
    await page.goto(url, { waitUntil: 'load', timeout: timeout * 1000 })
    if (!boot) return { url: page.url() }
    const info = await page.evaluate(
      ({ ms }) =>
        Promise.race([
          window.app.booted,
          new Promise((_, reject) => setTimeout(() => reject(new Error(`store boot took over ${ms} ms`)), ms)),
        ]),
      { ms: timeout * 1000 },
    )
    return { ...info, url: page.url(), bootMs: Date.now() - started, ...(await snapshotOf(name)) }
  },
  commit: async ({ page, prefix, count, start = 1 }) => {
    const rowCount = await evaluate(page, ([p, c, s]) => window.app.commit(p, c, s), [prefix, count, start])
    return { committed: count, rowCount }
  },
  wait: async ({ page, rows, timeout = 30 }) => {
    const started = Date.now()
    const done = syncedAtLeast(rows)
    let snap
    await waitFor(async () => done((snap = await snapshotOf(page))), timeout * 1000, `${rows} rows confirmed`).catch(
      (error) => {
        throw new Error(`${error.message}; last: ${JSON.stringify(snap)}`)
      },
    )
    return { waitedMs: Date.now() - started, ...snap }
  },
  waitconnected: async ({ page, timeout = 30 }) => {
    const started = Date.now()
    let snap
    await waitFor(async () => (snap = await snapshotOf(page)).network.isConnected, timeout * 1000, 'isConnected')
    return { waitedMs: Date.now() - started, ...snap }
  },
  waitnet: async ({ page, kind, status, method, count = 1, timeout = 30 }) => {
    const entry = pageOf(page)
    const found = () => [...entry.requests.values()].filter((r) => matches(r, { kind, status, method }))
    await waitFor(() => found().length >= count, timeout * 1000, `${count} ${kind} request(s) (status ${status})`)
    return { requests: found() }
  },
  status: async ({ page }) => snapshotOf(page),
  dump: async ({ page }) => {
    await snapshotOf(page)
    return evaluate(page, () => window.app.dump())
  },
  net: async ({ page }) => {
    const entry = pageOf(page)
    return { requests: [...entry.requests.values()], console: [...entry.console] }
  },
  close: async ({ page: name }) => {
    const entry = pageOf(name)
    await entry.page.evaluate(() => window.app.shutdown?.()).catch((error) => writeErr(`${name}: shutdown:`, error))
    await entry.context.close()
    pages.delete(name)
    return {}
  },
  shutdown: async () => {
    await shutdown(0)
  },
}

const shutdown = async (code) => {
  if (shuttingDown) return
  shuttingDown = true
  await browser.close().catch((error) => writeErr('browser close:', error))
  emit({ event: 'bye' })
  process.stdout.write('', () => process.exit(code))
  setTimeout(() => process.exit(code), 500).unref()
}

emit({ event: 'ready', browser: browser.version() })

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
      let consoleTail = []
      const entry = pages.get(msg.page)
      if (entry !== undefined) consoleTail = entry.console.slice(-30)
      emit({ event: 'error', id: msg.id ?? null, cmd: msg.cmd, error: String(error?.message ?? error), console: consoleTail })
    }
  })
})
rl.on('close', () => {
  queue.then(() => shutdown(0))
})
