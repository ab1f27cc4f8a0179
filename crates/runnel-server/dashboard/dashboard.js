// The Runnel dashboard: a single page (hash routing) over the server's own HTTP API, read
// with the user's key. No framework and no build step: the server embeds this file as is.
// Every request for data carries `Authorization: Bearer KEY`; the server enforces roles,
// and the page only hides the actions a role lacks (from GET /admin/whoami).
'use strict';

(() => {
  // --- Limits (named, so nothing on the page grows without bound) -----------------------
  const KEY_STORAGE = 'runnel.dashboard.key';
  /** How often the charts sample lag and throughput. */
  const SAMPLE_INTERVAL_MS = 2000;
  /** The charts' window: the last ten minutes. */
  const CHART_WINDOW_MS = 10 * 60 * 1000;
  /** Samples kept per series: ten minutes at one every two seconds. */
  const SAMPLES_MAX = CHART_WINDOW_MS / SAMPLE_INTERVAL_MS;
  /** Most series one chart draws (the largest by latest value). */
  const CHART_SERIES_MAX = 6;
  /** Narrowest a chart is drawn, in CSS pixels. */
  const CHART_WIDTH_MIN = 280;
  /** The page's and a card's padding and border around a chart, in CSS pixels
   *  (dashboard.css: main 2 × 16, card 2 × 15); the SVG scales away what is left over. */
  const CHART_INSET = 62;
  /** The gap between two cards side by side (dashboard.css `.grid2`). */
  const GRID_GAP = 12;
  /** The widest viewport with the phone layout (the media query in dashboard.css). */
  const NARROW_MAX = 760;
  /** Most series the sampler keeps (consumer groups and projections). */
  const SERIES_MAX = 64;
  /** How often a page re-reads what it shows. */
  const REFRESH_INTERVAL_MS = 2000;
  /** How often a running background operation's progress is read. */
  const OPERATION_POLL_MS = 500;
  /** Events a live tail keeps on screen (the oldest go first). */
  const LIVE_EVENTS_MAX = 200;
  /** Events a live tail shows from before it started. */
  const LIVE_BACKLOG = 20;
  /** Rows per page of the listings. */
  const PAGE_LIMIT = 50;
  /** How long a dangerous button stays armed after its first click. */
  const ARM_MS = 5000;
  /** How long a message stays in the corner. */
  const FLASH_MS = 6000;
  const ROLE_RANK = { viewer: 0, operator: 1, admin: 2 };

  const state = {
    key: sessionStorage.getItem(KEY_STORAGE),
    who: null,
    page: { token: 0, timers: [], aborts: [] },
    sampler: null,
  };

  // --- DOM helpers ----------------------------------------------------------------------
  /** An element: `el('a', {href: '#/', class: 'x', onclick: f}, 'text', child)`. */
  function el(tag, props, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    append(e, kids);
    return e;
  }
  function append(parent, kids) {
    for (const k of kids.flat(Infinity)) {
      if (k === null || k === undefined || k === false) continue;
      parent.append(k instanceof Node ? k : document.createTextNode(String(k)));
    }
    return parent;
  }
  const SVG_NS = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs, ...kids) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    append(e, kids);
    return e;
  }
  const $ = (sel) => document.querySelector(sel);

  function flash(text, bad) {
    const box = $('#flash');
    // A page that keeps failing the same way says so once, not every refresh.
    for (const m of box.children) if (m.textContent === text) return;
    const msg = el('div', { class: bad ? 'msg bad' : 'msg', 'data-flash': bad ? 'error' : 'info' }, text);
    box.append(msg);
    setTimeout(() => msg.remove(), FLASH_MS);
  }

  function fmtTime(iso) {
    if (!iso) return '—';
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    const pad = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  function fmtAge(seconds) {
    if (seconds === null || seconds === undefined) return '—';
    const s = Math.max(0, Number(seconds));
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 120) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
    if (s < 7200) return `${Math.round(s / 60)} min`;
    if (s < 172800) return `${Math.round(s / 3600)} h`;
    return `${Math.round(s / 86400)} d`;
  }
  function ago(iso) {
    if (!iso) return '—';
    return `${fmtAge((Date.now() - new Date(iso).getTime()) / 1000)} ago`;
  }
  function timeCell(iso) {
    return el('td', { title: iso || '' }, fmtTime(iso));
  }
  function fmtNum(n) {
    if (n === null || n === undefined) return '—';
    return Number(n).toLocaleString('en-US', { maximumFractionDigits: 1 });
  }
  function json(value) {
    return el('pre', { class: 'json' }, JSON.stringify(value, null, 2));
  }
  function table(headers, rows, empty) {
    if (!rows.length) return el('p', { class: 'muted' }, empty || 'Nothing here.');
    return el('div', { class: 'table-wrap' },
      el('table', {},
        el('thead', {}, el('tr', {}, headers.map((h) => {
          const [text, cls] = Array.isArray(h) ? h : [h, null];
          return el('th', { class: cls }, text);
        }))),
        el('tbody', {}, rows)));
  }
  const STATUS_CLASS = {
    running: 'info', compensating: 'warn', completed: 'ok', compensated: 'warn',
    compensation_failed: 'bad', needs_attention: 'bad', faulted: 'bad', paused: 'warn',
    succeeded: 'ok', failed: 'bad', cancelled: 'warn', current: 'ok', building: 'info',
    retired: '', pending: 'warn', replayed: 'ok',
  };
  function badge(status) {
    return el('span', { class: `badge ${STATUS_CLASS[status] || ''}`, 'data-status': status }, status);
  }
  function can(role) {
    return !!state.who && ROLE_RANK[state.who.role] >= ROLE_RANK[role];
  }
  /** Hides a viewer's missing bodies as what they are, never as an error. */
  function redactedNote(what) {
    return el('p', { class: 'note', 'data-redacted': '' }, `${what} hidden: the viewer role never sees message bodies.`);
  }

  /** A button that acts on the second click within ARM_MS (no native dialog). */
  function armedButton(label, armedLabel, action, props) {
    let armedUntil = 0;
    const b = el('button', Object.assign({ type: 'button', class: 'danger' }, props || {}), label);
    b.addEventListener('click', async () => {
      if (Date.now() > armedUntil) {
        armedUntil = Date.now() + ARM_MS;
        b.textContent = armedLabel;
        b.classList.add('armed');
        setTimeout(() => { b.textContent = label; b.classList.remove('armed'); }, ARM_MS);
        return;
      }
      armedUntil = 0;
      b.disabled = true;
      try { await action(); } finally { b.disabled = false; b.textContent = label; b.classList.remove('armed'); }
    });
    return b;
  }
  function actionButton(label, action, props) {
    const b = el('button', Object.assign({ type: 'button' }, props || {}), label);
    b.addEventListener('click', async () => {
      b.disabled = true;
      try { await action(); } catch (e) { showError(e); } finally { b.disabled = false; }
    });
    return b;
  }

  // --- The API --------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, problem, path) {
      const detail = problem && (problem.detail || problem.title);
      super(detail ? `${status}: ${detail}` : `${path} answered ${status}`);
      this.status = status;
      this.problem = problem;
    }
  }
  function authHeaders(extra) {
    const h = Object.assign({ Accept: 'application/json' }, extra || {});
    if (state.key) h.Authorization = `Bearer ${state.key}`;
    return h;
  }
  async function api(path, opts) {
    const o = opts || {};
    const init = { method: o.method || 'GET', headers: authHeaders(o.headers), signal: o.signal };
    if (o.body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(o.body);
    }
    const res = await fetch(path, init);
    const text = await res.text();
    let body = null;
    if (text) {
      try { body = JSON.parse(text); } catch (_) { body = text; }
    }
    if (!res.ok) {
      if (res.status === 401 && !o.quiet) showLogin('The key was refused; enter it again.');
      throw new ApiError(res.status, typeof body === 'object' ? body : null, path);
    }
    return body;
  }
  function showError(e) {
    if (e && e.name === 'AbortError') return;
    flash(e && e.message ? e.message : String(e), true);
  }
  function qs(params) {
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) {
      if (v !== null && v !== undefined && v !== '' && v !== false) p.set(k, String(v));
    }
    const s = p.toString();
    return s ? `?${s}` : '';
  }

  // --- Page lifecycle -------------------------------------------------------------------
  function leavePage() {
    const p = state.page;
    p.timers.forEach(clearTimeout);
    p.aborts.forEach((a) => a.abort());
    state.page = { token: p.token + 1, timers: [], aborts: [] };
  }
  /** Calls `fn` now and every `ms` while the page that asked is shown. */
  function every(ms, fn) {
    const token = state.page.token;
    const tick = async () => {
      if (token !== state.page.token) return;
      try { await fn(); } catch (e) { if (token === state.page.token) showError(e); }
      if (token === state.page.token) state.page.timers.push(setTimeout(tick, ms));
    };
    return tick();
  }
  function abortable() {
    const a = new AbortController();
    state.page.aborts.push(a);
    return a;
  }
  function pageAlive(token) { return token === state.page.token; }

  // --- Sampling for the charts -----------------------------------------------------------
  class Sampler {
    constructor() {
      this.series = new Map(); // name -> {label, group, points: [[t, v]]}
      this.lastHead = null;
      this.latest = {};
      this.timer = null;
    }
    push(group, name, label, value) {
      let s = this.series.get(name);
      if (!s) {
        if (this.series.size >= SERIES_MAX) return;
        s = { label, group, points: [] };
        this.series.set(name, s);
      }
      s.points.push([Date.now(), value]);
      const cutoff = Date.now() - CHART_WINDOW_MS;
      while (s.points.length > SAMPLES_MAX || (s.points.length && s.points[0][0] < cutoff)) s.points.shift();
    }
    of(group) {
      return [...this.series.values()].filter((s) => s.group === group);
    }
    async sample() {
      const [ready, consumers, projections, outbox] = await Promise.allSettled([
        api('/readyz', { quiet: true }),
        api('/admin/consumers', { quiet: true }),
        api('/admin/projections', { quiet: true }),
        api('/admin/outbox', { quiet: true }),
      ]);
      const now = Date.now();
      if (ready.status === 'fulfilled' && ready.value) {
        const head = ready.value.head_position;
        if (this.lastHead) {
          const dt = (now - this.lastHead.t) / 1000;
          const rate = dt > 0 ? Math.max(0, head - this.lastHead.head) / dt : 0;
          this.push('throughput', 'throughput', 'events/s appended', rate);
          this.latest.throughput = rate;
        }
        this.lastHead = { t: now, head };
        this.latest.head = head;
      }
      if (consumers.status === 'fulfilled' && consumers.value) {
        for (const c of consumers.value.consumers) {
          this.push('consumers', `c:${c.topic}/${c.group}`, `${c.group} ← ${c.topic}`, c.messages ?? 0);
        }
        this.latest.consumers = consumers.value.consumers;
      }
      if (projections.status === 'fulfilled' && projections.value) {
        for (const g of projections.value.generations) {
          if (g.role === 'retired') continue;
          this.push('projections', `p:${g.name}/${g.version}`, `${g.name} v${g.version}`, g.lag_events);
        }
        this.latest.projections = projections.value.generations;
      }
      if (outbox.status === 'fulfilled' && outbox.value) {
        this.push('outbox', 'outbox:pending', 'pending', outbox.value.pending);
        this.push('outbox', 'outbox:parked', 'parked', outbox.value.parked);
        this.latest.outbox = outbox.value;
      }
    }
    start() {
      if (this.timer) return;
      const tick = async () => {
        try { await this.sample(); } catch (_) { /* the next tick tries again */ }
        this.timer = setTimeout(tick, SAMPLE_INTERVAL_MS);
      };
      tick();
    }
  }

  /** The chart's drawing width in CSS pixels, so its text is drawn at 1:1 and neither
   *  blown up on a wide screen nor shrunk on a phone. `half`: one of two side by side. */
  function chartWidth(half) {
    const twoColumns = half && window.innerWidth > NARROW_MAX;
    const across = twoColumns ? (main().clientWidth - GRID_GAP) / 2 : main().clientWidth;
    return Math.round(Math.max(CHART_WIDTH_MIN, across - CHART_INSET));
  }
  /** An SVG line chart of `series` over the chart window, drawn by hand. */
  function lineChart(title, series, unit, half) {
    const W = chartWidth(half);
    const H = 170;
    const left = 48;
    const right = 8;
    const top = 10;
    const bottom = 22;
    const now = Date.now();
    const from = now - CHART_WINDOW_MS;
    const shown = series
      .filter((s) => s.points.length)
      .sort((a, b) => b.points[b.points.length - 1][1] - a.points[a.points.length - 1][1])
      .slice(0, CHART_SERIES_MAX);
    let max = 0;
    for (const s of shown) for (const [, v] of s.points) max = Math.max(max, v);
    max = niceMax(max);
    const x = (t) => left + ((t - from) / CHART_WINDOW_MS) * (W - left - right);
    const y = (v) => top + (1 - v / max) * (H - top - bottom);
    const chart = svg('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': title });
    for (let i = 0; i <= 4; i++) {
      const v = (max * i) / 4;
      chart.append(svg('line', { class: i === 0 ? 'axis' : 'grid', x1: left, x2: W - right, y1: y(v), y2: y(v) }));
      chart.append(svg('text', { x: left - 6, y: y(v) + 4, 'text-anchor': 'end' }, fmtAxis(v)));
    }
    for (let m = 10; m >= 0; m -= 2) {
      const t = now - m * 60000;
      chart.append(svg('text', { x: x(t), y: H - 6, 'text-anchor': m === 0 ? 'end' : 'middle' }, m === 0 ? 'now' : `-${m}m`));
    }
    shown.forEach((s, i) => {
      const pts = s.points.filter(([t]) => t >= from).map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`);
      chart.append(svg('polyline', { class: `s${i}`, points: pts.join(' ') }));
    });
    const legend = el('div', { class: 'legend' }, shown.map((s, i) => {
      const last = s.points[s.points.length - 1][1];
      return el('span', { class: `s${i}` }, `${s.label}: ${fmtNum(last)}${unit ? ` ${unit}` : ''}`);
    }));
    return el('div', { class: 'card', 'data-chart': title },
      el('h3', {}, title),
      shown.length ? [chart, legend] : el('p', { class: 'muted' }, 'Sampling every 2 s…'));
  }
  function fmtAxis(v) {
    return Number(v).toLocaleString('en-US', { maximumFractionDigits: v < 10 ? 2 : 0 });
  }
  function niceMax(v) {
    if (v <= 0) return 1;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  // --- Pages ---------------------------------------------------------------------------
  const main = () => $('#main');

  function header(title, ...extra) {
    return el('div', {}, el('h1', {}, title), extra);
  }

  async function overviewPage(root) {
    const body = el('div');
    root.append(header('Overview'), body);
    await every(REFRESH_INTERVAL_MS, async () => {
      const [dl, sagas] = await Promise.allSettled([
        api('/admin/dead-letters/summary'),
        api(`/admin/sagas${qs({ limit: 1 })}`),
      ]);
      const s = state.sampler.latest;
      const sagaCounts = {};
      if (sagas.status === 'fulfilled') {
        for (const c of sagas.value.counts) sagaCounts[c.status] = (sagaCounts[c.status] || 0) + c.count;
      }
      const stat = (label, value, href) => el('a', { class: 'card stat', href: href || null },
        el('div', { class: 'value' }, value), el('div', { class: 'label' }, label));
      body.replaceChildren(
        el('div', { class: 'cards' },
          stat('head position ($all)', fmtNum(s.head), '#/live'),
          stat('events/s (last 2 s)', fmtNum(s.throughput), '#/live'),
          stat('dead letters pending', dl.status === 'fulfilled' ? fmtNum(dl.value.total) : '—', '#/dead-letters'),
          stat('outbox pending', s.outbox ? fmtNum(s.outbox.pending) : '—', '#/outbox'),
          stat('sagas running', fmtNum(sagaCounts.running || 0), '#/sagas?status=running'),
          stat('sagas needing attention', fmtNum((sagaCounts.compensation_failed || 0) + (sagaCounts.needs_attention || 0)), '#/sagas'),
        ),
        el('div', { class: 'grid2' },
          lineChart('Throughput', state.sampler.of('throughput'), 'events/s', true),
          lineChart('Consumer lag', state.sampler.of('consumers'), 'messages', true),
          lineChart('Projection lag', state.sampler.of('projections'), 'events', true),
          lineChart('Outbox backlog', state.sampler.of('outbox'), 'rows', true),
        ),
      );
    });
  }

  // Streams: list by category, then one stream with paging.
  async function streamsPage(root, _parts, query) {
    const category = query.get('category') || '';
    const after = query.get('after') || '';
    const input = el('input', { type: 'text', name: 'category', value: category, placeholder: 'e.g. Order' });
    const form = el('form', { class: 'toolbar', onsubmit: (ev) => {
      ev.preventDefault();
      location.hash = `#/streams${qs({ category: input.value.trim() })}`;
    } }, el('label', {}, 'Category', input), el('button', { type: 'submit' }, 'List'));
    const body = el('div');
    root.append(header('Streams'), form, body);
    const page = await api(`/streams${qs({ category, after, limit: PAGE_LIMIT })}`);
    const categories = [...new Set(page.streams.map((s) => s.stream.split('-')[0]))];
    body.replaceChildren(
      categories.length && !category
        ? el('p', { class: 'muted' }, 'Categories on this page: ', categories.map((c, i) => [i ? ', ' : '', el('a', { href: `#/streams${qs({ category: c })}` }, c)]))
        : null,
      table(['Stream', ['Revision', 'num'], ['Last position', 'num'], 'Updated'],
        page.streams.map((s) => el('tr', { 'data-stream': s.stream },
          el('td', { class: 'wrap' }, el('a', { href: `#/stream/${encodeURIComponent(s.stream)}` }, s.stream)),
          el('td', { class: 'num' }, s.revision),
          el('td', { class: 'num' }, s.last_position),
          timeCell(s.updated_at))),
        'No streams.'),
      el('div', { class: 'pager' },
        after ? el('a', { href: `#/streams${qs({ category })}` }, '⟵ First page') : null,
        page.next_after ? el('a', { href: `#/streams${qs({ category, after: page.next_after })}` }, 'Next page ⟶') : null));
  }

  async function streamPage(root, parts, query) {
    const name = decodeURIComponent(parts[1] || '');
    const direction = query.get('direction') === 'backward' ? 'backward' : 'forward';
    const from = query.get('from');
    const link = (q) => `#/stream/${encodeURIComponent(name)}${qs(q)}`;
    root.append(header(`Stream ${name}`,
      el('div', { class: 'actions' },
        el('a', { href: link({ direction: 'forward' }) }, 'Oldest first'),
        el('a', { href: link({ direction: 'backward' }) }, 'Newest first'),
        el('a', { href: `#/live/${encodeURIComponent(name)}` }, 'Live tail'))));
    const page = await api(`/streams/${encodeURIComponent(name)}${qs({ from, direction, limit: PAGE_LIMIT })}`);
    root.append(el('div', {}, page.events.map(eventCard)),
      el('div', { class: 'pager' },
        page.next !== null ? el('a', { href: link({ direction, from: page.next }) }, 'Next page ⟶') : el('span', { class: 'muted' }, 'End of stream.')));
  }

  function eventCard(e) {
    return el('div', { class: 'card', 'data-event': e.position },
      el('div', { class: 'actions' },
        el('strong', {}, e.type), el('span', { class: 'badge' }, `rev ${e.revision}`),
        el('span', { class: 'badge' }, `pos ${e.position}`), el('span', { class: 'muted', title: e.recorded_at }, fmtTime(e.recorded_at))),
      el('dl', { class: 'kv' },
        el('dt', {}, 'stream'), el('dd', {}, el('a', { href: `#/stream/${encodeURIComponent(e.stream)}` }, e.stream)),
        el('dt', {}, 'id'), el('dd', { class: 'mono' }, e.id),
        e.metadata && e.metadata.correlation_id ? [el('dt', {}, 'correlation'), el('dd', { class: 'mono' }, e.metadata.correlation_id)] : null),
      e.redacted ? redactedNote('Data') : json(e.data));
  }

  // Live tail of $all or one stream over SSE, read with fetch() (EventSource cannot send
  // the Authorization header).
  async function livePage(root, parts) {
    const stream = parts[1] ? decodeURIComponent(parts[1]) : null;
    const status = el('span', { class: 'badge info', 'data-live-status': '' }, 'connecting');
    const counter = el('span', { class: 'muted' }, '0 events');
    const list = el('ul', { class: 'live-list', 'data-live': stream || '$all' });
    const streamInput = el('input', { type: 'text', value: stream || '', placeholder: '$all, or a stream like Order-1' });
    root.append(header(stream ? `Live: ${stream}` : 'Live: $all',
      el('form', { class: 'toolbar', onsubmit: (ev) => {
        ev.preventDefault();
        const s = streamInput.value.trim();
        location.hash = s && s !== '$all' ? `#/live/${encodeURIComponent(s)}` : '#/live';
      } }, el('label', {}, 'Stream', streamInput), el('button', { type: 'submit' }, 'Tail')),
      el('div', { class: 'actions' }, status, counter)),
    el('div', { class: 'card' }, list));
    let after = 0;
    if (stream) {
      const last = await api(`/streams/${encodeURIComponent(stream)}${qs({ direction: 'backward', limit: 1 })}`).catch(() => null);
      after = last && last.events.length ? Math.max(0, last.events[0].revision - LIVE_BACKLOG) : 0;
    } else {
      const ready = await api('/readyz', { quiet: true });
      after = Math.max(0, ready.head_position - LIVE_BACKLOG);
    }
    const url = stream
      ? `/subscribe/streams/${encodeURIComponent(stream)}${qs({ after })}`
      : `/subscribe/all${qs({ after })}`;
    const token = state.page.token;
    const ctrl = abortable();
    let received = 0;
    let lastId = null;
    const onEvent = (kind, id, data) => {
      if (kind === 'error') {
        status.textContent = 'error';
        status.className = 'badge bad';
        flash(`Subscription ended: ${data}`, true);
        return;
      }
      if (id !== null) lastId = id;
      let e;
      try { e = JSON.parse(data); } catch (_) { return; }
      received += 1;
      counter.textContent = `${received} events`;
      list.prepend(el('li', { 'data-position': e.position },
        el('span', { class: 'badge' }, stream ? `rev ${e.revision}` : `pos ${e.position}`),
        el('strong', {}, e.type),
        el('a', { href: `#/stream/${encodeURIComponent(e.stream)}` }, e.stream),
        el('span', { class: 'muted' }, fmtTime(e.recorded_at)),
        e.redacted ? null : el('code', { class: 'wrap' }, truncate(JSON.stringify(e.data), 160))));
      while (list.childElementCount > LIVE_EVENTS_MAX) list.lastElementChild.remove();
    };
    const connect = async () => {
      const headers = authHeaders({ Accept: 'text/event-stream' });
      if (lastId !== null) headers['Last-Event-ID'] = String(lastId);
      try {
        const res = await fetch(url, { headers, signal: ctrl.signal });
        if (!res.ok) {
          const problem = await res.json().catch(() => null);
          throw new ApiError(res.status, problem, url);
        }
        status.textContent = 'live';
        status.className = 'badge ok';
        await readSse(res.body, onEvent);
        if (pageAlive(token)) { status.textContent = 'closed by the server'; status.className = 'badge warn'; }
      } catch (e) {
        if (e.name === 'AbortError' || !pageAlive(token)) return;
        status.textContent = 'disconnected';
        status.className = 'badge bad';
        showError(e);
      }
      if (pageAlive(token)) {
        // Resume after the last id received (no gap, no duplicate).
        state.page.timers.push(setTimeout(connect, REFRESH_INTERVAL_MS));
      }
    };
    connect();
  }
  function truncate(s, n) {
    return s && s.length > n ? `${s.slice(0, n)}…` : s;
  }
  /** Reads a text/event-stream body, calling `onEvent(event, id, data)` per event. */
  async function readSse(body, onEvent) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value.replace(/\r\n?/g, '\n');
      let cut;
      while ((cut = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        let kind = 'message';
        let id = null;
        const data = [];
        for (const line of block.split('\n')) {
          if (!line || line.startsWith(':')) continue; // heartbeats are comments
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          const val = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (field === 'event') kind = val;
          else if (field === 'id') id = val;
          else if (field === 'data') data.push(val);
        }
        if (data.length) onEvent(kind, id, data.join('\n'));
      }
    }
  }

  async function consumersPage(root) {
    const body = el('div');
    root.append(header('Consumers'), body);
    await every(REFRESH_INTERVAL_MS, async () => {
      const { consumers } = await api('/admin/consumers');
      body.replaceChildren(
        lineChart('Lag in messages', state.sampler.of('consumers'), 'messages'),
        table(['Group', 'Topic', ['Lag (messages)', 'num'], ['Lag (age)', 'num'], ['Received', 'num'], 'Last received'],
          consumers.map((c) => el('tr', { 'data-consumer': `${c.topic}/${c.group}` },
            el('td', {}, c.group), el('td', {}, c.topic),
            el('td', { class: 'num' }, c.messages === null ? '?' : fmtNum(c.messages)),
            el('td', { class: 'num' }, fmtAge(c.seconds)),
            el('td', { class: 'num' }, fmtNum(c.received)),
            el('td', { title: c.last_received_at || '' }, ago(c.last_received_at)))),
          'No consumer groups run in this process.'));
    });
  }

  async function projectionsPage(root) {
    const body = el('div');
    root.append(header('Projections'), body);
    await every(REFRESH_INTERVAL_MS, async () => {
      const { generations } = await api('/admin/projections');
      body.replaceChildren(
        lineChart('Lag in events', state.sampler.of('projections'), 'events'),
        table(['Projection', ['Version', 'num'], 'Role', 'Status', ['Checkpoint', 'num'], ['Lag', 'num'], ['Lag (age)', 'num'], ['Applied', 'num'], 'Last error'],
          generations.map((g) => el('tr', { class: 'clickable', 'data-projection': g.name, onclick: () => { location.hash = `#/projections/${encodeURIComponent(g.name)}`; } },
            el('td', {}, el('a', { href: `#/projections/${encodeURIComponent(g.name)}` }, g.name)),
            el('td', { class: 'num' }, g.version), el('td', {}, badge(g.role)), el('td', {}, badge(g.status)),
            el('td', { class: 'num' }, g.checkpoint), el('td', { class: 'num' }, fmtNum(g.lag_events)),
            el('td', { class: 'num' }, fmtAge(g.lag_seconds)), el('td', { class: 'num' }, fmtNum(g.events_applied)),
            el('td', { class: 'wrap error' }, g.last_error || ''))),
          'No projections.'));
    });
  }

  async function projectionPage(root, parts) {
    const name = decodeURIComponent(parts[1]);
    const path = `/admin/projections/${encodeURIComponent(name)}`;
    const act = (action) => async () => {
      const r = await api(`${path}/${action}`, { method: 'POST' });
      flash(`${action}: ${JSON.stringify(r)}`);
      refresh();
    };
    root.append(header(`Projection ${name}`),
      can('operator') ? el('div', { class: 'actions', 'data-role-needed': 'operator' },
        actionButton('Retry failed', act('retry')),
        armedButton('Skip failed event', 'Click again to skip', act('skip')),
        actionButton('Pause', act('pause')),
        actionButton('Resume', act('resume')),
        armedButton('Rebuild', 'Click again to rebuild', act('rebuild')),
        armedButton('Drop old generations', 'Click again to drop', act('drop-old'))) : null);
    const body = el('div');
    root.append(body);
    const refresh = async () => {
      const d = await api(path);
      body.replaceChildren(
        el('h2', {}, 'Generations'),
        table(['Version', 'Role', 'Status', ['Partitions', 'num'], ['Checkpoint', 'num'], ['Lag', 'num'], 'Failed at', 'Last error', 'Leased by'],
          d.generations.map((g) => el('tr', {},
            el('td', {}, g.version), el('td', {}, badge(g.role)), el('td', {}, badge(g.status)),
            el('td', { class: 'num' }, g.partitions), el('td', { class: 'num' }, g.checkpoint),
            el('td', { class: 'num' }, fmtNum(g.lag_events)), el('td', {}, g.failed_position ?? ''),
            el('td', { class: 'wrap error' }, g.last_error || ''), el('td', {}, (g.leased_by || []).join(', '))))),
        el('h2', {}, 'Rebuilds'),
        d.rebuilds.length ? d.rebuilds.map((r) => el('div', { class: 'card', 'data-rebuild': r.version },
          el('div', {}, `Version ${r.version}: `, badge(r.status), ` ${fmtNum(r.done)} / ${fmtNum(r.total)} events`),
          el('progress', { max: Math.max(1, r.total), value: r.done }),
          r.error ? el('p', { class: 'error' }, r.error) : null)) : el('p', { class: 'muted' }, 'No rebuild running.'));
    };
    await every(REFRESH_INTERVAL_MS, refresh);
  }

  async function sagasPage(root, _parts, query) {
    const status = query.get('status') || '';
    const kind = query.get('kind') || '';
    const after = query.get('after') || '';
    const counts = el('div');
    const list = el('div');
    // The select stays put across refreshes (rebuilding it would close it under the
    // user's pointer); its options change only when the statuses present do.
    const select = el('select', { name: 'status', onchange: () => { location.hash = `#/sagas${qs({ kind, status: select.value })}`; } });
    let options = null;
    root.append(header('Sagas'), el('h2', {}, 'By kind and status'), counts, el('h2', {}, 'Instances'),
      el('div', { class: 'toolbar' }, el('label', {}, 'Status', select),
        kind ? el('span', {}, `kind ${kind} `, el('a', { href: `#/sagas${qs({ status })}` }, '(any kind)')) : null),
      list);
    await every(REFRESH_INTERVAL_MS, async () => {
      const page = await api(`/admin/sagas${qs({ status, kind, after, limit: PAGE_LIMIT })}`);
      const statuses = [...new Set(page.counts.map((c) => c.status).concat(status ? [status] : []))].sort();
      if (options !== statuses.join()) {
        options = statuses.join();
        select.replaceChildren(el('option', { value: '' }, 'every status'),
          statuses.map((s) => el('option', { value: s, selected: s === status }, s)));
      }
      counts.replaceChildren(
        table(['Kind', 'Status', ['Instances', 'num']], page.counts.map((c) => el('tr', { class: 'clickable', onclick: () => { location.hash = `#/sagas${qs({ kind: c.kind, status: c.status })}`; } },
          el('td', {}, c.kind), el('td', {}, badge(c.status)), el('td', { class: 'num' }, fmtNum(c.count)))), 'No saga instances.'));
      list.replaceChildren(
        table(['Kind', 'Id', 'Status', 'State', 'Updated', 'Last error'],
          page.items.map((s) => el('tr', { class: 'clickable', 'data-saga': s.id, 'data-saga-status': s.status, onclick: () => { location.hash = sagaHref(s); } },
            el('td', {}, s.kind), el('td', { class: 'wrap mono' }, el('a', { href: sagaHref(s) }, s.id)),
            el('td', {}, badge(s.status)), el('td', { class: 'wrap' }, s.state),
            el('td', { title: s.updated_at }, ago(s.updated_at)), el('td', { class: 'wrap error' }, s.last_error || ''))),
          'No instance matches.'),
        el('div', { class: 'pager' },
          after ? el('a', { href: `#/sagas${qs({ kind, status })}` }, '⟵ First page') : null,
          page.next ? el('a', { href: `#/sagas${qs({ kind, status, after: page.next })}` }, 'Next page ⟶') : null));
    });
  }
  function sagaHref(s) {
    return `#/sagas/${encodeURIComponent(s.kind)}/${encodeURIComponent(s.id)}`;
  }
  /** What kind of line a saga history entry is, for the timeline's markers. */
  function historyClass(what) {
    if (/compensat/.test(what)) return 'compensation';
    if (/^finished/.test(what)) return 'finish';
    if (/fail|unknown|parked|error/.test(what)) return 'failure';
    if (/timer|deadline|backoff/.test(what)) return 'timer';
    if (/reply|succeeded|completed|answer/.test(what)) return 'reply';
    if (/running|started|entered|step/.test(what)) return 'step';
    return '';
  }
  const FINISHED = new Set(['completed', 'compensated']);

  async function sagaPage(root, parts) {
    const kind = decodeURIComponent(parts[1]);
    const id = decodeURIComponent(parts[2]);
    const path = `/admin/sagas/${encodeURIComponent(kind)}/${encodeURIComponent(id)}`;
    const body = el('div');
    root.append(header(`Saga ${kind} / ${id}`), body);
    const act = (action) => async () => {
      await api(`${path}/${action}`, { method: 'POST' });
      flash(`${action} requested`);
    };
    await every(REFRESH_INTERVAL_MS, async () => {
      const s = await api(path);
      body.replaceChildren(
        el('div', { class: 'card', 'data-saga-detail': s.id, 'data-saga-status': s.status },
          el('div', { class: 'actions' }, badge(s.status), el('span', {}, s.state)),
          el('dl', { class: 'kv' },
            el('dt', {}, 'correlation'), el('dd', { class: 'mono' }, s.correlation || '—'),
            el('dt', {}, 'definition version'), el('dd', {}, s.definition_version),
            el('dt', {}, 'version'), el('dd', {}, s.version),
            el('dt', {}, 'started'), el('dd', {}, fmtTime(s.created_at)),
            el('dt', {}, 'updated'), el('dd', {}, fmtTime(s.updated_at)),
            el('dt', {}, 'finished'), el('dd', {}, fmtTime(s.finished_at)),
            s.last_error ? [el('dt', {}, 'last error'), el('dd', { class: 'error' }, s.last_error)] : null),
          can('operator') && !FINISHED.has(s.status) ? el('div', { class: 'actions' },
            actionButton('Retry step', act('retry')),
            armedButton('Skip step', 'Click again to skip', act('skip-step')),
            armedButton('Compensate', 'Click again to compensate', act('compensate'))) : null),
        el('div', { class: 'grid2' },
          el('div', { class: 'card' }, el('h2', {}, 'Timeline'),
            s.history.length ? el('ol', { class: 'timeline' }, s.history.map((l) => el('li', { class: historyClass(l.what), 'data-what': l.what },
              el('span', { class: 'when', title: l.at }, fmtTime(l.at)),
              l.step ? el('strong', {}, `${l.step} `) : null, l.what,
              l.detail ? el('span', { class: 'detail' }, l.detail) : null))) : el('p', { class: 'muted' }, 'No history.')),
          el('div', {},
            el('div', { class: 'card' }, el('h2', {}, 'Timers'),
              s.timers.length ? table(['Timer', 'Due'], s.timers.map((t) => el('tr', {}, el('td', {}, t.name), el('td', { title: t.due }, fmtTime(t.due))))) : el('p', { class: 'muted' }, 'No timer pending.')),
            el('div', { class: 'card' }, el('h2', {}, 'Data'),
              s.redacted ? redactedNote('Data and progress') : [json(s.data), el('h3', {}, 'Progress'), json(s.progress)]))));
    });
  }

  // Dead letters: grouped by error type, a filtered list, one with its failures, replay
  // (one, or a filter as a background operation), purge (admins).
  function dlFilter(query) {
    return {
      topic: query.get('topic') || undefined,
      group: query.get('group') || undefined,
      error: query.get('error') || undefined,
      include_replayed: query.get('include_replayed') === 'true' || undefined,
    };
  }
  async function deadLettersPage(root, _parts, query) {
    const filter = dlFilter(query);
    const after = query.get('after') || '';
    const fields = {};
    const input = (name, placeholder) => (fields[name] = el('input', { type: 'text', name, value: filter[name] || '', placeholder }));
    const replayed = el('input', { type: 'checkbox', name: 'include_replayed', checked: !!filter.include_replayed });
    const form = el('form', { class: 'toolbar', onsubmit: (ev) => {
      ev.preventDefault();
      location.hash = `#/dead-letters${qs({ topic: fields.topic.value.trim(), group: fields.group.value.trim(), error: fields.error.value.trim(), include_replayed: replayed.checked })}`;
    } },
    el('label', {}, 'Topic', input('topic', 'any')),
    el('label', {}, 'Group', input('group', 'any')),
    el('label', {}, 'Error contains', input('error', 'any')),
    el('label', { class: 'check' }, replayed, 'include replayed'),
    el('button', { type: 'submit' }, 'Filter'));
    const operation = el('div', { 'data-operation-box': '' });
    const bulk = el('div', { class: 'actions' },
      can('operator') ? actionButton('Replay every match', async () => {
        const op = await api('/admin/dead-letters/retry', { method: 'POST', body: { filter: cleanFilter(filter) } });
        followOperation(op, operation);
      }, { 'data-action': 'replay-filter' }) : null,
      can('admin') ? armedButton('Purge every match', 'Click again to purge', async () => {
        try {
          const r = await api('/admin/dead-letters/purge', { method: 'POST', body: { filter: cleanFilter(filter), older_than: new Date().toISOString() } });
          flash(`Purged ${r.purged} dead letters`);
        } catch (e) { showError(e); }
      }, { 'data-action': 'purge' }) : null);
    const summary = el('div');
    const list = el('div');
    root.append(header('Dead letters'), form, bulk, operation, el('h2', {}, 'By error type'), summary, el('h2', {}, 'Dead letters'), list);
    await every(REFRESH_INTERVAL_MS, async () => {
      const base = cleanFilter(filter);
      const [sum, page] = await Promise.all([
        api(`/admin/dead-letters/summary${qs(base)}`),
        api(`/admin/dead-letters${qs(Object.assign({}, base, { after, limit: PAGE_LIMIT }))}`),
      ]);
      summary.replaceChildren(
        el('p', { class: 'muted' }, `${fmtNum(sum.total)} pending`, sum.oldest_dead_lettered_at ? `, the oldest ${ago(sum.oldest_dead_lettered_at)}` : '', sum.truncated ? ` (groups count the first ${fmtNum(sum.scanned)})` : ''),
        table(['Error type', 'Topic', 'Group', ['Count', 'num'], 'Oldest', 'Newest'],
          sum.groups.map((g) => el('tr', { class: 'clickable', 'data-error-type': g.error_type, onclick: () => { location.hash = `#/dead-letters${qs({ topic: g.topic, group: g.group, error: g.error_type })}`; } },
            el('td', { class: 'wrap' }, g.error_type), el('td', {}, g.topic), el('td', {}, g.group),
            el('td', { class: 'num' }, fmtNum(g.count)), timeCell(g.oldest), timeCell(g.newest))),
          'No dead letter is pending.'));
      list.replaceChildren(
        table([['Id', 'num'], 'Topic', 'Group', 'Type', ['Attempts', 'num'], 'Last error', 'Dead-lettered', 'State'],
          page.items.map((d) => el('tr', { class: 'clickable', 'data-dead-letter': d.id, onclick: () => { location.hash = `#/dead-letters/${d.id}`; } },
            el('td', { class: 'num' }, el('a', { href: `#/dead-letters/${d.id}` }, d.id)),
            el('td', {}, d.topic), el('td', {}, d.group), el('td', {}, d.event_type),
            el('td', { class: 'num' }, d.attempts), el('td', { class: 'wrap error' }, d.last_error),
            el('td', { title: d.dead_lettered_at }, ago(d.dead_lettered_at)),
            el('td', {}, badge(d.replay_count > 0 ? 'replayed' : 'pending')))),
          'No dead letter matches.'),
        el('div', { class: 'pager' },
          after ? el('a', { href: `#/dead-letters${qs(base)}` }, '⟵ First page') : null,
          page.next !== null ? el('a', { href: `#/dead-letters${qs(Object.assign({}, base, { after: page.next }))}` }, 'Next page ⟶') : null));
    });
  }
  function cleanFilter(f) {
    const out = {};
    for (const [k, v] of Object.entries(f)) if (v !== undefined && v !== '') out[k] = v;
    return out;
  }
  /** Shows a background operation's progress in `box` until it finishes. */
  function followOperation(op, box) {
    const bar = el('progress', { max: Math.max(1, op.progress.total), value: 0 });
    const text = el('span', {});
    const card = el('div', { class: 'card', 'data-operation': op.id }, el('div', {}, `Operation ${op.kind} `, text), bar);
    box.replaceChildren(card);
    const token = state.page.token;
    const poll = async () => {
      if (!pageAlive(token)) return;
      let view;
      try { view = await api(`/admin/operations/${op.id}`); } catch (e) { showError(e); return; }
      const p = view.progress;
      bar.max = Math.max(1, p.total);
      bar.value = p.succeeded + p.skipped;
      text.replaceChildren(badge(view.status), ` ${p.succeeded} replayed, ${p.skipped} skipped of ${p.total}`,
        view.errors.length ? el('span', { class: 'error' }, ` — ${view.errors.join('; ')}`) : '');
      card.setAttribute('data-operation-status', view.status);
      if (view.status === 'running') state.page.timers.push(setTimeout(poll, OPERATION_POLL_MS));
    };
    poll();
  }

  async function deadLetterPage(root, parts) {
    const id = parts[1];
    const body = el('div');
    const result = el('div', { 'data-replay-result': '' });
    root.append(header(`Dead letter ${id}`), result, body);
    const refresh = async () => {
      const d = await api(`/admin/dead-letters/${encodeURIComponent(id)}`);
      const m = d.message;
      const replayedState = d.replay_count > 0 ? 'replayed' : 'pending';
      body.replaceChildren(
        el('div', { class: 'card', 'data-dead-letter-detail': d.id, 'data-state': replayedState },
          el('div', { class: 'actions' }, badge(replayedState),
            d.replay_count > 0 ? el('span', { class: 'muted' }, `replayed ${d.replay_count}× (last ${fmtTime(d.last_replayed_at)})`) : null,
            can('operator') ? actionButton('Replay', async () => {
              const r = await api(`/admin/dead-letters/${encodeURIComponent(id)}/retry`, { method: 'POST' });
              result.replaceChildren(el('p', { class: r.replayed ? 'card' : 'card error' },
                r.replayed ? `Replayed: published again to ${d.topic}.` : `Not replayed: ${(r.skipped_details || []).map((s) => s.reason).join('; ')}`));
              await refresh();
            }, { class: 'primary', 'data-action': 'replay' }) : null),
          el('dl', { class: 'kv' },
            el('dt', {}, 'topic'), el('dd', {}, d.topic),
            el('dt', {}, 'group'), el('dd', {}, d.group),
            el('dt', {}, 'type'), el('dd', {}, m.type),
            el('dt', {}, 'message id'), el('dd', { class: 'mono' }, m.id),
            el('dt', {}, 'key'), el('dd', { class: 'mono' }, m.key || '—'),
            el('dt', {}, 'correlation'), el('dd', { class: 'mono' }, m.correlation_id || '—'),
            el('dt', {}, 'first failed'), el('dd', {}, fmtTime(d.first_failed_at)),
            el('dt', {}, 'dead-lettered'), el('dd', {}, fmtTime(d.dead_lettered_at)),
            el('dt', {}, 'size'), el('dd', {}, `${fmtNum(m.payload_bytes)} bytes, ${m.content_type}`))),
        el('div', { class: 'card' }, el('h2', {}, 'Failures'),
          table([['#', 'num'], 'At', 'Error', 'Permanent'], d.failures.map((f) => el('tr', {},
            el('td', { class: 'num' }, f.attempt), timeCell(f.at), el('td', { class: 'wrap error' }, f.error), el('td', {}, f.permanent ? 'yes' : 'no'))))),
        el('div', { class: 'card' }, el('h2', {}, 'Body'),
          m.redacted ? redactedNote('The body and headers are') : [
            m.headers && Object.keys(m.headers).length ? [el('h3', {}, 'Headers'), json(m.headers)] : null,
            el('h3', {}, 'Payload'), json(m.payload)]));
    };
    await every(REFRESH_INTERVAL_MS, refresh);
  }

  async function outboxPage(root) {
    const body = el('div');
    root.append(header('Outbox'),
      can('operator') ? el('div', { class: 'actions' }, actionButton('Retry parked rows', async () => {
        const r = await api('/admin/outbox/retry-parked', { method: 'POST', body: {} });
        flash(`${r.retried} parked rows claimable again`);
      })) : null, body);
    await every(REFRESH_INTERVAL_MS, async () => {
      const o = await api('/admin/outbox');
      body.replaceChildren(
        el('div', { class: 'cards' },
          el('div', { class: 'card stat' }, el('div', { class: 'value', 'data-outbox-pending': o.pending }, fmtNum(o.pending)), el('div', { class: 'label' }, 'pending')),
          el('div', { class: 'card stat' }, el('div', { class: 'value' }, fmtNum(o.parked)), el('div', { class: 'label' }, 'parked')),
          el('div', { class: 'card stat' }, el('div', { class: 'value' }, fmtAge(o.oldest_pending_age_seconds)), el('div', { class: 'label' }, 'oldest pending')),
          el('div', { class: 'card stat' }, el('div', { class: 'value' }, fmtNum(o.published_retained)), el('div', { class: 'label' }, 'published, retained'))),
        lineChart('Backlog', state.sampler.of('outbox'), 'rows'),
        table(['Topic', ['Pending', 'num'], ['Parked', 'num'], 'Oldest pending'],
          o.topics.map((t) => el('tr', {}, el('td', {}, t.topic), el('td', { class: 'num' }, fmtNum(t.pending)),
            el('td', { class: 'num' }, fmtNum(t.parked)), el('td', { title: t.oldest_pending || '' }, ago(t.oldest_pending)))),
          'The outbox is empty.'));
    });
  }

  const ROUTES = {
    '': ['overview', overviewPage],
    streams: ['streams', streamsPage],
    stream: ['streams', streamPage],
    live: ['live', livePage],
    consumers: ['consumers', consumersPage],
    projections: ['projections', (root, parts, q) => (parts[1] ? projectionPage(root, parts, q) : projectionsPage(root, parts, q))],
    sagas: ['sagas', (root, parts, q) => (parts[2] ? sagaPage(root, parts, q) : sagasPage(root, parts, q))],
    'dead-letters': ['dead-letters', (root, parts, q) => (parts[1] ? deadLetterPage(root, parts, q) : deadLettersPage(root, parts, q))],
    outbox: ['outbox', outboxPage],
  };

  async function route() {
    leavePage();
    $('#top').classList.remove('open');
    $('#nav-toggle').setAttribute('aria-expanded', 'false');
    if (!state.who) return;
    const raw = location.hash.replace(/^#\/?/, '');
    const [path, search] = raw.split('?');
    const parts = path.split('/').filter((p, i) => p || i === 0);
    const [nav, render] = ROUTES[parts[0] || ''] || ROUTES[''];
    for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.nav === nav);
    const root = el('div', { 'data-page': nav });
    main().replaceChildren(root);
    document.title = `Runnel · ${nav}`;
    try {
      await render(root, parts, new URLSearchParams(search || ''));
    } catch (e) {
      if (e.name === 'AbortError') return;
      root.append(el('p', { class: 'error', 'data-page-error': '' }, e.message));
    }
  }

  // --- Signing in ------------------------------------------------------------------------
  function showLogin(message) {
    $('#login').hidden = false;
    $('#login-error').textContent = message || '';
    $('#key-input').focus();
  }
  async function signIn() {
    try {
      state.who = await api('/admin/whoami', { quiet: true });
    } catch (e) {
      state.who = null;
      if (e.status === 401) {
        showLogin(state.key ? 'This key is not one the server knows.' : '');
        return;
      }
      main().replaceChildren(el('p', { class: 'error' }, `The server did not answer: ${e.message}`));
      return;
    }
    $('#login').hidden = true;
    $('#who').replaceChildren(
      el('span', { 'data-who': state.who.role }, `${state.who.name} (${state.who.role})`),
      state.key ? el('button', { type: 'button', onclick: signOut }, 'Sign out') : null);
    if (!state.sampler) {
      state.sampler = new Sampler();
      state.sampler.start();
    }
    route();
  }
  function signOut() {
    sessionStorage.removeItem(KEY_STORAGE);
    state.key = null;
    state.who = null;
    leavePage();
    main().replaceChildren();
    $('#who').replaceChildren();
    signIn();
  }

  function init() {
    $('#login-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const key = $('#key-input').value.trim();
      if (!key) return;
      state.key = key;
      sessionStorage.setItem(KEY_STORAGE, key);
      $('#key-input').value = '';
      signIn();
    });
    $('#nav-toggle').addEventListener('click', () => {
      const open = $('#top').classList.toggle('open');
      $('#nav-toggle').setAttribute('aria-expanded', String(open));
    });
    window.addEventListener('hashchange', route);
    signIn();
  }

  init();
})();
