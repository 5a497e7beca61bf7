// HTTP triggers (`http` trigger type, spec §4.6.1) registered through the
// official Node SDK and exercised with fetch.
import assert from 'node:assert/strict'
import { engineTest, http, shutdownWorker, waitFunction, waitUntil } from '../lib/harness.mjs'

async function routeLive(engine, method, p, { expect, ...opts } = {}) {
  await waitUntil(
    async () => {
      const { status } = await http(method, engine.httpUrl + p, opts)
      return expect === undefined ? status !== 404 : status === expect
    },
    { what: `route ${method} ${p} ${expect ?? 'live'}` },
  )
}

engineTest('http trigger: path/query params, JSON body, status/headers/body mapping', async ({ engine, worker }) => {
  await engine.waitHttp()
  const w = await worker('node-http')
  const seen = []
  w.registerFunction('nodehttp::item', async (req) => {
    seen.push(req)
    return {
      status_code: 202,
      headers: { 'X-Custom': 'yes', 'X-Item': req.path_params.id },
      body: { id: req.path_params.id, query: req.query_params, body: req.body, method: req.method, path: req.path },
    }
  })
  w.registerTrigger({ type: 'http', function_id: 'nodehttp::item', config: { api_path: 'items/:id', http_method: 'PUT' } })
  await routeLive(engine, 'PUT', '/items/0', { body: {} })

  const res = await http('PUT', `${engine.httpUrl}/items/abc-9?q=hello&page=2`, {
    body: { name: 'Zoë', tags: ['a', 'b'], n: 1.5 },
    headers: { 'X-Test-Header': 'abc' },
  })
  assert.equal(res.status, 202, res.text)
  assert.equal(res.headers.get('x-custom'), 'yes')
  assert.equal(res.headers.get('x-item'), 'abc-9')
  assert.match(res.headers.get('content-type') ?? '', /application\/json/)
  assert.deepEqual(res.json(), {
    id: 'abc-9',
    query: { q: 'hello', page: '2' },
    body: { name: 'Zoë', tags: ['a', 'b'], n: 1.5 },
    method: 'PUT',
    path: 'items/:id',
  })
  const req = seen.at(-1)
  assert.equal(req.headers['x-test-header'], 'abc')
  assert.deepEqual(req.trigger, { type: 'http', path: 'items/:id', method: 'PUT' })
  assert.ok(!('_caller_worker_id' in req), 'engine-originated calls carry no caller id')
})

engineTest('http trigger: defaults, raw text body, empty body', async ({ engine, worker }) => {
  await engine.waitHttp()
  const w = await worker('node-http-defaults')
  w.registerFunction('nodehttp::plain', async () => ({ headers: { 'content-type': 'text/plain' }, body: 'hello, wörld' }))
  w.registerFunction('nodehttp::default', async (req) => ({ body: { ok: true, q: req.query_params.x } }))
  w.registerFunction('nodehttp::empty', async () => ({ status_code: 204, body: null }))
  w.registerTrigger({ type: 'http', function_id: 'nodehttp::plain', config: { api_path: 'nplain', http_method: 'GET' } })
  w.registerTrigger({ type: 'http', function_id: 'nodehttp::default', config: { api_path: '/ndflt' } })
  w.registerTrigger({ type: 'http', function_id: 'nodehttp::empty', config: { api_path: 'nempty', http_method: 'delete' } })
  await routeLive(engine, 'GET', '/nplain')
  await routeLive(engine, 'GET', '/ndflt')
  await routeLive(engine, 'DELETE', '/nempty')

  let r = await http('GET', `${engine.httpUrl}/nplain`)
  assert.equal(r.status, 200)
  assert.match(r.headers.get('content-type') ?? '', /^text\/plain/)
  assert.equal(r.text, 'hello, wörld')

  r = await http('GET', `${engine.httpUrl}/ndflt?x=1`)
  assert.equal(r.status, 200)
  assert.match(r.headers.get('content-type') ?? '', /application\/json/)
  assert.deepEqual(r.json(), { ok: true, q: '1' })

  r = await http('DELETE', `${engine.httpUrl}/nempty`)
  assert.equal(r.status, 204)
  assert.equal(r.buf.length, 0)
})

engineTest('http handler error -> 500 with {"error":{code,message}}', async ({ engine, worker }) => {
  await engine.waitHttp()
  const w = await worker('node-http-err')
  w.registerFunction('nodehttp::fail', async () => {
    throw new Error('kaboom')
  })
  w.registerTrigger({ type: 'http', function_id: 'nodehttp::fail', config: { api_path: 'nfail', http_method: 'GET' } })
  await routeLive(engine, 'GET', '/nfail')
  const r = await http('GET', `${engine.httpUrl}/nfail`)
  assert.equal(r.status, 500)
  const env = r.json()
  assert.equal(env.error.code, 'invocation_failed')
  assert.equal(env.error.message, 'kaboom')
})

engineTest('http unknown route -> 404 NOT_FOUND', async ({ engine }) => {
  await engine.waitHttp()
  let r = await http('GET', `${engine.httpUrl}/definitely/not/registered`)
  assert.equal(r.status, 404)
  assert.equal(r.json().error.code, 'NOT_FOUND')
  r = await http('POST', `${engine.httpUrl}/nope`, { body: { a: 1 } })
  assert.equal(r.status, 404)
  assert.equal(r.json().error.code, 'NOT_FOUND')
})

engineTest('http route removed when its worker goes', async ({ engine, worker }) => {
  await engine.waitHttp()
  const w = await worker('node-http-gone')
  const watcher = await worker()
  w.registerFunction('nodehttp::gone', async () => ({ body: 'here' }))
  w.registerTrigger({ type: 'http', function_id: 'nodehttp::gone', config: { api_path: 'ngone/:x', http_method: 'GET' } })
  await routeLive(engine, 'GET', '/ngone/1', { expect: 200 })
  await shutdownWorker(w)
  await waitFunction(watcher, 'nodehttp::gone', false)
  await routeLive(engine, 'GET', '/ngone/1', { expect: 404 })
  const r = await http('GET', `${engine.httpUrl}/ngone/1`)
  assert.equal(r.status, 404)
  assert.equal(r.json().error.code, 'NOT_FOUND')
})

engineTest('http trigger unregister removes the route', async ({ engine, worker }) => {
  await engine.waitHttp()
  const w = await worker('node-http-unreg')
  w.registerFunction('nodehttp::unreg', async () => ({ body: 'x' }))
  const trig = w.registerTrigger({ type: 'http', function_id: 'nodehttp::unreg', config: { api_path: 'nunreg', http_method: 'GET' } })
  await routeLive(engine, 'GET', '/nunreg', { expect: 200 })
  trig.unregister()
  await routeLive(engine, 'GET', '/nunreg', { expect: 404 })
})

engineTest('http trigger metadata delivered to the handler', async ({ engine, worker }) => {
  await engine.waitHttp()
  const w = await worker('node-http-meta')
  w.registerFunction('nodehttp::meta', async (req, metadata) => ({ body: { metadata: metadata ?? null } }))
  w.registerTrigger({
    type: 'http',
    function_id: 'nodehttp::meta',
    config: { api_path: 'nmeta', http_method: 'GET' },
    metadata: { route: 'meta', v: 2 },
  })
  await routeLive(engine, 'GET', '/nmeta')
  const r = await http('GET', `${engine.httpUrl}/nmeta`)
  assert.equal(r.status, 200)
  assert.deepEqual(r.json(), { metadata: { route: 'meta', v: 2 } })
})
