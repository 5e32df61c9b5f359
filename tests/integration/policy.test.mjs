// policy.test.mjs: per-tenant cost policies against a real redis-server.
//
// Rate limits that hold across two gateway processes, budgets that concurrent
// requests cannot overshoot, streams charged from their usage, a client that
// leaves charged for what was generated, spend that survives a Redis restart,
// downgrades, the admin usage API, and a SIGHUP reload.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import {
  ADMIN_TOKEN, authHeaders, chatBody, cleanupAfterAll, makeConfig, sha256hex, startGateway, startPeer, tier,
  TEST_KEY,
} from '../support/harness.mjs';
import { startRedis } from '../support/redis.mjs';

cleanupAfterAll();

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const NANO = 1e9;

function post(gw, body, headers = authHeaders(), signal) {
  return fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers, body: JSON.stringify(body), signal });
}

async function usage(gw, tenant, token = ADMIN_TOKEN) {
  const res = await fetch(`${gw.url}/admin/v1/tenants/${tenant}/usage`, { headers: { authorization: `Bearer ${token}` } });
  return { status: res.status, body: await res.json() };
}

// Prices in USD per 1M tokens; in nano-USD per token they are price * 1000.
const PRICES = { small: { input_per_1m: 10, output_per_1m: 100 }, large: { input_per_1m: 30, output_per_1m: 300 } };

function policyConfig(redis, peer, tenants, extra = {}) {
  return makeConfig({
    tiers: [tier({ name: 'small', urls: peer.url, price: PRICES.small }),
      tier({ name: 'large', model: 'big-model', urls: peer.url, price: PRICES.large })],
    tenants,
    redis: { url: redis.url, timeout_ms: 200 },
    ...extra,
  });
}

function costNano(priceKey, u) {
  const p = PRICES[priceKey];
  return Math.round(u.prompt_tokens * p.input_per_1m * 1000) + Math.round(u.completion_tokens * p.output_per_1m * 1000);
}

