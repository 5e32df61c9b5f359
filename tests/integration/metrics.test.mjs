// metrics.test.mjs: GET /metrics of a live gateway, and the Grafana dashboard
// over it (deploy/grafana/cascade.json).
//
// - the exposition passes `promtool check metrics` and our own format checks;
// - the counters equal the traffic this test sent, as the client saw it
//   (x-cascade-cache, x-cascade-tier, x-cascade-cost-usd, usage);
// - label values come from the config only: junk models, keys and paths add
//   no series;
// - a real Prometheus scrapes the gateway and evaluates every query of every
//   Grafana panel: all must be valid PromQL over metrics that exist, and the
//   panels the page also shows must hold the right numbers (40% hit rate...).
// promtool and prometheus come from Debian's prometheus package
// (scripts/setup.sh); without them those parts are skipped, and say so.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import {
  ADMIN_TOKEN, SOURCE_DIR, TEST_KEY, authHeaders, chatBody, cleanupAfterAll, freePort, makeConfig, sha256hex,
  spawnReady, startGateway, startPeer, tier,
} from '../support/harness.mjs';
import { startRedis } from '../support/redis.mjs';

cleanupAfterAll();

const BETA_KEY = 'sk-metrics-beta';
const PRICES = { small: { input_per_1m: 0.14, output_per_1m: 0.28 }, large: { input_per_1m: 2.0, output_per_1m: 8.0 } };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function which(bin) {
  const r = spawnSync('sh', ['-c', `command -v ${bin}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}

// ---- the exposition --------------------------------------------------------

// parseExposition: [{name, labels: {k: v}, value}] of every sample line, and
// the declared {name: type}.
function parseExposition(text) {
  const samples = [];
  const types = {};
  for (const line of text.split('\n')) {
    if (!line) continue;
    const t = line.match(/^# TYPE (\S+) (\S+)$/);
    if (t) {
      types[t[1]] = t[2];
      continue;
    }
    if (line.startsWith('#')) continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$/);
    assert.ok(m, `not a sample line: ${line}`);
    const labels = {};
    if (m[3]) {
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?/gy;
      let lm;
      let consumed = 0;
      while ((lm = re.exec(m[3])) !== null) {
        labels[lm[1]] = lm[2].replace(/\\n/g, '\n').replace(/\\"/g, '"').replace(/\\\\/g, '\\');
        consumed = re.lastIndex;
      }
      assert.equal(consumed, m[3].length, `bad labels in: ${line}`);
    }
    samples.push({ name: m[1], labels, value: Number(m[4]), line });
  }
  return { samples, types };
}

// sum of the samples named `name` whose labels include `match`.
function sum(samples, name, match = {}) {
  return samples
    .filter((s) => s.name === name && Object.entries(match).every(([k, v]) => s.labels[k] === v))
    .reduce((a, s) => a + s.value, 0);
}

async function scrape(gw) {
  const res = await fetch(`${gw.url}/metrics`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /^text\/plain; version=0\.0\.4/);
  return res.text();
}

// ---- traffic ----------------------------------------------------------------

const costNano = (price, u) =>
  Math.round(u.prompt_tokens * price.input_per_1m * 1000) + Math.round(u.completion_tokens * price.output_per_1m * 1000);

// ask: one deterministic (cacheable) question; what the client saw.
async function ask(gw, key, text, extra = {}) {
  const res = await fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: authHeaders(key),
    body: JSON.stringify(chatBody(text, { model: 'small', temperature: 0, ...extra })),
  });
  const body = await res.text();
  const json = res.ok && !extra.stream ? JSON.parse(body) : null;
  return {
    status: res.status,
    cache: res.headers.get('x-cascade-cache'),
    tier: res.headers.get('x-cascade-tier'),
    costUsd: Number(res.headers.get('x-cascade-cost-usd') || 0),
    usage: json?.usage,
  };
}

// sendTraffic: `distinct` new questions, then `repeats` of the first ones
// again (cache hits), spread over the gateways in turn. model "auto": the
// router places them (on the default tier, small: no classifier here), so
// they record routing savings against the tenant's baseline (README "Savings").
async function sendTraffic(gws, key, prefix, distinct, repeats) {
  const out = [];
  let k = 0;
  const auto = { model: 'auto' };
  for (let i = 0; i < distinct; i++) out.push(await ask(gws[k++ % gws.length], key, `${prefix} question ${i}`, auto));
  await sleep(100); // the cache writes are fire-and-forget: let them land
  for (let i = 0; i < repeats; i++) out.push(await ask(gws[k++ % gws.length], key, `${prefix} question ${i}`, auto));
  return out;
}

describe('GET /metrics', () => {
  let redis;
  let peer;
  let gw;
  const sent = { acme: [], beta: [] };

  before(async () => {
    redis = await startRedis();
    peer = await startPeer({ name: 'metrics' });
    const config = makeConfig({
      tiers: [
        tier({ name: 'small', urls: peer.url, price: PRICES.small }),
        tier({ name: 'large', model: 'big-model', urls: peer.url, price: PRICES.large }),
      ],
      tenants: [
        { id: 'acme', keys: [sha256hex(TEST_KEY)], allowed_tiers: ['small', 'large'], default_tier: 'small' },
        { id: 'beta', keys: [sha256hex(BETA_KEY)], allowed_tiers: ['small'] },
      ],
      redis: { url: redis.url, timeout_ms: 500 },
    });
    gw = await startGateway({ config });
  });
  after(async () => redis?.stop());

  test('before any traffic: valid, and every configured tenant and tier is there at 0', async () => {
    const { samples, types } = parseExposition(await scrape(gw));
    for (const name of ['cascade_requests_total', 'cascade_cache_total', 'cascade_tokens_total', 'cascade_cost_usd_total',
      'cascade_saved_usd_total', 'cascade_routing_loss_usd_total', 'cascade_escalations_total',
      'cascade_redis_errors_total', 'cascade_upstream_errors_total']) {
      assert.equal(types[name], 'counter', name);
    }
    for (const name of ['cascade_request_duration_seconds', 'cascade_ttft_seconds', 'cascade_gateway_overhead_seconds',
      'cascade_classifier_seconds']) {
      assert.equal(types[name], 'histogram', name);
    }
    assert.equal(types.cascade_inflight_requests, 'gauge');
    assert.equal(types.cascade_engine_queue_depth, 'gauge');
    for (const t of ['acme', 'beta']) {
      for (const k of ['small', 'large']) {
        const s = samples.find((x) => x.name === 'cascade_cache_total' && x.labels.tenant === t &&
          x.labels.tier === k && x.labels.result === 'hit');
        assert.ok(s, `no zero series for ${t}/${k}`);
        assert.equal(s.value, 0);
      }
    }
    assert.deepEqual(samples.filter((s) => s.name === 'cascade_engine_queue_depth').map((s) => s.labels.tier).sort(),
      ['large', 'small']);
  });

  test('counters equal the traffic sent, as the client saw it', async () => {
    sent.acme = await sendTraffic([gw], TEST_KEY, 'metrics acme', 6, 4);
    sent.beta = await sendTraffic([gw], BETA_KEY, 'metrics beta', 3, 2);
    const streamed = await ask(gw, TEST_KEY, 'metrics acme streamed', { stream: true });
    assert.equal(streamed.status, 200);
    const bad = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST', headers: authHeaders('sk-nobody'), body: JSON.stringify(chatBody('x')),
    });
    assert.equal(bad.status, 401);
    await bad.text();

    assert.deepEqual(sent.acme.map((r) => r.cache), ['miss', 'miss', 'miss', 'miss', 'miss', 'miss', 'hit', 'hit', 'hit', 'hit']);
    const { samples } = parseExposition(await scrape(gw));
    for (const [tenant, rs] of Object.entries(sent)) {
      const all = tenant === 'acme' ? rs.concat([streamed]) : rs;
      assert.equal(sum(samples, 'cascade_requests_total', { tenant }), all.length, `${tenant} requests`);
      assert.equal(sum(samples, 'cascade_requests_total', { tenant, code: '200' }), all.length);
      for (const result of ['hit', 'miss', 'bypass']) {
        assert.equal(sum(samples, 'cascade_cache_total', { tenant, result }), all.filter((r) => r.cache === result).length,
          `${tenant} ${result}`);
      }
      for (const k of ['small', 'large']) {
        assert.equal(sum(samples, 'cascade_requests_total', { tenant, tier: k }), all.filter((r) => r.tier === k).length);
      }
      // Tokens: what the engines processed; the answers from the cache add none.
      const misses = rs.filter((r) => r.cache !== 'hit');
      const pin = misses.reduce((a, r) => a + r.usage.prompt_tokens, 0);
      const pout = misses.reduce((a, r) => a + r.usage.completion_tokens, 0);
      const tokIn = sum(samples, 'cascade_tokens_total', { tenant, direction: 'in' });
      const tokOut = sum(samples, 'cascade_tokens_total', { tenant, direction: 'out' });
      if (tenant === 'beta') {
        assert.equal(tokIn, pin);
        assert.equal(tokOut, pout);
      } else { // plus the streamed answer, whose usage the client did not ask for
        assert.ok(tokIn > pin && tokOut > pout, `${tokIn} ${tokOut}`);
      }
      // Money: the cost headers; the hits saved what they would have cost.
      const cost = rs.reduce((a, r) => a + r.costUsd, 0);
      const savedCache = rs.filter((r) => r.cache === 'hit').reduce((a, r) => a + costNano(PRICES.small, r.usage), 0) / 1e9;
      if (tenant === 'beta') assert.ok(Math.abs(sum(samples, 'cascade_cost_usd_total', { tenant }) - cost) < 1e-9);
      else assert.ok(sum(samples, 'cascade_cost_usd_total', { tenant }) > cost); // + the stream
      assert.ok(Math.abs(sum(samples, 'cascade_saved_usd_total', { tenant, source: 'cache' }) - savedCache) < 1e-9,
        `${tenant} saved by cache`);
      assert.equal(sum(samples, 'cascade_request_duration_seconds_count', { tenant }), all.length);
    }
    // Routing (README "Savings"): acme's baseline is large, so each routed
    // miss answered by small gained the difference; the streamed request
    // named its tier and records none; nothing escalated, so no loss.
    // beta may use only small: its baseline is small, and it gains nothing.
    const routing = sent.acme.filter((r) => r.cache === 'miss')
      .reduce((a, r) => a + costNano(PRICES.large, r.usage) - costNano(PRICES.small, r.usage), 0) / 1e9;
    assert.ok(routing > 0);
    const gained = sum(samples, 'cascade_saved_usd_total', { tenant: 'acme', source: 'routing' });
    assert.ok(Math.abs(gained - routing) < 1e-9, `acme routing gain ${gained}, want ${routing}`);
    assert.equal(sum(samples, 'cascade_routing_loss_usd_total', { tenant: 'acme' }), 0);
    assert.equal(sum(samples, 'cascade_saved_usd_total', { tenant: 'beta', source: 'routing' }), 0); // small only
    assert.equal(sum(samples, 'cascade_requests_total', { code: '401' }), 1);
    assert.equal(sum(samples, 'cascade_ttft_seconds_count', { tenant: 'acme' }), 1); // only the streamed one
    assert.equal(sum(samples, 'cascade_inflight_requests'), 0);
    assert.equal(sum(samples, 'cascade_redis_errors_total'), 0);
  });

  test('promtool check metrics passes', async (t) => {
    const promtool = which('promtool');
    if (!promtool) return t.skip('promtool is not installed (Debian package prometheus; scripts/setup.sh)');
    const text = await scrape(gw);
    const r = spawnSync(promtool, ['check', 'metrics'], { input: text, encoding: 'utf8' });
    assert.equal(r.status, 0, `promtool: ${r.stdout}${r.stderr}`);
  });

  test('labels come from the config, never from requests', async () => {
    const before1 = parseExposition(await scrape(gw)).samples.length;
    const junk = async (tag) => {
      const reqs = [];
      for (let i = 0; i < 5; i++) {
        reqs.push(fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: authHeaders(`sk-${tag}-${i}`), body: '{}' }));
        reqs.push(fetch(`${gw.url}/v1/chat/completions`, {
          method: 'POST', headers: authHeaders(), body: JSON.stringify(chatBody('hi', { model: `model-${tag}-${i}` })),
        }));
        reqs.push(fetch(`${gw.url}/${tag}/path/${i}`, { headers: authHeaders() }));
        reqs.push(fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: authHeaders(), body: `{"bad json ${tag}` }));
      }
      for (const r of await Promise.all(reqs)) await r.text();
    };
    await junk('first');
    const text1 = await scrape(gw);
    const n1 = parseExposition(text1).samples.length;
    await junk('second');
    const text2 = await scrape(gw);
    const { samples } = parseExposition(text2);
    assert.equal(samples.length, n1, 'new junk made new series');
    assert.ok(n1 - before1 < 100, `junk added ${n1 - before1} series`);
    for (const s of samples) {
      for (const v of Object.values(s.labels)) assert.doesNotMatch(v, /first|second|model-|sk-/, s.line);
      if (s.labels.tenant) assert.ok(['acme', 'beta', 'none'].includes(s.labels.tenant), s.line);
      if (s.labels.tier) assert.ok(['small', 'large', 'none'].includes(s.labels.tier), s.line);
    }
  });

  test('the Grafana dashboard: every panel query runs in Prometheus, with the right numbers', async (t) => {
    const prometheusBin = which('prometheus');
    if (!prometheusBin) return t.skip('prometheus is not installed (Debian package prometheus; scripts/setup.sh)');
    const dash = JSON.parse(readFileSync(path.join(SOURCE_DIR, 'deploy', 'grafana', 'cascade.json'), 'utf8'));
    const exposition = await scrape(gw);
    const { types } = parseExposition(exposition);
    // Every metric a panel names is one the gateway exposes.
    const targets = dash.panels.flatMap((p) => (p.targets || []).map((x) => ({ panel: `${p.type}:${p.title}`, ...x })));
    assert.ok(targets.length >= 20, `only ${targets.length} queries`);
    for (const x of targets) {
      for (const m of x.expr.match(/cascade_[a-z_]+/g) || []) {
        const family = m.replace(/_(bucket|sum|count)$/, '');
        assert.ok(types[family] || types[m], `${x.panel}: ${m} is not exposed`);
      }
    }
    for (const title of ['Cache hit rate', 'Requests by tier, and escalation rate', 'Spend and savings (USD per hour)',
      'Latency p50 and p95', 'Requests', 'Latency p95']) {
      assert.ok(dash.panels.some((p) => p.title === title), `no panel "${title}"`);
    }

    const dir = mkdtempSync(path.join(tmpdir(), 'cascade-prom-'));
    const port = await freePort();
    writeFileSync(path.join(dir, 'prometheus.yml'), [
      'global:', '  scrape_interval: 1s', 'scrape_configs:', '  - job_name: cascade',
      '    authorization:', `      credentials: ${ADMIN_TOKEN}`,
      '    static_configs:', `      - targets: ['127.0.0.1:${gw.port}']`, ''].join('\n'));
    const prom = await spawnReady(prometheusBin, [`--config.file=${path.join(dir, 'prometheus.yml')}`,
      `--storage.tsdb.path=${path.join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`],
    /Server is ready to receive web requests/, { name: 'prometheus', timeoutMs: 30000 });
    t.after(async () => {
      await prom.stop();
      rmSync(dir, { recursive: true, force: true });
    });
    const query = async (expr) => {
      const r = await fetch(`http://127.0.0.1:${port}/api/v1/query?${new URLSearchParams({ query: expr })}`);
      return r.json();
    };
    const waitFor = async (expr, ok, what) => {
      for (let i = 0; i < 150; i++) {
        const r = await query(expr);
        if (r.status === 'success' && ok(r.data.result)) return r.data.result;
        await sleep(100);
      }
      assert.fail(`Prometheus never saw ${what}`);
    };
    const total = () => sum(parseExposition(exposition).samples, 'cascade_requests_total');
    await waitFor('up{job="cascade"}', (res) => res.length === 1 && res[0].value[1] === '1', 'a first scrape');

    // Two rounds, each scraped: rates need a before and an after.
    const gamma = [];
    for (const round of [1, 2]) {
      gamma.push(...(await sendTraffic([gw], TEST_KEY, `grafana round ${round}`, 3, 2)));
      const want = total() + gamma.length;
      await waitFor('sum(cascade_requests_total)', (res) => res.length && Number(res[0].value[1]) >= want, 'the traffic');
    }
    assert.equal(gamma.filter((r) => r.cache === 'hit').length, 4);
    await sleep(1200); // one more scrape, so the last samples are inside every window

    const subst = (expr) => expr.replaceAll('$tenant', 'acme').replaceAll('$__rate_interval', '1m').replaceAll('$__range', '2m');
    const values = {};
    for (const x of targets) {
      const r = await query(subst(x.expr));
      assert.equal(r.status, 'success', `${x.panel} ${x.refId}: ${x.expr}: ${r.error}`);
      values[`${x.panel}/${x.refId}`] = r.data.result.map((s) => ({ labels: s.metric, v: Number(s.value[1]) }));
    }
    const one = (key) => {
      const v = values[key];
      assert.equal(v.length, 1, `${key}: ${JSON.stringify(v)}`);
      return v[0].v;
    };
    // The gamma rounds: 10 requests for acme, 4 from the cache, in the window.
    for (const k of ['stat:Cache hit rate/A', 'timeseries:Cache hit rate/A']) {
      assert.ok(Math.abs(one(k) - 0.4) < 1e-9, `${k}: ${one(k)}`);
    }
    assert.ok(one('stat:Requests/A') > 0);
    assert.equal(one('stat:Escalation rate/A'), 0);
    assert.ok(one('stat:Spend/A') > 0);
    assert.ok(one('stat:Saved by cache/A') > 0);
    assert.ok(one('stat:Saved by routing (net)/A') > 0); // gain, less no loss
    for (const k of ['stat:Latency p50/A', 'stat:Latency p95/A', 'timeseries:Latency p50 and p95/A',
      'timeseries:Latency p50 and p95/B']) {
      assert.ok(Number.isFinite(one(k)) && one(k) > 0, `${k}: ${one(k)}`);
    }
    const byTier = values['timeseries:Requests by tier, and escalation rate/A'];
    assert.ok(byTier.find((s) => s.labels.tier === 'small').v > 0);
    assert.ok(one('timeseries:Spend and savings (USD per hour)/B') > 0); // saved by cache
    assert.ok(one('timeseries:Spend and savings (USD per hour)/C') > 0); // routing, net
    assert.equal(one('timeseries:Spend and savings (USD per hour)/D'), 0); // routing loss: nothing escalated
    // Every request was admitted (no limits, no budget): one series, admitted.
    const admissions = values['timeseries:Admission decisions (budget, limits)/A'].filter((s) => s.v > 0);
    assert.deepEqual(admissions.map((s) => s.labels.result), ['admitted']);
  });

  test('the exposition is well-formed text (checked without promtool too)', async () => {
    const text = await scrape(gw);
    const { samples, types } = parseExposition(text);
    const seen = new Set();
    for (const s of samples) {
      const family = s.name.replace(/_(bucket|sum|count)$/, '');
      assert.ok(types[s.name] || types[family], `no TYPE for ${s.name}`);
      const id = s.name + JSON.stringify(Object.entries(s.labels).sort());
      assert.ok(!seen.has(id), `twice: ${s.line}`);
      seen.add(id);
      assert.ok(Number.isFinite(s.value) && s.value >= 0, s.line);
    }
    // Histograms: cumulative buckets, +Inf equals _count.
    const buckets = samples.filter((s) => s.name === 'cascade_request_duration_seconds_bucket');
    const groups = new Map();
    for (const b of buckets) {
      const k = `${b.labels.tenant}/${b.labels.tier}`;
      if (!groups.has(k)) groups.set(k, []);
      groups.get(k).push(b);
    }
    for (const [k, bs] of groups) {
      for (let i = 1; i < bs.length; i++) assert.ok(bs[i].value >= bs[i - 1].value, `${k} not cumulative`);
      assert.equal(bs.at(-1).labels.le, '+Inf');
      const [tenant, tierName] = k.split('/');
      assert.equal(bs.at(-1).value, sum(samples, 'cascade_request_duration_seconds_count', { tenant, tier: tierName }));
    }
  });
});

