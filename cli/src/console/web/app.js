// iii console: one page, no dependencies. Every read and write is a call to one of the engine's
// public functions through POST /api/call (the console server is a worker on the engine).
'use strict'

// ---------- helpers ----------

class EngineError extends Error {
  constructor(err) {
    super((err && err.message) || JSON.stringify(err))
    this.code = (err && err.code) || 'ERROR'
    this.detail = err
  }
}

async function call(function_id, data = {}, extra = {}) {
  const res = await fetch('/api/call', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ function_id, data, ...extra }),
  })
  const body = await res.json()
  if (body.error) throw new EngineError(body.error)
  return body.result
}

// DOM builder: text children are text nodes, so engine data never becomes markup.
function h(tag, attrs = {}, ...kids) {
  const el = document.createElement(tag)
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v)
    else if (k === 'class') el.className = v
    else if (k === 'value') el.value = v
    else if (k === 'checked') el.checked = !!v
    else el.setAttribute(k, v === true ? '' : v)
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === undefined || kid === null || kid === false) continue
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)))
  }
  return el
}

const json = (v) => JSON.stringify(v, null, 2)
const pre = (v, attrs = {}) => h('pre', attrs, h('code', {}, typeof v === 'string' ? v : json(v)))
const empty = (text, attrs = {}) => h('div', { class: 'empty', ...attrs }, text)
const fmtTime = (ms) => (ms ? new Date(ms).toLocaleTimeString() : '')
const fmtMs = (ms) => (ms == null ? '' : ms < 1 ? `${(ms * 1000).toFixed(0)} µs` : `${ms.toFixed(ms < 10 ? 2 : 0)} ms`)

// A failed read shown where its data would be. "function not found" means the engine (or this
// listener's RBAC) does not offer that part: an empty state, not a failure.
function failure(e, what) {
  if (e instanceof EngineError && (e.code === 'function_not_found' || e.code === 'FORBIDDEN' || e.code === 'forbidden')) {
    const why = e.code === 'function_not_found' ? 'is not provided by this engine' : 'is not allowed on this listener'
    return empty(`${what} ${why} (${e.code}).`, { 'data-testid': 'unavailable' })
  }
  return h('div', { class: 'error', 'data-testid': 'error' }, `${what}: ${e.message}`)
}

function table(cols, rows, { onclick, testid, selected } = {}) {
  return h(
    'table',
    { 'data-testid': testid },
    h('thead', {}, h('tr', {}, cols.map((c) => h('th', {}, c[0])))),
    h(
      'tbody',
      {},
      rows.map((r) =>
        h(
          'tr',
          { class: onclick ? `click${selected && selected(r) ? ' sel' : ''}` : '', onclick: onclick && (() => onclick(r)) },
          cols.map((c) => h('td', {}, c[1](r))),
        ),
      ),
    ),
  )
}

// ---------- pages ----------

// Timers a page starts (polling) stop when the user leaves it.
let timers = []
function every(ms, fn) {
  timers.push(setInterval(fn, ms))
}

const pages = {}
let config = {}

pages.workers = async (view) => {
  view.append(h('h1', {}, 'Workers'))
  const box = h('div')
  view.append(box)
  try {
    const { workers } = await call('engine::workers::list', {})
    box.append(
      table(
        [
          ['name', (w) => w.name],
          ['runtime', (w) => w.runtime],
          ['status', (w) => w.status],
          ['functions', (w) => w.function_count],
          ['active', (w) => w.active_invocations],
          ['namespace', (w) => w.namespace],
          ['isolation', (w) => w.isolation],
          ['connected', (w) => fmtTime(w.connected_at_ms)],
        ],
        workers,
        { testid: 'workers' },
      ),
    )
  } catch (e) {
    box.append(failure(e, 'engine::workers::list'))
  }
}

