// stats.test.mjs: fleet stats across two gateway processes sharing one Redis.
//
// Traffic goes to both gateways in turn; GET /admin/v1/stats on either one
// must show the whole fleet's numbers, equal to what the clients saw: 10
// requests with 4 cache hits is a 40% hit rate, and the costs and savings
// are the sums of what each answer cost (x-cascade-cost-usd) and saved.
// Access: the admin token sees every tenant (or all summed); a tenant key
// sees only its own tenant (another tenant is 403); anything else is 401.
// The stored form is checked too: cascade:{tenant}:stats:<minute> hashes
// that expire 48 h after their minute.
// The realised routing shares: with the classifier loaded, tenants whose
// thresholds force each band show in `routes` where "auto" sent what reached
// an engine (a cascade that escalated still counts once, as cascade; hits and
// named tiers not at all), equal to cascade_routes_total.
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import {
  ADMIN_TOKEN, SOURCE_DIR, TEST_KEY, authHeaders, chatBody, cleanupAfterAll, makeConfig, sha256hex, startGateway,
  startPeer, tier,
} from '../support/harness.mjs';
import { startRedis } from '../support/redis.mjs';

cleanupAfterAll();

const BETA_KEY = 'sk-stats-beta';
const GAMMA_KEY = 'sk-stats-gamma';
const PRICES = { small: { input_per_1m: 0.14, output_per_1m: 0.28 }, large: { input_per_1m: 2.0, output_per_1m: 8.0 } };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const near = (a, b, what) => assert.ok(Math.abs(a - b) <= 1e-9 + 1e-9 * Math.abs(b), `${what}: ${a} != ${b}`);
const costNano = (price, u) =>
  Math.round(u.prompt_tokens * price.input_per_1m * 1000) + Math.round(u.completion_tokens * price.output_per_1m * 1000);

async function ask(gw, key, text) {
  const res = await fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: authHeaders(key),
    // model auto: routed (to the default tier, small; no classifier here),
    // so the misses record routing savings against the baseline (README "Savings").
    body: JSON.stringify(chatBody(text, { model: 'auto', temperature: 0 })),
  });
  const json = await res.json();
  return {
    status: res.status,
    cache: res.headers.get('x-cascade-cache'),
    tier: res.headers.get('x-cascade-tier'),
    costUsd: Number(res.headers.get('x-cascade-cost-usd') || 0),
    usage: json.usage,
  };
}

// `distinct` new questions, then `repeats` of the first ones (cache hits),
// alternating between the gateways, so hits cross processes.
async function sendTraffic(gws, key, prefix, distinct, repeats) {
  const out = [];
  let k = 0;
  for (let i = 0; i < distinct; i++) out.push(await ask(gws[k++ % gws.length], key, `${prefix} question ${i}`));
  await sleep(100); // the cache writes are fire-and-forget: let them land
  for (let i = 0; i < repeats; i++) out.push(await ask(gws[k++ % gws.length], key, `${prefix} question ${i}`));
  return out;
}

// What the stats must say about these answers (see policies/stats.h).
function expected(rs, largest) {
  const misses = rs.filter((r) => r.cache === 'miss');
  const hits = rs.filter((r) => r.cache === 'hit');
  return {
    requests: rs.length,
    hits: hits.length,
    misses: misses.length,
    bypass: rs.filter((r) => r.cache === 'bypass').length,
    errors: rs.filter((r) => r.status >= 500).length,
    small: rs.filter((r) => r.tier === 'small').length,
    tokens_in: misses.reduce((a, r) => a + r.usage.prompt_tokens, 0),
    tokens_out: misses.reduce((a, r) => a + r.usage.completion_tokens, 0),
    cost_usd: rs.reduce((a, r) => a + r.costUsd, 0),
    saved_cache_usd: hits.reduce((a, r) => a + costNano(PRICES.small, r.usage), 0) / 1e9,
    saved_routing_usd: misses.reduce((a, r) => a + costNano(PRICES[largest], r.usage) - costNano(PRICES.small, r.usage), 0) / 1e9,
    routing_loss_usd: 0, // routed to small, below the baseline, and nothing escalated
  };
}

