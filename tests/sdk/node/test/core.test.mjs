// Core request/response behaviour through the official Node SDK (spec §2, §3, §5.1).
import assert from 'node:assert/strict'
import { context, trace } from '@opentelemetry/api'
import { InvocationError, TriggerAction } from 'iii-sdk'
import { call, engineTest, functionIds, listFunctions, listWorkers, stripCaller, waitFunction, waitUntil } from '../lib/harness.mjs'

engineTest('connect and listing (functions::list, workers::list, functions::info)', async ({ worker }) => {
  const w = await worker('node-lister', { workerDescription: 'lists things' })
  assert.match(w.workerId, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/)
  w.registerFunction('nodelist::echo', async (d) => d, { description: 'Echo for listing' })
  await waitFunction(w, 'nodelist::echo')

  const funcs = await listFunctions(w)
  const entry = funcs.find((f) => f.function_id === 'nodelist::echo')
  assert.equal(entry.namespace, 'default')
  assert.equal(entry.worker_name, 'node-lister')
  assert.equal(entry.description, 'Echo for listing')
  assert.deepEqual(
    funcs.filter((f) => f.function_id.startsWith('engine::') && !f.function_id.startsWith('engine::queue::')),
    [],
    'engine::* builtins are hidden from the default listing',
  )
  const ids = funcs.map((f) => f.function_id)
  assert.deepEqual(ids, [...ids].sort(), 'sorted by id')

  const me = await waitUntil(
    async () => (await listWorkers(w)).find((x) => x.id === w.workerId && x.name === 'node-lister'),
    { what: 'worker listed with its name' },
  )
  assert.equal(me.runtime, 'node')
  assert.equal(me.version, '0.22.1')
  assert.equal(me.namespace, 'default')
  assert.equal(me.status, 'connected')
  assert.equal(me.description, 'lists things')
  assert.ok(me.function_count >= 1)

  const info = await call(w, 'engine::functions::info', { function_id: 'nodelist::echo' })
  assert.equal(info.function_id, 'nodelist::echo')
  assert.equal(info.namespace, 'default')
  assert.equal(info.worker_name, 'node-lister')
  assert.equal(info.description, 'Echo for listing')
})

engineTest('invoke across two workers (+ _caller_worker_id injection)', async ({ worker }) => {
  const a = await worker('node-callee')
  const b = await worker('node-caller')
  const seen = []
  a.registerFunction('nodemath::add', async (d) => {
    seen.push(d)
    return { c: d.a + d.b }
  })
  await waitFunction(b, 'nodemath::add')
  assert.deepEqual(await call(b, 'nodemath::add', { a: 2, b: 3 }), { c: 5 })
  assert.equal(seen.at(-1)._caller_worker_id, b.workerId)
  assert.deepEqual(stripCaller(seen.at(-1)), { a: 2, b: 3 })
})

engineTest('handler throws -> invocation_failed with message and stacktrace', async ({ worker }) => {
  const a = await worker('node-thrower')
  const b = await worker()
  a.registerFunction('nodeerr::boom', async () => {
    throw new TypeError('boom-xyz ünïcode')
  })
  await waitFunction(b, 'nodeerr::boom')
  const err = await call(b, 'nodeerr::boom', { x: 1 }).then(
    () => assert.fail('expected rejection'),
    (e) => e,
  )
  assert.ok(err instanceof InvocationError, String(err))
  assert.equal(err.code, 'invocation_failed')
  assert.equal(err.message, 'invocation_failed: boom-xyz ünïcode')
  assert.equal(err.function_id, 'nodeerr::boom')
  assert.match(err.stacktrace, /TypeError: boom-xyz ünïcode/)
  assert.match(err.stacktrace, /\n\s+at /)
})