pages.functions = async (view, arg) => {
  view.append(h('h1', {}, 'Functions'))
  const search = h('input', { type: 'text', placeholder: 'search', value: '' })
  const internal = h('input', { type: 'checkbox' })
  const list = h('div', { class: 'col' })
  const detail = h('div', { class: 'col', 'data-testid': 'function-detail' })
  view.append(
    h('div', { class: 'filters' }, search, h('label', {}, internal, ' include engine::* and internal')),
    h('div', { class: 'row' }, list, detail),
  )
  const load = async () => {
    list.replaceChildren()
    try {
      const q = { include_internal: internal.checked }
      if (search.value) q.search = search.value
      const { functions } = await call('engine::functions::list', q)
      if (!functions.length) list.append(empty('No functions match.'))
      else
        list.append(
          table(
            [
              ['function', (f) => h('code', {}, f.function_id)],
              ['worker', (f) => f.worker_name],
              ['description', (f) => f.description || ''],
            ],
            functions,
            { testid: 'functions', onclick: (f) => (location.hash = `#functions/${encodeURIComponent(f.function_id)}`), selected: (f) => f.function_id === arg },
          ),
        )
    } catch (e) {
      list.append(failure(e, 'engine::functions::list'))
    }
  }
  search.addEventListener('input', load)
  internal.addEventListener('change', load)
  await load()
  if (arg) await functionDetail(detail, arg)
  else detail.append(empty('Select a function to see its schemas and invoke it.'))
}

async function functionDetail(box, id) {
  let info
  try {
    info = await call('engine::functions::info', { function_id: id })
  } catch (e) {
    box.append(failure(e, `engine::functions::info ${id}`))
    return
  }
  box.append(h('h2', {}, id), info.description ? h('p', {}, info.description) : null)
  box.append(h('div', { class: 'muted' }, `worker ${info.worker_name} · namespace ${info.namespace}`))
  const req = info.request_schema || info.request_format
  const resp = info.response_schema || info.response_format
  box.append(h('h2', {}, 'Request schema'), req ? pre(req, { 'data-testid': 'request-schema' }) : empty('No request schema registered.'))
  box.append(h('h2', {}, 'Response schema'), resp ? pre(resp, { 'data-testid': 'response-schema' }) : empty('No response schema registered.'))
  if (info.registered_triggers && info.registered_triggers.length) {
    box.append(
      h('h2', {}, 'Triggers'),
      table(
        [
          ['type', (t) => t.trigger_type],
          ['config', (t) => h('code', {}, JSON.stringify(t.config))],
        ],
        info.registered_triggers,
      ),
    )
  }
  box.append(h('h2', {}, 'Invoke'), invokeForm(id, req))
}

// One input per top-level property of an object schema; anything else is typed as JSON.
function invokeForm(id, schema) {
  const props = schema && schema.type === 'object' && schema.properties ? schema.properties : null
  const required = new Set((schema && schema.required) || [])
  const fields = []
  const form = h('form', { class: 'inv', 'data-testid': 'invoke-form' })
  if (props) {
    for (const [name, p] of Object.entries(props)) {
      const t = Array.isArray(p.type) ? p.type.find((x) => x !== 'null') : p.type
      let input
      if (t === 'boolean') input = h('input', { type: 'checkbox', name })
      else if (t === 'integer' || t === 'number') input = h('input', { type: 'number', name, step: t === 'integer' ? '1' : 'any' })
      else if (Array.isArray(p.enum)) input = h('select', { name }, h('option', { value: '' }, ''), p.enum.map((v) => h('option', { value: JSON.stringify(v) }, String(v))))
      else if (t === 'string') input = h('input', { type: 'text', name })
      else input = h('textarea', { name, placeholder: 'JSON' })
      fields.push({ name, t, input, p })
      form.append(h('label', {}, name, required.has(name) ? ' *' : '', h('span', { class: 'muted' }, ` ${t || 'any'}${p.description ? ' — ' + p.description : ''}`)), input)
    }
  }
  const raw = h('textarea', { name: '__raw', placeholder: '{}' }, props ? '' : '{}')
  form.append(h('label', {}, props ? 'or the whole payload as JSON (overrides the fields when set)' : 'payload (JSON)'), raw)
  const out = h('div', { 'data-testid': 'invoke-result' })
  form.append(h('div', { style: 'margin-top:8px' }, h('button', { type: 'submit' }, 'Invoke')), out)
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault()
    out.replaceChildren(h('span', { class: 'muted' }, 'calling…'))
    let data = {}
    try {
      if (raw.value.trim()) data = JSON.parse(raw.value)
      else
        for (const f of fields) {
          const el = f.input
          if (f.t === 'boolean') {
            if (el.checked || required.has(f.name)) data[f.name] = el.checked
          } else if (el.value === '') continue
          else if (f.t === 'integer' || f.t === 'number') data[f.name] = Number(el.value)
          else if (el.tagName === 'SELECT') data[f.name] = JSON.parse(el.value)
          else if (f.t === 'string') data[f.name] = el.value
          else data[f.name] = JSON.parse(el.value)
        }
    } catch (e) {
      out.replaceChildren(h('div', { class: 'error' }, `The payload is not valid JSON: ${e.message}`))
      return
    }
    const t0 = performance.now()
    try {
      const r = await call(id, data)
      out.replaceChildren(
        h('div', { class: 'ok' }, `ok in ${fmtMs(performance.now() - t0)}`),
        pre(r === undefined ? null : r, { 'data-testid': 'result-value' }),
        h('a', { href: `#traces/?function_id=${encodeURIComponent(id)}` }, 'traces of this function'),
      )
    } catch (e) {
      out.replaceChildren(h('div', { class: 'bad' }, `error ${e.code}`), pre(e.detail || e.message, { 'data-testid': 'result-error' }))
    }
  })
  return form
}

