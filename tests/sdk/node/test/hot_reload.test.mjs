// Hot reload of `config.yaml` (issue #19) through the official Node SDK: the test edits the
// running engine's file; an added `pubsub` entry starts serving, a broken file is rejected
// while the SDK worker keeps being served, a removed entry stops, and an HTTP port change
// serves the same SDK-registered route on the new port.
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { call, engineTest, freePort, http, portOpen, waitUntil } from '../lib/harness.mjs'

function write(engine, text) {
  // Editors save by rename: the watcher must see that.
  const tmp = path.join(engine.dir, '.config.yaml.tmp')
  fs.writeFileSync(tmp, text)
  fs.renameSync(tmp, path.join(engine.dir, 'config.yaml'))
}

const config = (engine, httpPort, extra = '') =>
  'workers:\n' +
  '  - name: iii-worker-manager\n' +
  `    config: {host: 127.0.0.1, port: ${engine.wsPort}}\n` +
  '  - name: http\n' +
  `    config: {host: 127.0.0.1, port: ${httpPort}}\n` +
  extra

async function publishWorks(w) {
  try {
    await call(w, 'publish', { topic: 't', data: 1 })
    return true
  } catch (err) {
    if (err.code === 'function_not_found') return false
    throw err
  }
}

engineTest('config.yaml edits apply while the engine serves; a broken file is rejected', async ({ engine, worker }) => {
  await waitUntil(() => engine.log().includes('watching the configuration file'), { what: 'watcher armed' })
  const w = await worker('node-reload')
  assert.equal(await publishWorks(w), false)

  write(engine, config(engine, engine.httpPort, '  - name: pubsub\n'))
  await waitUntil(() => publishWorks(w), { what: 'pubsub started by the reload' })

  const rejected = () => engine.log().split('configuration change rejected').length - 1
  const before = rejected()
  write(engine, config(engine, engine.httpPort, '  - name: pubsub\n  - name: cron\n   config: [\n'))
  await waitUntil(() => rejected() > before, { what: 'broken file rejected' })
  const line = engine.log().split('\n').filter((l) => l.includes('configuration change rejected')).pop()
  assert.match(line, /config\.yaml/)
  assert.match(line, /line \d+/)
  assert.equal(await publishWorks(w), true, 'still serving on the previous configuration')

  write(engine, config(engine, engine.httpPort))
  await waitUntil(async () => !(await publishWorks(w)), { what: 'pubsub stopped by the reload' })
})

engineTest('an HTTP port change serves the same SDK route on the new port', async ({ engine, worker }) => {
  await waitUntil(() => engine.log().includes('watching the configuration file'), { what: 'watcher armed' })
  const w = await worker('node-reload-http')
  w.registerFunction('nodereload::hello', async () => ({ status_code: 200, body: { hello: true } }))
  w.registerTrigger({ type: 'http', function_id: 'nodereload::hello', config: { api_path: 'hello', http_method: 'GET' } })
  await waitUntil(async () => (await http('GET', `http://127.0.0.1:${engine.httpPort}/hello`)).status === 200, {
    what: 'route live',
  })
  const next = await freePort()
  write(engine, config(engine, next))
  await waitUntil(() => portOpen(next), { what: 'new HTTP port listening' })
  const r = await http('GET', `http://127.0.0.1:${next}/hello`)
  assert.equal(r.status, 200)
  assert.deepEqual(r.json(), { hello: true })
  await waitUntil(async () => !(await portOpen(engine.httpPort)), { what: 'old HTTP port closed' })
})
