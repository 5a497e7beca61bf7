// Durable queues through the official Node SDK (issue 10): iii::durable::publish with
// durable:subscriber bindings (spec 4.6.6), TriggerAction.Enqueue on a named queue (3.4), and
// dead letters with redrive (5.5).
import assert from 'node:assert/strict'
import { TriggerAction } from 'iii-sdk'
import { call, engineTest, waitFunction, waitUntil } from '../lib/harness.mjs'

const config =
  '  - name: iii-queue\n' +
  '    config:\n' +
  '      queue_configs:\n' +
  '        payment: {max_retries: 3, backoff_ms: 20}\n'

const stats = (w, topic) => call(w, 'engine::queue::topic_stats', { topic })

engineTest(
  'durable publish: each subscribed function gets its own copy, another topic nothing',
  async ({ worker }) => {
    const w = await worker('node-q-subs')
    const got = { a: [], b: [], other: [] }
    for (const n of Object.keys(got)) w.registerFunction(`nodeq::${n}`, async (d) => void got[n].push(d))
    w.registerTrigger({ type: 'durable:subscriber', function_id: 'nodeq::a', config: { topic: 'orders' } })
    w.registerTrigger({ type: 'durable:subscriber', function_id: 'nodeq::b', config: { topic: 'orders' } })
    w.registerTrigger({ type: 'durable:subscriber', function_id: 'nodeq::other', config: { topic: 'invoices' } })
    await waitUntil(async () => (await stats(w, 'orders')).consumer_count === 2, { what: 'both bound' })
    // The Node SDK hands a null result back as undefined.
    for (let n = 0; n < 5; n++) assert.equal((await call(w, 'iii::durable::publish', { topic: 'orders', data: { n } })) ?? null, null)
    await waitUntil(() => got.a.length === 5 && got.b.length === 5, { what: 'five each' })
    assert.deepEqual(got.a.map((d) => d.n).sort(), [0, 1, 2, 3, 4])
    assert.deepEqual(got.b.map((d) => d.n).sort(), [0, 1, 2, 3, 4])
    assert.deepEqual(got.other, [])
  },
  { config },
)

engineTest(
  'TriggerAction.Enqueue returns a receipt; the function runs later; an unknown queue is enqueue_error',
  async ({ worker }) => {
    const w = await worker('node-q-enqueue')
    const got = []
    w.registerFunction('nodeq::pay', async (d) => void got.push(d))
    await waitFunction(w, 'nodeq::pay')
    const r = await w.trigger({ function_id: 'nodeq::pay', payload: { amount: 7 }, action: TriggerAction.Enqueue({ queue: 'payment' }) })
    assert.match(r.messageReceiptId, /^[0-9a-f-]{36}$/)
    await waitUntil(() => got.length === 1, { what: 'the enqueued call ran' })
    assert.deepEqual(got[0], { amount: 7 })
    await assert.rejects(
      w.trigger({ function_id: 'nodeq::pay', payload: {}, action: TriggerAction.Enqueue({ queue: 'nope' }) }),
      (e) => /nope/.test(String(e?.message ?? e)),
    )
  },
  { config },
)

engineTest(
  'a failing subscriber is retried, dead-lettered, and redriven',
  async ({ worker }) => {
    const w = await worker('node-q-dlq')
    let healthy = false
    const attempts = []
    w.registerFunction('nodeq::job', async (d) => {
      attempts.push(d)
      if (!healthy) throw new Error(`attempt ${attempts.length} failed`)
      return { ok: true }
    })
    w.registerTrigger({
      type: 'durable:subscriber',
      function_id: 'nodeq::job',
      config: { topic: 'jobs', queue_config: { maxRetries: 1, backoffDelayMs: 20 } },
    })
    await waitUntil(async () => (await stats(w, 'jobs')).consumer_count === 1, { what: 'bound' })
    await call(w, 'iii::durable::publish', { topic: 'jobs', data: { k: 1 } })
    const dlq = await waitUntil(async () => {
      const m = await call(w, 'engine::queue::dlq_messages', { topic: 'jobs' })
      return m.length ? m : null
    }, { what: 'a dead letter' })
    assert.equal(attempts.length, 2)
    assert.deepEqual(dlq[0].payload, { k: 1 })
    assert.match(dlq[0].error, /attempt 2 failed/)
    healthy = true
    assert.deepEqual(await call(w, 'iii::queue::redrive', { queue: 'jobs' }), { queue: 'jobs', redriven: 1 })
    await waitUntil(() => attempts.length === 3, { what: 'the redriven message ran' })
  },
  { config },
)