pages.triggers = async (view) => {
  view.append(h('h1', {}, 'Triggers'))
  const types = h('div')
  const bound = h('div')
  view.append(h('h2', {}, 'Trigger types'), types, h('h2', {}, 'Registered triggers'), bound)
  try {
    const { triggers } = await call('engine::triggers::list', { include_internal: true })
    types.append(
      table(
        [
          ['type', (t) => h('code', {}, t.id)],
          ['provider', (t) => t.worker_name],
          ['description', (t) => t.description || ''],
        ],
        triggers,
        { testid: 'trigger-types' },
      ),
    )
  } catch (e) {
    types.append(failure(e, 'engine::triggers::list'))
  }
  try {
    const r = await call('engine::registered-triggers::list', { include_internal: true })
    const rows = r.registered_triggers
    bound.append(
      rows.length
        ? table(
            [
              ['type', (t) => t.trigger_type],
              ['function', (t) => h('a', { href: `#functions/${encodeURIComponent(t.function_id)}` }, t.function_id)],
              ['worker', (t) => t.worker_name],
              ['config', (t) => h('code', {}, t.config_summary || JSON.stringify(t.config))],
              ['', (t) => (t.trigger_type === 'http' && t.config && t.config.api_path ? h('a', { href: `http://${config.engine_host}:${config.engine_port}/${String(t.config.api_path).replace(/^\//, '')}`, target: '_blank' }, 'open') : '')],
            ],
            rows,
            { testid: 'registered-triggers' },
          )
        : empty('No triggers are registered.'),
    )
  } catch (e) {
    bound.append(failure(e, 'engine::registered-triggers::list'))
  }
}

