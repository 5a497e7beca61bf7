// {{worker_name}}: an iii worker on the official Node SDK (npm iii-sdk).
// Run it against an engine: III_URL=ws://localhost:49134 node src/index.js
// Call it: iii trigger {{worker_name}}::hello --json '{"name": "you"}'
import { registerWorker } from 'iii-sdk'

const WORKER_NAME = '{{worker_name}}'
const url = process.env.III_URL ?? 'ws://localhost:49134'

const iii = registerWorker(url, { workerName: WORKER_NAME })

iii.registerFunction(`${WORKER_NAME}::hello`, async (data) => {
  const name = data?.name ?? 'world'
  return { message: `Hello, ${name}!` }
})

const stop = async () => {
  await Promise.race([iii.shutdown(), new Promise((resolve) => setTimeout(resolve, 3000))])
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
console.log(`${WORKER_NAME} connected to ${url}`)
