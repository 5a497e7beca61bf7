// `iii console` in headless Chromium against a real engine and a Node SDK worker: functions with
// their schemas, invoking one from its generated form, the trace of that call, state and stream
// browsing, DLQ redrive, and a screenshot of every page. Any console error on the page fails.
import assert from 'node:assert/strict'
import { call, engineTest, waitFunction } from '../../sdk/node/lib/harness.mjs'
import { openBrowser, shot, startConsole, visit, waitUntil } from '../lib.mjs'

const config =
  '  - name: iii-state\n' +
  '  - name: iii-stream\n' +
  '  - name: iii-queue\n' +
  '  - name: iii-observability\n'

const GREET = {
  type: 'object',
  properties: {
    name: { type: 'string', description: 'who to greet' },
    times: { type: 'integer' },
    loud: { type: 'boolean' },
  },
  required: ['name'],
}

/** Is an engine function present (the obs functions land on a separate branch)? */
async function has(w, id) {
  try {
    await call(w, id, {})
    return true
  } catch (e) {
    if (/function_not_found|not found/i.test(String(e?.code ?? e?.message ?? e))) return false
    return true
  }
}

engineTest(
  'the console lists, invokes, traces, browses state and streams and redrives a dead letter',
  async ({ engine, worker, t }) => {
    const w = await worker('console-demo')
    w.registerFunction(
      'demo::greet',
      async (d) => {
        await call(w, 'engine::log::info', { message: `greeting ${d.name}`, data: { name: d.name } }).catch(() => {})
        const word = d.loud ? 'HELLO' : 'hello'
        return { greeting: Array(d.times ?? 1).fill(`${word} ${d.name}`).join(', ') }
      },
      { description: 'Greets someone', request_format: GREET, response_format: { type: 'object', properties: { greeting: { type: 'string' } } } },
    )
    let healthy = false
    const attempts = []
    w.registerFunction('demo::job', async (d) => {
      attempts.push(d)
      if (!healthy) throw new Error(`job attempt ${attempts.length} failed`)
      return { done: true }
    })
    w.registerTrigger({ type: 'durable:subscriber', function_id: 'demo::job', config: { topic: 'jobs', queue_config: { maxRetries: 1, backoffDelayMs: 20 } } })
    await waitFunction(w, 'demo::greet')
    await waitUntil(async () => (await call(w, 'engine::queue::topic_stats', { topic: 'jobs' })).consumer_count === 1, { what: 'job bound' })
    await call(w, 'iii::durable::publish', { topic: 'jobs', data: { order: 42 } })
    await waitUntil(async () => (await call(w, 'engine::queue::dlq_messages', { topic: 'jobs' })).length === 1, { what: 'a dead letter' })
    await call(w, 'state::set', { scope: 'carts', key: 'c1', value: { items: 3, owner: 'ada' } })
    await call(w, 'stream::set', { stream_name: 'chat', group_id: 'room1', item_id: 'm1', data: { text: 'hi there' } })

    const c = await startConsole(engine)
    const { browser, page, errors } = await openBrowser()
    try {
      // Workers: the SDK worker and the console itself (a worker named iii-console).
      await visit(page, c.url, '#workers')
      await page.waitForSelector('[data-testid=workers] >> text=console-demo')
      await page.waitForSelector('[data-testid=workers] >> text=iii-console')
      await shot(page, 'workers')

      // Functions: listed; the detail shows the schemas; the generated form invokes it.
      await visit(page, c.url, '#functions')
      await page.click('[data-testid=functions] >> text=demo::greet')
      await page.waitForSelector('[data-testid=invoke-form]')
      const schema = await page.textContent('[data-testid=request-schema]')
      assert.deepEqual(JSON.parse(schema), GREET)
      assert.match(await page.textContent('[data-testid=response-schema]'), /greeting/)
      await page.fill('[data-testid=invoke-form] input[name=name]', 'Ada')
      await page.fill('[data-testid=invoke-form] input[name=times]', '2')
      await page.check('[data-testid=invoke-form] input[name=loud]')
      await page.click('[data-testid=invoke-form] button[type=submit]')
      await page.waitForSelector('[data-testid=result-value]')
      assert.deepEqual(JSON.parse(await page.textContent('[data-testid=result-value]')), { greeting: 'HELLO Ada, HELLO Ada' })
      await shot(page, 'functions')
      // A call the engine refuses shows the engine's error, not a blank.
      await page.fill('[data-testid=invoke-form] textarea[name=__raw]', '{not json')
      await page.click('[data-testid=invoke-form] button[type=submit]')
      await page.waitForSelector('[data-testid=invoke-result] >> text=not valid JSON')

      // Triggers: the durable subscriber binding of demo::job.
      await visit(page, c.url, '#triggers')
      await page.waitForSelector('[data-testid=registered-triggers] >> text=demo::job')
      await shot(page, 'triggers')

      // State: scope → its values; a key read through the page.
      await visit(page, c.url, '#state')
      await page.click('[data-testid=scopes] >> text=carts')
      await page.waitForSelector('[data-testid=state-values] >> text=/"owner":"ada"/')
      await page.fill('[data-testid=state-detail] input[name=key]', 'c1')
      await page.click('[data-testid=state-detail] button >> text=get')
      await page.waitForSelector('[data-testid=state-key-result] >> text=/"items": 3/')
      await shot(page, 'state')

      // Streams: stream/group → items.
      await visit(page, c.url, '#streams')
      await page.click('[data-testid=streams] >> text=room1')
      await page.waitForSelector('[data-testid=stream-items] >> text=hi there')
      await shot(page, 'streams')

      // Queues: the dead letter, redriven from the page; the job then succeeds.
      await visit(page, c.url, '#queues')
      await page.waitForSelector('[data-testid=queue-topics] >> text=jobs')
      await page.click('[data-testid=dlq-topics] >> text=jobs')
      await page.waitForSelector('[data-testid=dlq-messages] >> text=job attempt 2 failed')
      await shot(page, 'queues')
      healthy = true
      await page.click('[data-testid=dlq-messages] button >> text=redrive')
      await page.waitForSelector('[data-testid=dlq-action-result] >> text=/"redriven":1/')
      await waitUntil(() => attempts.length === 3, { what: 'the redriven job ran' })
      assert.deepEqual(await call(w, 'engine::queue::dlq_messages', { topic: 'jobs' }), [])
      await page.waitForSelector('[data-testid=dlq-empty]')

      // Sandboxes: no sandbox service in this engine, so the page says so.
      await visit(page, c.url, '#sandboxes')
      await page.waitForSelector('[data-testid=unavailable] >> text=sandbox::list')
      await shot(page, 'sandboxes')

      // Traces, logs and metrics come from engine::traces/logs/metrics::* (the obs work). Without
      // them each page shows the engine's "function not found" as an empty state.
      const obs = await has(w, 'engine::traces::list')
      await visit(page, c.url, '#traces/?function_id=demo::greet')
      if (obs) {
        await page.click('[data-testid=traces] tbody tr >> nth=0')
        await page.waitForSelector('[data-testid=waterfall] .span >> text=demo::greet')
      } else {
        await page.waitForSelector('[data-testid=unavailable] >> text=engine::traces::list')
        t.diagnostic('engine::traces::* absent (obs branch not merged): the traces page shows its empty state')
      }
      await shot(page, 'traces')
      await visit(page, c.url, '#logs')
      if (obs) {
        // The level filter goes to engine::logs::list; the worker's info line is there.
        await page.selectOption('[data-page=logs] select >> nth=0', 'info')
        await page.waitForSelector('[data-testid=logs] >> text=greeting Ada')
        await page.selectOption('[data-page=logs] select >> nth=0', 'error')
        await page.waitForSelector('[data-testid=logs] >> text=greeting Ada', { state: 'detached' })
      } else {
        await page.waitForSelector('[data-testid=unavailable] >> text=engine::logs::list')
      }
      await shot(page, 'logs')
      await visit(page, c.url, '#metrics')
      if (obs) await page.waitForSelector('[data-metric=iii_invocations_total]')
      else await page.waitForSelector('[data-testid=unavailable] >> text=engine::metrics::list')
      await shot(page, 'metrics')

      assert.deepEqual(errors, [], 'the page logged errors')
    } catch (err) {
      await shot(page, 'failure').catch(() => {})
      process.stdout.write(`\n----- console log -----\n${c.log()}\n`)
      throw err
    } finally {
      await browser.close()
      await c.stop()
    }
  },
  { config, timeout: 180000 },
)