// Traces: the live list (polled) and one trace's spans as a waterfall.
pages.traces = async (view, arg, params) => {
  view.append(h('h1', {}, 'Invocations and traces'))
  const fn = h('input', { type: 'text', placeholder: 'function id', value: params.get('function_id') || '' })
  const live = h('input', { type: 'checkbox', checked: true })
  const list = h('div', { class: 'col' })
  const detail = h('div', { class: 'col', 'data-testid': 'trace-detail' })
  view.append(h('div', { class: 'filters' }, fn, h('label', {}, live, ' live')), h('div', { class: 'row' }, list, detail))
  const load = async () => {
    try {
      const q = { limit: 100 }
      if (fn.value) q.function_id = fn.value
      const { traces, total } = await call('engine::traces::list', q)
      list.replaceChildren(
        h('div', { class: 'muted' }, `${total} trace(s)`),
        traces.length
          ? table(
              [
                ['start', (t) => fmtTime(t.start_ms)],
                ['root', (t) => h('code', {}, t.root_name)],
                ['service', (t) => t.service_name || ''],
                ['spans', (t) => t.span_count],
                ['duration', (t) => fmtMs(t.duration_ms)],
                ['status', (t) => h('span', { class: t.status === 'error' ? 'bad' : 'ok' }, t.status)],
              ],
              traces,
              { testid: 'traces', onclick: (t) => (location.hash = `#traces/${t.trace_id}${fn.value ? '?function_id=' + encodeURIComponent(fn.value) : ''}`), selected: (t) => t.trace_id === arg },
            )
          : empty('No traces recorded yet.'),
      )
    } catch (e) {
      list.replaceChildren(failure(e, 'engine::traces::list'))
      live.checked = false
    }
  }
  fn.addEventListener('change', load)
  await load()
  every(2000, () => live.checked && load())
  if (!arg) {
    detail.append(empty('Select a trace to see its spans.'))
    return
  }
  try {
    const tree = await call('engine::traces::tree', { trace_id: arg })
    detail.append(h('h2', {}, `trace ${arg}`), waterfall(tree.spans || []))
  } catch (e) {
    detail.append(failure(e, 'engine::traces::tree'))
  }
}

// Spans ordered depth-first under their parents, each a bar on one shared time axis.
function waterfall(spans) {
  if (!spans.length) return empty('This trace has no spans.')
  const ns = (v) => Number(v) / 1e6 // unix nanos → ms (float precision is enough for a picture)
  const t0 = Math.min(...spans.map((s) => ns(s.start_time_unix_nano)))
  const t1 = Math.max(...spans.map((s) => ns(s.end_time_unix_nano)))
  const width = Math.max(t1 - t0, 0.001)
  const ids = new Set(spans.map((s) => s.span_id))
  const kids = new Map()
  for (const s of spans) {
    const p = s.parent_span_id && ids.has(s.parent_span_id) ? s.parent_span_id : ''
    if (!kids.has(p)) kids.set(p, [])
    kids.get(p).push(s)
  }
  const rows = []
  const walk = (p, depth) => {
    for (const s of (kids.get(p) || []).sort((a, b) => ns(a.start_time_unix_nano) - ns(b.start_time_unix_nano))) {
      rows.push([s, depth])
      walk(s.span_id, depth + 1)
    }
  }
  walk('', 0)
  const box = h('div', { class: 'wf', 'data-testid': 'waterfall' })
  for (const [s, depth] of rows) {
    const start = ns(s.start_time_unix_nano) - t0
    const dur = ns(s.end_time_unix_nano) - ns(s.start_time_unix_nano)
    const err = String(s.status || '').toLowerCase().includes('error')
    box.append(
      h(
        'div',
        { class: 'wf-row span', title: json(s.attributes || {}) },
        h('div', { class: 'wf-name', style: `padding-left:${depth * 14}px` }, `${s.name}`, h('span', { class: 'muted' }, ` ${s.service_name || ''}`)),
        h('div', { class: 'wf-track' }, h('div', { class: `wf-bar${err ? ' err' : ''}`, style: `left:${(start / width) * 100}%;width:${(dur / width) * 100}%` })),
        h('div', { class: 'wf-dur' }, fmtMs(dur)),
      ),
    )
  }
  return box
}

