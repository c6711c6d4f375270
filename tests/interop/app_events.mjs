// The test app's LiveStore schema pieces, shared by client.mjs (the app) and event_schemas.mjs (which
// derives the gateway's `[rules] event_schemas` file from the same definitions).
//
// Import it dynamically, after client.mjs has installed its WebSocket polyfill: it loads LiveStore.

import { Events, Schema, State } from '@livestore/livestore'

export const todos = State.SQLite.table({
  name: 'todos',
  columns: {
    id: State.SQLite.text({ primaryKey: true }),
    text: State.SQLite.text({ default: '' }),
  },
})

export const events = {
  todoCreated: Events.synced({
    name: 'v1.TodoCreated',
    schema: Schema.Struct({ id: Schema.String, text: Schema.String }),
  }),
}
