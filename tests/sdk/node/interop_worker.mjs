// Node SDK worker used by the Python suite's cross-SDK test.
// Usage: III_URL=ws://... node interop_worker.mjs
// Registers interop::node_echo, which calls back into the Python worker's
// interop::py_upper and interop::py_fail functions.
import { registerWorker } from 'iii-sdk'

const sdk = registerWorker(process.env.III_URL, { workerName: `node-interop-${process.pid}` })
sdk.registerFunction('interop::node_echo', async (d, metadata) => {
  const upper = await sdk.trigger({ function_id: 'interop::py_upper', payload: { text: d.text } })
  let failure = null
  try {
    await sdk.trigger({ function_id: 'interop::py_fail', payload: {} })
  } catch (e) {
    failure = { code: e.code, message: e.message, stacktrace: e.stacktrace ?? null }
  }
  return { runtime: 'node', upper, failure, metadata: metadata ?? null, caller: d._caller_worker_id }
})
process.on('SIGTERM', async () => {
  await Promise.race([sdk.shutdown(), new Promise((r) => setTimeout(r, 3000))])
  process.exit(0)
})
setInterval(() => {}, 1 << 30)
