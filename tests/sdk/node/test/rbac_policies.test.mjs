// Worker RBAC and listener middleware (spec §9) with WebAssembly policies in the places SDK
// functions usually fill, through the official Node SDK (issue 11).
//
// One engine for the file. Its `policies:` entry loads the examples of plugins/policies
// (bearer, audit, tenant-prefix: Rust components; rate-limit: Extism; python-allowlist and
// js-tenant: componentize-py / componentize-js) and the hostile fixture; each gated listener
// names them as `auth_function_id`, `middleware_function_id` or registration hooks. The
// functions called are served by an SDK worker on the trusted listener; every other client is
// an SDK worker on a gated listener. The wasm comes from plugins/policies/build.sh.
import assert from 'node:assert/strict'
import fs from 'node:fs'
import { after, before, describe, test } from 'node:test'
import { InvocationError, registerWorker } from 'iii-sdk'
import { Engine, freePort, http, policyWasm, portOpen, shutdownWorker, stripCaller, waitUntil } from '../lib/harness.mjs'

const NO_OTEL = { enabled: false }
const LISTENERS = ['bearer', 'limited', 'apikey', 'jstenant', 'prefix', 'hooked', 'extismAuth', 'loopAuth', 'trapAuth', 'bombMw']
const REFUSED = "connection refused by the listener's auth"

function config(p, w) {
  return `  - name: iii-worker-manager
    config:
      host: 127.0.0.1
      port: ${p.bearer}
      middleware_function_id: policy::audit
      rbac: {auth_function_id: policy::bearer, expose_functions: [match("svc::*"), match("engine::functions::list")]}
  - name: iii-worker-manager
    config:
      host: 127.0.0.1
      port: ${p.limited}
      middleware_function_id: policy::limit
      rbac: {auth_function_id: policy::bearer, expose_functions: [match("svc::*")]}
  - name: iii-worker-manager
    config:
      host: 127.0.0.1
      port: ${p.apikey}
      middleware_function_id: policy::apikey
      rbac: {auth_function_id: policy::apikey, expose_functions: [match("svc::*")]}
  - name: iii-worker-manager
    config:
      host: 127.0.0.1
      port: ${p.jstenant}
      middleware_function_id: policy::jstenant
      rbac: {auth_function_id: policy::jstenant, expose_functions: [match("svc::*")]}
  - name: iii-worker-manager
    config:
      host: 127.0.0.1
      port: ${p.prefix}
      rbac: {auth_function_id: policy::prefix, expose_functions: [match("engine::functions::list"), match("acme::*")]}
  - name: iii-worker-manager
    config:
      host: 127.0.0.1
      port: ${p.hooked}
      rbac:
        auth_function_id: policy::bearer
        on_function_registration_function_id: policy::prefix
        on_trigger_registration_function_id: policy::prefix
        expose_functions: [match("svc::*"), match("acme::*")]
  - name: iii-worker-manager
    config: {host: 127.0.0.1, port: ${p.extismAuth}, rbac: {auth_function_id: policy::limit}}
  - name: iii-worker-manager
    config: {host: 127.0.0.1, port: ${p.loopAuth}, handshake_timeout_ms: 5000, rbac: {auth_function_id: policy::loop}}
  - name: iii-worker-manager
    config: {host: 127.0.0.1, port: ${p.trapAuth}, rbac: {auth_function_id: policy::trap}}
  - name: iii-worker-manager
    config: {host: 127.0.0.1, port: ${p.bombMw}, middleware_function_id: policy::bomb}
  - name: policies
    config:
      policies:
        - id: policy::bearer
          path: "${w.bearer}"
          config: {tokens: {t1: {context: {sub: ada}}, t2: {forbidden_functions: [svc::echo], context: {sub: bob}}, t3: {context: {sub: cy}}, t-acme: {context: {tenant: acme}}}}
        - {id: policy::audit, path: "${w.audit}"}
        - {id: policy::limit, path: "${w['rate-limit']}", config: {limit: 2, window_ms: 3600000}}
        - id: policy::apikey
          path: "${w['python-allowlist']}"
          config: {keys: {k-shop: {context: {client: shop}}}, deny: ["svc::admin*"]}
        - {id: policy::jstenant, path: "${w['js-tenant']}", config: {tokens: {tok-acme: acme}}}
        - {id: policy::prefix, path: "${w['tenant-prefix']}", config: {tenants: {tok-acme: acme}}}
        - {id: policy::loop, path: "${w.hostile}", config: {mode: loop}, limits: {deadline_ms: 200}}
        - {id: policy::trap, path: "${w.hostile}", config: {mode: trap}}
        - {id: policy::bomb, path: "${w.hostile}", config: {mode: membomb}, limits: {memory_mb: 16}}
`
}

