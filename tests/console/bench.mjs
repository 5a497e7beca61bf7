// Console page load time against an engine with 1000 functions (issue 18's benchmark; prints a
// table, asserts nothing). One Node SDK worker registers the functions; each sample loads the
// page as a fresh document in headless Chromium and stops when the route has rendered.
import fs from 'node:fs'
import { registerWorker } from '../sdk/node/node_modules/iii-sdk/dist/index.mjs'
import { Engine, waitUntil } from '../sdk/node/lib/harness.mjs'
import { openBrowser, startConsole } from './lib.mjs'

const FUNCTIONS = Number(process.env.BENCH_FUNCTIONS || 1000)
const SAMPLES = Number(process.env.BENCH_SAMPLES || 15)

const engine = await Engine.create('  - name: iii-state\n  - name: iii-queue\n')
const w = registerWorker(engine.wsUrl, { workerName: 'bench-functions' })
await waitUntil(() => w.workerId, { what: 'worker registered' })
for (let i = 0; i < FUNCTIONS; i++) {
  w.registerFunction(`bench::fn_${String(i).padStart(4, '0')}`, async (d) => d, {
    description: `benchmark function ${i}`,
    request_format: { type: 'object', properties: { n: { type: 'integer' } } },
  })
}
await waitUntil(
  async () => (await w.trigger({ function_id: 'engine::functions::list', payload: { prefix: 'bench::' } })).functions.length >= FUNCTIONS,
  { timeout: 60000, what: `${FUNCTIONS} functions listed` },
)
const c = await startConsole(engine)
const { browser, page, errors } = await openBrowser()
const rows = []
try {
  for (const [label, hash, selector] of [
    ['functions list', '#functions', '[data-testid=functions] tbody tr'],
    ['function detail + form', `#functions/bench%3A%3Afn_${String(Math.floor(FUNCTIONS / 2)).padStart(4, '0')}`, '[data-testid=invoke-form]'],
    ['workers', '#workers', '[data-testid=workers]'],
  ]) {
    const ms = []
    for (let i = 0; i < SAMPLES + 2; i++) {
      const t0 = performance.now()
      await page.goto(`${c.url}/?b=${label.length}-${i}${hash}`)
      await page.waitForSelector('[data-page][data-ready]')
      await page.waitForSelector(selector)
      if (i >= 2) ms.push(performance.now() - t0) // two warm-up loads
    }
    const rowsShown = label === 'functions list' ? await page.locator('[data-testid=functions] tbody tr').count() : ''
    ms.sort((a, b) => a - b)
    const q = (p) => ms[Math.min(ms.length - 1, Math.floor(p * ms.length))]
    rows.push([label, ms.length, q(0.5), q(0.95), ms[0], rowsShown])
  }
} finally {
  await browser.close()
  await c.stop()
  await w.shutdown().catch(() => {})
  await engine.stop()
  fs.rmSync(engine.dir, { recursive: true, force: true })
}
console.log(`\niii console page load, engine with ${FUNCTIONS} functions (headless Chromium, debug build: ${process.env.III_BIN || 'target/debug/iii'})`)
console.log('| page | samples | p50 ms | p95 ms | min ms | rows shown |')
console.log('|---|---|---|---|---|---|')
for (const [l, n, p50, p95, min, shown] of rows) console.log(`| ${l} | ${n} | ${p50.toFixed(1)} | ${p95.toFixed(1)} | ${min.toFixed(1)} | ${shown} |`)
if (errors.length) console.log(`page errors: ${errors.join('; ')}`)
process.exit(0)
