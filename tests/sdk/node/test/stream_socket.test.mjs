// The stream socket (spec §4.6.4) behind handlers and a custom stream written with the official
// Node SDK. iii-sdk 0.22.1 has no stream-socket client (its `stream` entry point only exports the
// `IStream` type); what it offers is `createStream` (a custom stream provider) and ordinary
// functions bound to `stream:join` / `stream:leave`. A plain `ws` client plays the browser.
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { createStream } from 'iii-sdk/helpers'
import WebSocket from 'ws'
import { call, engineTest, freePort, waitFunction, waitUntil } from '../lib/harness.mjs'

/** Restarts `engine` with a stream socket on a free port whose auth function is `auth`. */
async function withStreamSocket(engine, auth) {
  const port = await freePort()
  fs.appendFileSync(
    path.join(engine.dir, 'config.yaml'),
    '  - name: stream\n' +
      `    config: {port: ${port}, auth_function: ${auth}, adapter: {name: kv, config: {store_method: in_memory}}}\n`,
  )
  await engine.stop()
  await engine.start()
  return `ws://127.0.0.1:${port}/`
}

/** A client (sending `headers`) that queues every frame it gets; `next(sid)` waits for the
 * next one of `sid`; `ready` settles with the upgrade (rejects with the refusal's status and body). */
function open(url, headers = {}) {
  const ws = new WebSocket(url, { headers })
  const frames = []
  ws.on('message', (m) => frames.push(JSON.parse(m.toString())))
  const ready = new Promise((resolve, reject) => {
    ws.once('open', resolve)
    ws.once('error', reject)
    ws.once('unexpected-response', (_req, res) => {
      let body = ''
      res.on('data', (c) => (body += c))
      res.on('end', () => reject(Object.assign(new Error(`refused ${res.statusCode}`), { status: res.statusCode, body: JSON.parse(body) })))
    })
  })
  const next = async (sid) => {
    const i = await waitUntil(() => {
      const at = frames.findIndex((f) => f.subscriptionId === sid)
      return at >= 0 ? at + 1 : 0
    }, { what: `a frame for ${sid}` })
    return frames.splice(i - 1, 1)[0]
  }
  return { ws, ready, next }
}

engineTest('stream socket: auth context, join handler verdicts, custom-stream sync and events, leave on close', async ({ engine, worker }) => {
  const url = await withStreamSocket(engine, 'nodesock::auth')
  const w = await worker('node-stream-socket')
  const joins = []
  const leaves = []
  w.registerFunction('nodesock::auth', async (req) => {
    if (req.headers['x-user'] === undefined) throw new Error('who are you?')
    return { context: { user: req.headers['x-user'], tags: req.query_params.tag } }
  })
  w.registerFunction('nodesock::join', async (ev) => {
    joins.push(ev)
    return { unauthorized: ev.group_id === 'secret' }
  })
  w.registerFunction('nodesock::leave', async (ev) => {
    leaves.push(ev)
    return null
  })
  w.registerTrigger({ type: 'stream:join', function_id: 'nodesock::join', config: { stream_name: 'live' } })
  w.registerTrigger({ type: 'stream:leave', function_id: 'nodesock::leave', config: { stream_name: 'live' } })
  // The "live" stream lives in this worker (custom provider), not in the engine's kv.
  const items = new Map([['room/a', { n: 1 }]])
  createStream(w, 'live', {
    get: async ({ group_id, item_id }) => items.get(`${group_id}/${item_id}`) ?? null,
    set: async ({ group_id, item_id, data }) => {
      const old_value = items.get(`${group_id}/${item_id}`) ?? null
      items.set(`${group_id}/${item_id}`, data)
      return { old_value, new_value: data }
    },
    delete: async ({ group_id, item_id }) => {
      const old_value = items.get(`${group_id}/${item_id}`) ?? null
      items.delete(`${group_id}/${item_id}`)
      return { old_value }
    },
    list: async ({ group_id }) => [...items].filter(([k]) => k.startsWith(`${group_id}/`)).map(([, v]) => v),
    listGroups: async () => [...new Set([...items.keys()].map((k) => k.split('/')[0]))],
    update: async () => null,
  })
  await waitFunction(w, 'stream::list(live)')
  await waitFunction(w, 'nodesock::leave')
  await waitUntil(async () => {
    const r = await call(w, 'engine::registered-triggers::list', {})
    const types = new Set(r.registered_triggers.map((t) => t.trigger_type))
    return types.has('stream:join') && types.has('stream:leave')
  }, { what: 'join and leave triggers registered' })

  // No x-user header: the auth function throws and the upgrade is refused.
  const refused = open(url)
  const err = await refused.ready.then(() => null, (e) => e)
  assert.equal(err?.status, 401, `expected a 401 refusal, got ${err}`)
  assert.equal(err.body.error.code, 'stream_auth_failed')

  const { ws, ready, next } = open(url + '?tag=x&tag=y', { 'x-user': 'bea' })
  await ready

  ws.send(JSON.stringify({ type: 'join', data: { subscriptionId: 'g', streamName: 'live', groupId: 'room' } }))
  const sync = await next('g')
  assert.deepEqual(sync.event, { type: 'sync', data: [{ n: 1 }] }, 'sync reads the custom stream')
  assert.deepEqual(joins[0], { subscription_id: 'g', stream_name: 'live', group_id: 'room', id: null, context: { user: 'bea', tags: ['x', 'y'] } })

  await call(w, 'stream::set', { stream_name: 'live', group_id: 'room', item_id: 'b', data: { n: 2 } })
  const created = await next('g')
  assert.equal(created.id, 'b')
  assert.deepEqual(created.event, { type: 'create', data: { n: 2 } })
  assert.deepEqual(items.get('room/b'), { n: 2 }, 'the write went to the provider')

  ws.send(JSON.stringify({ type: 'join', data: { subscriptionId: 's', streamName: 'live', groupId: 'secret' } }))
  assert.deepEqual((await next('s')).event, { type: 'unauthorized' })

  ws.close()
  await waitUntil(() => leaves.length === 1, { what: 'leave handler called on close' })
  assert.deepEqual(leaves[0], { subscription_id: 'g', stream_name: 'live', group_id: 'room', id: null, context: { user: 'bea', tags: ['x', 'y'] } })
})