pages.logs = async (view) => {
  view.append(h('h1', {}, 'Logs'))
  const level = h('select', {}, ['', 'trace', 'debug', 'info', 'warn', 'error'].map((l) => h('option', { value: l }, l || 'any level')))
  const worker = h('input', { type: 'text', placeholder: 'worker' })
  const fn = h('input', { type: 'text', placeholder: 'function id' })
  const trace = h('input', { type: 'text', placeholder: 'trace id' })
  const since = h('select', {}, [['', 'any time'], ['300000', 'last 5 min'], ['3600000', 'last hour']].map(([v, l]) => h('option', { value: v }, l)))
  const live = h('input', { type: 'checkbox', checked: true })
  const box = h('div')
  view.append(h('div', { class: 'filters' }, level, worker, fn, trace, since, h('label', {}, live, ' live')), box)
  const load = async () => {
    const q = { limit: 200 }
    if (level.value) q.level = level.value
    if (worker.value) q.worker = worker.value
    if (fn.value) q.function_id = fn.value
    if (trace.value) q.trace_id = trace.value
    if (since.value) q.since_ms = Date.now() - Number(since.value)
    try {
      const { logs, total } = await call('engine::logs::list', q)
      box.replaceChildren(
        h('div', { class: 'muted' }, `${total} matching`),
        logs.length
          ? table(
              [
                ['time', (l) => fmtTime(l.timestamp_ms)],
                ['level', (l) => h('span', { class: `lvl-${l.level}` }, l.level)],
                ['message', (l) => l.message],
                ['worker', (l) => l.worker || l.service_name || ''],
                ['function', (l) => l.function_id || ''],
                ['trace', (l) => (l.trace_id ? h('a', { href: `#traces/${l.trace_id}` }, l.trace_id.slice(0, 8)) : '')],
                ['data', (l) => (l.data == null ? '' : h('code', {}, JSON.stringify(l.data)))],
              ],
              logs,
              { testid: 'logs' },
            )
          : empty('No logs match.'),
      )
    } catch (e) {
      box.replaceChildren(failure(e, 'engine::logs::list'))
      live.checked = false
    }
  }
  for (const el of [level, since]) el.addEventListener('change', load)
  for (const el of [worker, fn, trace]) el.addEventListener('change', load)
  await load()
  every(2000, () => live.checked && load())
}

// State: scopes, then a scope's values; a key can be read, written or deleted directly
// (spec section 5.3 lists values, not keys).
pages.state = async (view, arg) => {
  view.append(h('h1', {}, 'State'))
  const scopes = h('div', { class: 'col' })
  const detail = h('div', { class: 'col', 'data-testid': 'state-detail' })
  view.append(h('div', { class: 'row' }, scopes, detail))
  try {
    const { groups } = await call('state::list_groups', {})
    scopes.append(
      groups.length
        ? table([['scope', (g) => g]], groups, { testid: 'scopes', onclick: (g) => (location.hash = `#state/${encodeURIComponent(g)}`), selected: (g) => g === arg })
        : empty('No state scopes yet.'),
    )
  } catch (e) {
    scopes.append(failure(e, 'state::list_groups'))
    return
  }
  if (!arg) {
    detail.append(empty('Select a scope.'))
    return
  }
  detail.append(h('h2', {}, `scope ${arg}`))
  try {
    const values = await call('state::list', { scope: arg })
    detail.append(values.length ? table([['#', (v) => values.indexOf(v)], ['value', (v) => h('code', {}, JSON.stringify(v))]], values, { testid: 'state-values' }) : empty('The scope is empty.'))
  } catch (e) {
    detail.append(failure(e, 'state::list'))
  }
  const key = h('input', { type: 'text', placeholder: 'key', name: 'key' })
  const value = h('textarea', { placeholder: 'value (JSON) for set', name: 'value' })
  const out = h('div', { 'data-testid': 'state-key-result' })
  const act = (fnId, withValue) => async () => {
    try {
      const data = { scope: arg, key: key.value }
      if (withValue) data.value = JSON.parse(value.value)
      out.replaceChildren(pre(await call(fnId, data)))
    } catch (e) {
      out.replaceChildren(failure(e, fnId))
    }
  }
  detail.append(
    h('h2', {}, 'By key'),
    h('div', { class: 'filters' }, key, h('button', { type: 'button', onclick: act('state::get') }, 'get'), h('button', { type: 'button', class: 'plain', onclick: act('state::set', true) }, 'set'), h('button', { type: 'button', class: 'plain', onclick: act('state::delete') }, 'delete')),
    value,
    out,
  )
}

