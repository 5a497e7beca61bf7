// Connection lifecycle through the official Node SDK: callee death mid-call,
// engine restart + reconnect/replay (spec §2.3 reattach, §3.6, §13.3).
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { call, engineTest, http, listWorkers, waitFunction, waitUntil } from '../lib/harness.mjs'

const HERE = path.dirname(fileURLToPath(import.meta.url))

async function stoppedMidCall({ engine, worker }, signal) {
  const fid = `nodekill::hang_${signal}`
  const marker = path.join(engine.dir, `entered-${signal}`)
  const logPath = path.join(engine.dir, 'callee.log')
  const fd = fs.openSync(logPath, 'a')
  const proc = spawn(process.execPath, [path.join(HERE, '..', 'callee.mjs'), fid, marker], {
    env: { ...process.env, III_URL: engine.wsUrl },
    stdio: ['ignore', fd, fd],
  })
  fs.closeSync(fd)
  const exited = new Promise((r) => proc.once('exit', r))
  try {
    const b = await worker('node-kill-caller')
    await waitFunction(b, fid, true, 20000)
    const outcome = {}
    const pending = call(b, fid, { x: 1 }, { timeoutMs: 30000 }).then(
      (r) => {
        outcome.result = r
        outcome.t = Date.now()
      },
      (e) => {
        outcome.error = e
        outcome.t = Date.now()
      },
    )
    await waitUntil(() => fs.existsSync(marker), { what: 'callee handler entered' })
    const tKill = Date.now()
    proc.kill(signal)
    await Promise.race([pending, new Promise((r) => setTimeout(r, 15000))])
    assert.ok(outcome.t, 'caller still waiting 15s after the callee died')
    assert.ok(outcome.error, `expected an error, got ${JSON.stringify(outcome)}`)
    assert.equal(outcome.error.code, 'invocation_stopped', String(outcome.error))
    assert.equal(outcome.error.message, 'invocation_stopped: Invocation stopped')
    const elapsed = outcome.t - tKill
    assert.ok(elapsed < 5000, `invocation_stopped arrived ${elapsed}ms after the callee died`)
    await waitFunction(b, fid, false)
  } finally {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL')
    await exited
    process.stdout.write(`----- callee log -----\n${fs.readFileSync(logPath, 'utf8')}\n`)
  }
}

engineTest('callee SIGKILLed mid-call -> invocation_stopped within 5s', (ctx) => stoppedMidCall(ctx, 'SIGKILL'))

engineTest('callee closes its connection mid-call -> invocation_stopped within 5s', (ctx) => stoppedMidCall(ctx, 'SIGTERM'))

engineTest('reconnect after engine restart replays registrations; queued call completes', async ({ engine, worker }) => {
  await engine.waitHttp()
  const a = await worker('node-recon-a')
  const b = await worker('node-recon-b')
  a.registerFunction('noderecon::ping', async (d) => ({ pong: d.n }))
  a.registerFunction('noderecon::http', async () => ({ status_code: 200, body: { ok: true } }))
  a.registerTrigger({ type: 'http', function_id: 'noderecon::http', config: { api_path: 'nrecon/ping', http_method: 'GET' } })
  await waitFunction(b, 'noderecon::ping')
  assert.deepEqual(await call(b, 'noderecon::ping', { n: 1 }), { pong: 1 })
  await waitUntil(async () => (await http('GET', `${engine.httpUrl}/nrecon/ping`)).status === 200, { what: 'http route live' })
  const oldA = a.workerId
  const oldB = b.workerId

  await engine.kill('SIGKILL')
  await waitUntil(() => b.connectionState !== 'connected', { what: 'SDK noticed the drop' })
  // a call made while disconnected is queued by the SDK and flushed on reconnect
  // (to a builtin: A may not have replayed its functions yet when B's flush lands)
  const queued = call(b, 'engine::functions::list', {}, { timeoutMs: 30000 })
  await engine.start()

  assert.ok(Array.isArray((await queued).functions))
  await waitUntil(async () => (await call(b, 'noderecon::ping', { n: 3 }, { timeoutMs: 2000 }))?.pong === 3, {
    timeout: 30000,
    what: 'call works after engine restart',
  })
  await waitUntil(() => a.workerId !== oldA && b.workerId !== oldB, { what: 'new worker ids' })
  await engine.waitHttp()
  await waitUntil(async () => (await http('GET', `${engine.httpUrl}/nrecon/ping`)).status === 200, {
    timeout: 15000,
    what: 'http route replayed',
  })
  const res = await http('GET', `${engine.httpUrl}/nrecon/ping`)
  assert.deepEqual(res.json(), { ok: true })
  const names = (await listWorkers(b)).map((w) => w.name)
  assert.equal(names.filter((n) => n === 'node-recon-a').length, 1, JSON.stringify(names))
  assert.equal(names.filter((n) => n === 'node-recon-b').length, 1, JSON.stringify(names))
})