function getStats(gw, token, params) {
  return fetch(`${gw.url}/admin/v1/stats?${new URLSearchParams(params)}`, {
    headers: token ? { authorization: `Bearer ${token}` } : {},
  });
}

describe('fleet stats over two gateways and one Redis', () => {
  let redis;
  let peer;
  const gws = [];
  const sent = {};
  let range;
  let sharedConfig;

  before(async () => {
    redis = await startRedis();
    peer = await startPeer({ name: 'stats' });
    const config = makeConfig({
      tiers: [
        tier({ name: 'small', urls: peer.url, price: PRICES.small }),
        tier({ name: 'large', model: 'big-model', urls: peer.url, price: PRICES.large }),
      ],
      tenants: [
        { id: 'acme', keys: [sha256hex(TEST_KEY)], allowed_tiers: ['small', 'large'], default_tier: 'small' },
        { id: 'beta', keys: [sha256hex(BETA_KEY)], allowed_tiers: ['small'] },
        { id: 'gamma', keys: [sha256hex(GAMMA_KEY)], allowed_tiers: ['small'] },
      ],
      redis: { url: redis.url, timeout_ms: 500 },
    });
    sharedConfig = config;
    gws.push(await startGateway({ config }), await startGateway({ config }));
    const now = Math.floor(Date.now() / 1000);
    range = { from: now - 600, to: now + 120, step: 60 };
    sent.acme = await sendTraffic(gws, TEST_KEY, 'stats acme', 6, 4);
    sent.beta = await sendTraffic(gws, BETA_KEY, 'stats beta', 3, 2);
  });
  after(async () => redis?.stop());

  // Stats reach Redis about once a second: poll until the fleet's total shows.
  async function settled(gw, want) {
    let body;
    for (let i = 0; i < 60; i++) {
      const res = await getStats(gw, ADMIN_TOKEN, range);
      assert.equal(res.status, 200);
      body = await res.json();
      if (body.totals.requests >= want) break;
      await sleep(100);
    }
    return body;
  }

  test('the traffic was what this test needs', () => {
    assert.deepEqual(sent.acme.map((r) => r.status), Array(10).fill(200));
    assert.deepEqual(sent.acme.map((r) => r.cache), ['miss', 'miss', 'miss', 'miss', 'miss', 'miss', 'hit', 'hit', 'hit', 'hit']);
    assert.deepEqual(sent.beta.map((r) => r.cache), ['miss', 'miss', 'miss', 'hit', 'hit']);
  });

  test('either gateway reports the whole fleet: 10 requests, 4 hits = 40%, costs equal', async () => {
    for (const gw of gws) {
      await settled(gw, 15);
      const res = await getStats(gw, ADMIN_TOKEN, { ...range, tenant: 'acme' });
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type'), /application\/json/);
      const r = await res.json();
      const want = expected(sent.acme, 'large');
      const t = r.totals;
      assert.equal(r.tenant, 'acme');
      assert.equal(r.step, 60);
      assert.equal(t.requests, 10);
      assert.equal(t.hits, 4);
      assert.equal(t.misses, 6);
      assert.equal(t.hit_rate, 0.4);
      assert.equal(t.bypass, want.bypass);
      assert.equal(t.errors, 0);
      assert.equal(t.escalations, 0);
      assert.equal(t.escalation_rate, 0);
      assert.equal(t.tiers.small, want.small);
      assert.equal(t.tiers.large, 0);
      // "auto" without a classifier takes the default tier: nothing is
      // routed by score, so every band reads 0 (and is listed).
      assert.deepEqual(t.routes, { small: 0, medium: 0, cascade: 0, large: 0 });
      assert.equal(t.tokens_in, want.tokens_in);
      assert.equal(t.tokens_out, want.tokens_out);
      near(t.cost_usd, want.cost_usd, 'cost');
      assert.ok(t.cost_usd > 0);
      near(t.saved_cache_usd, want.saved_cache_usd, 'saved by cache');
      near(t.saved_routing_usd, want.saved_routing_usd, 'saved by routing'); // net
      near(t.routing_gain_usd, want.saved_routing_usd, 'routing gain');
      assert.equal(t.routing_loss_usd, want.routing_loss_usd);
      assert.ok(t.saved_routing_usd > 0);
      assert.ok(t.p50_ms > 0 && t.p50_ms <= t.p95_ms, `p50 ${t.p50_ms} p95 ${t.p95_ms}`);

      // The series add up to the totals, point by point.
      const s = r.series;
      const n = s.t.length;
      assert.equal(n, Math.ceil(range.to / 60) - Math.floor(range.from / 60));
      for (const k of ['requests', 'hits', 'misses', 'hit_rate', 'cost_usd', 'saved_cache_usd', 'saved_routing_usd',
        'p50_ms', 'p95_ms', 'tokens_in', 'escalation_rate']) {
        assert.equal(s[k].length, n, k);
      }
      assert.equal(s.tiers.small.length, n);
      const add = (k) => s[k].reduce((a, v) => a + v, 0);
      assert.equal(add('requests'), 10);
      assert.equal(add('hits'), 4);
      near(add('cost_usd'), want.cost_usd, 'series cost');
      for (let i = 0; i < n; i++) {
        assert.equal(s.t[i], r.from + i * 60);
        if (s.requests[i] === 0) {
          assert.equal(s.hit_rate[i], null);
          assert.equal(s.p50_ms[i], null);
        } else {
          near(s.hit_rate[i], s.hits[i] / s.requests[i], 'point hit rate');
        }
      }
    }
  });

  test('all tenants summed, with the list of tenants, for the admin', async () => {
    const r = await settled(gws[1], 15);
    assert.equal(r.tenant, '*');
    assert.deepEqual([...r.tenants].sort(), ['acme', 'beta', 'gamma']);
    const a = expected(sent.acme, 'large');
    const b = expected(sent.beta, 'small');
    assert.equal(r.totals.requests, 15);
    assert.equal(r.totals.hits, 6);
    assert.equal(r.totals.hit_rate, 0.4);
    near(r.totals.cost_usd, a.cost_usd + b.cost_usd, 'fleet cost');
    near(r.totals.saved_cache_usd, a.saved_cache_usd + b.saved_cache_usd, 'fleet saved by cache');
    near(r.totals.saved_routing_usd, a.saved_routing_usd, 'fleet saved by routing'); // beta: small only, saves none
    // A coarser step: the same totals in fewer points.
    const res = await getStats(gws[0], ADMIN_TOKEN, { ...range, step: 300 });
    const coarse = await res.json();
    assert.equal(coarse.step, 300);
    assert.ok(coarse.series.t.length < r.series.t.length);
    assert.equal(coarse.series.requests.reduce((x, v) => x + v, 0), 15);
    assert.equal(coarse.totals.requests, 15);
  });

  test('a tenant key sees its own tenant only', async () => {
    let res = await getStats(gws[0], BETA_KEY, { ...range, tenant: 'beta' });
    assert.equal(res.status, 200);
    let r = await res.json();
    assert.equal(r.tenant, 'beta');
    assert.equal(r.totals.requests, 5);
    assert.equal(r.totals.hit_rate, 0.4);
    near(r.totals.cost_usd, expected(sent.beta, 'small').cost_usd, 'beta cost');

    res = await getStats(gws[0], BETA_KEY, range); // no tenant: its own
    assert.equal(res.status, 200);
    r = await res.json();
    assert.equal(r.tenant, 'beta');
    assert.equal(r.tenants, undefined);
    assert.equal(r.totals.requests, 5);

    res = await getStats(gws[1], BETA_KEY, { ...range, tenant: 'acme' });
    assert.equal(res.status, 403);
    const err = await res.json();
    assert.ok(err.error && typeof err.error.message === 'string');

    for (const token of [null, 'sk-nobody', 'Bearer']) {
      res = await getStats(gws[1], token, { ...range, tenant: 'acme' });
      assert.equal(res.status, 401, `token ${token}`);
      await res.text();
    }
  });

  test('bad ranges are 400 with an OpenAI-style error', async () => {
    const bad = [
      { ...range, step: 45 },
      { ...range, step: 0 },
      { from: range.to, to: range.from, step: 60 },
      { from: range.to - 3 * 86400, to: range.to, step: 600 },
      { from: 'yesterday', to: range.to, step: 60 },
    ];
    for (const q of bad) {
      const res = await getStats(gws[0], ADMIN_TOKEN, q);
      assert.equal(res.status, 400, JSON.stringify(q));
      const body = await res.json();
      assert.ok(body.error?.message, JSON.stringify(body));
    }
  });

  test('a gateway stopped right after its requests still reports them (the drain flushes)', async () => {
    const gw3 = await startGateway({ config: sharedConfig });
    const rs = [];
    for (let i = 0; i < 3; i++) rs.push(await ask(gw3, GAMMA_KEY, `stats gamma ${i}`));
    assert.deepEqual(rs.map((r) => r.status), [200, 200, 200]);
    const { code } = await gw3.stop(); // SIGTERM at once: well inside the 1 s tick
    assert.equal(code, 0);
    const res = await getStats(gws[0], GAMMA_KEY, range);
    const r = await res.json();
    assert.equal(r.totals.requests, 3);
    near(r.totals.cost_usd, rs.reduce((a, x) => a + x.costUsd, 0), 'gamma cost');
  });

  test('stored as cascade:{tenant}:stats:<minute> hashes that expire after 48 h', () => {
    const keys = redis.cli('--scan', '--pattern', 'cascade:{acme}:stats:*').split('\n').filter(Boolean);
    assert.ok(keys.length >= 1);
    let requests = 0;
    for (const k of keys) {
      const m = k.match(/^cascade:\{acme\}:stats:(\d+)$/);
      assert.ok(m, k);
      const minute = Number(m[1]);
      const ttl = Number(redis.cli('TTL', k));
      const want = (minute + 1) * 60 + 48 * 3600 - Math.floor(Date.now() / 1000);
      assert.ok(Math.abs(ttl - want) <= 5, `${k}: ttl ${ttl}, want ${want}`);
      requests += Number(redis.cli('HGET', k, 'requests'));
    }
    assert.equal(requests, 10);
  });
});