pages.streams = async (view, arg) => {
  view.append(h('h1', {}, 'Streams'))
  const list = h('div', { class: 'col' })
  const detail = h('div', { class: 'col', 'data-testid': 'stream-detail' })
  view.append(h('div', { class: 'muted' }, `live updates: ws://${config.engine_host}:${config.ws_port}/`), h('div', { class: 'row' }, list, detail))
  try {
    const r = await call('stream::list_all', {})
    const rows = []
    for (const s of r.stream || []) for (const g of s.groups || []) rows.push({ stream: s.id, group: g })
    list.append(
      rows.length
        ? table(
            [
              ['stream', (x) => x.stream],
              ['group', (x) => x.group],
            ],
            rows,
            { testid: 'streams', onclick: (x) => (location.hash = `#streams/${encodeURIComponent(x.stream)}/${encodeURIComponent(x.group)}`) },
          )
        : empty('No streams yet.'),
    )
  } catch (e) {
    list.append(failure(e, 'stream::list_all'))
    return
  }
  if (!arg) return detail.append(empty('Select a stream group.'))
  const [stream, group] = arg.split('/').map(decodeURIComponent)
  detail.append(h('h2', {}, `${stream} / ${group}`))
  try {
    const items = await call('stream::list', { stream_name: stream, group_id: group })
    detail.append(items.length ? pre(items, { 'data-testid': 'stream-items' }) : empty('The group is empty.'))
  } catch (e) {
    detail.append(failure(e, 'stream::list'))
  }
}

pages.queues = async (view, arg) => {
  view.append(h('h1', {}, 'Queues'))
  const topics = h('div')
  const dlq = h('div')
  const msgs = h('div', { 'data-testid': 'dlq-detail' })
  view.append(h('h2', {}, 'Topics and queues'), topics, h('h2', {}, 'Dead letters'), dlq, msgs)
  try {
    const list = await call('engine::queue::list_topics', {})
    const stats = await Promise.all(list.map((t) => call('engine::queue::topic_stats', { topic: t.name }).catch(() => ({}))))
    topics.append(
      list.length
        ? table(
            [
              ['name', (t) => t.name],
              ['broker', (t) => t.broker_type],
              ['subscribers', (t) => t.subscriber_count],
              ['depth', (t) => stats[list.indexOf(t)].depth ?? ''],
              ['dead', (t) => stats[list.indexOf(t)].dlq_depth ?? ''],
            ],
            list,
            { testid: 'queue-topics' },
          )
        : empty('No topics or queues.'),
    )
  } catch (e) {
    topics.append(failure(e, 'engine::queue::list_topics'))
    return
  }
  try {
    const d = await call('engine::queue::dlq_topics', {})
    dlq.append(
      d.length
        ? table(
            [
              ['queue', (t) => t.topic],
              ['broker', (t) => t.broker_type],
              ['messages', (t) => t.message_count],
              ['', (t) => h('button', { type: 'button', class: 'plain', onclick: (ev) => (ev.stopPropagation(), redriveAll(t.topic)) }, 'redrive all')],
            ],
            d,
            { testid: 'dlq-topics', onclick: (t) => (location.hash = `#queues/${encodeURIComponent(t.topic)}`), selected: (t) => t.topic === arg },
          )
        : empty('No dead letters.', { 'data-testid': 'dlq-empty' }),
    )
  } catch (e) {
    dlq.append(failure(e, 'engine::queue::dlq_topics'))
  }
  if (!arg) return
  msgs.append(h('h2', {}, `dead letters of ${arg}`))
  try {
    const m = await call('engine::queue::dlq_messages', { topic: arg, limit: 100 })
    const act = (fnId, id) => async () => {
      try {
        const r = await call(fnId, { queue: arg, message_id: id })
        msgs.append(h('div', { class: 'ok', 'data-testid': 'dlq-action-result' }, `${fnId}: ${JSON.stringify(r)}`))
        setTimeout(route, 600)
      } catch (e) {
        msgs.append(failure(e, fnId))
      }
    }
    msgs.append(
      m.length
        ? table(
            [
              ['id', (x) => h('code', {}, x.id)],
              ['failed', (x) => fmtTime(x.failed_at)],
              ['retries', (x) => x.retries],
              ['error', (x) => x.error],
              ['payload', (x) => h('code', {}, JSON.stringify(x.payload))],
              ['', (x) => [h('button', { type: 'button', onclick: act('iii::queue::redrive_message', x.id) }, 'redrive'), ' ', h('button', { type: 'button', class: 'plain', onclick: act('iii::queue::discard_message', x.id) }, 'discard')]],
            ],
            m,
            { testid: 'dlq-messages' },
          )
        : empty('This queue has no dead letters.'),
    )
  } catch (e) {
    msgs.append(failure(e, 'engine::queue::dlq_messages'))
  }
  async function redriveAll(q) {
    try {
      await call('iii::queue::redrive', { queue: q })
    } catch (e) {
      dlq.append(failure(e, 'iii::queue::redrive'))
      return
    }
    route()
  }
}

