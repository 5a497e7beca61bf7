// Worker-provided (custom) trigger types through the official Node SDK
// (spec §2.3 registertriggertype/registertrigger/unregistertrigger, §4.3, §4.4).
import assert from 'node:assert/strict'
import { engineTest, shutdownWorker, waitFunction, waitUntil } from '../lib/harness.mjs'

function recorder() {
  const h = {
    registered: [],
    unregistered: [],
    registerTrigger: async (cfg) => {
      h.registered.push(cfg)
    },
    unregisterTrigger: async (cfg) => {
      h.unregistered.push(cfg)
    },
  }
  return h
}

engineTest('custom trigger type: binding delivered to provider, provider fires it, unregister', async ({ worker }) => {
  const provider = await worker('node-provider')
  const h = recorder()
  provider.registerTriggerType({ id: 'nodetest-hook', description: 'test webhook type' }, h)
  const consumer = await worker('node-consumer')
  const fired = []
  consumer.registerFunction('nodehook::on_hook', async (d, metadata) => {
    fired.push({ d, metadata })
    return { handled: d.event }
  })
  await waitFunction(provider, 'nodehook::on_hook')
  const trig = consumer.registerTrigger({
    type: 'nodetest-hook',
    function_id: 'nodehook::on_hook',
    config: { url: '/incoming', secret: 's3' },
    metadata: { source: 'unit', n: 1 },
  })
  await waitUntil(() => h.registered.length > 0, { what: 'provider received the binding' })
  const cfg = h.registered[0]
  assert.equal(cfg.function_id, 'nodehook::on_hook')
  assert.deepEqual(cfg.config, { url: '/incoming', secret: 's3' })
  assert.deepEqual(cfg.metadata, { source: 'unit', n: 1 })
  assert.match(cfg.id, /^[0-9a-f-]{36}$/)

  const result = await provider.trigger({ function_id: cfg.function_id, payload: { event: 'push' }, metadata: cfg.metadata })
  assert.deepEqual(result, { handled: 'push' })
  assert.equal(fired[0].d.event, 'push')
  assert.deepEqual(fired[0].metadata, { source: 'unit', n: 1 })

  trig.unregister()
  await waitUntil(() => h.unregistered.length > 0, { what: 'provider told about unregister' })
  assert.equal(h.unregistered[0].id, cfg.id)
})

engineTest('binding owner disconnect -> provider receives unregistertrigger', async ({ worker }) => {
  const provider = await worker('node-provider2')
  const h = recorder()
  provider.registerTriggerType({ id: 'nodetest-owner', description: 'owner gone' }, h)
  const consumer = await worker('node-consumer2')
  consumer.registerFunction('nodeowner::fn', async () => null)
  consumer.registerTrigger({ type: 'nodetest-owner', function_id: 'nodeowner::fn', config: { k: 1 } })
  await waitUntil(() => h.registered.length > 0, { what: 'provider received the binding' })
  const tid = h.registered[0].id
  await shutdownWorker(consumer)
  await waitUntil(() => h.unregistered.some((c) => c.id === tid), { what: 'provider told the binding is gone' })
})

engineTest('binding parked until a provider registers the type', async ({ worker }) => {
  const consumer = await worker('node-early-consumer')
  consumer.registerFunction('nodepark::fn', async () => 'ok')
  consumer.registerTrigger({ type: 'nodetest-late', function_id: 'nodepark::fn', config: { late: true } })
  await waitFunction(consumer, 'nodepark::fn')
  const provider = await worker('node-late-provider')
  const h = recorder()
  provider.registerTriggerType({ id: 'nodetest-late', description: 'late provider' }, h)
  await waitUntil(() => h.registered.length > 0, { what: 'parked binding delivered to the new provider' })
  assert.equal(h.registered[0].function_id, 'nodepark::fn')
  assert.deepEqual(h.registered[0].config, { late: true })
})

engineTest('provider re-registration (new provider) gets existing bindings replayed', async ({ worker }) => {
  const p1 = await worker('node-prov-1')
  const h1 = recorder()
  p1.registerTriggerType({ id: 'nodetest-replay', description: 'replayed' }, h1)
  const consumer = await worker('node-replay-consumer')
  consumer.registerFunction('nodereplay::fn', async () => 'ok')
  consumer.registerTrigger({ type: 'nodetest-replay', function_id: 'nodereplay::fn', config: { r: 1 } })
  await waitUntil(() => h1.registered.length > 0, { what: 'first provider got the binding' })
  const tid = h1.registered[0].id
  await shutdownWorker(p1)
  const p2 = await worker('node-prov-2')
  const h2 = recorder()
  p2.registerTriggerType({ id: 'nodetest-replay', description: 'replayed' }, h2)
  await waitUntil(() => h2.registered.length > 0, { what: 'second provider got the binding replayed' })
  assert.equal(h2.registered[0].id, tid)
  assert.deepEqual(h2.registered[0].config, { r: 1 })
})
