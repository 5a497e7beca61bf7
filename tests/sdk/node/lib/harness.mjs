// Harness for the black-box suite that drives a real `iii` engine with the
// official Node SDK (npm `iii-sdk` 0.22.1): starts the engine binary
// ($III_BIN, default /work/main/target/debug/iii) on free ports from a temp
// cwd with a generated config.yaml, waits for TCP, kills it afterwards and
// prints its log when the test fails.
import { execFileSync, spawn } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { after, test } from 'node:test'
import { registerWorker } from 'iii-sdk'

export const III_BIN = process.env.III_BIN || '/work/main/target/debug/iii'

// Every SDK instance calls initOtel(), which opens a module-global telemetry
// socket to <engine>/otel that reconnects forever once its engine is gone;
// shutdown() only closes the latest. Once a file's tests are done, leave.
after(() => {
  setTimeout(() => process.exit(), 500).unref()
})

let policyWasmCache
/**
 * The example policies and the hostile fixture, name -> .wasm path, built (or found warm) by
 * the one shared script, plugins/policies/build.sh (it prints `name=path` lines).
 */
export function policyWasm() {
  if (!policyWasmCache) {
    const script = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../../../plugins/policies/build.sh')
    const out = execFileSync('bash', [script], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] })
    policyWasmCache = Object.fromEntries(
      out
        .split('\n')
        .filter((l) => l.includes('='))
        .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
    )
  }
  return policyWasmCache
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.unref()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

export function portOpen(port) {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: '127.0.0.1' })
    const done = (ok) => {
      s.destroy()
      resolve(ok)
    }
    s.setTimeout(200, () => done(false))
    s.once('connect', () => done(true))
    s.once('error', () => done(false))
  })
}