engineTest('unknown function -> function_not_found quickly', async ({ worker }) => {
  const b = await worker()
  const t0 = Date.now()
  const err = await call(b, 'nope::missing', { x: 1 }, { timeoutMs: 30000 }).then(
    () => assert.fail('expected rejection'),
    (e) => e,
  )
  const elapsed = Date.now() - t0
  assert.equal(err.code, 'function_not_found')
  assert.ok(err.message.startsWith('function_not_found: Function nope::missing not found in namespace default'), err.message)
  assert.ok(elapsed < 2000, `function_not_found took ${elapsed}ms (SDK timeout is 30s)`)
})

engineTest('unregister function -> later calls fail function_not_found', async ({ worker }) => {
  const a = await worker('node-unreg')
  const b = await worker()
  const ref = a.registerFunction('nodeunreg::f', async () => 'ok')
  await waitFunction(b, 'nodeunreg::f')
  assert.equal(await call(b, 'nodeunreg::f', {}), 'ok')
  ref.unregister()
  await waitUntil(
    async () => {
      try {
        await call(b, 'nodeunreg::f', {}, { timeoutMs: 5000 })
        return false
      } catch (e) {
        assert.equal(e.code, 'function_not_found', String(e))
        return true
      }
    },
    { what: 'unregistered function not found' },
  )
  assert.ok(!(await functionIds(b)).has('nodeunreg::f'))
  a.registerFunction('nodeunreg::g', async () => 'g')
  await waitFunction(b, 'nodeunreg::g')
  assert.equal(await call(b, 'nodeunreg::g', {}), 'g')
})

async function echoPair(worker) {
  const a = await worker('node-echo')
  const b = await worker('node-echo-caller')
  a.registerFunction('nodeecho::wrapped', async (d) => d.v)
  a.registerFunction('nodeecho::raw', async (d) => ({ got: d === undefined ? 'UNDEFINED' : d }))
  await waitFunction(b, 'nodeecho::wrapped')
  await waitFunction(b, 'nodeecho::raw')
  return { a, b }
}

engineTest('nested and unicode payloads round-trip exactly', async ({ worker }) => {
  const { b } = await echoPair(worker)
  const nested = {
    a: [1, { b: [null, true, false, 1.5, -3, Number.MAX_SAFE_INTEGER] }],
    deep: { x: { y: { z: [[[], {}], [[['leaf']]]] } } },
    unicode: 'héllo wörld — 中文 — 日本語 — 😀🚀 — \u202e rtl \u0000 nul \t\n"\\',
    'emoji_key_😀': { ключ: 'значение' },
    empty: '',
    float: 0.1,
    neg: -0.0001,
  }
  assert.deepEqual(await call(b, 'nodeecho::wrapped', { v: nested }), nested)
  for (const p of [[1, 'two', { three: 3 }], 'just a string 😀', 42, 3.25, true, false, null]) {
    assert.deepEqual(await call(b, 'nodeecho::raw', p), { got: p })
  }
})

engineTest('missing data (payload undefined) is delivered as null', async ({ worker }) => {
  // Node omits `data` when the payload is undefined (§13.3); the engine must treat it as null (§2.1, §14).
  const { b } = await echoPair(worker)
  assert.deepEqual(await call(b, 'nodeecho::raw', undefined, { timeoutMs: 5000 }), { got: null })
})

for (const mib of [1, 4]) {
  engineTest(`large payload ${mib} MiB round-trips`, async ({ worker }) => {
    const { b } = await echoPair(worker)
    const alphabet = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789é中😀'
    const chars = [...alphabet]
    let seed = mib
    const rnd = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648
    let chunk = ''
    for (let i = 0; i < 4096; i++) chunk += chars[Math.floor(rnd() * chars.length)]
    const reps = Math.ceil((mib * 1024 * 1024) / Buffer.byteLength(chunk)) + 1
    const big = chunk.repeat(reps)
    assert.ok(Buffer.byteLength(big) >= mib * 1024 * 1024)
    const list = Array.from({ length: 1000 }, (_, i) => i)
    const got = await call(b, 'nodeecho::wrapped', { v: { blob: big, list, size: big.length } }, { timeoutMs: 60000 })
    assert.equal(got.size, big.length)
    assert.deepEqual(got.list, list)
    assert.ok(got.blob === big, 'blob differs')
  })
}