describe('policies', () => {
  test('RPM holds across two gateway processes sharing one Redis: exactly 60 of 200 admitted', async () => {
    const redis = await startRedis();
    const peer = await startPeer({ name: 'rpm' });
    const tenants = [{ id: 'rpm', keys: [sha256hex(TEST_KEY)], allowed_tiers: ['small'], limits: { rpm: 60 } }];
    const a = await startGateway({ config: policyConfig(redis, peer, tenants) });
    const b = await startGateway({ config: policyConfig(redis, peer, tenants) });
    const results = [];
    // 200 requests, alternating between the two processes, 20 at a time.
    for (let i = 0; i < 200; i += 20) {
      const batch = Array.from({ length: 20 }, (_, k) => {
        const gw = (i + k) % 2 ? a : b;
        return post(gw, chatBody(`r${i + k}`, { model: 'small' })).then(async (res) => {
          await res.text();
          return res;
        });
      });
      results.push(...(await Promise.all(batch)));
    }
    const ok = results.filter((r) => r.status === 200);
    const limited = results.filter((r) => r.status === 429);
    assert.equal(ok.length, 60);
    assert.equal(limited.length, 140);
    assert.equal((await peer.stats()).requests, 60);
    // OpenAI's headers on both kinds of answer.
    const last = limited.at(-1);
    assert.equal(last.headers.get('x-ratelimit-limit-requests'), '60');
    assert.equal(last.headers.get('x-ratelimit-remaining-requests'), '0');
    assert.match(last.headers.get('x-ratelimit-reset-requests'), /^\d+(\.\d+)?s$/);
    assert.ok(Number(last.headers.get('retry-after')) >= 1);
    assert.equal(ok[0].headers.get('x-ratelimit-limit-requests'), '60');
    await Promise.all([a.stop(), b.stop()]);
    await redis.stop();
  });

  test('budget: 100 concurrent requests cannot overshoot; rejections are 429 budget_exceeded', async () => {
    const redis = await startRedis();
    const peer = await startPeer({ name: 'budget' });
    // Each request reserves (prompt estimate + 10 output tokens) at the small
    // tier's price, about $0.00105; the budget has room for about 10.
    const budget = 0.0105;
    const tenants = [{ id: 'thrifty', keys: [sha256hex(TEST_KEY)], allowed_tiers: ['small'],
      budget: { usd_per_day: budget, on_exhausted: 'reject' } }];
    const gw = await startGateway({ config: policyConfig(redis, peer, tenants) });
    const results = await Promise.all(Array.from({ length: 100 }, (_, i) =>
      post(gw, chatBody(`spend ${i} [[peer:delay_ms=100]]`, { model: 'small', max_tokens: 10 }))
        .then(async (res) => ({ status: res.status, body: await res.json() }))));
    const ok = results.filter((r) => r.status === 200);
    const rejected = results.filter((r) => r.status === 429);
    assert.equal(ok.length + rejected.length, 100);
    assert.ok(ok.length >= 5, `${ok.length} admitted`);
    assert.ok(rejected.length > 0);
    assert.ok(rejected.every((r) => r.body.error.code === 'budget_exceeded'));
    const spent = Number(redis.cli('GET', `cascade:{thrifty}:spend:${new Date().toISOString().slice(0, 10).replace(/-/g, '')}`));
    const expected = ok.reduce((s, r) => s + costNano('small', r.body.usage), 0);
    assert.equal(spent, expected, 'recorded spend is the sum of real costs');
    console.log('budget test:', ok.length, 'admitted', rejected.length, 'rejected, spent', spent, 'of', budget * NANO);
    assert.ok(spent <= budget * NANO, `spent ${spent} > budget ${budget * NANO}`);
    // /metrics tells the budget's refusals apart from other 429s.
    const m = await (await fetch(`${gw.url}/metrics`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).text();
    const admissions = (result) => Number(m.match(new RegExp(`^cascade_admissions_total\\{tenant="thrifty",result="${result}"\\} (\\d+)$`, 'm'))?.[1]);
    assert.equal(admissions('budget'), rejected.length);
    assert.equal(admissions('admitted'), ok.length);
    assert.equal(admissions('requests_limit'), 0);
    await gw.stop();
    await redis.stop();
  });

  test('a streamed request is charged its usage times the price, to the cent', async () => {
    const redis = await startRedis();
    const peer = await startPeer({ name: 'stream' });
    const tenants = [{ id: 'streamer', keys: [sha256hex(TEST_KEY)], allowed_tiers: ['small'] }];
    const gw = await startGateway({ config: policyConfig(redis, peer, tenants) });
    const res = await post(gw, chatBody('count me in please', { model: 'small', stream: true,
      stream_options: { include_usage: true } }));
    const text = await res.text();
    const usageChunk = text.split('\n\n').filter((l) => l.startsWith('data: {'))
      .map((l) => JSON.parse(l.slice(6))).find((c) => c.usage);
    const want = costNano('small', usageChunk.usage);
    const u = await usage(gw, 'streamer');
    assert.equal(u.status, 200);
    assert.equal(Math.round(u.body.today.spend_usd * 100), Math.round(want / NANO * 100)); // to the cent
    const line = await gw.waitForLog((l) => l.msg === 'access' && l.tenant === 'streamer');
    assert.equal(line.cost_nano, want); // and exactly, in nano-USD
    assert.ok(want > 0);
    await gw.stop();
    await redis.stop();
  });

  test('a client that disconnects mid-stream is charged for the generated tokens only', async () => {
    const redis = await startRedis();
    const peer = await startPeer({ name: 'leaver' });
    // Input is free here, so the charge counts output tokens exactly.
    const free = { small: { input_per_1m: 0, output_per_1m: 100 } };
    const config = makeConfig({
      tiers: [tier({ name: 'small', urls: peer.url, price: free.small })],
      tenants: [{ id: 'leaver', keys: [sha256hex(TEST_KEY)], allowed_tiers: ['small'] }],
      redis: { url: redis.url, timeout_ms: 200 },
    });
    const gw = await startGateway({ config });
    const ctrl = new AbortController();
    const res = await post(gw, chatBody('a b c d [[peer:chunk_delay_ms=100]] [[peer:chunks=30]]',
      { model: 'small', stream: true }), authHeaders(), ctrl.signal);
    const reader = res.body.getReader();
    let seen = '';
    while ((seen.match(/"content":"[^"]+"/g) || []).length < 3) seen += new TextDecoder().decode((await reader.read()).value);
    ctrl.abort();
    const line = await gw.waitForLog((l) => l.msg === 'access' && l.tenant === 'leaver');
    assert.equal(line.status, 499);
    const charged = line.cost_nano / (100 * 1000);
    assert.ok(Number.isInteger(charged));
    assert.ok(charged >= 3 && charged < 30, `charged ${charged} tokens`);
    await sleep(200);
    const u = await usage(gw, 'leaver');
    assert.equal(Math.round(u.body.today.spend_usd * NANO), line.cost_nano);
    await gw.stop();
    await redis.stop();
  });

  test('Redis restarted with requests in flight: after the journal replays, spend equals the access log', async () => {
    const redis = await startRedis({ persist: true });
    const peer = await startPeer({ name: 'journal' });
    const tenants = [{ id: 'journaled', keys: [sha256hex(TEST_KEY)], allowed_tiers: ['small'] }];
    const gw = await startGateway({ config: policyConfig(redis, peer, tenants) });
    let stop = false;
    let sent = 0;
    const failures = [];
    const loops = Array.from({ length: 4 }, async (_, k) => {
      while (!stop) {
        const res = await post(gw, chatBody(`j${k}-${sent++} [[peer:delay_ms=50]]`, { model: 'small', stream: sent % 2 === 0 }));
        await res.text();
        if (res.status !== 200) failures.push(res.status);
      }
    });
    await sleep(300);
    await redis.stop();
    await sleep(700);
    await redis.start();
    await sleep(500);
    stop = true;
    await Promise.all(loops);
    assert.deepEqual(failures, []);
    // Wait for the journal to drain into Redis, then compare.
    const day = new Date().toISOString().slice(0, 10).replace(/-/g, '');
    const fromLog = () => gw.logLines().filter((l) => l.msg === 'access' && l.tenant === 'journaled')
      .reduce((s, l) => s + l.cost_nano, 0);
    let spent = -1;
    for (let i = 0; i < 50; i++) {
      spent = Number(redis.cli('GET', `cascade:{journaled}:spend:${day}`) || 0);
      if (spent === fromLog()) break;
      await sleep(100);
    }
    assert.ok(sent > 10);
    assert.equal(spent, fromLog());
    assert.ok(gw.logLines().some((l) => /unavailable/.test(l.msg ?? '')));
    await gw.stop();
    await redis.stop();
  });

  test('downgrade routes to the cheaper tier when the budget is exhausted; reject does not', async () => {
    const redis = await startRedis();
    const peer = await startPeer({ name: 'downgrade' });
    // Room for one large reservation (~0.003 USD) but plenty at the small price.
    const tenants = [
      { id: 'down', keys: [sha256hex(TEST_KEY)], allowed_tiers: ['small', 'large'], default_tier: 'large',
        budget: { usd_per_day: 0.005, on_exhausted: 'downgrade' } },
      { id: 'strict', keys: [sha256hex('sk-strict')], allowed_tiers: ['small', 'large'], default_tier: 'large',
        budget: { usd_per_day: 0.005, on_exhausted: 'reject' } },
    ];
    const gw = await startGateway({ config: policyConfig(redis, peer, tenants) });
    const body = chatBody('expensive thoughts', { model: 'large', max_tokens: 10 });
    const tiers = [];
    for (let i = 0; i < 4; i++) {
      const res = await post(gw, body);
      assert.equal(res.status, 200);
      tiers.push(res.headers.get('x-cascade-tier'));
      await res.text();
    }
    assert.equal(tiers[0], 'large');
    assert.ok(tiers.includes('small'), JSON.stringify(tiers));
    const strict = [];
    for (let i = 0; i < 4; i++) {
      const res = await post(gw, body, authHeaders('sk-strict'));
      strict.push(res.status);
      await res.text();
    }
    assert.equal(strict[0], 200);
    assert.ok(strict.includes(429));
    await gw.stop();
    await redis.stop();
  });

  test('the usage API: admin sees any tenant, a tenant key only its own', async () => {
    const redis = await startRedis();
    const peer = await startPeer({ name: 'usage' });
    const tenants = [
      { id: 'acme', keys: [sha256hex(TEST_KEY)], allowed_tiers: ['small', 'large'],
        budget: { usd_per_day: 5, usd_per_month: 50 }, limits: { rpm: 100, tpm: 100000 } },
      { id: 'beta', keys: [sha256hex('sk-beta')], allowed_tiers: ['small'] },
    ];
    const gw = await startGateway({ config: policyConfig(redis, peer, tenants) });
    // model auto: routed to acme's default tier (small), so it records
    // routing savings against its baseline, the largest allowed tier
    // (README "Savings").
    const res = await post(gw, chatBody('hi there', { model: 'auto' }));
    const answer = await res.json();
    await sleep(100);
    const mine = await usage(gw, 'acme', TEST_KEY);
    assert.equal(mine.status, 200);
    const want = costNano('small', answer.usage) / NANO;
    assert.ok(Math.abs(mine.body.today.spend_usd - want) < 1e-9);
    assert.ok(Math.abs(mine.body.month.spend_usd - want) < 1e-9);
    assert.ok(Math.abs(mine.body.budget.day_remaining_usd - (5 - want)) < 1e-9);
    assert.equal(mine.body.rate_limits.rpm, 100);
    assert.equal(mine.body.rate_limits.requests_last_minute, 1);
    // Routing savings against the largest allowed tier: net, gain and loss.
    const gain = costNano('large', answer.usage) / NANO - want;
    assert.ok(gain > 0);
    for (const period of ['today', 'month']) {
      assert.ok(Math.abs(mine.body[period].saved_routing_usd - gain) < 1e-9, JSON.stringify(mine.body));
      assert.ok(Math.abs(mine.body[period].routing_gain_usd - gain) < 1e-9);
      assert.equal(mine.body[period].routing_loss_usd, 0);
    }
    assert.equal((await usage(gw, 'acme', ADMIN_TOKEN)).status, 200);
    assert.equal((await usage(gw, 'beta', TEST_KEY)).status, 403);
    assert.equal((await usage(gw, 'acme', 'sk-nobody')).status, 401);
    assert.equal((await usage(gw, 'nobody', ADMIN_TOKEN)).status, 404);
    await gw.stop();
    await redis.stop();
  });

  test('SIGHUP reloads policies with no restart and no dropped connection', async () => {
    const redis = await startRedis();
    const peer = await startPeer({ name: 'reload' });
    const tenantsA = [{ id: 'hup', keys: [sha256hex(TEST_KEY)], allowed_tiers: ['small'], limits: { rpm: 1000 } }];
    const config = policyConfig(redis, peer, tenantsA);
    const gw = await startGateway({ config });
    // A stream in flight across the reload.
    const inflight = post(gw, chatBody('slow stream [[peer:chunk_delay_ms=100]] [[peer:chunks=8]]', { model: 'small', stream: true }));
    const res0 = await inflight;
    const reader = res0.body.getReader();
    await reader.read();
    const tenantsB = [{ id: 'hup', keys: [sha256hex(TEST_KEY), sha256hex('sk-new')], allowed_tiers: ['small'],
      limits: { rpm: 1000, max_tokens: 2 } }];
    gw.reload(policyConfig(redis, peer, tenantsB));
    await gw.waitForLog((l) => /configuration reloaded/.test(l.msg ?? ''));
    // The new key works, and the new cap applies to new requests.
    const res = await post(gw, chatBody('one two three four five', { model: 'small' }), authHeaders('sk-new'));
    assert.equal(res.status, 200);
    const j = await res.json();
    assert.equal(j.usage.completion_tokens, 2);
    assert.equal(j.choices[0].finish_reason, 'length');
    // The old stream finished normally.
    let rest = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      rest += new TextDecoder().decode(value);
    }
    assert.match(rest, /\[DONE\]/);
    // A reload that changes what needs a restart is refused, and nothing changes.
    const bad = policyConfig(redis, peer, tenantsB);
    bad.tiers[0].engine.urls = ['http://127.0.0.1:1'];
    gw.reload(bad);
    await gw.waitForLog((l) => /reload refused/.test(l.msg ?? ''));
    assert.equal((await post(gw, chatBody('still', { model: 'small' }), authHeaders('sk-new'))).status, 200);
    await gw.stop();
    await redis.stop();
  });
});
