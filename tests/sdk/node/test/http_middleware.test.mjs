// HTTP route middleware (spec §4.6.1) with functions registered through the
// official Node SDK: the `http` entry's global `middleware:` list and a
// route's `middleware_function_ids`, exercised with fetch.
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { engineTest, http, sleep, waitUntil } from '../lib/harness.mjs'

/** Restarts the test's engine with `extra` added to the `http` entry's config. */
async function restartWithHttpConfig(engine, extra) {
  await engine.stop()
  fs.writeFileSync(
    path.join(engine.dir, 'config.yaml'),
    'workers:\n' +
      '  - name: iii-worker-manager\n' +
      `    config: {host: 127.0.0.1, port: ${engine.wsPort}}\n` +
      '  - name: http\n' +
      `    config: {host: 127.0.0.1, port: ${engine.httpPort}${extra}}\n`,
  )
  await engine.start()
  await engine.waitHttp()
}

/**
 * One worker with the global middleware `nodemw::gate` (its behaviour picked by the
 * request's `x-mode` header), a route middleware, a condition and a handler on
 * GET /things/:id. Returns the list of [function, input] calls.
 */
async function gatedRoute(engine, worker) {
  const calls = []
  const w = await worker('node-mw')
  w.registerFunction('nodemw::gate', async (inp) => {
    calls.push(['gate', inp])
    const mode = inp.request.headers['x-mode'] ?? 'continue'
    if (mode === 'respond') {
      return {
        action: 'respond',
        response: { status_code: 403, headers: { 'content-type': 'text/plain', 'x-why': 'blocked' }, body: 'not you' },
      }
    }
    if (mode === 'error') throw new Error('gate is broken')
    if (mode === 'sleep') {
      await sleep(1000)
      calls.push(['gate_done'])
    }
    return { action: 'continue' }
  })
  w.registerFunction('nodemw::route', async (inp) => {
    calls.push(['route', inp])
    return { action: 'continue' }
  })
  w.registerFunction('nodemw::cond', async (req) => {
    calls.push(['cond', req])
    return (req.headers['x-allow'] ?? 'yes') === 'yes'
  })
  w.registerFunction('nodemw::things', async (req) => {
    calls.push(['handler', req])
    return { status_code: 200, body: { id: req.path_params.id } }
  })
  w.registerTrigger({
    type: 'http',
    function_id: 'nodemw::things',
    config: {
      api_path: 'things/:id',
      http_method: 'GET',
      condition_function_id: 'nodemw::cond',
      middleware_function_ids: ['nodemw::route'],
    },
  })
  await waitUntil(async () => (await http('GET', `${engine.httpUrl}/things/0`)).status === 200, {
    what: 'route GET /things/:id live behind its middleware',
  })
  calls.length = 0
  return calls
}

const names = (calls) => calls.map((c) => c[0])

engineTest('http middleware: continue passes the request view; route middleware runs after the condition', async ({ engine, worker }) => {
  await restartWithHttpConfig(engine, ', middleware: [{function_id: nodemw::gate, priority: 2}]')
  const calls = await gatedRoute(engine, worker)
  let r = await http('GET', `${engine.httpUrl}/things/42?q=x`, { headers: { 'X-Custom': 'abc' } })
  assert.equal(r.status, 200, r.text)
  assert.deepEqual(r.json(), { id: '42' })
  assert.deepEqual(names(calls), ['gate', 'cond', 'route', 'handler'])
  const inp = calls[0][1]
  assert.equal(inp.phase, 'preHandler')
  assert.deepEqual(inp.context, {})
  assert.deepEqual(Object.keys(inp.request).sort(), ['headers', 'method', 'path_params', 'query_params'])
  assert.deepEqual(inp.request.path_params, { id: '42' })
  assert.deepEqual(inp.request.query_params, { q: 'x' })
  assert.equal(inp.request.headers['x-custom'], 'abc')
  assert.equal(inp.request.method, 'GET')
  assert.deepEqual(calls[2][1], inp)

  // Condition false: 422 and the route middleware is not called.
  calls.length = 0
  r = await http('GET', `${engine.httpUrl}/things/1`, { headers: { 'X-Allow': 'no' } })
  assert.equal(r.status, 422)
  assert.equal(r.json().error.code, 'CONDITION_NOT_MET')
  assert.deepEqual(names(calls), ['gate', 'cond'])
})

engineTest('http middleware: respond answers with its status, headers and body', async ({ engine, worker }) => {
  await restartWithHttpConfig(engine, ', middleware: [{function_id: nodemw::gate}]')
  const calls = await gatedRoute(engine, worker)
  const r = await http('GET', `${engine.httpUrl}/things/1`, { headers: { 'X-Mode': 'respond' } })
  assert.equal(r.status, 403)
  assert.equal(r.headers.get('x-why'), 'blocked')
  assert.equal(r.headers.get('content-type'), 'text/plain')
  assert.equal(r.text, 'not you')
  assert.deepEqual(names(calls), ['gate'], 'nothing after a respond runs')
})

engineTest('http middleware: an error is a 500 envelope', async ({ engine, worker }) => {
  await restartWithHttpConfig(engine, ', middleware: [{function_id: nodemw::gate}]')
  const calls = await gatedRoute(engine, worker)
  const r = await http('GET', `${engine.httpUrl}/things/1`, { headers: { 'X-Mode': 'error' } })
  assert.equal(r.status, 500)
  const env = r.json()
  assert.equal(env.error.code, 'invocation_failed')
  assert.equal(env.error.message, 'gate is broken')
  assert.deepEqual(names(calls), ['gate'])
})

engineTest('http middleware: a slow middleware is 504 MIDDLEWARE_TIMEOUT', async ({ engine, worker }) => {
  await restartWithHttpConfig(engine, ', middleware_timeout_ms: 300, middleware: [{function_id: nodemw::gate}]')
  const calls = await gatedRoute(engine, worker)
  const r = await http('GET', `${engine.httpUrl}/things/1`, { headers: { 'X-Mode': 'sleep' } })
  assert.equal(r.status, 504)
  const env = r.json()
  assert.equal(env.error.code, 'MIDDLEWARE_TIMEOUT')
  assert.match(env.error.message, /nodemw::gate/)
  // The late `continue` changes nothing: the request is over, the handler never runs.
  await waitUntil(() => calls.length === 2, { what: 'the slow middleware to finish' })
  await sleep(300)
  assert.deepEqual(names(calls), ['gate', 'gate_done'])
})
