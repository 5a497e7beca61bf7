// Registry semantics seen through the official Node SDK: function ownership
// conflicts, introspection builtins, availability trigger types,
// unregistertriggertype (spec §2.2, §3.2, §4.6.9, §5.1).
import assert from 'node:assert/strict'
import { call, engineTest, listFunctions, shutdownWorker, waitFunction, waitUntil } from '../lib/harness.mjs'

engineTest('function id conflict: first owner keeps it, refused worker not promoted', async ({ worker }) => {
  const a = await worker('node-owner-1')
  const c = await worker('node-conflict-caller')
  a.registerFunction('nodeconf::f', async () => 'first')
  await waitFunction(c, 'nodeconf::f')
  const b = await worker('node-owner-2')
  b.registerFunction('nodeconf::f', async () => 'second')
  b.registerFunction('nodeconf::other', async () => 'b-other')
  // Node 0.22.1 ignores registrationrejected: the refused function is simply absent,
  // the rest of its registrations proceed and the connection stays up.
  await waitFunction(c, 'nodeconf::other')
  assert.equal(await call(c, 'nodeconf::other', {}), 'b-other')
  for (let i = 0; i < 5; i++) assert.equal(await call(c, 'nodeconf::f', {}), 'first')
  const entry = (await listFunctions(c)).find((f) => f.function_id === 'nodeconf::f')
  assert.equal(entry.worker_name, 'node-owner-1')
  await shutdownWorker(a)
  await waitFunction(c, 'nodeconf::f', false)
  const err = await call(c, 'nodeconf::f', {}).then(
    () => assert.fail('expected function_not_found'),
    (e) => e,
  )
  assert.equal(err.code, 'function_not_found')
})

engineTest('introspection builtins: functions::info schemas/metadata, internal hiding, registered triggers', async ({ worker }) => {
  const w = await worker('node-intro')
  const schema = { type: 'object', properties: { a: { type: 'number' } }, required: ['a'] }
  const outSchema = { type: 'object', properties: { c: { type: 'number' } } }
  w.registerFunction('nodeintro::add', async (d) => ({ c: d.a }), {
    description: 'adds',
    request_format: schema,
    response_format: outSchema,
    metadata: { owner: 'team-x' },
  })
  w.registerFunction('nodeintro::hidden', async () => null, { metadata: { internal: true } })
  w.registerFunction('nodeintro::http', async () => ({ body: 'x' }))
  w.registerTrigger({ type: 'http', function_id: 'nodeintro::http', config: { api_path: 'nintro/x', http_method: 'GET' } })
  await waitFunction(w, 'nodeintro::add')

  const info = await call(w, 'engine::functions::info', { function_id: 'nodeintro::add' })
  assert.deepEqual(info.request_schema, schema)
  assert.deepEqual(info.response_schema, outSchema)
  assert.deepEqual(info.metadata, { owner: 'team-x' })
  assert.equal(info.description, 'adds')
  assert.deepEqual(info.registered_triggers, [])

  const ids = new Set((await listFunctions(w)).map((f) => f.function_id))
  assert.ok(!ids.has('nodeintro::hidden'))
  const all = (await call(w, 'engine::functions::list', { include_internal: true })).functions.map((f) => f.function_id)
  assert.ok(all.includes('nodeintro::hidden'))

  const reg = await waitUntil(
    async () => (await call(w, 'engine::registered-triggers::list', {})).registered_triggers.find((r) => r.function_id === 'nodeintro::http'),
    { what: 'http binding in engine::registered-triggers::list' },
  )
  assert.equal(reg.trigger_type, 'http')
  assert.deepEqual(reg.config, { api_path: 'nintro/x', http_method: 'GET' })
  assert.equal(reg.worker_name, 'node-intro')
  const hinfo = await call(w, 'engine::functions::info', { function_id: 'nodeintro::http' })
  assert.deepEqual(
    hinfo.registered_triggers.map((t) => t.trigger_type),
    ['http'],
  )
  const err = await call(w, 'engine::functions::info', { function_id: 'nodeintro::nope' }).then(
    () => assert.fail('expected NOT_FOUND'),
    (e) => e,
  )
  assert.equal(err.code, 'NOT_FOUND')
})

engineTest('worker trigger type listed; unregisterTriggerType removes it', async ({ worker }) => {
  const p = await worker('node-type-owner')
  const type = { id: 'nodetest-listed', description: 'a listed type' }
  const ref = p.registerTriggerType(type, { registerTrigger: async () => {}, unregisterTrigger: async () => {} })
  const listed = async () => (await call(p, 'engine::triggers::list', {})).triggers.find((t) => t.id === 'nodetest-listed')
  const t = await waitUntil(listed, { what: 'trigger type listed' })
  assert.equal(t.description, 'a listed type')
  assert.equal(t.worker_name, 'node-type-owner')
  ref.unregister()
  await waitUntil(async () => (await listed()) === undefined, { what: 'trigger type removed after unregistertriggertype' })
})

engineTest('engine::workers-available trigger fires with metadata', async ({ worker }) => {
  const watcher = await worker('node-avail-watcher')
  const events = []
  watcher.registerFunction('nodeavail::on', async (d, metadata) => {
    events.push({ d, metadata })
    return null
  })
  watcher.registerTrigger({ type: 'engine::workers-available', function_id: 'nodeavail::on', config: {}, metadata: { watch: 1 } })
  await waitFunction(watcher, 'nodeavail::on')
  const x = await worker('node-avail-x')
  const xid = x.workerId
  const seen = (kind) => events.filter((e) => e.d?.event === kind && e.d?.worker_id === xid)
  await waitUntil(() => seen('worker_connected').length, { what: 'worker_connected event' })
  assert.deepEqual(seen('worker_connected')[0].metadata, { watch: 1 })
  await waitUntil(() => seen('worker_metadata_updated').length, { what: 'worker_metadata_updated event' })
  await shutdownWorker(x)
  await waitUntil(() => seen('worker_disconnected').length, { what: 'worker_disconnected event' })
})
