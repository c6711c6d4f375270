// The @livestore/sync-cf RPC groups, declared with Effect 4's Schema and effect/unstable/rpc.
//
// These mirror LiveStore main (the release after 0.4.0, on effect 4.0.0-beta.99):
//   packages/@livestore/sync-cf/src/common/ws-rpc-schema.ts    (SyncWsRpc)
//   packages/@livestore/sync-cf/src/common/http-rpc-schema.ts  (SyncHttpRpc)
//   packages/@livestore/sync-cf/src/common/sync-message-types.ts
//   packages/@livestore/common/src/sync/errors.ts, src/errors.ts (the tagged errors)
//   packages/@livestore/common/src/sync/sync-backend.ts        (PullResPageInfo)
//   packages/@livestore/common/src/schema/LiveStoreEvent/global.ts (the event)
// Title annotations and brands are left out: they do not change the JSON on the wire.

import { Schema } from 'effect'
import { Rpc, RpcGroup } from 'effect/unstable/rpc'

// Global event sequence numbers: integers (a float or a string fails decoding).
const SeqNum = Schema.Int
const BackendId = Schema.String

export const EventEncoded = Schema.Struct({
  name: Schema.String,
  args: Schema.Any,
  seqNum: SeqNum,
  parentSeqNum: SeqNum,
  clientId: Schema.String,
  sessionId: Schema.String,
})

export const SyncMetadata = Schema.TaggedStruct('SyncMessage.SyncMetadata', {
  createdAt: Schema.String,
})

export const PullResPageInfo = Schema.Union([
  Schema.TaggedStruct('MoreUnknown', {}),
  Schema.TaggedStruct('MoreKnown', { remaining: Schema.Finite }),
  Schema.TaggedStruct('NoMore', {}),
])

export const PullResponse = Schema.Struct({
  batch: Schema.Array(
    Schema.Struct({
      eventEncoded: EventEncoded,
      metadata: Schema.Option(SyncMetadata),
    }),
  ),
  pageInfo: PullResPageInfo,
  backendId: BackendId,
})

const PullRequestFields = {
  cursor: Schema.Option(
    Schema.Struct({
      backendId: BackendId,
      eventSequenceNumber: SeqNum,
    }),
  ),
}

const PushRequestFields = {
  batch: Schema.Array(EventEncoded),
  backendId: Schema.Option(BackendId),
}

export const PushAck = Schema.Struct({})
export const Pong = Schema.TaggedStruct('SyncMessage.Pong', {})

export class UnknownError extends Schema.TaggedErrorClass('~@livestore/common/UnknownError')('UnknownError', {
  cause: Schema.Defect(),
  note: Schema.optional(Schema.String),
  payload: Schema.optional(Schema.Any),
}) {}

export class BackendIdMismatchError extends Schema.TaggedErrorClass('~@livestore/common/BackendIdMismatchError')(
  'BackendIdMismatchError',
  { expected: BackendId, received: BackendId },
) {}

export class ServerAheadError extends Schema.TaggedErrorClass('~@livestore/common/ServerAheadError')(
  'ServerAheadError',
  { minimumExpectedNum: SeqNum, providedNum: SeqNum },
) {}

const storeFields = {
  storeId: Schema.String,
  payload: Schema.optional(Schema.Json),
}

export class SyncWsRpc extends RpcGroup.make(
  Rpc.make('SyncWsRpc.Pull', {
    payload: Schema.Struct({ ...storeFields, live: Schema.Boolean, ...PullRequestFields }),
    success: PullResponse,
    error: Schema.Union([UnknownError, BackendIdMismatchError]),
    stream: true,
  }),
  Rpc.make('SyncWsRpc.Push', {
    payload: Schema.Struct({ ...storeFields, ...PushRequestFields }),
    success: PushAck,
    error: Schema.Union([UnknownError, ServerAheadError, BackendIdMismatchError]),
  }),
) {}

export class SyncHttpRpc extends RpcGroup.make(
  Rpc.make('SyncHttpRpc.Pull', {
    payload: Schema.Struct({ ...storeFields, ...PullRequestFields }),
    success: PullResponse,
    error: Schema.Union([UnknownError, BackendIdMismatchError]),
    stream: true,
  }),
  Rpc.make('SyncHttpRpc.Push', {
    payload: Schema.Struct({ ...storeFields, ...PushRequestFields }),
    success: PushAck,
    error: Schema.Union([UnknownError, ServerAheadError, BackendIdMismatchError]),
  }),
  Rpc.make('SyncHttpRpc.Ping', {
    payload: Schema.Struct(storeFields),
    success: Pong,
    error: UnknownError,
  }),
) {}

// The sync URL's query parameters (sync-cf common/mod.ts SearchParamsSchema): the payload is
// JSON, then encodeURIComponent'ed, then form-encoded with the rest by UrlParams.toString, so it
// reaches the server percent-encoded twice.
export const SearchParams = Schema.Struct({
  storeId: Schema.String,
  payload: Schema.optional(Schema.StringFromUriComponent.pipe(Schema.decodeTo(Schema.fromJsonString(Schema.Json)))),
  transport: Schema.Literals(['http', 'ws']),
})