// Metrics: sampled every 2 s while the page is open; one chart per series (counters as a rate).
const history = new Map()
pages.metrics = async (view) => {
  view.append(h('h1', {}, 'Metrics'), h('div', { class: 'muted' }, 'sampled every 2 s while this page is open; counters are shown as a rate per second'))
  const box = h('div', { class: 'charts', 'data-testid': 'charts' })
  view.append(box)
  const sample = async () => {
    let metrics
    try {
      ;({ metrics } = await call('engine::metrics::list', {}))
    } catch (e) {
      box.replaceChildren(failure(e, 'engine::metrics::list'))
      return false
    }
    const now = Date.now()
    box.replaceChildren()
    if (!metrics.length) box.append(empty('No metrics recorded yet.'))
    for (const m of metrics) {
      const labels = Object.entries(m.labels || {}).map(([k, v]) => `${k}=${v}`).join(',')
      const key = `${m.name}{${labels}}`
      const v = m.kind === 'histogram' ? m.count ?? 0 : m.value ?? 0
      const hist = history.get(key) || []
      hist.push([now, v])
      if (hist.length > 90) hist.shift()
      history.set(key, hist)
      let series = hist.map(([, y]) => y)
      let unit = ''
      if (m.kind !== 'gauge') {
        series = hist.slice(1).map(([t, y], i) => Math.max(0, (y - hist[i][1]) / ((t - hist[i][0]) / 1000)))
        unit = '/s'
      }
      const current = m.kind === 'histogram' && m.count ? `count ${m.count}, mean ${fmtMs((m.sum / m.count) * 1000)}` : `${v}`
      box.append(h('div', { class: 'chart', 'data-metric': m.name }, h('div', {}, h('code', {}, key)), h('div', { class: 'muted' }, `${m.kind} · ${current}`), spark(series, unit)))
    }
    return true
  }
  if (await sample()) every(2000, sample)
}

function spark(values, unit) {
  const W = 300,
    H = 80
  const ns = 'http://www.w3.org/2000/svg'
  const svg = document.createElementNS(ns, 'svg')
  svg.setAttribute('viewBox', `0 0 ${W} ${H + 10}`)
  svg.setAttribute('preserveAspectRatio', 'none')
  const max = Math.max(1e-9, ...values)
  if (values.length > 1) {
    const pts = values.map((y, i) => `${((i / (values.length - 1)) * W).toFixed(1)},${(H - (y / max) * (H - 4)).toFixed(1)}`)
    const line = document.createElementNS(ns, 'polyline')
    line.setAttribute('points', pts.join(' '))
    line.setAttribute('fill', 'none')
    line.setAttribute('stroke', '#3f7cf0')
    line.setAttribute('stroke-width', '1.5')
    svg.append(line)
  }
  const label = document.createElementNS(ns, 'text')
  label.setAttribute('x', '2')
  label.setAttribute('y', '10')
  label.setAttribute('font-size', '10')
  label.setAttribute('fill', '#6b7385')
  label.textContent = `max ${Number(max.toFixed(3))}${unit}`
  svg.append(label)
  return svg
}