/** Polls fn until it returns a truthy value (liveness bound, not a timing assertion). */
export async function waitUntil(fn, { timeout = 10000, interval = 50, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout
  let last
  for (;;) {
    try {
      last = await fn()
      if (last) return last
    } catch (e) {
      last = e
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout}ms waiting for ${what}; last value: ${last instanceof Error ? last.stack : JSON.stringify(last)}`)
    }
    await sleep(interval)
  }
}

export class Engine {
  constructor(dir, wsPort, httpPort, extraConfig = '') {
    this.dir = dir
    this.wsPort = wsPort
    this.httpPort = httpPort
    this.logPath = path.join(dir, 'engine.log')
    this.proc = undefined
    this.starts = 0
    fs.writeFileSync(
      path.join(dir, 'config.yaml'),
      'workers:\n' +
        '  - name: iii-worker-manager\n' +
        `    config: {host: 127.0.0.1, port: ${wsPort}}\n` +
        '  - name: iii-http\n' +
        `    config: {host: 127.0.0.1, port: ${httpPort}}\n` +
        extraConfig,
    )
  }

  /** `extraConfig` is appended to the `workers:` list (YAML, two-space indent). */
  static async create(extraConfig = '', { startTimeoutMs = 20000 } = {}) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'iii-sdk-node-'))
    const e = new Engine(dir, await freePort(), await freePort(), extraConfig)
    await e.start(startTimeoutMs)
    return e
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.wsPort}`
  }

  get httpUrl() {
    return `http://127.0.0.1:${this.httpPort}`
  }

  async start(timeoutMs = 20000) {
    if (!fs.existsSync(III_BIN)) throw new Error(`engine binary not found: ${III_BIN} (set III_BIN)`)
    this.starts += 1
    fs.appendFileSync(this.logPath, `\n===== engine start #${this.starts} =====\n`)
    const fd = fs.openSync(this.logPath, 'a')
    this.proc = spawn(III_BIN, ['--config', 'config.yaml'], {
      cwd: this.dir,
      stdio: ['ignore', fd, fd],
      env: { RUST_LOG: 'info', ...process.env },
    })
    fs.closeSync(fd)
    const proc = this.proc
    let exited = null
    proc.once('exit', (code, sig) => {
      exited = { code, sig }
    })
    const deadline = Date.now() + timeoutMs
    while (!(await portOpen(this.wsPort))) {
      if (exited) throw new Error(`engine exited (${JSON.stringify(exited)}) before listening:\n${this.log()}`)
      if (Date.now() > deadline) throw new Error(`engine did not accept TCP on ${this.wsPort} within ${timeoutMs}ms:\n${this.log()}`)
      await sleep(20)
    }
  }

  async waitHttp() {
    await waitUntil(() => portOpen(this.httpPort), { what: `iii-http listening on ${this.httpPort}` })
  }

  async kill(signal = 'SIGKILL') {
    const p = this.proc
    if (p && p.exitCode === null && p.signalCode === null) {
      const gone = new Promise((r) => p.once('exit', r))
      p.kill(signal)
      const t = setTimeout(() => p.kill('SIGKILL'), 3000)
      await gone
      clearTimeout(t)
    }
    await waitUntil(async () => !(await portOpen(this.wsPort)), { timeout: 5000, what: 'engine port released' })
  }

  async stop() {
    await this.kill('SIGTERM')
  }

  log() {
    try {
      return fs.readFileSync(this.logPath, 'utf8')
    } catch {
      return '<no engine log>'
    }
  }
}

/**
 * Declares a test that gets a fresh engine and a worker factory:
 *   engineTest('name', async ({ engine, worker }) => { ... }, { config: '  - name: iii-queue\n' })
 * `worker(name?, options?)` returns a connected SDK client (workerregistered
 * received); all clients are shut down and the engine stopped afterwards.
 */
export function engineTest(name, fn, opts = {}) {
  const { config = '', ...testOpts } = opts
  test(name, { timeout: 120000, ...testOpts }, async (t) => {
    const engine = await Engine.create(config)
    const made = []
    const worker = async (workerName, options = {}) => {
      const w = registerWorker(engine.wsUrl, { workerName, ...options })
      made.push(w)
      await waitUntil(() => w.workerId, { what: `workerregistered for ${workerName}` })
      return w
    }
    worker.created = made
    try {
      await fn({ engine, worker, t })
    } catch (err) {
      let tail = engine.log()
      if (tail.length > 20000) tail = '...<truncated>...\n' + tail.slice(-20000)
      process.stdout.write(`\n----- engine log (${engine.logPath}) -----\n${tail}\n----- end engine log -----\n`)
      throw err
    } finally {
      for (const w of made.reverse()) {
        if (w.__testShutDown) continue
        await Promise.race([w.shutdown().catch(() => {}), sleep(5000)])
      }
      await engine.stop()
      fs.rmSync(engine.dir, { recursive: true, force: true })
    }
  })
}

export async function shutdownWorker(w) {
  await Promise.race([w.shutdown().catch(() => {}), sleep(5000)])
  w.__testShutDown = true
}

export const call = (w, function_id, payload, extra = {}) => w.trigger({ function_id, payload, ...extra })

export async function listFunctions(w) {
  return (await call(w, 'engine::functions::list', {})).functions
}

export async function functionIds(w) {
  return new Set((await listFunctions(w)).map((f) => f.function_id))
}

export async function waitFunction(w, id, present = true, timeout = 10000) {
  await waitUntil(async () => (await functionIds(w)).has(id) === present, {
    timeout,
    what: `${id} ${present ? 'listed' : 'gone'} in engine::functions::list`,
  })
}

export async function listWorkers(w) {
  return (await call(w, 'engine::workers::list', {})).workers
}

/** fetch wrapper returning {status, headers, text, json()} for any status. */
export async function http(method, url, { body, headers = {}, raw } = {}) {
  const init = { method, headers: { ...headers } }
  if (body !== undefined) {
    init.body = JSON.stringify(body)
    init.headers['content-type'] ??= 'application/json'
  } else if (raw !== undefined) {
    init.body = raw
  }
  const res = await fetch(url, init)
  const buf = Buffer.from(await res.arrayBuffer())
  return {
    status: res.status,
    headers: res.headers,
    buf,
    text: buf.toString('utf8'),
    json: () => JSON.parse(buf.toString('utf8')),
  }
}

export function stripCaller(d) {
  if (d && typeof d === 'object' && !Array.isArray(d)) {
    const { _caller_worker_id, ...rest } = d
    return rest
  }
  return d
}
