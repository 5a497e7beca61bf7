// HTTP-invoked functions through the official Node SDK (spec §3.10): a worker registers a
// function with an HttpInvocationConfig instead of a handler, another worker calls it, and the
// engine calls a local HTTP server this test runs, with a bearer token from its environment.
import assert from 'node:assert/strict'
import http from 'node:http'
import { call, engineTest, listFunctions, waitFunction } from '../lib/harness.mjs'

const TOKEN = 'node-bearer-5e1'
// The engine inherits this process's environment.
process.env.III_NODE_HTTPFN_TOKEN = TOKEN

const config =
  '  - name: iii-http-functions\n' +
  '    config:\n' +
  "      security: {url_allowlist: ['127.0.0.1'], block_private_ips: false, require_https: false}\n"

async function upstream() {
  const seen = []
  const server = http.createServer((req, res) => {
    const chunks = []
    req.on('data', (c) => chunks.push(c))
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8')
      seen.push({ method: req.method, url: req.url, headers: req.headers, body })
      const ok = req.headers.authorization === `Bearer ${TOKEN}`
      const reply = ok
        ? { received: JSON.parse(body), invocation: req.headers['x-iii-invocation-id'] }
        : { error: { code: 'unauthorized', message: 'wrong token' } }
      res.writeHead(ok ? 200 : 401, { 'content-type': 'application/json' })
      res.end(JSON.stringify(reply))
    })
  })
  await new Promise((r) => server.listen(0, '127.0.0.1', r))
  return { seen, server, url: (p) => `http://127.0.0.1:${server.address().port}${p}` }
}

engineTest(
  'http-invoked function: registered with an HttpInvocationConfig, called through the engine with a bearer token',
  async ({ worker }) => {
    const up = await upstream()
    try {
      const owner = await worker('node-http-owner')
      const caller = await worker('node-http-caller')
      owner.registerFunction(
        'remote::bearer',
        {
          url: up.url('/hook'),
          method: 'PATCH',
          timeout_ms: 5000,
          headers: { 'x-team': 'node' },
          auth: { type: 'bearer', token_key: 'III_NODE_HTTPFN_TOKEN' },
        },
        { description: 'served by a URL' },
      )
      await waitFunction(caller, 'remote::bearer')

      const got = await call(caller, 'remote::bearer', { n: 3, s: 'é' })
      assert.deepEqual(got.received, { n: 3, s: 'é' })
      assert.match(got.invocation, /^[0-9a-f-]{36}$/)
      const s = up.seen.at(-1)
      assert.equal(s.method, 'PATCH')
      assert.equal(s.url, '/hook')
      assert.equal(s.headers['x-team'], 'node')
      assert.equal(s.headers['x-iii-function-path'], 'remote::bearer')
      assert.equal(s.headers['content-type'], 'application/json')

      const listed = (await listFunctions(caller)).find((f) => f.function_id === 'remote::bearer')
      assert.equal(listed?.worker_name, 'node-http-owner')

      // Without the token the upstream refuses, and its error envelope is the call's error.
      owner.registerFunction('remote::anon', { url: up.url('/hook') })
      await waitFunction(caller, 'remote::anon')
      await assert.rejects(call(caller, 'remote::anon', {}), (e) => {
        assert.equal(e.code, 'unauthorized', String(e))
        return true
      })
    } finally {
      up.server.close()
    }
  },
  { config },
)