describe('error counters', () => {
  test('upstream errors are counted by replica, Redis errors when Redis fails', async () => {
    const peer = await startPeer({ name: 'errs' });
    const redis = await startRedis();
    const dead = `http://127.0.0.1:${await freePort()}`;
    const config = makeConfig({
      tiers: [tier({ name: 'small', urls: peer.url }), tier({ name: 'broken', model: 'gone', urls: dead })],
      redis: { url: redis.url, timeout_ms: 100 },
    });
    const gw = await startGateway({ config });
    const errs = async () => {
      const { samples } = parseExposition(await scrape(gw));
      return { dead: sum(samples, 'cascade_upstream_errors_total', { replica: dead }),
        live: sum(samples, 'cascade_upstream_errors_total', { replica: peer.url }),
        redis: sum(samples, 'cascade_redis_errors_total') };
    };
    const ask = async (body) => {
      const res = await fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: authHeaders(), body: JSON.stringify(body) });
      await res.text();
      return res.status;
    };
    assert.equal(await ask(chatBody('fine', { model: 'small' })), 200);
    assert.deepEqual(await errs(), { dead: 0, live: 0, redis: 0 });
    assert.equal(await ask(chatBody('boom [[peer:status=500]]', { model: 'small' })), 502);
    assert.equal(await ask(chatBody('nobody home', { model: 'broken' })), 502);
    assert.deepEqual(await errs(), { dead: 1, live: 1, redis: 0 });
    await redis.stop();
    for (let i = 0; i < 3; i++) assert.equal(await ask(chatBody(`no redis ${i}`, { model: 'small', temperature: 0 })), 200);
    assert.ok((await errs()).redis >= 1);
    await gw.stop();
  });
});
