// Prints the gateway's event schema file (`[rules] event_schemas`, README "Push rules and validation") for the
// test app's events: a JSON object mapping each synced event's name to the JSON Schema of its `args`, made from
// the app's own Effect Schema definitions with effect's `JSONSchema.make`.
//
//   node tests/interop/event_schemas.mjs > event-schemas.json
//
// An app does the same with its own `events` object (the one it passes to makeSchema).

import { JSONSchema } from 'effect'
import { events } from './app_events.mjs'

const schemas = {}
for (const definition of Object.values(events)) {
  if (definition.options?.clientOnly) continue // never pushed to a sync server
  schemas[definition.name] = JSONSchema.make(definition.schema)
}
process.stdout.write(`${JSON.stringify(schemas, null, 2)}\n`)
