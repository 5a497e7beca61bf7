// configuration::* and the `configuration` trigger through the official Node SDK (spec §5.5,
// §4.6.7): register, set valid and invalid values (the error names the JSON pointer), get with and
// without `raw`, list, schema, and the trigger.
import assert from 'node:assert/strict'
import { InvocationError } from 'iii-sdk'
import { call, engineTest, freePort, http, portOpen, waitFunction, waitUntil } from '../lib/harness.mjs'

// The engine inherits this process's environment.
process.env.III_NODE_CFG_URL = 'pg://node-env'

const SCHEMA = {
  type: 'object',
  required: ['url'],
  properties: {
    url: { type: 'string', minLength: 1 },
    pool: { type: 'object', properties: { size: { type: 'integer', minimum: 1 } } },
  },
}

const register = (w, id, initial) =>
  call(w, 'configuration::register', { id, name: 'Node DB', description: 'node test', schema: SCHEMA, initial_value: initial })

async function refused(w, fid, payload) {
  const err = await call(w, fid, payload).then(
    (r) => assert.fail(`${fid} succeeded: ${JSON.stringify(r)}`),
    (e) => e,
  )
  assert.ok(err instanceof InvocationError, String(err))
  return err
}

engineTest('configuration: register, set valid and invalid, get raw and expanded, list, schema', async ({ worker }) => {
  const w = await worker('node-config')
  const e = await register(w, 'node.db', { url: '${III_NODE_CFG_URL}' })
  assert.equal(e.id, 'node.db')
  assert.deepEqual(await call(w, 'configuration::get', { id: 'node.db' }), { id: 'node.db', value: { url: 'pg://node-env' } })
  assert.deepEqual((await call(w, 'configuration::get', { id: 'node.db', raw: true })).value, { url: '${III_NODE_CFG_URL}' })

  const r = await call(w, 'configuration::set', { id: 'node.db', value: { url: 'pg://b', pool: { size: 2 } } })
  assert.deepEqual(r, { old_value: { url: '${III_NODE_CFG_URL}' }, new_value: { url: 'pg://b', pool: { size: 2 } } })

  const bad = await refused(w, 'configuration::set', { id: 'node.db', value: { url: 'pg://c', pool: { size: 'big' } } })
  assert.equal(bad.code, 'SCHEMA_INVALID')
  assert.match(bad.message, /\/pool\/size/)
  assert.deepEqual((await call(w, 'configuration::get', { id: 'node.db' })).value, { url: 'pg://b', pool: { size: 2 } })
  assert.equal((await refused(w, 'configuration::set', { id: 'node.none', value: {} })).code, 'NOT_REGISTERED')
  assert.equal((await refused(w, 'configuration::set', { id: 'no/slash', value: {} })).code, 'INVALID_ID')
  assert.equal((await refused(w, 'configuration::get', { id: 'node.none' })).code, 'NOT_FOUND')

  await register(w, 'node.a', { url: 'x' })
  const rows = (await call(w, 'configuration::list', {})).configurations
  const ids = rows.map((r) => r.id)
  assert.ok(ids.indexOf('node.a') < ids.indexOf('node.db'), String(ids))
  assert.ok(rows.every((r) => !('value' in r)))
  assert.deepEqual(await call(w, 'configuration::schema', { id: 'node.db' }), {
    id: 'node.db',
    name: 'Node DB',
    description: 'node test',
    schema: SCHEMA,
  })
})

engineTest('configuration trigger: registered and updated, filtered by event type', async ({ worker }) => {
  const w = await worker('node-config-watch')
  const all = []
  const updates = []
  w.registerFunction('nodecfg::all', async (d) => {
    all.push(d)
    return null
  })
  w.registerFunction('nodecfg::updates', async (d) => {
    updates.push(d)
    return null
  })
  w.registerTrigger({ type: 'configuration', function_id: 'nodecfg::all', config: { configuration_id: 'node.svc' } })
  w.registerTrigger({
    type: 'configuration',
    function_id: 'nodecfg::updates',
    config: { configuration_id: 'node.svc', event_types: ['configuration:updated'] },
  })
  await waitFunction(w, 'nodecfg::updates')
  await waitUntil(
    async () =>
      (await call(w, 'engine::registered-triggers::list', {})).registered_triggers.filter((t) => t.trigger_type === 'configuration')
        .length === 2,
    { what: 'both configuration triggers registered' },
  )
  await register(w, 'node.svc', { url: 'a' })
  await call(w, 'configuration::set', { id: 'node.svc', value: { url: 'b' } })
  await waitUntil(() => all.length === 2 && updates.length === 1, { what: 'the events delivered' })
  assert.deepEqual(
    all.map((e) => e.event_type),
    ['configuration:registered', 'configuration:updated'],
  )
  assert.equal(updates[0].event_type, 'configuration:updated')
  assert.equal(updates[0].type, 'configuration')
  assert.deepEqual(updates[0].old_value, { url: 'a' })
  assert.deepEqual(updates[0].new_value, { url: 'b' })
  assert.deepEqual(updates[0].schema, SCHEMA)
})

engineTest('configuration: iii-http is an entry; CORS applies live, a bad port is refused, a new port rebinds', async ({ engine, worker }) => {
  await engine.waitHttp()
  const w = await worker('node-config-http')
  w.registerFunction('nodecfg::hi', async () => ({ status_code: 200, body: { hi: true } }))
  w.registerTrigger({ type: 'http', function_id: 'nodecfg::hi', config: { api_path: 'hi', http_method: 'GET' } })
  const base = `http://127.0.0.1:${engine.httpPort}`
  await waitUntil(async () => (await http('GET', `${base}/hi`)).status === 200, { what: 'route live' })

  const { value } = await call(w, 'configuration::get', { id: 'iii-http' })
  assert.equal(value.port, engine.httpPort)
  const live = { ...value, cors: { allowed_origins: ['https://node.example'] } }
  const r = await call(w, 'configuration::set', { id: 'iii-http', value: live })
  assert.equal(r.applied.tier, 'live')
  const res = await http('GET', `${base}/hi`, { headers: { origin: 'https://node.example' } })
  assert.equal(res.headers.get('access-control-allow-origin'), 'https://node.example')

  const err = await refused(w, 'configuration::set', { id: 'iii-http', value: { ...live, port: 'eighty' } })
  assert.equal(err.code, 'SCHEMA_INVALID')
  assert.match(err.message, /\/port/)

  const next = await freePort()
  const moved = await call(w, 'configuration::set', { id: 'iii-http', value: { ...live, port: next } })
  assert.equal(moved.applied.tier, 'rebind')
  const again = await http('GET', `http://127.0.0.1:${next}/hi`)
  assert.equal(again.status, 200)
  await waitUntil(async () => !(await portOpen(engine.httpPort)), { what: 'old HTTP port closed' })
})
