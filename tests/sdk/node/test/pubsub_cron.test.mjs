// `publish` / `subscribe` and the `cron` trigger type through the official Node SDK
// (spec §4.6.2, §4.6.5, §5.5). The engine of this file also runs the pubsub and cron services.
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { test } from 'node:test'
import { registerWorker } from 'iii-sdk'
import { Engine, call, freePort, sleep, waitFunction, waitUntil } from '../lib/harness.mjs'

/** Like the harness's engineTest, with `pubsub` and `cron` in the config. */
function pubcronTest(name, fn) {
  test(name, { timeout: 120000 }, async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iii-sdk-node-pubcron-'))
    const engine = new Engine(dir, await freePort(), await freePort())
    fs.appendFileSync(path.join(dir, 'config.yaml'), '  - name: pubsub\n  - name: cron\n')
    await engine.start()
    const made = []
    const worker = async (workerName) => {
      const w = registerWorker(engine.wsUrl, { workerName })
      made.push(w)
      await waitUntil(() => w.workerId, { what: `workerregistered for ${workerName}` })
      return w
    }
    try {
      await fn({ engine, worker })
    } catch (err) {
      process.stdout.write(`\n----- engine log -----\n${engine.log().slice(-20000)}\n----- end engine log -----\n`)
      throw err
    } finally {
      for (const w of made.reverse()) await Promise.race([w.shutdown().catch(() => {}), sleep(5000)])
      await engine.stop()
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })
}

function inbox() {
  const got = new Map()
  return {
    handler: (id) => async (data) => {
      if (!got.has(id)) got.set(id, [])
      got.get(id).push(data)
      return null
    },
    of: (id) => got.get(id) ?? [],
  }
}

const bindings = async (w, function_id) =>
  (await call(w, 'engine::registered-triggers::list', { function_id })).registered_triggers

pubcronTest('publish reaches each subscriber of the topic; unsubscribe takes only one', async ({ worker }) => {
  const subs = await worker('node-subs')
  const other = await worker('node-other')
  const pub = await worker('node-pub')
  const box = inbox()
  for (const id of ['nodeorders::one', 'nodeorders::two']) subs.registerFunction(id, box.handler(id))
  other.registerFunction('nodeinvoices::one', box.handler('nodeinvoices::one'))
  for (const id of ['nodeorders::one', 'nodeorders::two', 'nodeinvoices::one']) await waitFunction(pub, id)
  const tOne = subs.registerTrigger({ type: 'subscribe', function_id: 'nodeorders::one', config: { topic: 'orders' } })
  subs.registerTrigger({ type: 'subscribe', function_id: 'nodeorders::two', config: { topic: 'orders' } })
  other.registerTrigger({ type: 'subscribe', function_id: 'nodeinvoices::one', config: { topic: 'invoices' } })
  await waitUntil(async () => (await bindings(pub, 'nodeorders::two')).length === 1 && (await bindings(pub, 'nodeinvoices::one')).length === 1, {
    what: 'bindings listed',
  })

  const r = await call(pub, 'publish', { topic: 'orders', data: { n: 1 } })
  assert.ok(r === null || r === undefined, `publish returns null, got ${JSON.stringify(r)}`)
  await waitUntil(() => box.of('nodeorders::one').length && box.of('nodeorders::two').length, { what: 'both subscribers called' })
  assert.deepEqual(box.of('nodeorders::one'), [{ n: 1 }])
  assert.deepEqual(box.of('nodeorders::two'), [{ n: 1 }])
  await sleep(300)
  assert.deepEqual(box.of('nodeinvoices::one'), [], 'a subscriber of another topic was called')

  tOne.unregister()
  await waitUntil(async () => (await bindings(pub, 'nodeorders::one')).length === 0, { what: 'binding gone' })
  await call(pub, 'publish', { topic: 'orders', data: 2 })
  await waitUntil(() => box.of('nodeorders::two').length === 2, { what: 'the remaining subscriber called' })
  await sleep(300)
  assert.deepEqual(box.of('nodeorders::one'), [{ n: 1 }], 'the unsubscribed binding was called')
  assert.deepEqual(box.of('nodeorders::two'), [{ n: 1 }, 2])

  await assert.rejects(call(pub, 'publish', { data: 1 }), (e) => /topic_not_set|Topic is not set/.test(String(e?.code ?? '') + String(e?.message ?? e)))
})

pubcronTest('a 7-field cron fires; invalid and 5-field ones are registration errors, the worker stays', async ({ worker }) => {
  const w = await worker('node-cron')
  const box = inbox()
  w.registerFunction('nodejobs::tick', box.handler('nodejobs::tick'))
  w.registerFunction('nodejobs::bad', box.handler('nodejobs::bad'))
  await waitFunction(w, 'nodejobs::bad')
  const errors = []
  const orig = console.error
  console.error = (...args) => {
    errors.push(args.map(String).join(' '))
  }
  try {
    w.registerTrigger({ type: 'cron', function_id: 'nodejobs::bad', config: { expression: '* * * * *' } })
    w.registerTrigger({ type: 'cron', function_id: 'nodejobs::bad', config: { expression: 'not a cron at all' } })
    await waitUntil(() => errors.filter((e) => e.includes('Invalid cron expression')).length === 2, {
      what: 'two registration errors reported to the SDK',
    })
  } finally {
    console.error = orig
  }
  assert.deepEqual(await bindings(w, 'nodejobs::bad'), [])

  w.registerTrigger({ type: 'cron', function_id: 'nodejobs::tick', config: { expression: '* * * * * * *' } })
  await waitUntil(() => box.of('nodejobs::tick').length > 0, { timeout: 3000, what: 'an every-second job fired within 3 s' })
  const p = box.of('nodejobs::tick')[0]
  assert.equal(p.trigger, 'cron')
  assert.equal(p.job_id, (await bindings(w, 'nodejobs::tick'))[0].id)
  const sched = Date.parse(p.scheduled_time)
  const actual = Date.parse(p.actual_time)
  assert.equal(sched % 1000, 0, `ticks fall on whole seconds: ${p.scheduled_time}`)
  assert.ok(actual >= sched, JSON.stringify(p))
  assert.deepEqual(box.of('nodejobs::bad'), [])
})