describe('WASM policies as auth, middleware and hooks through the Node SDK', () => {
  let engine
  const ports = {}
  let svc // trusted worker serving svc::*
  const seen = [] // [function_id, payload]
  const payloads = (fid) => seen.filter((s) => s[0] === fid).map((s) => stripCaller(s[1]))
  let made = []
  let seq = 0

  const client = async (listener, query = '', { wait = true, ...opts } = {}) => {
    const port = listener === 'trusted' ? engine.wsPort : ports[listener]
    const c = registerWorker(`ws://127.0.0.1:${port}/${query}`, {
      workerName: `node-pol-${listener}-${++seq}`,
      otel: NO_OTEL,
      ...opts,
    })
    made.push(c)
    if (wait) await waitUntil(() => c.workerId, { what: `workerregistered on ${listener} ${query}` })
    return c
  }
  const call = (c, function_id, payload, extra = {}) => c.trigger({ function_id, payload, ...extra })
  const errorOf = (c, fid, payload = {}, extra = {}) =>
    call(c, fid, payload, extra).then(
      (r) => assert.fail(`${fid} answered: ${JSON.stringify(r)}`),
      (e) => {
        assert.ok(e instanceof InvocationError, String(e))
        return e
      },
    )
  async function forbidden(c, fid, hint = 'add to rbac.expose_functions') {
    const err = await errorOf(c, fid)
    assert.equal(err.code, 'FORBIDDEN')
    assert.equal(err.function_id, fid)
    assert.equal(err.message, `FORBIDDEN: function '${fid}' not allowed (${hint})`)
  }
  /** The targets of the http bindings on `apiPath`, once there is one (a binding's hook runs
   * after the function registrations sent before it). */
  const boundTo = (apiPath) =>
    waitUntil(
      async () => {
        const bound = (await call(svc, 'engine::registered-triggers::list', {})).registered_triggers
        const t = bound.filter((b) => b.trigger_type === 'http' && b.config?.api_path === apiPath).map((b) => b.function_id)
        return t.length ? t : null
      },
      { what: `an http binding on ${apiPath}` },
    )
  const refusals = (needle) =>
    engine
      .log()
      .split('\n')
      .filter((l) => l.includes(REFUSED) && l.includes(needle)).length

  /** The policy denies: the SDK ignores the AUTH_ERROR frame, treats the close as a drop and
   * reconnects (refused again), never gets a worker id, and its calls time out. */
  async function refused(listener, needle, query = '', opts = {}) {
    const before = refusals(needle)
    const c = await client(listener, query, { wait: false, reconnectionConfig: { initialDelayMs: 50, maxDelayMs: 200 }, ...opts })
    await waitUntil(() => refusals(needle) >= before + 2, { timeout: 20000, what: `two refusals naming ${needle}` })
    assert.equal(c.workerId, undefined)
    const err = await errorOf(c, 'svc::echo', {}, { timeoutMs: 800 })
    assert.equal(err.code, 'TIMEOUT')
  }

  before(async () => {
    for (const l of LISTENERS) ports[l] = await freePort()
    // The sockets accept before the policies are compiled; the engine says "ready" after. The
    // interpreters' first compile (Python, JS) takes tens of seconds, later starts hit the
    // compiled-code cache.
    engine = await Engine.create(config(ports, policyWasm()), { startTimeoutMs: 180000 })
    await waitUntil(
      () => {
        if (engine.proc.exitCode !== null) throw new Error(`engine exited:\n${engine.log()}`)
        return engine.log().includes('iii engine') && engine.log().includes(' ready')
      },
      { timeout: 180000, what: "the engine's ready line" },
    )
    await waitUntil(async () => (await Promise.all(Object.values(ports).map((p) => portOpen(p)))).every(Boolean), {
      what: 'gated listeners',
    })
    svc = registerWorker(engine.wsUrl, { workerName: 'node-pol-svc', otel: NO_OTEL })
    for (const fid of ['svc::echo', 'svc::other', 'svc::admin_reset']) {
      svc.registerFunction(fid, async (d) => {
        seen.push([fid, d])
        return { served: fid, data: d }
      })
    }
    await waitUntil(
      async () => (await call(svc, 'engine::functions::list', {})).functions.some((f) => f.function_id === 'svc::admin_reset'),
      { what: 'service functions registered' },
    )
  })

  after(async () => {
    for (const c of [...made.reverse(), svc]) {
      if (c) await shutdownWorker(c)
    }
    if (engine) {
      await engine.stop()
      fs.rmSync(engine.dir, { recursive: true, force: true })
    }
  })

  // A test that fails prints the engine's log; each test's clients are shut down after it.
  const logged = (name, fn) =>
    test(name, { timeout: 120000 }, async () => {
      try {
        await fn()
      } catch (err) {
        let tail = engine.log()
        if (tail.length > 20000) tail = `...<truncated>...\n${tail.slice(-20000)}`
        process.stdout.write(`\n----- engine log (${engine.logPath}) -----\n${tail}\n----- end engine log -----\n`)
        throw err
      } finally {
        for (const c of made.reverse()) await shutdownWorker(c)
        made = []
      }
    })

  // ------------------------------------------------------------------------- auth

  logged('the bearer component admits listed tokens and refuses others', async () => {
    const c = await client('bearer', '?token=t1')
    assert.equal((await call(c, 'svc::echo', { n: 1 })).served, 'svc::echo')
    const h = await client('bearer', '', { headers: { Authorization: 'Bearer t1' } })
    assert.equal((await call(h, 'svc::other', {})).served, 'svc::other')
    await refused('bearer', 'policy::bearer', '?token=nope')
    assert.ok(refusals('the bearer token is not on the allowlist') >= 2)
  })

  logged('the Python and JavaScript policies authenticate', async () => {
    const c = await client('apikey', '', { headers: { 'x-api-key': 'k-shop' } })
    assert.equal((await call(c, 'svc::echo', { n: 1 })).served, 'svc::echo')
    await refused('apikey', 'unknown x-api-key', '', { headers: { 'x-api-key': 'k-other' } })
    await refused('apikey', 'missing x-api-key header')

    const j = await client('jstenant', '', { headers: { Authorization: 'Bearer tok-acme' } })
    assert.equal((await call(j, 'svc::echo', { n: 1 })).data.tenant, 'acme')
    await refused('jstenant', 'unknown bearer token', '', { headers: { Authorization: 'Bearer tok-x' } })
  })

  logged('an Extism module without authenticate fails closed as the auth function', async () => {
    await refused('extismAuth', 'does not implement `authenticate`')
  })

  // ------------------------------------------------------------------------- authorization

  logged("grants follow the policy's AuthResult", async () => {
    const ada = await client('bearer', '?token=t1')
    assert.equal((await call(ada, 'svc::other', {})).served, 'svc::other')
    await forbidden(ada, 'other::fn')
    // t2's AuthResult carries forbidden_functions: it wins over expose_functions.
    const bob = await client('bearer', '?token=t2')
    await forbidden(bob, 'svc::echo', 'remove from rbac.forbidden_functions')
    assert.equal((await call(bob, 'svc::other', {})).served, 'svc::other')
    const ids = new Set((await call(bob, 'engine::functions::list', {})).functions.map((f) => f.function_id))
    assert.ok(ids.has('svc::other') && !ids.has('svc::echo') && !ids.has('policy::bearer'), [...ids].join(','))

    // The JavaScript policy grants the tenant's namespace: declaring another is refused.
    const j = await client('jstenant', '', { headers: { Authorization: 'Bearer tok-acme' } })
    const err = await errorOf(j, 'engine::workers::register', { name: 'node-globex', namespace: 'globex' })
    assert.equal(err.code, 'FORBIDDEN')
    assert.equal(err.message, "FORBIDDEN: namespace 'globex' not allowed for this session (permitted: acme)")
    await forbidden(j, 'other::fn')
  })

  // ------------------------------------------------------------------------- middleware

  logged('the audit component as middleware proceeds with the payload and logs', async () => {
    const c = await client('bearer', '?token=t1')
    const r = await call(c, 'svc::echo', { n: 7, audit: 'node' })
    assert.equal(r.served, 'svc::echo')
    assert.deepEqual(stripCaller(r.data), { n: 7, audit: 'node' })
    assert.ok(payloads('svc::echo').some((p) => p.audit === 'node' && p.n === 7))
    await waitUntil(() => engine.log().includes('invoke svc::echo') && engine.log().includes('subject=ada'), {
      what: 'audit line',
    })
    await forbidden(c, 'other::fn') // RBAC runs before the middleware
  })

  logged('the Python middleware rejects denied functions', async () => {
    const c = await client('apikey', '', { headers: { 'x-api-key': 'k-shop' } })
    const r = await call(c, 'svc::echo', { n: 2, tenant: 'as-sent' })
    assert.deepEqual(stripCaller(r.data), { n: 2, tenant: 'as-sent' })
    const n = payloads('svc::admin_reset').length
    const err = await errorOf(c, 'svc::admin_reset', { x: 1 })
    assert.equal(err.code, 'FORBIDDEN')
    assert.equal(err.message, 'FORBIDDEN: calls to svc::admin_reset are denied by policy (pattern svc::admin*)')
    assert.equal(payloads('svc::admin_reset').length, n, 'the target never ran')
  })

  logged('the JavaScript middleware rewrites the tenant and rejects non-objects', async () => {
    const c = await client('jstenant', '', { headers: { Authorization: 'Bearer tok-acme' } })
    const r = await call(c, 'svc::echo', { n: 1, tenant: 'globex' })
    assert.deepEqual(stripCaller(r.data), { n: 1, tenant: 'acme' })
    assert.ok(payloads('svc::echo').some((p) => p.n === 1 && p.tenant === 'acme'), 'the handler saw the rewrite')
    const err = await errorOf(c, 'svc::echo', [1, 2])
    assert.equal(err.code, 'INVALID_PAYLOAD')
    assert.equal(err.message, 'INVALID_PAYLOAD: tenant routing needs an object payload for svc::echo')
  })

  logged('the Extism rate limiter denies after its limit, per subject', async () => {
    const ada = await client('limited', '?token=t1')
    for (let i = 0; i < 2; i++) assert.equal((await call(ada, 'svc::echo', { i })).served, 'svc::echo')
    const err = await errorOf(ada, 'svc::echo', { i: 2 })
    assert.equal(err.code, 'RATE_LIMITED')
    // The count is kept per subject (the bearer policy's context.sub): cy has its own window.
    const cy = await client('limited', '?token=t3')
    assert.equal((await call(cy, 'svc::echo', { i: 0 })).served, 'svc::echo')
    assert.equal((await errorOf(ada, 'svc::echo', {})).code, 'RATE_LIMITED')
  })

  // ------------------------------------------------------------------------- registration

  logged('tenant-prefix as auth prefixes functions and trigger targets', async () => {
    const c = await client('prefix', '', { headers: { Authorization: 'Bearer tok-acme' }, workerName: 'node-acme' })
    const got = []
    c.registerFunction('add', async (d) => {
      got.push(d)
      return { sum: d.a + d.b }
    })
    c.registerFunction('hello', async () => ({ status_code: 200, body: { hi: 'acme' } }))
    c.registerTrigger({ type: 'http', function_id: 'hello', config: { api_path: 'acme-hello', http_method: 'GET' } })
    const acmeIds = async () =>
      (await call(svc, 'engine::functions::list', { prefix: 'acme::' })).functions.map((f) => f.function_id).sort()
    await waitUntil(async () => (await acmeIds()).join() === 'acme::add,acme::hello', { what: 'acme::add, acme::hello' })
    assert.deepEqual(await call(svc, 'acme::add', { a: 2, b: 3 }), { sum: 5 })
    assert.deepEqual(stripCaller(got.at(-1)), { a: 2, b: 3 })
    assert.deepEqual(await boundTo('acme-hello'), ['acme::hello'])
    await engine.waitHttp()
    const res = await http('GET', `${engine.httpUrl}/acme-hello`)
    assert.equal(res.status, 200, res.text)
    assert.deepEqual(res.json(), { hi: 'acme' })

    await refused('prefix', 'unknown token', '', { headers: { Authorization: 'Bearer tok-x' } })
  })

  logged('tenant-prefix as registration hook rewrites and drops', async () => {
    // The bearer policy authenticates (context.tenant, no prefix); tenant-prefix is the §9.6
    // hook: it rewrites the ids into the tenant and drops the registrations of a session
    // without a tenant.
    const c = await client('hooked', '?token=t-acme', { workerName: 'node-hooked-acme' })
    c.registerFunction('hooked_fn', async (d) => d)
    c.registerTrigger({ type: 'http', function_id: 'hooked_fn', config: { api_path: 'hooked', http_method: 'GET' } })
    const ada = await client('hooked', '?token=t1', { workerName: 'node-hooked-ada' })
    ada.registerFunction('ada_fn', async (d) => d)
    const ids = async () => new Set((await call(svc, 'engine::functions::list', {})).functions.map((f) => f.function_id))
    await waitUntil(async () => (await ids()).has('acme::hooked_fn'), { what: 'acme::hooked_fn registered' })
    assert.ok(!(await ids()).has('hooked_fn'))
    assert.deepEqual(await boundTo('hooked'), ['acme::hooked_fn'])
    await waitUntil(
      () =>
        engine.log().includes("registration dropped by the listener's access policy") &&
        engine.log().includes('the session has no tenant'),
      { what: "ada's registration dropped" },
    )
    assert.ok(![...(await ids())].some((i) => i.endsWith('ada_fn')))
  })

  // ------------------------------------------------------------------------- hostile

  for (const [listener, id] of [
    ['loopAuth', 'policy::loop'],
    ['trapAuth', 'policy::trap'],
  ]) {
    logged(`a hostile auth policy (${id}) denies and the engine keeps serving`, async () => {
      const trusted = await client('trusted')
      await refused(listener, id)
      const lines = engine
        .log()
        .split('\n')
        .filter((l) => l.includes(REFUSED) && l.includes(id))
      assert.ok(!lines.some((l) => l.includes('did not finish within')), 'the policy limit ended it, not the handshake timeout')
      assert.equal((await call(trusted, 'svc::echo', { still: 'here' })).data.still, 'here')
    })
  }

  logged('a memory-bomb middleware fails the call and others go on', async () => {
    const trusted = await client('trusted')
    const b = await client('bombMw')
    for (let i = 0; i < 2; i++) {
      const err = await errorOf(b, 'svc::echo', {})
      assert.equal(err.code, 'policy_failed')
    }
    assert.equal((await call(trusted, 'svc::echo', { after: 'bomb' })).data.after, 'bomb')
    assert.ok(engine.log().includes('policy::bomb'))
  })
})
