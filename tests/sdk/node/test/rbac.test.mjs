// Worker RBAC and listener middleware (spec §9) through the official Node SDK.
//
// One engine for the file with three worker listeners: a trusted one, an `rbac` one (auth
// function, `expose_functions` by match and metadata, the three registration hooks) and one
// with `middleware_function_id`. The auth function, hooks and middleware are SDK functions of
// a worker on the trusted listener; every other client is an SDK worker on a gated listener.
// Node 0.22 cannot name a namespace (neither for its worker nor in `trigger`), so the
// namespace paths are covered by the Python and Rust suites.
import assert from 'node:assert/strict'
import fs from 'node:fs'
import { after, before, describe, test } from 'node:test'
import { InvocationError, registerWorker, TriggerAction } from 'iii-sdk'
import { Engine, freePort, shutdownWorker, sleep, stripCaller, waitUntil } from '../lib/harness.mjs'

const NO_OTEL = { enabled: false }

/** The grants for each `?token=` (or an `Authorization` header). */
function auth(inp) {
  if (inp.headers.authorization === 'Bearer from-header') {
    return { allowed_functions: ['extra::one'], context: { via: 'header' } }
  }
  const token = (inp.query_params.token ?? [''])[0]
  switch (token) {
    case 'full':
      return {
        namespaces: { default: [], tenant: ['t::*'] },
        allowed_functions: ['extra::one'],
        forbidden_functions: ['pub::secret', 'engine::log::info'],
        context: { user: 'u-full' },
      }
    case 'bare':
      return {}
    case 'prefix':
      return { function_registration_prefix: 'p1', context: { tenant: 'p1' } }
    case 'types':
      return { allow_trigger_type_registration: true, allowed_trigger_types: ['mine'], context: { user: 'u-types' } }
    case 'null':
      return null
    default:
      throw new Error('unknown token')
  }
}

function recorder() {
  const h = {
    registered: [],
    registerTrigger: async (cfg) => {
      h.registered.push(cfg)
    },
    unregisterTrigger: async () => {},
  }
  return h
}

