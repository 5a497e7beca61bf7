// Sandboxes through the official Node SDK (issue #12; workers-and-sandboxes spec §4): the engine
// supervises the iii-sandbox daemon (namespace runtime) and an SDK worker drives sandbox::* — a
// one-shot run, the create/write/exec/read/stop flow, and structured errors whose `fix` is parsed
// from the error message and merged back into the request.
//
// Needs root and the iii-sandbox, iii-init and iii-mkrootfs binaries next to $III_BIN; the python
// and node presets are built once into the shared image cache (slow the first time).
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { after, before } from 'node:test'
import { InvocationError } from 'iii-sdk'
import { III_BIN, call, engineTest, waitUntil } from '../lib/harness.mjs'

const LONG = 300000 // ms; create may import an image on a cold cache
const ROOT = fs.mkdtempSync('/tmp/sbn-')
// The engine passes its environment to the daemon: this file's sandboxes live under ROOT.
process.env.III_SANDBOX_ROOT = ROOT
const CONFIG = '  - name: iii-sandbox\n    config:\n      runtime: namespace\n      image_allowlist: [python, node]\n'

before(() => {
  const tool = path.join(path.dirname(III_BIN), 'iii-mkrootfs')
  for (const name of ['python', 'node']) {
    execFileSync(tool, ['preset', name], { stdio: ['ignore', 'pipe', 'inherit'] })
  }
})
after(() => fs.rmSync(ROOT, { recursive: true, force: true }))

const sb = (w, fn, payload) => call(w, fn, payload, { timeoutMs: LONG })

async function ready(worker) {
  const w = await worker('node-sandbox-user')
  await waitUntil(async () => Array.isArray((await sb(w, 'sandbox::list', {})).sandboxes), {
    timeout: 60000,
    what: 'the sandbox daemon answers sandbox::list',
  })
  return w
}

/** The §4.5 envelope: JSON inside the handler error's message (after `handler error: `). */
function envelope(err) {
  assert.ok(err instanceof InvocationError, String(err))
  const msg = err.message
  assert.ok(msg.includes('{'), msg)
  return JSON.parse(msg.slice(msg.indexOf('{')))
}

async function failing(p) {
  try {
    await p
  } catch (e) {
    return envelope(e)
  }
  assert.fail('the call should have failed')
}

engineTest(
  'sandbox::run defaults lang from the preset',
  async ({ worker }) => {
    const w = await ready(worker)
    const r = await sb(w, 'sandbox::run', { image: 'node', code: 'console.log(2+2)' })
    assert.equal(r.stdout, '4\n', JSON.stringify(r))
    assert.deepEqual([r.exit_code, r.success, r.timed_out], [0, true, false])
    assert.equal(r.sandbox_id, undefined)
    const p = await sb(w, 'sandbox::run', { image: 'python', code: 'print(2+2)' })
    assert.equal(p.stdout, '4\n')
    assert.deepEqual((await sb(w, 'sandbox::list', {})).sandboxes, [], 'run stops its sandbox')
  },
  { config: CONFIG, timeout: 600000 },
)

engineTest(
  'create → fs::write → exec → fs::read → stop',
  async ({ worker }) => {
    const w = await ready(worker)
    const created = await sb(w, 'sandbox::create', { image: 'node', env: ['WHO=sdk'], name: 'node-flow' })
    const sid = created.sandbox_id
    assert.match(sid, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
    assert.equal(created.image, 'node')
    assert.ok(fs.existsSync(path.join(ROOT, sid)))

    const wrote = await sb(w, 'sandbox::fs::write', {
      sandbox_id: sid,
      path: '/workspace/app/main.js',
      parents: true,
      content: "let s = ''; process.stdin.on('data', (d) => (s += d)); process.stdin.on('end', () => console.log('hello', process.env.WHO, process.env.EXTRA, s.trim()))\n",
    })
    assert.ok(wrote.bytes_written > 0)
    const r = await sb(w, 'sandbox::exec', {
      sandbox_id: sid,
      argv: ['node', 'main.js'],
      workdir: '/workspace/app',
      env: { EXTRA: 'x' },
      stdin: Buffer.from('from-stdin\n').toString('base64'),
    })
    assert.equal(r.stdout, 'hello sdk x from-stdin\n', JSON.stringify(r))
    assert.equal(r.exit_code, 0)
    const e = await sb(w, 'sandbox::exec', { sandbox_id: sid, cmd: "node -e \"require('fs').writeFileSync('/workspace/out.txt', 'result: 42')\"" })
    assert.equal(e.exit_code, 0, JSON.stringify(e))
    const got = await sb(w, 'sandbox::fs::read', { sandbox_id: sid, path: '/workspace/out.txt' })
    assert.equal(got.body, 'result: 42')
    assert.equal(got.size, 10)
    const listed = (await sb(w, 'sandbox::list', {})).sandboxes
    assert.deepEqual(listed.map((s) => [s.sandbox_id, s.name]), [[sid, 'node-flow']])

    assert.deepEqual(await sb(w, 'sandbox::stop', { sandbox_id: sid }), { sandbox_id: sid, stopped: true })
    assert.deepEqual((await sb(w, 'sandbox::list', {})).sandboxes, [])
    assert.ok(!fs.existsSync(path.join(ROOT, sid)), 'stop leaves no state dir')
  },
  { config: CONFIG, timeout: 600000 },
)

engineTest(
  'structured errors carry fix, and merging it recovers',
  async ({ worker }) => {
    const w = await ready(worker)
    const { sandbox_id: sid } = await sb(w, 'sandbox::create', { image: 'python' })
    const req = { sandbox_id: sid, path: '/workspace/deep/er/f.txt', content: 'x' }
    let env = await failing(sb(w, 'sandbox::fs::write', req))
    assert.deepEqual([env.code, env.type, env.retryable], ['S211', 'filesystem', false], JSON.stringify(env))
    assert.equal(env.message, 'parent directory not found: /workspace/deep/er')
    assert.deepEqual(env.fix, { parents: true })
    assert.match(env.fix_note, /parents: true/)
    assert.ok(env.docs_url.endsWith('#S211'))
    assert.equal((await sb(w, 'sandbox::fs::write', { ...req, ...env.fix })).bytes_written, 1)

    env = await failing(sb(w, 'sandbox::exec', { sandbox_id: sid, argv: ['sleep', '30'], timeout_ms: 200 }))
    assert.deepEqual([env.code, env.message, env.fix], ['S200', 'exec timed out after 200 ms', null])

    const ghost = crypto.randomUUID()
    env = await failing(sb(w, 'sandbox::exec', { sandbox_id: ghost, argv: ['true'] }))
    assert.deepEqual([env.code, env.message, env.fix], ['S002', `sandbox not found: ${ghost}`, null])
    assert.equal(env.fix_note, 'the sandbox is gone; call sandbox::create first')

    env = await failing(sb(w, 'sandbox::run', { image: 'ruby', lang: 'ruby', code: 'puts 1' }))
    assert.deepEqual([env.code, env.type], ['S100', 'config'])
    assert.ok(env.message.startsWith("during sandbox::run step `create` (sandbox_id=): image 'ruby' not in catalog"), env.message)
    assert.deepEqual(env.fix, { context: 'during sandbox::run step `create`', sandbox_id: '', inner_code: 'S100' })
    await sb(w, 'sandbox::stop', { sandbox_id: sid })
  },
  { config: CONFIG, timeout: 600000 },
)
