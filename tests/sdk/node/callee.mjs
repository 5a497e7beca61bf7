// A callee worker run as a separate process so a test can SIGKILL it.
// Usage: III_URL=ws://... node callee.mjs <function_id> <marker_file>
// The handler writes <marker_file> and never returns. SIGTERM = graceful
// close of the WebSocket (sdk.shutdown()), SIGKILL = abrupt death.
import fs from 'node:fs'
import { registerWorker } from 'iii-sdk'

const [functionId, marker] = process.argv.slice(2)
const sdk = registerWorker(process.env.III_URL, { workerName: `node-callee-${process.pid}` })
sdk.registerFunction(functionId, async () => {
  fs.writeFileSync(marker, 'entered')
  await new Promise(() => {})
})
process.on('SIGTERM', async () => {
  await Promise.race([sdk.shutdown(), new Promise((r) => setTimeout(r, 3000))])
  process.exit(0)
})
setInterval(() => {}, 1 << 30)