pages.sandboxes = async (view) => {
  view.append(h('h1', {}, 'Sandboxes'))
  try {
    const r = await call('sandbox::list', {})
    const rows = Array.isArray(r) ? r : r.sandboxes || []
    view.append(rows.length ? table(Object.keys(rows[0]).map((k) => [k, (x) => (typeof x[k] === 'object' ? JSON.stringify(x[k]) : String(x[k] ?? ''))]), rows, { testid: 'sandboxes' }) : empty('No sandboxes are running.'))
  } catch (e) {
    view.append(failure(e, 'sandbox::list'))
  }
}

// Experimental (--enable-flow): which trigger feeds which function on which worker.
pages.flow = async (view) => {
  view.append(h('h1', {}, 'Flow'))
  try {
    const { registered_triggers } = await call('engine::registered-triggers::list', {})
    if (!registered_triggers.length) return view.append(empty('No triggers are registered.'))
    const ns = 'http://www.w3.org/2000/svg'
    const rowH = 26
    const fns = [...new Set(registered_triggers.map((t) => t.function_id))]
    const workers = [...new Set(registered_triggers.map((t) => t.worker_name))]
    const H = Math.max(registered_triggers.length, fns.length, workers.length) * rowH + 10
    const svg = document.createElementNS(ns, 'svg')
    svg.setAttribute('viewBox', `0 0 900 ${H}`)
    svg.setAttribute('width', '100%')
    const el = (tag, attrs, text) => {
      const e = document.createElementNS(ns, tag)
      for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v)
      if (text) e.textContent = text
      svg.append(e)
    }
    const y = (i) => i * rowH + 18
    registered_triggers.forEach((t, i) => {
      const fi = fns.indexOf(t.function_id)
      const wi = workers.indexOf(t.worker_name)
      el('line', { x1: 250, y1: y(i) - 4, x2: 350, y2: y(fi) - 4, stroke: '#9bb8f0' })
      el('line', { x1: 600, y1: y(fi) - 4, x2: 700, y2: y(wi) - 4, stroke: '#c5cad6' })
      el('text', { x: 0, y: y(i), 'font-size': 12 }, `${t.trigger_type} ${t.config_summary || ''}`.slice(0, 40))
    })
    fns.forEach((f, i) => el('text', { x: 355, y: y(i), 'font-size': 12 }, f))
    workers.forEach((w, i) => el('text', { x: 705, y: y(i), 'font-size': 12 }, w))
    view.append(h('div', { class: 'wf' }, svg))
  } catch (e) {
    view.append(failure(e, 'engine::registered-triggers::list'))
  }
}

// ---------- routing ----------

const order = ['workers', 'functions', 'triggers', 'traces', 'logs', 'state', 'streams', 'queues', 'metrics', 'sandboxes', 'flow']
const titles = { traces: 'invocations' }

async function route() {
  for (const t of timers) clearInterval(t)
  timers = []
  const hash = location.hash.replace(/^#/, '') || 'functions'
  const [pathPart, query = ''] = hash.split('?')
  const slash = pathPart.indexOf('/')
  const name = slash < 0 ? pathPart : pathPart.slice(0, slash)
  const arg = slash < 0 ? '' : pathPart.slice(slash + 1)
  const page = pages[name] && (name !== 'flow' || config.enable_flow) ? name : 'functions'
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.page === page)
  const view = document.getElementById('view')
  const fresh = h('div', { 'data-page': page })
  view.replaceChildren(fresh)
  const decoded = page === 'streams' ? arg : decodeURIComponent(arg)
  try {
    await pages[page](fresh, decoded, new URLSearchParams(query))
  } catch (e) {
    // A bug in a page, not an engine answer: shown, and logged so the browser tests fail on it.
    console.error(e)
    fresh.append(h('div', { class: 'error' }, `This page failed: ${e.message}`))
  }
  fresh.setAttribute('data-ready', '1')
}

async function start() {
  config = await (await fetch('/api/config')).json()
  const nav = document.getElementById('nav')
  for (const p of order) if (p !== 'flow' || config.enable_flow) nav.append(h('a', { href: `#${p}`, 'data-page': p }, titles[p] || p))
  document.getElementById('engine').textContent = `engine ${config.engine_host}:${config.bridge_port} · console ${config.version}`
  window.addEventListener('hashchange', route)
  await route()
}

start()