describe('worker RBAC and listener middleware through the Node SDK', () => {
  let engine
  let rbacPort
  let mwPort
  let pol // trusted policy worker
  const calls = [] // [function_id, input, metadata]
  const of = (fid) => calls.filter((c) => c[0] === fid).map((c) => c[1])
  const authTokens = () => of('pol::auth').map((d) => (d.query_params.token ?? [''])[0])
  let made = []
  let seq = 0

  const client = async (port, query = '', { wait = true, ...opts } = {}) => {
    const c = registerWorker(`ws://127.0.0.1:${port}/${query}`, {
      workerName: `node-rbac-${++seq}`,
      otel: NO_OTEL,
      ...opts,
    })
    made.push(c)
    if (wait) await waitUntil(() => c.workerId, { what: `workerregistered on port ${port} ${query}` })
    return c
  }
  const call = (c, function_id, payload, extra = {}) => c.trigger({ function_id, payload, ...extra })
  const trustedIds = async () =>
    new Set((await call(pol, 'engine::functions::list', { prefix: '' })).functions.map((f) => f.function_id))

  async function forbidden(c, fid, message) {
    const err = await call(c, fid, {}).then(
      (r) => assert.fail(`${fid} was allowed: ${JSON.stringify(r)}`),
      (e) => e,
    )
    assert.ok(err instanceof InvocationError, String(err))
    assert.equal(err.code, 'FORBIDDEN')
    assert.equal(err.function_id, fid)
    assert.equal(err.message, `FORBIDDEN: ${message}`)
  }

  before(async () => {
    rbacPort = await freePort()
    mwPort = await freePort()
    engine = await Engine.create(
      `  - name: iii-worker-manager
    config:
      host: 127.0.0.1
      port: ${rbacPort}
      rbac:
        auth_function_id: pol::auth
        expose_functions:
          - match("link::*")
          - metadata: { public: true }
          - metadata: { tier: match("pro*") }
          - match("engine::functions::*")
        on_function_registration_function_id: pol::on_fn
        on_trigger_registration_function_id: pol::on_trigger
        on_trigger_type_registration_function_id: pol::on_type
  - name: iii-worker-manager
    config:
      host: 127.0.0.1
      port: ${mwPort}
      middleware_function_id: pol::mw
      rbac:
        auth_function_id: pol::auth
        expose_functions: [match("link::*"), match("engine::functions::list")]
`,
    )
    pol = registerWorker(engine.wsUrl, { workerName: 'node-policy' })
    await waitUntil(() => pol.workerId, { what: 'policy worker registered' })
    const recorded = (fid, fn) => async (d, metadata) => {
      calls.push([fid, d, metadata])
      return fn(d)
    }
    pol.registerFunction('pol::auth', recorded('pol::auth', auth))
    pol.registerFunction(
      'pol::on_fn',
      recorded('pol::on_fn', (d) => {
        if (d.function_id.startsWith('drop::')) throw new Error('no such function here')
        if (d.function_id.startsWith('nullres::')) return null
        if (d.function_id.startsWith('rename::')) {
          return { function_id: `renamed::${d.function_id.split('::')[1]}`, description: 'set by hook' }
        }
        return {}
      }),
    )
    pol.registerFunction(
      'pol::on_trigger',
      recorded('pol::on_trigger', (d) => {
        if (d.config?.k === 'drop') return null
        if (d.config?.k === 'rewrite') return { config: { k: 'rewritten' } }
        return {}
      }),
    )
    pol.registerFunction(
      'pol::on_type',
      recorded('pol::on_type', (d) => {
        if (d.trigger_type_id === 'bad') throw new Error('no such type')
        if (d.trigger_type_id === 'renameme') return { trigger_type_id: 'renamed-type' }
        return { description: 'checked by hook' }
      }),
    )
    pol.registerFunction(
      'pol::mw',
      recorded('pol::mw', async (mid) => {
        if (mid.payload?.reject) throw new Error('middleware said no')
        const payload = { ...mid.payload, via_mw: true, user: mid.context.user }
        return pol.trigger({ function_id: mid.function_id, payload })
      }),
    )
    for (const [fid, metadata] of [
      ['link::echo', undefined],
      ['pub::a', { public: true }],
      ['pub::secret', { public: true }],
      ['pro::b', { tier: 'pro-2' }],
      ['priv::c', { public: false }],
      ['extra::one', undefined],
    ]) {
      pol.registerFunction(
        fid,
        recorded(fid, (d) => ({ served: fid, data: d })),
        metadata ? { metadata } : {},
      )
    }
    await waitUntil(async () => (await trustedIds()).has('extra::one'), { what: 'policy functions registered' })
  })

  after(async () => {
    for (const c of [...made.reverse(), pol]) {
      if (c) await shutdownWorker(c)
    }
    if (engine) {
      await engine.stop()
      fs.rmSync(engine.dir, { recursive: true, force: true })
    }
  })

  // A test that fails prints the engine's log, as engineTest does.
  const logged = (name, fn) =>
    test(name, async () => {
      try {
        await fn()
      } catch (err) {
        let tail = engine.log()
        if (tail.length > 20000) tail = `...<truncated>...\n${tail.slice(-20000)}`
        process.stdout.write(`\n----- engine log (${engine.logPath}) -----\n${tail}\n----- end engine log -----\n`)
        throw err
      }
    })

  const cleanup = async () => {
    for (const c of made.reverse()) await shutdownWorker(c)
    made = []
  }

  logged('auth by query and by header admits the SDK worker', async () => {
    try {
      const c = await client(rbacPort, '?token=full&x=a%20b', { headers: { 'X-Custom': 'v1' } })
      const seen = of('pol::auth').filter((d) => d.query_params.x?.[0] === 'a%20b')
      assert.equal(seen.length, 1, 'one auth call per admitted connection')
      const inp = seen[0]
      assert.deepEqual(inp.query_params, { token: ['full'], x: ['a%20b'] })
      assert.equal(inp.headers['x-custom'], 'v1')
      assert.equal(inp.ip_address, '127.0.0.1')
      assert.equal((await call(c, 'extra::one', {})).served, 'extra::one')

      const h = await client(rbacPort, '', { headers: { Authorization: 'Bearer from-header' } })
      assert.equal((await call(h, 'extra::one', {})).served, 'extra::one')
      await forbidden(h, 'priv::c', "function 'priv::c' not allowed (add to rbac.expose_functions)")
    } finally {
      await cleanup()
    }
  })

  for (const [token, reason] of [
    ['nope', 'unknown token'],
    ['null', 'returned null'],
  ]) {
    logged(`auth failure (${token}) is a refused connection the SDK retries`, async () => {
      try {
        const before = authTokens().filter((t) => t === token).length
        const c = await client(rbacPort, `?token=${token}`, {
          wait: false,
          reconnectionConfig: { initialDelayMs: 50, maxDelayMs: 200 },
        })
        // The SDK ignores the AUTH_ERROR frame and treats the close as a drop: it reconnects,
        // is refused again, and never gets a worker id.
        await waitUntil(() => authTokens().filter((t) => t === token).length >= before + 2, {
          what: `two auth attempts with ${token}`,
        })
        assert.equal(c.workerId, undefined)
        const err = await call(c, 'link::echo', {}, { timeoutMs: 800 }).then(
          () => assert.fail('a refused client got an answer'),
          (e) => e,
        )
        assert.ok(err instanceof InvocationError)
        assert.equal(err.code, 'TIMEOUT')
        const log = engine.log()
        assert.ok(log.includes("connection refused by the listener's auth") && log.includes(reason), 'engine log')
      } finally {
        await cleanup()
      }
    })
  }

  logged('calls follow match, metadata and grants; FORBIDDEN is an InvocationError', async () => {
    try {
      const c = await client(rbacPort, '?token=full')
      for (const fid of ['link::echo', 'pub::a', 'pro::b', 'extra::one']) {
        assert.equal((await call(c, fid, { k: 1 })).served, fid)
      }
      const expose = 'add to rbac.expose_functions'
      const remove = 'remove from rbac.forbidden_functions'
      for (const [fid, hint] of [
        ['priv::c', expose],
        ['missing::fn', expose],
        ['pub::secret', remove], // forbidden wins over a metadata rule
        ['engine::log::info', remove], // ... and over the infrastructure carve-out
      ]) {
        await forbidden(c, fid, `function '${fid}' not allowed (${hint})`)
      }
      const ids = new Set((await call(c, 'engine::functions::list', {})).functions.map((f) => f.function_id))
      for (const id of ['link::echo', 'pub::a', 'pro::b', 'extra::one']) assert.ok(ids.has(id), id)
      for (const id of ['priv::c', 'pub::secret', 'pol::auth', 'pol::mw']) assert.ok(!ids.has(id), id)
    } finally {
      await cleanup()
    }
  })

  logged('infrastructure functions work for a session without grants', async () => {
    try {
      const c = await client(rbacPort, '?token=bare', { workerName: 'node-bare' })
      // engine::workers::register (sent by the SDK on connect) succeeded: the name is listed.
      await waitUntil(
        async () => (await call(pol, 'engine::workers::list', {})).workers.some((w) => w.name === 'node-bare'),
        { what: 'node-bare registered' },
      )
      await call(c, 'engine::log::warn', { message: 'from a bare session' })
      await call(c, 'engine::log::info', { message: 'not forbidden for this session' })
      await forbidden(c, 'priv::c', "function 'priv::c' not allowed (add to rbac.expose_functions)")
      c.registerFunction('bare::fn', async (d) => {
        await call(c, 'engine::log::info', { message: 'inside a handler', data: d })
        return { logged: true }
      })
      await waitUntil(
        async () => {
          const r = await call(pol, 'bare::fn', { x: 1 }, { timeoutMs: 2000 }).catch(() => null)
          return r?.logged === true
        },
        { what: 'bare::fn served' },
      )
    } finally {
      await cleanup()
    }
  })

  logged('registration hooks allow, rewrite and drop', async () => {
    // The SDK reports a refused binding (triggerregistrationresult with an error) on console.error.
    const errors = []
    const consoleError = console.error
    console.error = (...args) => {
      errors.push(args.map(String).join(' '))
      consoleError(...args)
    }
    try {
      const c = await client(rbacPort, '?token=types', { workerName: 'node-hooked' })
      c.registerFunction('keep::me', async () => 'kept', { description: 'as sent', metadata: { m: 1 } })
      c.registerFunction('rename::me', async () => 'renamed')
      c.registerFunction('drop::me', async () => 'never')
      c.registerFunction('nullres::me', async () => 'never')
      const rec = recorder()
      c.registerTriggerType({ id: 'mine', description: 'as sent' }, rec)
      c.registerTriggerType({ id: 'bad', description: 'x' }, recorder())
      c.registerTriggerType({ id: 'renameme', description: 'x' }, recorder())
      for (const k of ['keep', 'rewrite', 'drop']) {
        c.registerTrigger({ type: 'mine', function_id: 'link::echo', config: { k } })
      }
      c.registerTrigger({ type: 'mine', function_id: 'priv::c', config: { k: 'denied-target' } })
      c.registerTrigger({ type: 'cron', function_id: 'link::echo', config: { expression: '* * * * * *' } })

      // The SDK worker provides `mine`: it is told of the bindings the hook kept, as rewritten.
      await waitUntil(() => rec.registered.length >= 2 && of('pol::on_trigger').length >= 4, {
        what: 'bindings delivered to the provider',
      })
      await sleep(200)
      assert.deepEqual(rec.registered.map((r) => r.config.k).sort(), ['keep', 'rewritten'])
      await waitUntil(
        () => errors.some((e) => e.includes("function 'priv::c' not allowed (add to rbac.expose_functions)")),
        { what: 'the SDK reported the refused binding' },
      )

      const ids = await trustedIds()
      for (const id of ['keep::me', 'renamed::me']) assert.ok(ids.has(id), id)
      for (const id of ['rename::me', 'drop::me', 'nullres::me']) assert.ok(!ids.has(id), id)
      const info = await call(pol, 'engine::functions::info', { function_id: 'renamed::me' })
      assert.equal(info.description, 'set by hook')

      const types = new Map((await call(pol, 'engine::triggers::list', {})).triggers.map((t) => [t.id, t]))
      assert.ok(types.has('mine') && types.has('renamed-type'), [...types.keys()].join())
      assert.ok(!types.has('bad') && !types.has('renameme'))
      assert.equal(types.get('mine').description, 'checked by hook')

      const bound = (await call(pol, 'engine::registered-triggers::list', { include_internal: true }))
        .registered_triggers
      assert.deepEqual(
        bound
          .filter((b) => b.trigger_type === 'mine')
          .map((b) => b.config.k)
          .sort(),
        ['keep', 'rewritten'],
      )
      assert.ok(!bound.some((b) => b.trigger_type === 'cron'))

      // The hooks saw the §9.6 inputs with the session's context.
      const fnIn = of('pol::on_fn').filter((d) => d.function_id === 'keep::me').at(-1)
      assert.equal(fnIn.description, 'as sent')
      assert.deepEqual(fnIn.metadata, { m: 1 })
      assert.equal(fnIn.namespace, 'default')
      assert.deepEqual(fnIn.context, { user: 'u-types' })
      const typeIn = of('pol::on_type').filter((d) => d.trigger_type_id === 'mine').at(-1)
      assert.deepEqual(typeIn, { trigger_type_id: 'mine', description: 'as sent', context: { user: 'u-types' } })
      const trigIn = of('pol::on_trigger').filter((d) => d.config?.k === 'keep').at(-1)
      assert.equal(trigIn.trigger_type, 'mine')
      assert.equal(trigIn.function_id, 'link::echo')
      assert.deepEqual(trigIn.context, { user: 'u-types' })
      assert.ok(!of('pol::on_trigger').some((d) => d.trigger_type === 'cron'), 'allowed_trigger_types before the hook')

      // Without allow_trigger_type_registration a type never reaches the hook.
      const f = await client(rbacPort, '?token=full', { workerName: 'node-no-types' })
      f.registerTriggerType({ id: 'not-allowed', description: 'x' }, recorder())
      f.registerFunction('link::sync', async () => null)
      await waitUntil(async () => (await trustedIds()).has('link::sync'), { what: 'later registration applied' })
      const after = (await call(pol, 'engine::triggers::list', {})).triggers.map((t) => t.id)
      assert.ok(!after.includes('not-allowed'))
      assert.ok(!of('pol::on_type').some((d) => d.trigger_type_id === 'not-allowed'))
    } finally {
      console.error = consoleError
      await cleanup()
    }
  })

  logged('function_registration_prefix: registered as P::X, invoked as X', async () => {
    try {
      const c = await client(rbacPort, '?token=prefix', { workerName: 'node-prefixed' })
      const seen = []
      const ref = c.registerFunction('add', async (d) => {
        seen.push(d)
        return { sum: d.a + 1 }
      })
      await waitUntil(async () => (await trustedIds()).has('p1::add'), { what: 'p1::add registered' })
      assert.ok(!(await trustedIds()).has('add'))
      assert.deepEqual(await call(pol, 'p1::add', { a: 1 }), { sum: 2 })
      assert.equal(seen.at(-1).a, 1)
      ref.unregister()
      await waitUntil(async () => !(await trustedIds()).has('p1::add'), { what: 'p1::add unregistered' })
    } finally {
      await cleanup()
    }
  })

  logged('listener middleware proxies, rewrites and rejects', async () => {
    try {
      const c = await client(mwPort, '?token=full')
      const r = await call(c, 'link::echo', { n: 1 }, { metadata: { trace: 'm1' } })
      assert.equal(r.served, 'link::echo')
      assert.deepEqual(stripCaller(r.data), { n: 1, via_mw: true, user: 'u-full' })
      const [, mwIn, mwMeta] = calls.filter((x) => x[0] === 'pol::mw').at(-1)
      assert.deepEqual(mwIn, {
        function_id: 'link::echo',
        payload: { n: 1 },
        action: null,
        context: { user: 'u-full' },
        namespace: 'default',
      })
      assert.deepEqual(mwMeta, { trace: 'm1' })

      const err = await call(c, 'link::echo', { reject: true }).then(
        () => assert.fail('the middleware did not reject'),
        (e) => e,
      )
      assert.ok(err instanceof InvocationError)
      assert.equal(err.code, 'invocation_failed')
      assert.equal(err.message, 'invocation_failed: middleware said no')

      // A void call goes through the middleware as well.
      assert.equal(await call(c, 'link::echo', { mark: 'v1' }, { action: TriggerAction.Void() }), undefined)
      await waitUntil(() => of('link::echo').some((d) => d.mark === 'v1'), { what: 'void call proxied' })
      assert.deepEqual(of('pol::mw').filter((d) => d.payload?.mark === 'v1').at(-1).action, { type: 'void' })

      // RBAC comes first; engine builtins bypass the middleware.
      const n = of('pol::mw').length
      await forbidden(c, 'priv::c', "function 'priv::c' not allowed (add to rbac.expose_functions)")
      assert.ok(Array.isArray((await call(c, 'engine::functions::list', {})).functions))
      assert.equal(of('pol::mw').length, n)
    } finally {
      await cleanup()
    }
  })
})
