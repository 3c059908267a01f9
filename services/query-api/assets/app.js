// Tributary dashboard: health strip, live/history charts, alerts and a device map.
// Plain ES2020, no dependencies; every chart is SVG drawn by the code below.
'use strict';

(() => {
  const LIVE_WINDOW_MS = 10 * 60 * 1000;
  const MAX_POINTS = 2000; // per live series
  const HEALTH_MS = 2000;
  const DEVICES_MS = 10000;
  const DRAW_MIN_MS = 250; // at most four redraws a second
  const END_RECONNECT_MS = 2000; // after an `event: end`
  const FAIL_RECONNECT_MS = 5000; // after the stream could not be opened at all
  const RANGES = { '1h': 3600e3, '24h': 86400e3, '7d': 7 * 86400e3 };
  const BUCKET_MS = { '1m': 60e3, '5m': 300e3, '1h': 3600e3, '1d': 86400e3 };
  // Each range starts with a bucket that draws a few hundred points; a
  // bucket that would ask for more than a chart can show (or the API gives
  // in one answer, --max-points 10000 by default) is not offered.
  const DEFAULT_BUCKET = { '1h': '1m', '24h': '5m', '7d': '1h' };
  const MAX_BUCKETS_PER_CHART = 1500;
  const MAX_BUCKETS = 8000;
  const CHART_H = 200;

  const state = {
    mode: 'live', // 'live' | 'history'
    devices: [], // last /v1/devices answer
    device: null, // selected device name
    metrics: [], // chosen metrics of that device, in the device's order
    range: '1h',
    bucket: '1m',
    live: {}, // metric -> [{t, v}] numeric points, sorted by time
    latest: {}, // metric -> {t, value} last value of any type
    units: {}, // "device\0metric" -> unit, kept across restarts
    history: {}, // metric -> [{t, avg, min, max}]
    historyWindow: null, // {from, to} in ms, of the loaded history
    health: null, // {at, body}: last /v1/health answer and when it arrived
    rates: { ingest: null, stored: null },
    gen: 0, // bumped on every selection or mode change; older answers are dropped
    alerts: new Map(), // alert key -> its latest transition seen (ended ones kept a while)
    alertsStatus: null, // `status` of the last /v1/alerts answer
  };
  window.tributary = { state };

  // ---------- small helpers ----------

  const $ = (sel) => document.querySelector(sel);
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  const iso = (ms) => new Date(ms).toISOString();
  // Commas stay literal: the API splits metric lists and fn lists on them.
  const query = (params) => new URLSearchParams(params).toString().replace(/%2C/gi, ',');
  const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null);
  const unitKey = (m) => `${state.device}\u0000${m}`;

  const safeParse = (text) => {
    try { return JSON.parse(text); } catch { return null; }
  };

  // Browser locale for display only; no digit grouping so numbers stay copyable.
  const valueFmt = new Intl.NumberFormat(undefined, { maximumFractionDigits: 3, useGrouping: false });
  const axisFmt = new Intl.NumberFormat(undefined, { notation: 'compact', maximumSignificantDigits: 3 });
  const timeFmts = {
    sec: new Intl.DateTimeFormat(undefined, { hour: 'numeric', minute: '2-digit', second: '2-digit' }),
    min: new Intl.DateTimeFormat(undefined, { hour: 'numeric', minute: '2-digit' }),
    day: new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' }),
    full: new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' }),
  };

  const fmtValue = (v) => (typeof v === 'number' ? valueFmt.format(v) : String(v));
  const fmtRate = (r) => (r == null ? '–' : r < 100 ? r.toFixed(1) : String(Math.round(r)));

  // ---------- errors ----------

  let bannerTimer = 0;
  function showBanner(text, kind = 'error') {
    $('#banner-text').textContent = text;
    $('#banner').className = `banner ${kind}`;
    $('#banner').hidden = false;
    clearTimeout(bannerTimer);
    bannerTimer = setTimeout(() => ($('#banner').hidden = true), 10000);
  }

  function report(err) {
    if (err && (err.name === 'AbortError' || err.name === 'Unauthorized')) return;
    showBanner((err && err.message) || String(err));
  }

  // ---------- token ----------

  // The API answered 401: ask for a read token. It is kept in the
  // `tributary_token` cookie (sent with every request, EventSource's too),
  // and the page starts over with it.
  function askToken(message) {
    const form = $('#login');
    if (!form.hidden) return;
    $('#login-note').textContent = document.cookie.includes('tributary_token=') ? message : '';
    form.hidden = false;
    $('#token').focus();
  }

  function useToken(e) {
    e.preventDefault();
    const token = $('#token').value.trim();
    if (!/^[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]+$/.test(token)) {
      $('#login-note').textContent = 'A token has no spaces, quotes, commas, semicolons or backslashes.';
      return;
    }
    const secure = location.protocol === 'https:' ? '; Secure' : '';
    document.cookie = `tributary_token=${token}; path=/; SameSite=Strict${secure}`;
    location.reload();
  }

  const setStatus = (text) => ($('#status').textContent = text);

  // Fetches JSON; a failed request throws an Error carrying the API's `message`.
  async function fetchJSON(url, signal) {
    const path = url.split('?')[0];
    let res;
    try {
      res = await fetch(url, { headers: { Accept: 'application/json' }, signal });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw new Error(`${path}: network error`);
    }
    const body = await res.json().catch(() => null);
    if (res.status === 401) {
      askToken((body && body.message) || 'The token was refused.');
      const err = new Error('a token is needed');
      err.name = 'Unauthorized';
      throw err;
    }
    if (!res.ok) throw new Error((body && body.message) || `${path}: HTTP ${res.status}`);
    if (body === null) throw new Error(`${path}: the answer is not JSON`);
    return body;
  }

  // ---------- health ----------

  // Runs `task` now and again `ms` after each run ends, so slow answers never pile up.
  async function poll(task, ms) {
    try { await task(); } catch (e) { report(e); }
    setTimeout(() => poll(task, ms), ms);
  }

  async function pollHealth() {
    const body = await fetchJSON('/v1/health');
    const at = performance.now();
    const prev = state.health;
    if (prev) {
      const dt = (at - prev.at) / 1000;
      state.rates.ingest = rate(prev.body.streams?.raw, body.streams?.raw, dt);
      state.rates.stored = rate(prev.body.streams?.metrics, body.streams?.metrics, dt);
    }
    state.health = { at, body };
    renderHealth(body);
  }

  // Messages per second between two polls; null when unknown or the stream was reset.
  function rate(before, after, seconds) {
    const d = (after && after.last_seq) - (before && before.last_seq);
    return Number.isFinite(d) && d >= 0 && seconds > 0 ? d / seconds : null;
  }

  function renderHealth(h) {
    $('#ingest-rate').textContent = fmtRate(state.rates.ingest);
    $('#stored-rate').textContent = fmtRate(state.rates.stored);
    let lag = null;
    const detail = [];
    for (const name of ['transformer', 'sink']) {
      const c = h.consumers && h.consumers[name];
      if (!c) continue;
      lag = (lag || 0) + (c.pending || 0) + (c.ack_pending || 0);
      detail.push(`${name}: ${c.pending || 0} pending, ${c.ack_pending || 0} awaiting ack`);
    }
    $('#lag').textContent = lag == null ? '–' : String(lag);
    $('#lag').parentElement.title = detail.join('\n');
    const dl = h.dead_letters;
    $('#dead-letters').textContent = dl ? String(dl.total || 0) : '–';
    const reasons = Object.entries((dl && dl.by_reason) || {}).filter(([, n]) => n > 0);
    $('#dead-reasons').textContent = reasons.map(([r, n]) => `${r}: ${n}`).join(' · ');
  }

  // ---------- devices, metrics and selection ----------

  const deviceByName = (name) => state.devices.find((d) => d.device === name);
  // True while the selected device has no metric at all (not when the user unchecked all).
  let awaitingMetrics = false;

  async function pollDevices() {
    const body = await fetchJSON('/v1/devices');
    applyDevices(Array.isArray(body.devices) ? body.devices : []);
  }

  function applyDevices(list) {
    state.devices = list;
    renderDeviceSelect();
    const current = deviceByName(state.device);
    if (!current) {
      if (list.length) selectDevice(list[0].device);
      else $('#charts-empty').textContent = 'No devices have reported yet.';
    } else if (awaitingMetrics && (current.metrics || []).length) {
      selectDevice(current.device); // the device gained its first metrics: apply the default
    } else {
      renderMetricBoxes();
    }
    renderMap();
    renderLastSeen();
  }

  function renderDeviceSelect() {
    const select = $('#device');
    const names = state.devices.map((d) => d.device);
    // Rebuild only when the list changed, so an open drop-down is not disturbed.
    if (select.dataset.key !== names.join('\n')) {
      select.dataset.key = names.join('\n');
      select.innerHTML = names.map((n) => `<option value="${esc(n)}">${esc(n)}</option>`).join('');
    }
    if (state.device != null) select.value = state.device;
  }

  function renderMetricBoxes() {
    const box = $('#metrics');
    const all = (deviceByName(state.device) || {}).metrics || [];
    const key = `${state.device}\n${all.join('\n')}`;
    if (box.dataset.key !== key) {
      box.dataset.key = key;
      const boxes = all.map((m) => `<label><input type="checkbox" name="metric" value="${esc(m)}"> ${esc(m)}</label>`);
      box.innerHTML = '<legend>Metrics</legend>' + boxes.join('');
    }
    for (const input of box.querySelectorAll('input[name=metric]')) {
      input.checked = state.metrics.includes(input.value);
    }
  }

  function renderLastSeen() {
    const d = deviceByName(state.device);
    const t = d && Date.parse(d.last_seen);
    $('#last-seen').textContent = Number.isFinite(t) ? `last seen ${ago(Date.now() - t)}` : '';
    $('#last-seen').title = Number.isFinite(t) ? timeFmts.full.format(t) : '';
  }

  function ago(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 90) return `${s} s ago`;
    if (s < 5400) return `${Math.round(s / 60)} min ago`;
    if (s < 129600) return `${Math.round(s / 3600)} h ago`;
    return `${Math.round(s / 86400)} d ago`;
  }

  function selectDevice(name) {
    const d = deviceByName(name);
    if (!d) return;
    state.device = name;
    state.metrics = (d.metrics || []).slice(0, 3);
    awaitingMetrics = state.metrics.length === 0;
    fitBucket();
    $('#device').value = name;
    renderMetricBoxes();
    renderMap();
    renderLastSeen();
    restart();
  }

  function onMetricToggle() {
    const checked = new Set([...document.querySelectorAll('input[name=metric]:checked')].map((i) => i.value));
    const all = (deviceByName(state.device) || {}).metrics || [];
    state.metrics = all.filter((m) => checked.has(m));
    fitBucket();
    restart();
  }

  function setMode(mode) {
    if (mode === state.mode) return;
    state.mode = mode;
    document.body.dataset.mode = mode;
    $('#mode-live').setAttribute('aria-pressed', String(mode === 'live'));
    $('#mode-history').setAttribute('aria-pressed', String(mode === 'history'));
    restart();
  }

  function setRange(range) {
    if (!RANGES[range]) return;
    state.range = range;
    state.bucket = DEFAULT_BUCKET[range];
    for (const b of document.querySelectorAll('button[data-range]')) {
      b.setAttribute('aria-pressed', String(b.dataset.range === range));
    }
    fitBucket();
    if (state.mode === 'history') reloadHistory();
  }

  const bucketFits = (bucket) => {
    const n = RANGES[state.range] / BUCKET_MS[bucket];
    return n <= MAX_BUCKETS_PER_CHART && n * Math.max(1, state.metrics.length) <= MAX_BUCKETS;
  };

  // Offers only the buckets that fit the range and the chosen metrics; the
  // bucket in use moves to the finest that fits when it no longer does.
  function fitBucket() {
    const options = [...$('#bucket').options];
    for (const o of options) o.disabled = !bucketFits(o.value);
    if (!bucketFits(state.bucket)) {
      const fits = options.find((o) => !o.disabled);
      state.bucket = fits ? fits.value : options[options.length - 1].value;
    }
    $('#bucket').value = state.bucket;
  }

  function setBucket(bucket) {
    state.bucket = bucket;
    if (state.mode === 'history') reloadHistory();
  }

  // Drops everything loaded for the previous selection and starts over.
  function restart() {
    state.gen++;
    stopLive();
    abortHistory();
    state.live = {};
    state.latest = {};
    state.history = {};
    state.historyWindow = null;
    setStatus('');
    syncCharts();
    if (state.device != null && state.metrics.length) {
      if (state.mode === 'live') startLive(state.gen);
      else loadHistory(state.gen);
    }
    scheduleDraw();
  }

  // ---------- live mode ----------

  let source = null;
  let reconnectTimer = 0;

  function startLive(gen) {
    openStream(gen);
    // Fill the window from storage so the chart is not empty while waiting.
    for (const m of state.metrics) preload(m, gen);
  }

  function stopLive() {
    clearTimeout(reconnectTimer);
    if (source) source.close();
    source = null;
  }

  async function preload(metric, gen) {
    const from = iso(Date.now() - LIVE_WINDOW_MS);
    const url = '/v1/series?' + query({ device: state.device, metric, from, limit: MAX_POINTS });
    try {
      const body = await fetchJSON(url);
      if (gen !== state.gen) return;
      addPoints(metric, Array.isArray(body.points) ? body.points : []);
      scheduleDraw();
    } catch (e) {
      if (gen === state.gen) report(e);
    }
  }

  function openStream(gen) {
    const url = '/v1/live?' + query({ device: state.device, metric: state.metrics.join(','), events: 'metric' });
    const es = new EventSource(url);
    source = es;
    setStatus('connecting…');
    es.onopen = () => setStatus('● live');
    es.addEventListener('metric', (ev) => {
      const p = safeParse(ev.data);
      if (gen !== state.gen || !p || p.device !== state.device || !state.metrics.includes(p.metric)) return;
      addPoints(p.metric, [p]);
      scheduleDraw();
    });
    es.addEventListener('end', (ev) => {
      const reason = (safeParse(ev.data) || {}).reason || 'no reason given';
      es.close();
      showBanner(`Live stream ended: ${reason}. Reconnecting…`, 'info');
      scheduleReconnect(gen, END_RECONNECT_MS);
    });
    es.addEventListener('error', (ev) => {
      // A server-sent `event: error` carries a JSON body; a network error has no data.
      const body = ev.data && safeParse(ev.data);
      if (body && body.message) showBanner(body.message);
      if (es.readyState === EventSource.CLOSED) {
        // EventSource gives up for good on an HTTP error; fetch the URL once to learn why.
        explainStreamFailure(url);
        scheduleReconnect(gen, FAIL_RECONNECT_MS);
      } else {
        setStatus('reconnecting…'); // the browser retries by itself, with Last-Event-ID
      }
    });
  }

  function scheduleReconnect(gen, delay) {
    if (gen !== state.gen) return;
    setStatus('reconnecting…');
    clearTimeout(reconnectTimer);
    reconnectTimer = setTimeout(() => {
      // A fresh stream plus a preload fills whatever was missed meanwhile.
      if (gen === state.gen && state.mode === 'live') startLive(gen);
    }, delay);
  }

  async function explainStreamFailure(url) {
    const ctl = new AbortController();
    try {
      const res = await fetch(url, { signal: ctl.signal });
      const body = res.ok ? null : await res.json().catch(() => null);
      if (res.status === 401) askToken((body && body.message) || 'The token was refused.');
      else showBanner((body && body.message) || `Live stream unavailable (HTTP ${res.status})`);
    } catch {
      showBanner('Live stream unavailable: network error');
    } finally {
      ctl.abort(); // never keep a second stream open
    }
  }

  // Adds API points to a live series: keeps numbers only, sorted, one per time,
  // within the last 10 minutes and at most MAX_POINTS.
  function addPoints(metric, points) {
    const s = state.live[metric] || (state.live[metric] = []);
    let unordered = false;
    for (const p of points) {
      const t = Date.parse(p.time);
      if (!Number.isFinite(t)) continue;
      noteLatest(metric, t, p.value, p.unit);
      if (num(p.value) == null) continue;
      if (s.length && t <= s[s.length - 1].t) unordered = true;
      s.push({ t, v: p.value });
    }
    if (unordered) {
      // The preload and the stream can overlap: sort, then keep one point per time.
      s.sort((a, b) => a.t - b.t);
      let w = 0;
      for (const p of s) if (w === 0 || s[w - 1].t !== p.t) s[w++] = p;
      s.length = w;
    }
    trimLive(s);
  }

  function trimLive(s) {
    const cutoff = Date.now() - LIVE_WINDOW_MS;
    let drop = 0;
    while (drop < s.length && s[drop].t < cutoff) drop++;
    drop = Math.max(drop, s.length - MAX_POINTS);
    if (drop > 0) s.splice(0, drop);
  }

  function noteLatest(metric, t, value, unit) {
    const last = state.latest[metric];
    if (value === undefined || (last && last.t > t)) return;
    state.latest[metric] = { t, value };
    if (unit) state.units[unitKey(metric)] = unit;
  }

  // ---------- history mode ----------

  let historyCtl = null;

  function abortHistory() {
    if (historyCtl) historyCtl.abort();
    historyCtl = null;
  }

  function reloadHistory() {
    state.gen++;
    abortHistory();
    if (state.device != null && state.metrics.length) loadHistory(state.gen);
  }

  async function loadHistory(gen) {
    const ctl = (historyCtl = new AbortController());
    // Ends on bucket edges (whole minutes at least), so the server can
    // answer from its per-minute or per-hour rollups instead of the rows.
    const width = Math.max(BUCKET_MS[state.bucket] || 60e3, 60e3);
    const to = Math.ceil(Date.now() / width) * width;
    const from = to - Math.ceil(RANGES[state.range] / width) * width;
    const params = { device: state.device, metric: state.metrics.join(','), from: iso(from), to: iso(to) };
    const url = '/v1/aggregate?' + query({ ...params, bucket: state.bucket, fn: 'avg,min,max' });
    setStatus('loading…');
    try {
      const body = await fetchJSON(url, ctl.signal);
      if (gen !== state.gen) return;
      state.history = {};
      for (const s of Array.isArray(body.series) ? body.series : []) {
        if (s.device != null && s.device !== state.device) continue;
        state.history[s.metric] = (s.points || [])
          .map((p) => ({ t: Date.parse(p.time), avg: num(p.avg), min: num(p.min), max: num(p.max) }))
          .filter((p) => Number.isFinite(p.t))
          .sort((a, b) => a.t - b.t);
      }
      state.historyWindow = { from, to };
      setStatus(body.source ? `from ${body.source}` : '');
      scheduleDraw();
    } catch (e) {
      if (gen === state.gen) { setStatus(''); report(e); }
    }
  }

  // ---------- charts ----------

  function syncCharts() {
    const box = $('#charts');
    const old = new Map([...box.querySelectorAll('.chart')].map((el) => [el.dataset.metric, el]));
    box.replaceChildren(...state.metrics.map((m) => old.get(m) || makeChart(m)));
    const empty = $('#charts-empty');
    empty.hidden = state.metrics.length > 0;
    if (state.device != null) empty.textContent = 'Choose at least one metric.';
  }

  function makeChart(metric) {
    const el = document.createElement('article');
    el.className = 'chart';
    el.dataset.metric = metric;
    el.innerHTML =
      `<header><h2>${esc(metric)}</h2><span class="reading"><span class="latest">–</span>` +
      ` <span class="unit"></span></span></header>` +
      `<svg viewBox="0 0 600 ${CHART_H}" role="img" aria-label="${esc(metric)} chart"></svg>`;
    return el;
  }

  let drawQueued = false;
  let lastDraw = 0;

  // Coalesces redraw requests: at most one per DRAW_MIN_MS, on an animation frame.
  function scheduleDraw() {
    if (drawQueued) return;
    drawQueued = true;
    const wait = Math.max(0, lastDraw + DRAW_MIN_MS - performance.now());
    setTimeout(() => requestAnimationFrame(drawAll), wait);
  }

  function drawAll() {
    drawQueued = false;
    lastDraw = performance.now();
    try {
      for (const el of document.querySelectorAll('#charts .chart')) {
        if (state.mode === 'live') drawLive(el, el.dataset.metric);
        else drawHistory(el, el.dataset.metric);
      }
    } catch (e) {
      report(e);
    }
  }

  function drawLive(el, metric) {
    const pts = state.live[metric] || [];
    const last = pts.length ? pts[pts.length - 1].t : 0;
    const x1 = Math.max(Date.now(), last); // a device clock slightly ahead stays visible
    renderChart(el, { x0: x1 - LIVE_WINDOW_MS, x1, points: pts, y: (p) => p.v });
    const latest = state.latest[metric];
    setReading(el, metric, latest ? fmtValue(latest.value) : '–', latest ? timeFmts.full.format(latest.t) : '');
  }

  function drawHistory(el, metric) {
    const pts = state.history[metric] || [];
    const w = state.historyWindow || { to: Date.now(), from: Date.now() - RANGES[state.range] };
    // The first bucket may start before `from` (buckets are aligned).
    const x0 = pts.length ? Math.min(w.from, pts[0].t) : w.from;
    renderChart(el, { x0, x1: w.to, points: pts, y: (p) => p.avg, band: true });
    let last = null;
    for (let i = pts.length - 1; i >= 0 && !last; i--) if (pts[i].avg != null) last = pts[i];
    const title = last ? `average of the ${state.bucket} bucket at ${timeFmts.full.format(last.t)}` : '';
    setReading(el, metric, last ? fmtValue(last.avg) : '–', title);
  }

  function setReading(el, metric, text, title) {
    el.querySelector('.latest').textContent = text;
    el.querySelector('.reading').title = title;
    el.querySelector('.unit').textContent = state.units[unitKey(metric)] || '';
  }

  // Draws one chart. spec: {x0, x1, points, y(p) -> number|null, band: draw p.min..p.max}.
  function renderChart(el, spec) {
    const svg = el.querySelector('svg');
    // The viewBox follows the on-screen width so text keeps its size while lines stretch.
    const W = Math.max(280, Math.round(svg.clientWidth || 600));
    const H = CHART_H;
    const pad = { l: 48, r: 12, t: 10, b: 22 };
    const { x0, x1, points, y, band } = spec;
    const shown = points.filter((p) => p.t >= x0 && p.t <= x1);

    const [lo, hi, yTicks] = yDomain(shown, y, band);
    const sx = (t) => pad.l + ((t - x0) / (x1 - x0 || 1)) * (W - pad.l - pad.r);
    const sy = (v) => H - pad.b - ((v - lo) / (hi - lo)) * (H - pad.t - pad.b);

    const line = linePath(shown, sx, (p) => (y(p) == null ? null : sy(y(p))));
    let out = axes(W, H, pad, x0, x1, yTicks, sx, sy);
    if (band) out += `<path class="band" d="${bandPath(shown, sx, sy)}"/>`;
    out += `<path class="line" d="${line.d}"/>`;
    if (line.n === 0) out += noData(W / 2, H / 2, 'No numeric data in this window');
    svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
    svg.innerHTML = out;
    el.dataset.points = String(line.n);
    el.dataset.span = String(x1 - x0); // ms on the x axis
  }

  // Value range covering the line and the band, widened to round tick values.
  function yDomain(points, y, band) {
    let [lo, hi] = [Infinity, -Infinity];
    for (const p of points) {
      for (const v of band ? [y(p), p.min, p.max] : [y(p)]) {
        if (v != null) [lo, hi] = [Math.min(lo, v), Math.max(hi, v)];
      }
    }
    if (lo > hi) [lo, hi] = [0, 1];
    else if (lo === hi) [lo, hi] = [lo - (Math.abs(lo) * 0.1 || 1), hi + (Math.abs(hi) * 0.1 || 1)];
    const ticks = niceTicks(lo, hi, 4);
    return [ticks[0], ticks[ticks.length - 1], ticks];
  }

  function niceTicks(lo, hi, count) {
    const raw = (hi - lo) / count;
    const mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((s) => s >= raw);
    const start = Math.floor(lo / step);
    const end = Math.ceil(hi / step);
    const ticks = [];
    for (let i = start; i <= end; i++) ticks.push(Number((i * step).toPrecision(12)));
    return ticks;
  }

  const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800]
    .map((s) => s * 1000);

  // Time ticks on round local-clock values, about one per `count`-th of the width.
  function timeTicks(x0, x1, count) {
    const step = TIME_STEPS.find((s) => (x1 - x0) / s <= count) || TIME_STEPS[TIME_STEPS.length - 1];
    const offset = -new Date(x0).getTimezoneOffset() * 60000;
    const ticks = [];
    for (let t = Math.ceil((x0 + offset) / step) * step - offset; t <= x1; t += step) ticks.push(t);
    const fmt = step < 60e3 ? timeFmts.sec : step < 86400e3 ? timeFmts.min : timeFmts.day;
    return ticks.map((t) => [t, fmt.format(t)]);
  }

  function axes(W, H, pad, x0, x1, yTicks, sx, sy) {
    let out = `<rect class="plot" x="${pad.l}" y="${pad.t}" width="${W - pad.l - pad.r}" height="${H - pad.t - pad.b}"/>`;
    for (const v of yTicks) {
      const yy = sy(v).toFixed(1);
      out += `<line class="grid" x1="${pad.l}" x2="${W - pad.r}" y1="${yy}" y2="${yy}"/>`;
      out += `<text class="tick" x="${pad.l - 6}" y="${yy}" text-anchor="end" dominant-baseline="middle">${esc(axisFmt.format(v))}</text>`;
    }
    for (const [t, label] of timeTicks(x0, x1, Math.max(2, Math.floor((W - pad.l - pad.r) / 90)))) {
      const xx = sx(t).toFixed(1);
      out += `<line class="grid" x1="${xx}" x2="${xx}" y1="${pad.t}" y2="${H - pad.b}"/>`;
      out += `<text class="tick" x="${xx}" y="${H - 6}" text-anchor="middle">${esc(label)}</text>`;
    }
    return out;
  }

  // Path through the points; a null y starts a new segment. Returns {d, n: points drawn}.
  function linePath(points, sx, sy) {
    let [d, n, run] = ['', 0, 0];
    for (const p of points) {
      const yy = sy(p);
      if (yy == null) { run = 0; continue; } // a gap
      // Each segment starts with a tiny stroke, so a lone point shows as a dot (round caps).
      d += `${run === 0 ? 'M' : 'L'}${sx(p.t).toFixed(1)} ${yy.toFixed(1)}${run === 0 ? 'h0.01' : ''}`;
      run++;
      n++;
    }
    return { d, n };
  }

  // Shaded min–max area, one closed polygon per run of buckets having both values.
  function bandPath(points, sx, sy) {
    let d = '';
    let run = [];
    const flush = () => {
      if (run.length) {
        const top = run.map((p) => `${sx(p.t).toFixed(1)} ${sy(p.max).toFixed(1)}`);
        const bottom = run.reverse().map((p) => `${sx(p.t).toFixed(1)} ${sy(p.min).toFixed(1)}`);
        d += `M${top.join('L')}L${bottom.join('L')}Z`;
      }
      run = [];
    };
    for (const p of points) {
      if (p.min == null || p.max == null) flush();
      else run.push(p);
    }
    flush();
    return d;
  }

  const noData = (x, y, text) => `<text class="no-data" x="${x}" y="${y}" text-anchor="middle">${text}</text>`;

  // ---------- alerts ----------

  // The firing and pending alerts of every device: the initial list from
  // /v1/alerts, then each transition from a live stream of alerts only. The
  // stream is opened first and the list fetched once it is open, and the
  // transitions that arrive meanwhile are applied on top in order, so none
  // is lost between the two.
  const ALERTS_RETRY_MS = 5000; // /v1/alerts again while the stream is missing or loading
  const ENDED_KEEP_MS = 10 * 60 * 1000; // an ended alert is remembered this long (late duplicates)
  const STATE_RANK = { pending: 0, firing: 1, resolved: 2, cleared: 2 };
  const SEVERITY_RANK = { critical: 0, warning: 1, info: 2 };
  const isOpen = (a) => a.state === 'pending' || a.state === 'firing';
  const alertKey = (a) => JSON.stringify([a.rule, a.device, a.metric ?? null]);

  let alertSource = null;
  let alertTimer = 0;
  let alertBuffer = null; // transitions that arrive while /v1/alerts is being fetched

  function openAlerts() {
    clearTimeout(alertTimer);
    if (alertSource) alertSource.close();
    const es = new EventSource('/v1/live?events=alert');
    alertSource = es;
    es.onopen = () => loadAlerts();
    es.addEventListener('alert', (ev) => {
      const a = safeParse(ev.data);
      if (!a || !a.rule) return;
      if (alertBuffer) alertBuffer.push(a);
      else applyAlert(a);
      // A transition came, so the stream exists now: ask for the list's status again.
      if (!alertBuffer && state.alertsStatus === 'stream_missing') loadAlerts();
      renderAlerts();
    });
    es.addEventListener('end', () => {
      // A new stream starts from now: the list is fetched again when it opens.
      es.close();
      alertTimer = setTimeout(openAlerts, END_RECONNECT_MS);
    });
    es.addEventListener('error', () => {
      // The browser retries by itself (with Last-Event-ID) unless the answer was an HTTP error.
      if (es.readyState === EventSource.CLOSED) alertTimer = setTimeout(openAlerts, FAIL_RECONNECT_MS);
    });
  }

  async function loadAlerts() {
    clearTimeout(alertTimer);
    alertBuffer = [];
    try {
      const body = await fetchJSON('/v1/alerts?' + query({ state: 'pending,firing', limit: 10000 }));
      state.alertsStatus = body.status || null;
      const fresh = new Map();
      for (const a of Array.isArray(body.current) ? body.current : []) fresh.set(alertKey(a), withTime(a));
      state.alerts = fresh;
      for (const a of alertBuffer) applyAlert(a);
      if (body.status !== 'ready') alertTimer = setTimeout(loadAlerts, ALERTS_RETRY_MS);
    } catch (e) {
      report(e);
      alertTimer = setTimeout(loadAlerts, ALERTS_RETRY_MS);
    } finally {
      alertBuffer = null;
      renderAlerts();
    }
  }

  const withTime = (a) => ({ ...a, t: Date.parse(a.time) || 0 });

  // Keeps the latest transition of each alert: an older one (a stream that
  // lags the list) never replaces a newer one.
  function applyAlert(a) {
    const next = withTime(a);
    const known = state.alerts.get(alertKey(a));
    if (known && (known.t > next.t || (known.t === next.t && STATE_RANK[known.state] >= STATE_RANK[next.state]))) return;
    state.alerts.set(alertKey(a), next);
  }

  function renderAlerts() {
    const now = Date.now();
    for (const [key, a] of state.alerts) if (!isOpen(a) && now - a.t > ENDED_KEEP_MS) state.alerts.delete(key);
    const open = [...state.alerts.values()].filter(isOpen).sort((a, b) =>
      (b.state === 'firing') - (a.state === 'firing')
      || (SEVERITY_RANK[a.severity] ?? 3) - (SEVERITY_RANK[b.severity] ?? 3)
      || Date.parse(a.since) - Date.parse(b.since)
      || alertKey(a).localeCompare(alertKey(b)));
    const firing = open.filter((a) => a.state === 'firing').length;
    $('#alerts-count').textContent = open.length ? `${firing} firing · ${open.length - firing} pending` : '';
    const html = open.map(alertItem).join('');
    // Rebuilt only when it changed, so a click on an item is never lost.
    if ($('#alerts').dataset.html !== html) {
      $('#alerts').dataset.html = html;
      $('#alerts').innerHTML = html;
    }
    const notes = {
      stream_missing: 'No alerts stream yet: the alerter makes it when it first runs.',
      loading: 'Loading alerts…',
      unavailable: 'Alerts may be out of date: NATS does not answer.',
    };
    $('#alerts-note').textContent = notes[state.alertsStatus] || (open.length ? '' : 'Nothing is firing.');
  }

  function alertItem(a) {
    const what = a.metric != null ? `${a.device} · ${a.metric}` : a.device;
    const value = a.value !== undefined ? ` = ${fmtValue(a.value)}` : '';
    const since = Date.parse(a.since);
    const when = Number.isFinite(since) ? `since ${ago(Date.now() - since)}` : '';
    const title = `${a.rule} on ${what}: ${a.condition || ''}${value}\n${a.state} since ${a.since}`;
    return (
      `<li class="alert ${esc(a.state)} sev-${esc(a.severity)}" data-rule="${esc(a.rule)}" data-device="${esc(a.device)}"` +
      ` data-metric="${esc(a.metric ?? '')}" data-state="${esc(a.state)}" title="${esc(title)}">` +
      `<span class="badge">${esc(a.state)}</span> <strong>${esc(a.rule)}</strong> <span class="what">${esc(what)}</span>` +
      `<span class="detail muted">${esc(a.severity)} · ${esc(a.condition || '')}${esc(value)} · ${esc(when)}</span></li>`
    );
  }

  // ---------- map ----------

  const MAP_W = 400;
  const MAP_H = 260;

  // Equirectangular projection of the devices' bounding box (scaled by the cosine
  // of its middle latitude so distances look right), centred on the plate.
  function projection(placed) {
    const lats = placed.map((d) => d.latitude);
    const lons = placed.map((d) => d.longitude);
    const [minLat, maxLat, minLon, maxLon] = [Math.min(...lats), Math.max(...lats), Math.min(...lons), Math.max(...lons)];
    const lat0 = (minLat + maxLat) / 2;
    const lon0 = (minLon + maxLon) / 2;
    const k = Math.max(0.1, Math.cos((lat0 * Math.PI) / 180));
    const spanX = Math.max((maxLon - minLon) * k, 0.01) * 1.25; // 12.5 % padding per side
    const spanY = Math.max(maxLat - minLat, 0.01) * 1.25;
    const scale = Math.min((MAP_W - 24) / spanX, (MAP_H - 24) / spanY);
    return (d) => [MAP_W / 2 + (d.longitude - lon0) * k * scale, MAP_H / 2 - (d.latitude - lat0) * scale];
  }

  function renderMap() {
    const svg = $('#map');
    const placed = state.devices.filter((d) => num(d.latitude) != null && num(d.longitude) != null);
    const missing = state.devices.length - placed.length;
    $('#map-note').textContent = missing ? `${missing} device(s) without a position.` : '';
    let out = `<rect class="plate" x="0" y="0" width="${MAP_W}" height="${MAP_H}" rx="6"/>`;
    if (!placed.length) {
      svg.innerHTML = out + noData(MAP_W / 2, MAP_H / 2, 'No device positions yet');
      return;
    }
    const project = projection(placed);
    // The selected device is drawn last so it sits on top.
    const ordered = placed.filter((d) => d.device !== state.device).concat(placed.filter((d) => d.device === state.device));
    for (const d of ordered) {
      const [x, y] = project(d);
      const sel = d.device === state.device;
      const where = `${d.latitude.toFixed(4)}, ${d.longitude.toFixed(4)}`;
      out +=
        `<circle class="device-dot${sel ? ' selected' : ''}" data-device="${esc(d.device)}" cx="${x.toFixed(1)}"` +
        ` cy="${y.toFixed(1)}" r="${sel ? 7 : 5}"><title>${esc(d.device)} (${where})</title></circle>`;
      if (sel) out += `<text class="dot-label" x="${(x + 10).toFixed(1)}" y="${(y + 4).toFixed(1)}">${esc(d.device)}</text>`;
    }
    svg.innerHTML = out;
  }

  // ---------- start ----------

  function tick() {
    if (state.mode === 'live') {
      for (const s of Object.values(state.live)) trimLive(s);
      scheduleDraw(); // slide the time axis even when no point arrives
    }
    renderLastSeen();
    renderAlerts(); // "since" keeps counting
  }

  function init() {
    // Nothing may escape uncaught: anything unexpected ends up in the banner.
    window.addEventListener('unhandledrejection', (e) => {
      e.preventDefault();
      report(e.reason);
    });
    window.addEventListener('error', (e) => showBanner(e.message || 'Unexpected error'));
    $('#banner-close').addEventListener('click', () => ($('#banner').hidden = true));
    $('#login').addEventListener('submit', useToken);
    $('#mode-live').addEventListener('click', () => setMode('live'));
    $('#mode-history').addEventListener('click', () => setMode('history'));
    $('#device').addEventListener('change', (e) => selectDevice(e.target.value));
    $('#metrics').addEventListener('change', (e) => e.target.name === 'metric' && onMetricToggle());
    $('#bucket').addEventListener('change', (e) => setBucket(e.target.value));
    for (const b of document.querySelectorAll('button[data-range]')) {
      b.addEventListener('click', () => setRange(b.dataset.range));
    }
    $('#alerts').addEventListener('click', (e) => {
      const item = e.target.closest('li.alert');
      if (item && item.dataset.device !== state.device) selectDevice(item.dataset.device);
    });
    $('#map').addEventListener('click', (e) => {
      const dot = e.target.closest('circle.device-dot');
      if (dot && dot.dataset.device !== state.device) selectDevice(dot.dataset.device);
    });
    window.addEventListener('resize', scheduleDraw);
    document.body.dataset.mode = state.mode;
    fitBucket();
    renderMap();
    poll(pollHealth, HEALTH_MS);
    poll(pollDevices, DEVICES_MS);
    openAlerts();
    setInterval(tick, 1000);
  }

  init();
})();
