// The LiveStore 0.4.0 web app of the browser interop test (bundled by build.mjs, run by driver.mjs).
//
// An ordinary LiveStore app: @livestore/adapter-web's in-memory adapter, synced through the real
// `makeWsSync` or `makeHttpSync` of @livestore/sync-cf 0.4.0 with the browser's own WebSocket and
// fetch. Nothing in the network path is replaced or wrapped. The schema is client.mjs's (todos,
// v1.TodoCreated), so Node clients and this page share one store.
//
// The page reads its settings from its query string:
//   ?sync=<gateway URL, ws:// or http://>&store=<storeId>&client=<clientId>&transport=ws|http
//    &poll=<HTTP live-pull interval, ms>
// and exposes `window.app` for the driver's page.evaluate calls:
//   app.booted          a promise: resolves when the store has booted, rejects with the boot error
//   app.commit(prefix, count, start)   commit todoCreated events PREFIX-START..
//   app.snapshot()      {rowCount, sync: {upstreamHead, localHead, pending}, network: {isConnected}}
//   app.dump()          rows (rowid order), confirmed eventlog (seqNum order), snapshot
//   app.shutdown()      shut the store down
// `app.fatal` is set (a string) when the store shuts itself down (onSyncError: 'shutdown').

import { makeInMemoryAdapter } from '@livestore/adapter-web'
import {
  createStorePromise,
  Events,
  makeSchema,
  makeShutdownDeferred,
  Schema,
  State,
  StoreInternalsSymbol,
} from '@livestore/livestore'
import { makeHttpSync, makeWsSync } from '@livestore/sync-cf/client'
import { Cause, Deferred, Effect, Exit } from 'effect'

const todos = State.SQLite.table({
  name: 'todos',
  columns: {
    id: State.SQLite.text({ primaryKey: true }),
    text: State.SQLite.text({ default: '' }),
  },
})
const events = {
  todoCreated: Events.synced({
    name: 'v1.TodoCreated',
    schema: Schema.Struct({ id: Schema.String, text: Schema.String }),
  }),
}
const materializers = State.SQLite.materializers(events, {
  'v1.TodoCreated': ({ id, text }) => todos.insert({ id, text }),
})
const schema = makeSchema({ state: State.SQLite.makeState({ tables: { todos }, materializers }), events })

const params = new URLSearchParams(location.search)
const syncUrl = params.get('sync')
const storeId = params.get('store') ?? 'browser-store'
const clientId = params.get('client') ?? 'browser'
const transport = params.get('transport') ?? 'ws'
const pollInterval = Number(params.get('poll') ?? '500')

const backend =
  transport === 'http'
    ? makeHttpSync({ url: syncUrl, livePull: { pollInterval } })
    : makeWsSync({ url: syncUrl })

const app = { fatal: null }
window.app = app

const boot = async () => {
  const shutdownDeferred = await Effect.runPromise(makeShutdownDeferred)
  Effect.runPromise(Effect.exit(Deferred.await(shutdownDeferred))).then((exit) => {
    if (app.stopping) return
    app.fatal = Exit.isSuccess(exit) ? `intentional: ${JSON.stringify(exit.value)}` : Cause.pretty(exit.cause)
  })
  const store = await createStorePromise({
    adapter: makeInMemoryAdapter({
      clientId,
      sessionId: 'static',
      sync: { backend, onSyncError: 'shutdown' },
    }),
    schema,
    storeId,
    disableDevtools: true,
    shutdownDeferred,
  })
  const leader = store[StoreInternalsSymbol].clientSession.leaderThread

  // Rows in SQLite rowid order (see client.mjs: after a rebase this is not the eventlog order).
  const readRows = () => store.query({ query: 'SELECT id, text FROM todos ORDER BY rowid', bindValues: {} })

  const snapshot = async () => {
    const s = await Effect.runPromise(leader.syncState.get)
    const n = await Effect.runPromise(leader.networkStatus.get)
    return {
      rowCount: readRows().length,
      sync: { upstreamHead: s.upstreamHead.global, localHead: s.localHead.global, pending: s.pending.length },
      network: { isConnected: n.isConnected },
    }
  }

  const confirmedEvents = async (until) => {
    const out = []
    if (until === 0) return out
    for await (const ev of store.events({ until: { global: until, client: 0, rebaseGeneration: 0 } })) {
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

  app.commit = (prefix, count, start = 1) => {
    for (let i = start; i < start + count; i++) {
      const id = `${prefix}-${i}`
      store.commit(events.todoCreated({ id, text: `${id} from ${clientId}` }))
    }
    return readRows().length
  }
  app.snapshot = snapshot
  app.dump = async () => {
    const snap = await snapshot()
    return { rows: readRows(), events: await confirmedEvents(snap.sync.upstreamHead), ...snap }
  }
  app.shutdown = async () => {
    app.stopping = true
    await store.shutdownPromise()
  }
  return { clientId, storeId, transport }
}

app.booted = boot()
// Keep an unhandled rejection out of the console; the driver awaits app.booted itself.
app.booted.catch(() => {})
