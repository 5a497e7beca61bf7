// Starts `iii console` against a harness engine and opens it in the system Chromium through
// playwright-core; collects every console error and uncaught exception of the page.
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { chromium } from 'playwright-core'
import { III_BIN, freePort, portOpen, sleep, waitUntil } from '../sdk/node/lib/harness.mjs'

export const SHOTS = process.env.III_CONSOLE_SCREENSHOTS || path.resolve('../../target/console-screenshots')
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium'

/** `iii console` on a free port, connected to `engine`'s worker socket. */
export async function startConsole(engine, extraArgs = []) {
  const port = await freePort()
  const logPath = path.join(engine.dir, 'console.log')
  const fd = fs.openSync(logPath, 'a')
  const proc = spawn(
    III_BIN,
    ['console', '-p', String(port), '--bridge-port', String(engine.wsPort), '--engine-port', String(engine.httpPort), ...extraArgs],
    { cwd: engine.dir, stdio: ['ignore', fd, fd] },
  )
  fs.closeSync(fd)
  await waitUntil(() => portOpen(port), { what: `iii console on ${port}` })
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    log: () => fs.readFileSync(logPath, 'utf8'),
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return
      const gone = new Promise((r) => proc.once('exit', r))
      proc.kill('SIGTERM')
      const t = setTimeout(() => proc.kill('SIGKILL'), 3000)
      await gone
      clearTimeout(t)
    },
  }
}

/** A headless page; `errors` gathers console errors and page exceptions. */
export async function openBrowser() {
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] })
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } })
  const errors = []
  page.on('console', (m) => m.type() === 'error' && errors.push(`console.error: ${m.text()}`))
  page.on('pageerror', (e) => errors.push(`uncaught: ${e.stack || e.message}`))
  page.on('requestfailed', (r) => errors.push(`request failed: ${r.url()} ${r.failure()?.errorText}`))
  return { browser, page, errors }
}

let visits = 0
/** Loads a console route as a fresh document and waits until the page has rendered it. */
export async function visit(page, base, hash) {
  visits += 1
  await page.goto(`${base}/?v=${visits}${hash}`)
  await page.waitForSelector('[data-page][data-ready]')
}

export async function shot(page, name) {
  fs.mkdirSync(SHOTS, { recursive: true })
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true })
}

export { sleep, waitUntil }