describe('routes: where "auto" sent the traffic, in the fleet stats', () => {
  const MODEL = path.join(SOURCE_DIR, 'classifier', 'models', 'difficulty.cdm');
  // The cheap tier's answers carry falling logprobs (0, -0.1, -0.2, ...; see
  // tests/support/peer.mjs), so under this rule "echo: hi" is kept and a
  // long echo escalates (routing.test.mjs uses the same).
  const CASCADE = { min_mean_logprob: -0.12, min_window_logprob: -5, window: 4 };
  // t_low/t_high at the ends force a band whatever the score: all small,
  // all large, all in the cascade zone.
  const ROUTING = { small: { t_low: 1, t_high: 1 }, large: { t_low: 0, t_high: 0 },
    zone: { t_low: 0, t_high: 1, cascade: CASCADE } };
  const key = (id) => `sk-stats-route-${id}`;
  let redis;
  let peer;
  let gw;
  const got = {};
  const now = Math.floor(Date.now() / 1000);
  const range = { from: now - 600, to: now + 120, step: 60 };

  async function send(id, text, model = 'auto') {
    const res = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST', headers: authHeaders(key(id)), body: JSON.stringify(chatBody(text, { model, temperature: 0 })),
    });
    await res.text();
    return { status: res.status, cache: res.headers.get('x-cascade-cache'), tier: res.headers.get('x-cascade-tier'),
      escalated: res.headers.get('x-cascade-escalated') };
  }

  before(async () => {
    redis = await startRedis();
    peer = await startPeer({ name: 'stats-routes' });
    const config = makeConfig({
      tiers: [
        tier({ name: 'small', urls: peer.url, price: PRICES.small }),
        tier({ name: 'large', model: 'big-model', urls: peer.url, price: PRICES.large }),
      ],
      tenants: Object.entries(ROUTING).map(([id, routing]) => (
        { id: `r-${id}`, keys: [sha256hex(key(id))], allowed_tiers: ['small', 'large'], routing })),
      classifier: { model: MODEL },
      redis: { url: redis.url, timeout_ms: 500 },
    });
    gw = await startGateway({ config });
    // r-small: three routed, then a hit and a named tier (neither routed).
    got.small = [await send('small', 'route a'), await send('small', 'route b'), await send('small', 'route c')];
    await sleep(100); // let the cache write land
    got.small.push(await send('small', 'route a'), await send('small', 'route d', 'small'));
    got.large = [await send('large', 'route e'), await send('large', 'route f')];
    // r-zone: one kept by the judge, one escalated: both are cascades.
    got.zone = [await send('zone', 'hi'), await send('zone', 'one two three four five six seven')];
  });
  after(async () => redis?.stop());

  async function stats(params, want) {
    let body;
    for (let i = 0; i < 60; i++) {
      const res = await getStats(gw, ADMIN_TOKEN, { ...range, ...params });
      assert.equal(res.status, 200);
      body = await res.json();
      if (body.totals.requests >= want) break;
      await sleep(100);
    }
    return body;
  }

  test('the traffic went where the thresholds say', () => {
    assert.deepEqual(got.small.map((r) => [r.status, r.cache, r.tier]),
      [[200, 'miss', 'small'], [200, 'miss', 'small'], [200, 'miss', 'small'], [200, 'hit', 'small'], [200, 'miss', 'small']]);
    assert.deepEqual(got.large.map((r) => [r.status, r.tier]), [[200, 'large'], [200, 'large']]);
    assert.deepEqual(got.zone.map((r) => [r.status, r.tier, r.escalated]), [[200, 'small', 'false'], [200, 'large', 'true']]);
  });

  test('routes per tenant, in the series and the totals, equal cascade_routes_total', async () => {
    const metrics = await (await fetch(`${gw.url}/metrics`)).text();
    const counter = (tenant, route) => Number(metrics.match(new RegExp(
      `^cascade_routes_total\\{tenant="${tenant}",route="${route}"\\} (\\d+)$`, 'm'))?.[1]);
    const want = {
      'r-small': { small: 3, medium: 0, cascade: 0, large: 0 },
      'r-large': { small: 0, medium: 0, cascade: 0, large: 2 },
      'r-zone': { small: 0, medium: 0, cascade: 2, large: 0 },
    };
    for (const [tenant, routes] of Object.entries(want)) {
      const r = await stats({ tenant }, tenant === 'r-small' ? 5 : 2);
      assert.deepEqual(r.totals.routes, routes, tenant);
      for (const [route, n] of Object.entries(routes)) {
        const series = r.series.routes[route];
        assert.equal(series.length, r.series.t.length, `${tenant} ${route}`);
        assert.equal(series.reduce((a, v) => a + v, 0), n, `${tenant} ${route}: the series add up`);
        assert.equal(counter(tenant, route), n, `cascade_routes_total{tenant="${tenant}",route="${route}"}`);
      }
    }
    const zone = await stats({ tenant: 'r-zone' }, 2);
    assert.equal(zone.totals.escalations, 1); // the escalation counted apart, the cascade once
    const all = await stats({}, 9);
    assert.equal(all.totals.requests, 9);
    assert.deepEqual(all.totals.routes, { small: 3, medium: 0, cascade: 2, large: 2 });
  });

  test('stored as route:<kind> fields of the minute hashes', () => {
    let small = 0;
    for (const k of redis.cli('--scan', '--pattern', 'cascade:{r-small}:stats:*').split('\n').filter(Boolean)) {
      small += Number(redis.cli('HGET', k, 'route:small') || 0);
      assert.equal(redis.cli('HGET', k, 'route:large'), ''); // only non-zero fields travel
    }
    assert.equal(small, 3);
  });
});
