// The console is a worker like any other: on an RBAC listener it sees and calls only what that
// listener exposes, and the pages say so instead of failing.
import assert from 'node:assert/strict'
import fs from 'node:fs'
import { test } from 'node:test'
import { registerWorker } from '../../sdk/node/node_modules/iii-sdk/dist/index.mjs'
import { Engine, call, freePort, sleep, waitFunction, waitUntil } from '../../sdk/node/lib/harness.mjs'
import { openBrowser, shot, startConsole, visit } from '../lib.mjs'

test('on an RBAC listener the console lists and calls only what it exposes', { timeout: 120000 }, async () => {
  const rbacPort = await freePort()
  const engine = await Engine.create(
    '  - name: iii-state\n' +
      '  - name: iii-worker-manager\n' +
      `    config:\n      host: 127.0.0.1\n      port: ${rbacPort}\n      rbac:\n        expose_functions:\n` +
      '          - match("demo::*")\n          - match("engine::functions::*")\n',
  )
  const w = registerWorker(engine.wsUrl, { workerName: 'rbac-demo' })
  let c
  let browser
  try {
    await waitUntil(() => w.workerId, { what: 'worker registered' })
    w.registerFunction('demo::echo', async (d) => ({ echoed: d.text }), {
      request_format: { type: 'object', properties: { text: { type: 'string' } } },
    })
    await waitFunction(w, 'demo::echo')
    await call(w, 'state::set', { scope: 'secret', key: 'k', value: 1 })
    c = await startConsole({ ...engine, wsPort: rbacPort, dir: engine.dir })
    const b = await openBrowser()
    browser = b.browser
    const { page, errors } = b
    await visit(page, c.url, '#functions')
    await page.waitForSelector('[data-testid=functions] >> text=demo::echo')
    const listed = await page.locator('[data-testid=functions] tbody tr').allTextContents()
    assert.ok(!listed.some((r) => r.includes('state::')), `state::* is listed: ${listed}`)
    await page.click('[data-testid=functions] >> text=demo::echo')
    await page.fill('[data-testid=invoke-form] input[name=text]', 'through rbac')
    await page.click('[data-testid=invoke-form] button[type=submit]')
    await page.waitForSelector('[data-testid=result-value] >> text=through rbac')
    await visit(page, c.url, '#state')
    await page.waitForSelector('[data-testid=unavailable] >> text=not allowed on this listener')
    await shot(page, 'rbac-state-forbidden')
    assert.deepEqual(errors, [])
  } finally {
    if (browser) await browser.close()
    if (c) await c.stop()
    await Promise.race([w.shutdown().catch(() => {}), sleep(5000)])
    await engine.stop()
    fs.rmSync(engine.dir, { recursive: true, force: true })
  }
})