engineTest('200 parallel invocations all answered correctly', async ({ worker }) => {
  const a = await worker('node-par')
  const b = await worker('node-par-caller')
  a.registerFunction('nodepar::double', async (d) => {
    await new Promise((r) => setTimeout(r, 50))
    return { i: d.i, double: d.i * 2 }
  })
  await waitFunction(b, 'nodepar::double')
  const results = await Promise.allSettled(Array.from({ length: 200 }, (_, i) => call(b, 'nodepar::double', { i })))
  const failed = results.filter((r) => r.status === 'rejected')
  assert.equal(failed.length, 0, `first failure: ${failed[0]?.reason}`)
  assert.deepEqual(
    results.map((r) => r.value),
    Array.from({ length: 200 }, (_, i) => ({ i, double: i * 2 })),
  )
})

engineTest('fire-and-forget (void) reaches the handler', async ({ worker }) => {
  const a = await worker('node-void')
  const b = await worker()
  let resolveGot
  const got = new Promise((r) => (resolveGot = r))
  a.registerFunction('nodevoid::record', async (d) => {
    resolveGot(d)
    return null
  })
  await waitFunction(b, 'nodevoid::record')
  assert.equal(await call(b, 'nodevoid::record', { event: 'login', n: 7 }, { action: TriggerAction.Void() }), undefined)
  const d = await Promise.race([got, new Promise((_, rej) => setTimeout(() => rej(new Error('void call never reached the handler')), 10000))])
  assert.deepEqual(stripCaller(d), { event: 'login', n: 7 })
})

engineTest('callee calls back into the caller', async ({ worker }) => {
  const a = await worker('node-a')
  const b = await worker('node-b')
  a.registerFunction('nodea::inc', async (d) => ({ n: d.n + 1 }))
  b.registerFunction('nodeb::work', async (d) => {
    const inner = await b.trigger({ function_id: 'nodea::inc', payload: { n: d.n * 10 } })
    return { from_a: inner.n, caller: d._caller_worker_id }
  })
  await waitFunction(a, 'nodeb::work')
  await waitFunction(a, 'nodea::inc')
  assert.deepEqual(await call(a, 'nodeb::work', { n: 4 }), { from_a: 41, caller: a.workerId })
})

engineTest('metadata side channel is delivered as the second handler argument', async ({ worker }) => {
  const a = await worker('node-meta')
  const b = await worker()
  a.registerFunction('nodemeta::echo', async (d, metadata) => ({ data: stripCaller(d), metadata: metadata ?? null }))
  await waitFunction(b, 'nodemeta::echo')
  const meta = { tenant: 'acme', nested: { k: [1, 2] }, ü: 'ß' }
  assert.deepEqual(await call(b, 'nodemeta::echo', { x: 1 }, { metadata: meta }), { data: { x: 1 }, metadata: meta })
  assert.deepEqual(await call(b, 'nodemeta::echo', { x: 2 }), { data: { x: 2 }, metadata: null })
})

engineTest('traceparent passthrough (trace id reaches the callee span)', async ({ worker }) => {
  const a = await worker('node-trace')
  const b = await worker()
  a.registerFunction('nodetrace::show', async () => ({ traceId: trace.getActiveSpan()?.spanContext().traceId ?? null }))
  await waitFunction(b, 'nodetrace::show')
  const traceId = '4bf92f3577b34da6a3ce929d0e0e4736'
  const parent = trace.setSpan(context.active(), trace.wrapSpanContext({ traceId, spanId: '00f067aa0ba902b7', traceFlags: 1 }))
  const got = await context.with(parent, () => call(b, 'nodetrace::show', {}))
  assert.equal(got.traceId, traceId)
})
