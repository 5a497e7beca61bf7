// math-node: serves GET /math/add?a=1&b=2 on the engine's REST trigger server by calling
// math::add (the Python worker) through the engine. Official Node SDK (npm iii-sdk).
// `iii worker add ./workers/node` runs it with III_URL pointing at the engine; by hand:
// III_URL=ws://localhost:49134 node src/index.js
import { webcrypto } from 'node:crypto'
import { registerWorker } from 'iii-sdk'

// The SDK uses the global Web Crypto API (trigger ids), which Node 18 (the `node` sandbox
// preset) only exposes as node:crypto's webcrypto.
globalThis.crypto ??= webcrypto

const url = process.env.III_URL ?? 'ws://localhost:49134'
const iii = registerWorker(url, { workerName: 'math-node' })

iii.registerFunction('math::add_http', async (req) => {
  const q = req?.query_params ?? {}
  const a = Number(q.a)
  const b = Number(q.b)
  // Query values are strings; refuse what is not a number instead of adding NaN.
  if (q.a === undefined || q.b === undefined || !Number.isFinite(a) || !Number.isFinite(b)) {
    return { status_code: 400, body: { error: 'query parameters a and b must be numbers, e.g. ?a=1&b=2' } }
  }
  try {
    const sum = await iii.trigger({ function_id: 'math::add', payload: { a, b } })
    return { status_code: 200, body: sum }
  } catch (e) {
    return { status_code: 502, body: { error: `math::add failed: ${e?.message ?? e}` } }
  }
})
iii.registerTrigger({ type: 'http', function_id: 'math::add_http', config: { api_path: 'math/add', http_method: 'GET' } })

const stop = async () => {
  await Promise.race([iii.shutdown(), new Promise((resolve) => setTimeout(resolve, 3000))])
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
console.log(`math-node connected to ${url}`)
