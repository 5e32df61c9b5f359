// app.js: the Cascade dashboard. It reads GET /admin/v1/stats (the JSON is
// described in policies/stats.h) and draws it with uPlot; no framework and no
// build step, so what the gateway embeds is what runs.
//
// Access: the bearer token is the admin token (every tenant, or all summed)
// or a tenant's API key (that tenant only). It comes from ?token= (which is
// then removed from the address bar) or the sign-in form, and is kept in
// sessionStorage: this tab only, gone when it closes.
// Other parameters: ?tenant=<id> ?range=3600|21600|86400 ?refresh=<seconds>.
'use strict';

(function () {
  const TOKEN_KEY = 'cascade.dashboard.token';
  const RANGES = { 3600: '1 h', 21600: '6 h', 86400: '24 h' };
  const POINTS = 60; // per chart, whatever the range: step = range / 60
  const PALETTE = ['#2f6fdf', '#e8833a', '#3aa76d', '#8e44ad', '#16a085', '#d4ac0d', '#c0392b', '#7f8c8d'];
  const $ = (id) => document.getElementById(id);

  const params = new URLSearchParams(location.search);
  const state = {
    token: null,
    tenant: params.get('tenant') || '',
    range: RANGES[params.get('range')] ? Number(params.get('range')) : 3600,
    refreshMs: Math.max(1, Number(params.get('refresh')) || 10) * 1000,
    charts: {},
    tierKey: null, // the tier names the tier chart was built for
    timer: null,
    busy: false,
    last: null, // the last stats answer, for tests and the console
  };

  // ---- formatting ---------------------------------------------------------

  const fmtInt = (v) => (v == null ? '–' : Math.round(v).toLocaleString('en-US'));
  const fmtPct = (v) => (v == null ? '–' : (100 * v).toFixed(1) + '%');
  function fmtUsd(v) {
    if (v == null) return '–';
    const a = Math.abs(v);
    if (a === 0) return '$0';
    const sign = v < 0 ? '-' : ''; // net routing savings may be negative: -$0.12, not $-0.12
    if (a < 0.01) return sign + '$' + a.toPrecision(3);
    return sign + '$' + a.toLocaleString('en-US', { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  }
  function fmtMs(v) {
    if (v == null) return '–';
    return v >= 1000 ? (v / 1000).toFixed(2) + ' s' : v.toFixed(v < 10 ? 1 : 0) + ' ms';
  }

  // "auto"'s realised shares (routes in the stats JSON): the bands that got
  // traffic, the most expensive first, as shares of what "auto" sent to an
  // engine, so an operator compares them with routing.large_share.
  const ROUTE_ORDER = ['large', 'cascade', 'medium', 'small'];
  function fmtRoutes(routes) {
    const total = ROUTE_ORDER.reduce((a, k) => a + ((routes && routes[k]) || 0), 0);
    if (!total) return '–';
    return ROUTE_ORDER.filter((k) => routes[k] > 0)
      .map((k) => `${k} ${((100 * routes[k]) / total).toFixed(0)}%`).join(' · ');
  }

  // The cascade judge's verdicts: how many were judged, the share kept, and
  // the escalations by the reason that decided, most frequent first: what an
  // operator reads to tune a rule's floor.
  function fmtJudgements(j) {
    const sum = (o) => Object.values(o || {}).reduce((a, v) => a + v, 0);
    const kept = sum(j && j.keep);
    const judged = kept + sum(j && j.escalate);
    if (!judged) return '–';
    let out = `${fmtInt(judged)} judged · kept ${fmtPct(kept / judged)}`;
    const why = Object.entries(j.escalate || {}).filter(([, n]) => n > 0).sort((a, b) => b[1] - a[1]);
    if (why.length) out += ' · escalated: ' + why.map(([r, n]) => `${r} ${fmtInt(n)}`).join(', ');
    return out;
  }

  function setStatus(text, isError) {
    const el = $('status');
    el.textContent = text;
    el.classList.toggle('error', !!isError);
  }

  // ---- token ----------------------------------------------------------------

  function takeTokenFromUrl() {
    if (!params.has('token')) return;
    sessionStorage.setItem(TOKEN_KEY, params.get('token'));
    params.delete('token');
    const q = params.toString();
    history.replaceState(null, '', location.pathname + (q ? '?' + q : ''));
  }

  function showLogin(message) {
    state.token = null;
    state.discovered = false;
    sessionStorage.removeItem(TOKEN_KEY);
    clearInterval(state.timer);
    state.timer = null;
    $('main').hidden = true;
    $('controls').hidden = true;
    $('login').hidden = false;
    $('login-error').textContent = message || '';
    setStatus('');
    $('token-input').focus();
  }

  function showMain() {
    $('login').hidden = true;
    $('main').hidden = false;
    $('controls').hidden = false;
  }

  // ---- charts -----------------------------------------------------------------

  const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

  function axis(opts) {
    const stroke = cssVar('--muted') || '#5d6677';
    const grid = cssVar('--line') || '#dfe3ea';
    return Object.assign({ stroke, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } }, opts);
  }

  function chartWidth(el) {
    return Math.max(300, Math.floor(el.clientWidth || el.parentElement.clientWidth || 600));
  }

  // A uPlot chart in element `id` with the given y series (x is time).
  function makeChart(id, series, axes, scales) {
    const el = $(id);
    el.textContent = '';
    const opts = {
      width: chartWidth(el),
      height: 240,
      scales: Object.assign({ x: { time: true } }, scales),
      series: [{}].concat(series),
      axes: [axis({})].concat(axes.map(axis)),
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
    };
    const empty = [[]].concat(series.map(() => []));
    return new uPlot(opts, empty, el);
  }

  const pctAxis = (side) => ({ scale: '%', side, values: (u, vals) => vals.map((v) => v + '%') });
  // A series; its points are drawn too, so a value between empty intervals
  // (null: no requests before or after) is still seen. Counts, which are 0
  // rather than null when idle, pass noPoints: their lines already show it.
  const line = (label, color, scale, value, extra) =>
    Object.assign({
      label, stroke: color, width: 2, scale,
      value: (u, v) => (v == null ? '–' : value(v)),
      points: { show: true, size: 5, fill: color },
    }, extra);
  const noPoints = { points: { show: false } };
  // Axis labels for money: two significant digits keep them narrow.
  const usdTick = (v) => (v === 0 ? '$0' : Math.abs(v) < 0.01 ? (v < 0 ? '-$' : '$') + Number(Math.abs(v).toPrecision(2)) : fmtUsd(v));

  function buildCharts(tiers) {
    const c = state.charts;
    if (!c.hit) {
      c.hit = makeChart('c-hit-rate', [line('hit rate', PALETTE[0], '%', (v) => v.toFixed(1) + '%', { fill: 'rgba(47,111,223,0.12)' })],
        [pctAxis(3)], { '%': { range: [0, 100] } });
      c.spend = makeChart('c-spend', [
        line('spend', PALETTE[6], 'usd', fmtUsd, noPoints),
        line('saved by cache', PALETTE[2], 'usd', fmtUsd, noPoints),
        // Net (gain - loss; README "Savings"): below zero when routing cost
        // more than it saved, so the axis goes below 0 when it must.
        line('saved by routing (net)', PALETTE[1], 'usd', fmtUsd, noPoints),
        line('routing loss', PALETTE[3], 'usd', fmtUsd, Object.assign({ dash: [6, 4] }, noPoints)),
      ], [{ scale: 'usd', values: (u, vals) => vals.map(usdTick), size: 90 }],
      { usd: { range: (u, lo, hi) => [lo < 0 ? lo * 1.1 : 0, hi > 0 ? hi * 1.1 : 1] } });
      c.latency = makeChart('c-latency', [
        line('p50', PALETTE[0], 'ms', fmtMs),
        line('p95', PALETTE[3], 'ms', fmtMs),
      ], [{ scale: 'ms', values: (u, vals) => vals.map((v) => v + ' ms'), size: 70 }], { ms: { range: (u, lo, hi) => [0, hi > 0 ? hi * 1.1 : 1] } });
    }
    const key = tiers.join('\u0000');
    if (state.tierKey !== key) { // the tier chart has one series per tier
      if (c.tiers) c.tiers.destroy();
      const series = tiers.map((t, i) => line(t, PALETTE[i % PALETTE.length], 'n', fmtInt, noPoints));
      series.push(line('escalation rate', PALETTE[6], '%', (v) => v.toFixed(1) + '%', { dash: [6, 4] }));
      c.tiers = makeChart('c-tiers', series,
        [{ scale: 'n', values: (u, vals) => vals.map(fmtInt) }, Object.assign(pctAxis(1), { grid: { show: false } })],
        { n: { range: (u, lo, hi) => [0, hi > 0 ? hi * 1.1 : 1] }, '%': { range: [0, 100] } });
      state.tierKey = key;
    }
  }

  // uPlot wants numbers or null; percentages are shown 0..100.
  const pcts = (a) => a.map((v) => (v == null ? null : 100 * v));

  // Points where some series holds something: what a test (or a person)
  // reads as "the chart has data".
  function countPoints(data) {
    let n = 0;
    for (let i = 0; i < data[0].length; i++) {
      if (data.slice(1).some((s) => s[i] != null && s[i] !== 0)) n++;
    }
    return n;
  }

  function setChart(id, chart, data) {
    chart.setData(data);
    $(id).dataset.points = String(countPoints(data));
  }

  // ---- rendering --------------------------------------------------------------

  // The tenant menu: every tenant for the admin token, its own for a key.
  function setTenants(r) {
    const sel = $('tenant');
    const want = r.tenant === '*' ? [''].concat(r.tenants || []) : [r.tenant];
    const have = Array.from(sel.options).map((o) => o.value);
    if (want.join('\u0000') !== have.join('\u0000')) {
      sel.textContent = '';
      for (const t of want) sel.add(new Option(t || 'All tenants', t));
    }
    sel.disabled = r.tenant !== '*';
    if (r.tenant !== '*') state.tenant = r.tenant;
    else if (!want.includes(state.tenant)) state.tenant = '';
    sel.value = state.tenant;
  }

  function render(r) {
    const s = r.series;
    const t = r.totals;
    const tiers = Object.keys(s.tiers || {});
    if (r.tenant === '*') setTenants(r); // tenants may come and go with config reloads
    $('h-requests').textContent = fmtInt(t.requests);
    $('h-hit-rate').textContent = fmtPct(t.hit_rate);
    $('h-escalation-rate').textContent = fmtPct(t.escalation_rate);
    $('h-spend').textContent = fmtUsd(t.cost_usd);
    $('h-saved-cache').textContent = fmtUsd(t.saved_cache_usd);
    $('h-saved-routing').textContent = fmtUsd(t.saved_routing_usd); // net
    $('h-routing-loss').textContent = fmtUsd(t.routing_loss_usd);
    $('h-p50').textContent = fmtMs(t.p50_ms);
    $('h-p95').textContent = fmtMs(t.p95_ms);
    const served = tiers.reduce((a, k) => a + (t.tiers[k] || 0), 0);
    $('h-tiers').textContent = served
      ? tiers.map((k) => `${k} ${((100 * (t.tiers[k] || 0)) / served).toFixed(0)}%`).join(' · ')
      : '–';
    $('h-routes').textContent = fmtRoutes(t.routes);
    $('h-judge').textContent = fmtJudgements(t.judgements);

    buildCharts(tiers);
    const c = state.charts;
    setChart('c-hit-rate', c.hit, [s.t, pcts(s.hit_rate)]);
    setChart('c-tiers', c.tiers, [s.t].concat(tiers.map((k) => s.tiers[k]), [pcts(s.escalation_rate)]));
    setChart('c-spend', c.spend, [s.t, s.cost_usd, s.saved_cache_usd, s.saved_routing_usd, s.routing_loss_usd]);
    setChart('c-latency', c.latency, [s.t, s.p50_ms, s.p95_ms]);
  }

  // ---- fetching ------------------------------------------------------------------

  // GET /admin/v1/stats with these parameters: the answer, or null (the
  // status line or the sign-in form says why).
  async function api(query) {
    const res = await fetch('/admin/v1/stats?' + new URLSearchParams(query), {
      headers: { authorization: 'Bearer ' + state.token },
      cache: 'no-store',
    });
    if (res.status === 401) {
      showLogin('That token was not accepted.');
      return null;
    }
    let body = null;
    try {
      body = await res.json();
    } catch {
      body = null;
    }
    if (!res.ok || !body) {
      const msg = body && body.error && body.error.message ? body.error.message : res.statusText;
      setStatus(`${res.status}: ${msg}`, true);
      return null;
    }
    return body;
  }

  // Once per sign-in: ask without a tenant. The admin token gets "*" and the
  // list of tenants; a tenant key gets its own tenant.
  async function discover() {
    const to = Math.ceil(Date.now() / 60000) * 60;
    const r = await api({ from: to - 60, to, step: 60 });
    if (!r) return false;
    setTenants(r);
    return true;
  }

  async function refresh() {
    if (state.busy || !state.token) return;
    state.busy = true;
    try {
      if (!state.discovered) {
        state.discovered = await discover();
        if (!state.discovered) return;
      }
      const step = Math.max(60, Math.round(state.range / POINTS / 60) * 60);
      const now = Math.floor(Date.now() / 1000);
      const to = Math.ceil((now + 1) / step) * step; // through the current interval
      const q = { from: to - state.range, to, step };
      if (state.tenant) q.tenant = state.tenant;
      const body = await api(q);
      if (!body) return;
      state.last = body;
      showMain();
      render(body);
      const who = body.tenant === '*' ? 'all tenants' : body.tenant;
      setStatus(`${who} · ${RANGES[state.range]} · updated ${new Date().toLocaleTimeString()}`);
    } catch (e) {
      setStatus('Cannot reach the gateway: ' + e.message, true);
    } finally {
      state.busy = false;
    }
  }

  function start() {
    state.token = sessionStorage.getItem(TOKEN_KEY);
    if (!state.token) {
      showLogin();
      return;
    }
    $('range').value = String(state.range);
    setStatus('loading…');
    refresh();
    clearInterval(state.timer);
    state.timer = setInterval(refresh, state.refreshMs);
  }

  // Keep the choices in the address bar, so a reload or a shared link keeps them.
  function remember() {
    const q = new URLSearchParams();
    if (state.tenant) q.set('tenant', state.tenant);
    if (state.range !== 3600) q.set('range', String(state.range));
    if (params.has('refresh')) q.set('refresh', params.get('refresh'));
    const s = q.toString();
    history.replaceState(null, '', location.pathname + (s ? '?' + s : ''));
  }

  // ---- wiring ----------------------------------------------------------------------

  $('tenant').addEventListener('change', (e) => {
    state.tenant = e.target.value;
    remember();
    refresh();
  });
  $('range').addEventListener('change', (e) => {
    state.range = Number(e.target.value);
    remember();
    refresh();
  });
  $('signout').addEventListener('click', () => showLogin());
  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const v = $('token-input').value.trim();
    if (!v) return;
    sessionStorage.setItem(TOKEN_KEY, v);
    $('token-input').value = '';
    start();
  });
  let resizeTimer = null;
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      for (const [name, chart] of Object.entries(state.charts)) {
        const el = $({ hit: 'c-hit-rate', tiers: 'c-tiers', spend: 'c-spend', latency: 'c-latency' }[name]);
        chart.setSize({ width: chartWidth(el), height: 240 });
      }
    }, 150);
  });

  // For tests and curious operators: the charts and the last answer.
  window.cascadeDashboard = state;

  if (typeof uPlot !== 'function') {
    setStatus('uPlot did not load: the gateway was built without node_modules/uplot (run npm ci, rebuild).', true);
    return;
  }
  takeTokenFromUrl();
  start();
})();
