// Opt-in payload validation (issue 19 item 4, PROTOCOL.md §3.9) through the official Node SDK.
//
// One engine for the file with three worker listeners: the trusted one (`validate` unset, so
// off), one with `validate: warn` and one with `validate: enforce`. A provider on the trusted
// listener registers a function with an explicit `request_format` / `response_format`, one
// without, and a trigger type with a `trigger_request_format` (Node cannot derive schemas from
// TypeScript types, so they are given as JSON Schema). Callers are SDK workers on each listener.
import assert from 'node:assert/strict'
import fs from 'node:fs'
import { after, before, describe, test } from 'node:test'
import { InvocationError, registerWorker } from 'iii-sdk'
import { Engine, freePort, shutdownWorker, stripCaller, waitUntil } from '../lib/harness.mjs'

const NO_OTEL = { enabled: false }

const ORDER = {
  type: 'object',
  required: ['sku', 'qty'],
  properties: {
    sku: { type: 'string' },
    qty: { type: 'integer', minimum: 1 },
    lines: { type: 'array', items: { type: 'object', properties: { n: { type: 'integer' } } } },
  },
}

const HOOK = { type: 'object', required: ['path'], properties: { path: { type: 'string', pattern: '^/' } } }

describe('opt-in payload validation through the Node SDK', () => {
  let engine
  let warnPort
  let enforcePort
  let provider
  const seen = [] // [function_id, data]
  const of = (fid) => seen.filter((s) => s[0] === fid).map((s) => stripCaller(s[1]))
  const hookConfigs = []
  const made = []
  let seq = 0

  const client = async (port) => {
    const c = registerWorker(`ws://127.0.0.1:${port}`, { workerName: `node-validate-${++seq}`, otel: NO_OTEL })
    made.push(c)
    await waitUntil(() => c.workerId, { what: `workerregistered on port ${port}` })
    return c
  }
  const call = (c, function_id, payload) => c.trigger({ function_id, payload })
  const refused = async (c, fid, payload) => {
    const err = await call(c, fid, payload).then(
      (r) => assert.fail(`${fid} was accepted: ${JSON.stringify(r)}`),
      (e) => e,
    )
    assert.ok(err instanceof InvocationError, String(err))
    return err
  }

  before(async () => {
    warnPort = await freePort()
    enforcePort = await freePort()
    engine = await Engine.create(
      `  - name: iii-worker-manager
    config: {host: 127.0.0.1, port: ${warnPort}, validate: warn}
  - name: iii-worker-manager
    config: {host: 127.0.0.1, port: ${enforcePort}, validate: enforce}
`,
    )
    provider = registerWorker(engine.wsUrl, { workerName: 'node-validate-provider', otel: NO_OTEL })
    await waitUntil(() => provider.workerId, { what: 'provider registered' })
    const recorded = (fid, answer) => async (d) => {
      seen.push([fid, d])
      return answer(d)
    }
    provider.registerFunction(
      'node::order',
      recorded('node::order', (d) => ({ seen: stripCaller(d) })),
      { request_format: ORDER, response_format: { type: 'string' } },
    )
    provider.registerFunction(
      'node::free',
      recorded('node::free', (d) => ({ seen: stripCaller(d) })),
    )
    provider.registerTriggerType(
      { id: 'nodehook', description: 'hooks', trigger_request_format: HOOK },
      {
        registerTrigger: async (cfg) => {
          hookConfigs.push(cfg.config)
        },
        unregisterTrigger: async () => {},
      },
    )
    await waitUntil(
      async () => {
        const ids = (await call(provider, 'engine::functions::list', {})).functions.map((f) => f.function_id)
        const types = JSON.stringify(await call(provider, 'engine::triggers::list', {}))
        return ids.includes("node::order") && ids.includes("node::free") && types.includes('nodehook')
      },
      { what: 'provider functions and trigger type registered' },
    )
  })

  after(async () => {
    for (const c of [...made.reverse(), provider]) {
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

  logged('enforce refuses a bad payload with the code and the pointer, and passes a good one', async () => {
    const c = await client(enforcePort)
    const before = of('node::order').length
    let err = await refused(c, 'node::order', { sku: 'A', qty: 1, lines: [{ n: 1 }, { n: 'x' }] })
    assert.equal(err.code, 'validation_error')
    assert.equal(err.function_id, 'node::order')
    assert.match(err.message, /node::order/)
    assert.match(err.message, /"\/lines\/1\/n"/)
    err = await refused(c, 'node::order', { sku: 'A', qty: 0 })
    assert.equal(err.code, 'validation_error')
    assert.match(err.message, /"\/qty"/)
    assert.equal(of('node::order').length, before, 'refused calls never reach the worker')

    const good = { sku: 'A', qty: 2, lines: [{ n: 1 }] }
    // Results are not checked in enforce mode (the answer is an object, the schema says string).
    assert.deepEqual(await call(c, 'node::order', good), { seen: good })
    assert.deepEqual(of('node::order').at(-1), good)
  })

  logged('a function without a schema takes anything, even under enforce', async () => {
    const c = await client(enforcePort)
    assert.deepEqual(await call(c, 'node::free', [1, 'two', null]), { seen: [1, 'two', null] })
    assert.deepEqual(await call(c, 'node::free', 'text'), { seen: 'text' })
  })

  logged('enforce refuses a trigger config and engine::register_trigger alike', async () => {
    const c = await client(enforcePort)
    c.registerFunction('nodebind::f', async (d) => d)
    const errors = []
    const original = console.error
    console.error = (...args) => {
      errors.push(args.join(' '))
    }
    try {
      c.registerTrigger({ type: 'nodehook', function_id: 'nodebind::f', config: { path: 'no-slash' } })
      await waitUntil(() => errors.find((e) => e.includes('Trigger registration failed')), {
        what: 'the SDK logged the refused trigger',
      })
    } finally {
      console.error = original
    }
    const line = errors.find((e) => e.includes('Trigger registration failed'))
    assert.match(line, /nodehook/)
    assert.match(line, /"\/path"/)

    const err = await refused(c, 'engine::register_trigger', {
      trigger_type: 'nodehook',
      function_id: 'nodebind::f',
      config: { path: 7 },
    })
    assert.equal(err.code, 'validation_error')
    assert.match(err.message, /"\/path"/)

    c.registerTrigger({ type: 'nodehook', function_id: 'nodebind::f', config: { path: '/ok' } })
    await waitUntil(() => hookConfigs.some((h) => h.path === '/ok'), { what: 'the good binding reached the provider' })
    assert.ok(
      hookConfigs.every((h) => h.path === '/ok'),
      `refused configs reached the provider: ${JSON.stringify(hookConfigs)}`,
    )
  })

  logged('warn passes a bad payload and logs it, with the result check', async () => {
    const c = await client(warnPort)
    const bad = { sku: 5 }
    assert.deepEqual(await call(c, 'node::order', bad), { seen: bad })
    await waitUntil(
      () => {
        const log = engine.log()
        return log.includes('validate: warn') && log.includes('node::order') && log.includes('result passed anyway')
      },
      { what: 'warn lines for the input and the result' },
    )
  })

  logged('off is unchanged', async () => {
    const c = await client(engine.wsPort)
    assert.deepEqual(await call(c, 'node::order', 'not an object'), { seen: 'not an object' })
  })
})