engineTest('reattach after a client-side drop: one worker record, functions still served', async ({ worker }) => {
  const a = await worker('node-reattach')
  const b = await worker('node-reattach-caller')
  a.registerFunction('nodereattach::f', async () => 'alive')
  await waitFunction(b, 'nodereattach::f')
  const old = a.workerId
  // Abruptly drop A's socket (SDK internals, test-only); the SDK reconnects,
  // sends `reattach {previous_worker_id, reattach_token}` and replays.
  a.ws.terminate()
  await waitUntil(() => a.workerId && a.workerId !== old, { timeout: 20000, what: 'new worker id after reconnect' })
  await waitUntil(async () => (await call(b, 'nodereattach::f', {}, { timeoutMs: 3000 })) === 'alive', {
    timeout: 20000,
    what: 'function callable after reconnect',
  })
  const mine = await waitUntil(
    async () => {
      const m = (await listWorkers(b)).filter((w) => w.name === 'node-reattach')
      return m.length === 1 && m[0].id === a.workerId && m
    },
    { what: 'exactly one node-reattach worker with the new id' },
  )
  assert.equal(mine[0].id, a.workerId)
  assert.ok(!(await listWorkers(b)).some((w) => w.id === old))
})

engineTest('reattach evicts a still-open previous connection; functions served by the new one', async ({ worker }) => {
  // The hard reattach case (§2.3): the SDK reconnects while the engine still
  // has its previous connection open. Without eviction the replayed
  // registerfunction would be refused (the stale connection still owns it)
  // and calls would be routed to a socket nobody reads.
  const a = await worker('node-reattach-live')
  const b = await worker('node-reattach-live-caller')
  a.registerFunction('nodelive::f', async () => 'alive')
  await waitFunction(b, 'nodelive::f')
  const oldId = a.workerId
  // test-only SDK internals: detach the current socket without closing it, then reconnect
  const old = a.ws
  old.removeAllListeners('message')
  old.removeAllListeners('close')
  const oldClosed = new Promise((r) => old.once('close', r))
  a.stopHeartbeat()
  a.ws = undefined
  a.connect()
  await waitUntil(() => a.workerId && a.workerId !== oldId, { timeout: 20000, what: 'new connection registered' })
  await Promise.race([
    oldClosed,
    new Promise((_, rej) => setTimeout(() => rej(new Error('engine did not close the previous connection after reattach')), 10000)),
  ])
  await waitUntil(async () => (await call(b, 'nodelive::f', {}, { timeoutMs: 3000 })) === 'alive', {
    timeout: 15000,
    what: 'function served by the new connection',
  })
  await waitUntil(
    async () => {
      const m = (await listWorkers(b)).filter((w) => w.name === 'node-reattach-live')
      return m.length === 1 && m[0].id === a.workerId
    },
    { what: 'only the new connection is listed' },
  )
})