engineTest(
  'the console API refuses cross-origin and non-JSON calls and reports an unreachable engine',
  async ({ engine }) => {
    const c = await startConsole(engine)
    try {
      const post = (headers, body) => fetch(`${c.url}/api/call`, { method: 'POST', headers, body })
      let r = await post({ 'content-type': 'text/plain' }, '{"function_id":"engine::workers::list"}')
      assert.equal(r.status, 415)
      r = await post({ 'content-type': 'application/json', origin: 'http://evil.example' }, '{"function_id":"engine::workers::list"}')
      assert.equal(r.status, 403)
      r = await post({ 'content-type': 'application/json' }, '{"data":{}}')
      assert.equal(r.status, 400)
      assert.equal((await r.json()).error.code, 'INVALID_REQUEST')
      r = await post({ 'content-type': 'application/json' }, '{"function_id":"no::such"}')
      assert.equal(r.status, 200)
      assert.equal((await r.json()).error.code, 'function_not_found')
      r = await post({ 'content-type': 'application/json' }, '{"function_id":"engine::workers::list"}')
      const names = (await r.json()).result.workers.map((x) => x.name)
      assert.ok(names.includes('iii-console'), names.join(','))
      // The engine goes away: a clear error, then the console reconnects when it is back.
      await engine.stop()
      r = await post({ 'content-type': 'application/json' }, '{"function_id":"engine::workers::list"}')
      assert.equal(r.status, 502)
      assert.equal((await r.json()).error.code, 'ENGINE_UNREACHABLE')
      await engine.start()
      await waitUntil(async () => {
        const r = await post({ 'content-type': 'application/json' }, '{"function_id":"engine::workers::list"}')
        return r.status === 200
      }, { what: 'the console reconnected' })
    } finally {
      await c.stop()
    }
  },
  { config },
)
