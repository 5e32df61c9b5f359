// fallback.test.mjs: fallback tiers (issue 15), through the whole gateway
// with real redis-server, real cascaded and scripted peers.
//
// A tier whose replicas all fail (5xx, 429 or a timeout from the peer, or a
// closed port) before any byte reached the client is served by its
// `fallback` tier (never for a 400, nor once bytes were sent), and by that
// tier's fallback in turn; the client sees 200 with x-cascade-tier (the tier
// that answered) and x-cascade-fallback (the tier that failed first). A
// fallback the tenant may not use is never asked. Only the tier that produced
// the answer is charged, and when the whole chain fails the client gets 502,
// 503 or 504 in OpenAI's error format, with the last upstream's Retry-After.
// Admission reserves the costliest tier of the chain (a cascade: the cheap
// leg plus the escalation tier's chain), so a budget that covers only the
// cheap primary is a 429. A fallback's answer is not cached under the tier
// asked for, and a routed request that fell back records no savings.
//
// Peers are named, so a directive such as [[peer@pa:status=503]] fails only
// the peer behind tier "a"; the others answer it normally.
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import {
  ADMIN_TOKEN, SOURCE_DIR, authHeaders, chatBody, cleanupAfterAll, freePort, makeConfig, sha256hex, sseParse,
  startGateway, startPeer, tier,
} from '../support/harness.mjs';
import { startRedis } from '../support/redis.mjs';

cleanupAfterAll();

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const day = () => new Date().toISOString().slice(0, 10).replace(/-/g, '');

// USD per 1M tokens; a token costs price * 1000 nano-USD.
const PRICES = {
  a: { input_per_1m: 1, output_per_1m: 2 },
  b: { input_per_1m: 5, output_per_1m: 10 },
  c: { input_per_1m: 20, output_per_1m: 40 },
  cheap: { input_per_1m: 1, output_per_1m: 1 },
  big: { input_per_1m: 1000, output_per_1m: 1000 },
  zl: { input_per_1m: 10, output_per_1m: 10 },
  // cheaper per token than zl (so zl stays the tenant's top tier, the
  // escalation target), but its output bound makes its worst case $0.25
  bigbound: { input_per_1m: 1, output_per_1m: 5 },
};
const costNano = (p, u) => Math.round(u.prompt_tokens * p.input_per_1m * 1000) +
  Math.round(u.completion_tokens * p.output_per_1m * 1000);

const CLASSIFIER = path.join(SOURCE_DIR, 'classifier', 'models', 'difficulty.cdm');

const KEYS = {
  zone: 'sk-fallback-zone', zone2: 'sk-fallback-zone2', fbcache: 'sk-fallback-cache',
  fbauto: 'sk-fallback-auto', quiet: 'sk-fallback-quiet', zone3: 'sk-fallback-zone3',
  fb: 'sk-fallback-main', narrow: 'sk-fallback-narrow', tight: 'sk-fallback-tight', dead: 'sk-fallback-dead',
};

async function call(gw, body, key) {
  const res = await fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST', headers: authHeaders(key), body: JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    // a stream: parsed below when wanted
  }
  return {
    status: res.status, text, json, headers: res.headers,
    tier: res.headers.get('x-cascade-tier'), fallback: res.headers.get('x-cascade-fallback'),
  };
}

// The OpenAI error shape: {"error":{"message","type","param","code"}}.
function assertOpenAIError(r) {
  assert.ok(r.json && typeof r.json.error === 'object', `not an OpenAI error: ${r.text}`);
  for (const k of ['message', 'type', 'param', 'code']) assert.ok(k in r.json.error, `error.${k} missing: ${r.text}`);
  assert.equal(typeof r.json.error.message, 'string');
  assert.ok(r.json.error.message.length > 0);
}

async function usageApi(gw, tenant) {
  const res = await fetch(`${gw.url}/admin/v1/tenants/${tenant}/usage`, {
    headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
  });
  assert.equal(res.status, 200);
  return res.json();
}

// The content and usage of a stream's text, as a client would assemble it.
function streamed(text) {
  const events = sseParse(text);
  assert.equal(events.at(-1), '[DONE]', `stream did not end with [DONE]:\n${text}`);
  let content = '';
  let usage = null;
  let finish = null;
  for (const e of events) {
    if (e === '[DONE]') continue;
    assert.ok(!e.error, `error event in the stream: ${JSON.stringify(e)}`);
    if (e.usage) usage = e.usage;
    for (const c of e.choices || []) {
      content += c.delta?.content ?? '';
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  return { content, usage, finish };
}

describe('fallback tiers', () => {
  let redis;
  let pa;
  let pb;
  let pc;
  let gw;
  let deadPort;
  let deadPort2;

  before(async () => {
    redis = await startRedis();
    [pa, pb, pc] = await Promise.all([startPeer({ name: 'pa' }), startPeer({ name: 'pb' }), startPeer({ name: 'pc' })]);
    deadPort = await freePort(); // nothing listens: connection refused
    deadPort2 = await freePort();
    // Replicas are never ejected here (eject_after 0): these tests fail the
    // same peer many times on purpose, and ejection is remote_failover's
    // subject, not this file's.
    const noEject = (t) => ({ ...t, engine: { ...t.engine, eject_after: 0 } });
    const tiers = [
      // a -> b -> c, each on its own peer
      tier({ name: 'a', model: 'model-a', urls: pa.url, price: PRICES.a, fallback: 'b', max_output_tokens: 100 }),
      tier({ name: 'b', model: 'model-b', urls: pb.url, price: PRICES.b, fallback: 'c', max_output_tokens: 100 }),
      tier({ name: 'c', model: 'model-c', urls: pc.url, price: PRICES.c, max_output_tokens: 100 }),
      // a's peer behind a short timeout, falling back to c
      tier({ name: 'slow', model: 'model-slow', urls: pa.url, price: PRICES.a, fallback: 'c', timeoutMs: 700,
        chunkTimeoutMs: 700 }),
      // nothing listens behind "dead": its fallback is c; dead2 has none
      tier({ name: 'dead', model: 'model-dead', urls: `http://127.0.0.1:${deadPort}`, price: PRICES.a,
        fallback: 'c', timeoutMs: 2000, chunkTimeoutMs: 1000 }),
      tier({ name: 'deadchain', model: 'model-deadchain', urls: `http://127.0.0.1:${deadPort2}`, price: PRICES.a,
        fallback: 'dead2', timeoutMs: 2000, chunkTimeoutMs: 1000 }),
      tier({ name: 'dead2', model: 'model-dead2', urls: `http://127.0.0.1:${deadPort}`, price: PRICES.a,
        timeoutMs: 2000, chunkTimeoutMs: 1000 }),
      // the budget case: a cheap primary whose fallback is expensive, and
      // the same cheap tier with no fallback as the control
      tier({ name: 'cheapfb', model: 'model-cheapfb', urls: pa.url, price: PRICES.cheap, fallback: 'big',
        max_output_tokens: 100 }),
      tier({ name: 'cheap', model: 'model-cheap', urls: pa.url, price: PRICES.cheap, max_output_tokens: 100 }),
      tier({ name: 'big', model: 'model-big', urls: pc.url, price: PRICES.big, max_output_tokens: 100 }),
      // the cascade: cheap leg "cheap", escalation "zl" whose fallback is "bigbound"
      tier({ name: 'zl', model: 'model-zl', urls: pb.url, price: PRICES.zl, fallback: 'bigbound', max_output_tokens: 100 }),
      tier({ name: 'bigbound', model: 'model-bigbound', urls: pc.url, price: PRICES.bigbound, max_output_tokens: 50000 }),
    ].map(noEject);
    const tenants = [
      { id: 'fb', keys: [sha256hex(KEYS.fb)], allowed_tiers: ['a', 'b', 'c', 'dead', 'slow'], default_tier: 'a',
        cache: { mode: 'off' } },
      { id: 'fbcache', keys: [sha256hex(KEYS.fbcache)], allowed_tiers: ['a', 'b', 'c'], default_tier: 'a' },
      // "auto" routes every request to the cheapest tier, a (quality 0,
      // whatever the prompt scores): a routed request
      { id: 'fbauto', keys: [sha256hex(KEYS.fbauto)], allowed_tiers: ['a', 'b', 'c'], default_tier: 'a',
        routing: { quality: 0 }, cache: { mode: 'off' } },
      // no x-cascade-* headers for this one, fallback or not
      { id: 'quiet', keys: [sha256hex(KEYS.quiet)], allowed_tiers: ['a', 'b', 'c'], default_tier: 'a',
        cache: { mode: 'off' }, expose_headers: false },
      // may use a only: a's fallback b is not for it
      { id: 'narrow', keys: [sha256hex(KEYS.narrow)], allowed_tiers: ['a'], default_tier: 'a',
        cache: { mode: 'off' } },
      // $0.01 a day: the cheap tier's reservation (about $0.0001) fits, the
      // big tier's (100 output tokens at $1000 per 1M = $0.1) does not
      { id: 'tight', keys: [sha256hex(KEYS.tight)], allowed_tiers: ['cheapfb', 'cheap', 'big'], default_tier: 'cheap',
        cache: { mode: 'off' }, budget: { usd_per_day: 0.01, on_exhausted: 'reject' } },
      // the cascade zone with $0.01 a day: the cheap leg plus zl fit, the
      // cheap leg plus zl's fallback "bigbound" do not; zone2 may not use it.
      // For both, zl is the top tier (by price per token): the escalation.
      { id: 'zone', keys: [sha256hex(KEYS.zone)], allowed_tiers: ['cheap', 'zl', 'bigbound'], cache: { mode: 'off' },
        routing: { t_low: 0, t_high: 1, cascade: { enabled: true } }, budget: { usd_per_day: 0.01, on_exhausted: 'reject' } },
      { id: 'zone2', keys: [sha256hex(KEYS.zone2)], allowed_tiers: ['cheap', 'zl'], cache: { mode: 'off' },
        routing: { t_low: 0, t_high: 1, cascade: { enabled: true } }, budget: { usd_per_day: 0.01, on_exhausted: 'reject' } },
      // the cascade zone, no budget, a strict judge: a 7-piece answer escalates to zl
      { id: 'zone3', keys: [sha256hex(KEYS.zone3)], allowed_tiers: ['cheap', 'zl', 'bigbound'], cache: { mode: 'off' },
        routing: { t_low: 0, t_high: 1, cascade: { enabled: true, min_mean_logprob: -0.05 } } },
      { id: 'dead', keys: [sha256hex(KEYS.dead)], allowed_tiers: ['deadchain', 'dead2'], default_tier: 'deadchain',
        cache: { mode: 'off' } },
    ];
    gw = await startGateway({ config: makeConfig({ tiers, tenants, redis: { url: redis.url, timeout_ms: 500 },
      classifier: { model: CLASSIFIER } }) });
  });
  after(async () => {
    await gw?.stop();
    await redis?.stop();
  });

  test('tier a fails with 503: tier b answers, and the headers say so', async () => {
    await Promise.all([pa.reset(), pb.reset(), pc.reset()]);
    const r = await call(gw, chatBody('fall over once [[peer@pa:status=503]]', { model: 'a' }), KEYS.fb);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.tier, 'b');
    assert.equal(r.fallback, 'a');
    assert.equal(r.json.choices[0].message.content, 'echo: fall over once');
    assert.equal((await pa.stats()).requests, 1, 'tier a was asked once (one replica)');
    assert.equal((await pb.stats()).requests, 1, 'tier b answered');
    assert.equal((await pc.stats()).requests, 0, 'c was not needed');
    // b's peer got b's model, not a's, and the answer names b's model
    assert.equal((await pb.stats()).last_request.model, 'model-b');
    assert.equal(r.json.model, 'model-b');
    assert.match(r.json.id, /^chatcmpl-/);
    assert.ok(!r.json.id.includes('peer'), `the gateway's own id, not the upstream's: ${r.json.id}`);
  });

  test('the client\'s trace continues through the failed tier and its fallback', async () => {
    await Promise.all([pa.reset(), pb.reset()]);
    const traceId = '0af7651916cd43dd8448eb211c80319c';
    const res = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { ...authHeaders(KEYS.fb), traceparent: `00-${traceId}-b7ad6b7169203331-01` },
      body: JSON.stringify(chatBody('traced fallback [[peer@pa:status=503]]', { model: 'a' })),
    });
    assert.equal(res.status, 200, await res.text());
    for (const p of [pa, pb]) {
      const tp = (await p.stats()).last_headers.traceparent;
      assert.match(tp || '', new RegExp(`^00-${traceId}-[0-9a-f]{16}-[0-9a-f]{2}$`), `${p.name} got ${tp}`);
    }
  });

  test('an upstream 429 or a timeout falls back too; a 400 (the client\'s own mistake) does not', async () => {
    await Promise.all([pa.reset(), pb.reset(), pc.reset()]);
    const limited = await call(gw, chatBody('too many [[peer@pa:status=429]]', { model: 'a' }), KEYS.fb);
    assert.equal(limited.status, 200, limited.text);
    assert.deepEqual([limited.tier, limited.fallback], ['b', 'a']);
    const t0 = Date.now();
    const hung = await call(gw, chatBody('never answers [[peer@pa:hang]]', { model: 'slow' }), KEYS.fb);
    const ms = Date.now() - t0;
    assert.equal(hung.status, 200, hung.text);
    assert.deepEqual([hung.tier, hung.fallback], ['c', 'slow']);
    assert.ok(ms < 5000, `the timeout (700 ms) then c: ${ms} ms`);
    await Promise.all([pb.reset(), pc.reset()]);
    const bad = await call(gw, chatBody('malformed for the upstream [[peer@pa:status=400]]', { model: 'a' }), KEYS.fb);
    assert.equal(bad.status, 400, bad.text);
    assertOpenAIError(bad);
    assert.equal(bad.fallback, null);
    assert.equal((await pb.stats()).requests, 0, 'a 400 is not retried on the fallback');
  });

  test('a request that needs no fallback carries no x-cascade-fallback', async () => {
    const r = await call(gw, chatBody('all is well', { model: 'a' }), KEYS.fb);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.tier, 'a');
    assert.equal(r.fallback, null);
  });

  test('a chain of two fallbacks: a and b fail, c answers; x-cascade-fallback names a', async () => {
    await Promise.all([pa.reset(), pb.reset(), pc.reset()]);
    const r = await call(gw, chatBody('down the chain [[peer@pa:status=500]] [[peer@pb:status=502]]', { model: 'a' }),
      KEYS.fb);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.tier, 'c');
    assert.equal(r.fallback, 'a');
    assert.equal(r.json.choices[0].message.content, 'echo: down the chain');
    const [sa, sb, sc] = await Promise.all([pa.stats(), pb.stats(), pc.stats()]);
    assert.deepEqual([sa.requests, sb.requests, sc.requests], [1, 1, 1]);
    assert.equal(sc.last_request.model, 'model-c');
  });

  test('streaming: the fallback answers a stream when the primary fails before any byte', async () => {
    await Promise.all([pa.reset(), pb.reset(), pc.reset()]);
    const r = await call(gw, chatBody('stream it elsewhere [[peer@pa:status=500]]', {
      model: 'a', stream: true, stream_options: { include_usage: true },
    }), KEYS.fb);
    assert.equal(r.status, 200, r.text);
    assert.match(r.headers.get('content-type') || '', /text\/event-stream/);
    assert.equal(r.tier, 'b');
    assert.equal(r.fallback, 'a');
    const s = streamed(r.text);
    assert.equal(s.content, 'echo: stream it elsewhere');
    const chunks = sseParse(r.text).filter((e) => e !== '[DONE]');
    assert.deepEqual([...new Set(chunks.map((c) => c.model))], ['model-b'], 'every chunk names the tier that answered');
    assert.equal(s.finish, 'stop');
    assert.ok(s.usage, 'usage chunk');
    assert.equal((await pb.stats()).last_request.stream, true);
  });

  test('a closed port: the dead tier falls back to c, streamed and not', async () => {
    const r = await call(gw, chatBody('nobody home', { model: 'dead' }), KEYS.fb);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.tier, 'c');
    assert.equal(r.fallback, 'dead');
    const s = await call(gw, chatBody('nobody home, streamed', { model: 'dead', stream: true }), KEYS.fb);
    assert.equal(s.status, 200, s.text);
    assert.equal(s.tier, 'c');
    assert.equal(s.fallback, 'dead');
    assert.equal(streamed(s.text).content, 'echo: nobody home, streamed');
  });

  test('a fallback the tenant may not use is never asked: 5xx, and b sees nothing', async () => {
    await Promise.all([pa.reset(), pb.reset(), pc.reset()]);
    for (const stream of [false, true]) {
      const r = await call(gw, chatBody(`not for you ${stream} [[peer@pa:status=503]]`, { model: 'a', stream }),
        KEYS.narrow);
      assert.ok([502, 503, 504].includes(r.status), `stream=${stream}: ${r.status} ${r.text}`);
      assertOpenAIError(r);
      assert.equal(r.fallback, null);
    }
    assert.equal((await pb.stats()).requests, 0, 'the fallback b is not allowed for this tenant');
    assert.equal((await pc.stats()).requests, 0);
  });

  test('the whole chain fails: 502/503/504 in OpenAI error format, streamed and not', async () => {
    await Promise.all([pa.reset(), pb.reset(), pc.reset()]);
    const all = '[[peer@pa:status=500]] [[peer@pb:status=503]] [[peer@pc:status=502]]';
    for (const stream of [false, true]) {
      const r = await call(gw, chatBody(`doomed ${stream} ${all}`, { model: 'a', stream }), KEYS.fb);
      assert.ok([502, 503, 504].includes(r.status), `stream=${stream}: ${r.status} ${r.text}`);
      assertOpenAIError(r);
    }
    const [sa, sb, sc] = await Promise.all([pa.stats(), pb.stats(), pc.stats()]);
    // each tier of the chain asked once per request (one replica each, no retry)
    assert.deepEqual([sa.requests, sb.requests, sc.requests], [2, 2, 2]);
    // closed ports all the way: deadchain -> dead2
    for (const stream of [false, true]) {
      const r = await call(gw, chatBody(`no one at all ${stream}`, { model: 'deadchain', stream }), KEYS.dead);
      assert.ok([502, 503, 504].includes(r.status), `stream=${stream}: ${r.status} ${r.text}`);
      assertOpenAIError(r);
    }
  });

  test('the client gets the last tier\'s error: 503 from the end of the chain is a 503', async () => {
    const r = await call(gw, chatBody('last word [[peer@pa:status=503]] [[peer@pa:retry_after=100]] ' +
      '[[peer@pb:status=500]] [[peer@pc:status=503]] [[peer@pc:retry_after=9]]', { model: 'a' }), KEYS.fb);
    assert.equal(r.status, 503, r.text);
    assertOpenAIError(r);
    // and the last upstream's Retry-After, not the first's
    assert.equal(r.headers.get('retry-after'), '9');
    // and a closed port at the end of the chain: 502
    const d = await call(gw, chatBody('nobody at the end', { model: 'deadchain' }), KEYS.dead);
    assert.equal(d.status, 502, d.text);
    assertOpenAIError(d);
  });

  test('a stream that already sent bytes never falls back: the client gets the error in the stream', async () => {
    await Promise.all([pa.reset(), pb.reset(), pc.reset()]);
    const r = await call(gw, chatBody('w1 w2 w3 w4 w5 w6 w7 [[peer@pa:close_after=3]]', { model: 'a', stream: true }),
      KEYS.fb);
    assert.equal(r.status, 200);
    assert.equal(r.tier, 'a');
    assert.equal(r.fallback, null);
    const events = sseParse(r.text).filter((e) => e !== '[DONE]');
    const text = events.map((e) => e.choices?.[0]?.delta?.content ?? '').join('');
    assert.ok(text.startsWith('echo: w1'), `what reached the client: ${JSON.stringify(text)}`);
    assert.ok(events.some((e) => e.error), `an error event ends the stream:\n${r.text}`);
    assert.equal((await pb.stats()).requests, 0, 'no fallback after bytes reached the client');
    assert.equal((await pc.stats()).requests, 0);
  });

  test('a fallback\'s answer is not cached under the tier the client asked for', async () => {
    await Promise.all([pa.reset(), pb.reset(), pc.reset()]);
    const body = chatBody('cache the right tier', { model: 'a', temperature: 0 });
    await pa.script({ directives: { status: '503' }, count: 1 }); // a fails once, then recovers
    const first = await call(gw, body, KEYS.fbcache);
    assert.equal(first.status, 200, first.text);
    assert.equal(first.tier, 'b');
    assert.equal(first.headers.get('x-cascade-cache'), 'miss');
    // a is back: the same request is answered by a, not replayed from b
    const second = await call(gw, body, KEYS.fbcache);
    assert.equal(second.status, 200, second.text);
    assert.equal(second.tier, 'a');
    assert.equal(second.fallback, null);
    assert.equal(second.headers.get('x-cascade-cache'), 'miss');
    assert.equal(second.json.model, 'model-a');
    // and a's own answer is what the cache keeps
    const third = await call(gw, body, KEYS.fbcache);
    assert.equal(third.headers.get('x-cascade-cache'), 'hit');
    assert.equal(third.json.model, 'model-a');
    assert.deepEqual([(await pa.stats()).requests, (await pb.stats()).requests], [2, 1]);
  });

  test('a routed ("auto") request that fell back records no routing savings', async () => {
    const accessOf = () => gw.logLines().filter((l) => l.msg === 'access' && l.tenant === 'fbauto');
    let from = accessOf().length;
    // control: routed to a, cheaper than the baseline (c): savings recorded
    const ok = await call(gw, chatBody('routed and fine', { model: 'auto' }), KEYS.fbauto);
    assert.equal(ok.status, 200, ok.text);
    assert.equal(ok.tier, 'a');
    await gw.waitForLog(() => accessOf().length > from, 5000);
    assert.ok(accessOf().at(-1).saved_nano > 0, JSON.stringify(accessOf().at(-1)));
    from = accessOf().length;
    const fell = await call(gw, chatBody('routed then fell [[peer@pa:status=503]]', { model: 'auto' }), KEYS.fbauto);
    assert.equal(fell.status, 200, fell.text);
    assert.equal(fell.tier, 'b');
    await gw.waitForLog(() => accessOf().length > from, 5000);
    const line = accessOf().at(-1);
    assert.equal(line.fallback, 'a');
    assert.equal(line.saved_nano, 0, `a request that fell back saves nothing: ${JSON.stringify(line)}`);
    assert.equal(line.cost_nano, costNano(PRICES.b, fell.json.usage));
  });

  test('with expose_headers false a fallback still answers, without x-cascade-* headers', async () => {
    const r = await call(gw, chatBody('quietly elsewhere [[peer@pa:status=503]]', { model: 'a' }), KEYS.quiet);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.model, 'model-b');
    // x-cascade-max-tokens is sent whatever expose_headers says (chat.c:
    // it is about the client's own parameter); nothing else may show
    const leaked = [...r.headers.keys()].filter((k) => k.startsWith('x-cascade-') && k !== 'x-cascade-max-tokens');
    assert.deepEqual(leaked, []);
  });

  test('only the tier that answered is charged: spend is the fallback tier\'s cost of the peer\'s usage', async () => {
    // a fresh tenant's spend: what the tests above charged "fb" so far,
    // taken from the usage API, then two more fallbacks and a total failure
    const before = (await usageApi(gw, 'fb')).today.spend_usd;
    const accessFb = () => gw.logLines().filter((l) => l.msg === 'access' && l.tenant === 'fb');
    const linesBefore = accessFb().length;
    const one = await call(gw, chatBody('charge b only [[peer@pa:status=500]]', { model: 'a' }), KEYS.fb);
    assert.equal(one.status, 200, one.text);
    assert.equal(one.tier, 'b');
    const two = await call(gw, chatBody('charge c only please [[peer@pa:status=500]] [[peer@pb:status=500]]', {
      model: 'a', stream: true, stream_options: { include_usage: true },
    }), KEYS.fb);
    assert.equal(two.status, 200, two.text);
    assert.equal(two.tier, 'c');
    const twoUsage = streamed(two.text).usage;
    const failed = await call(gw, chatBody('charge nobody [[peer@pa:status=500]] [[peer@pb:status=500]] ' +
      '[[peer@pc:status=500]]', { model: 'a' }), KEYS.fb);
    assert.ok(failed.status >= 500, failed.text);
    const want = costNano(PRICES.b, one.json.usage) + costNano(PRICES.c, twoUsage);
    let after;
    for (let i = 0; i < 50; i++) {
      after = (await usageApi(gw, 'fb')).today.spend_usd;
      if (Math.abs(after - before - want / 1e9) < 1e-12) break;
      await sleep(50);
    }
    assert.ok(Math.abs(after - before - want / 1e9) < 1e-12,
      `spend grew by ${((after - before) * 1e9).toFixed(0)} nano-USD, want ${want} (b's and c's cost only)`);
    // the access log says the same, line by line, and the failed request cost 0
    // (the log is written by a background thread: wait for all three lines)
    await gw.waitForLog(() => accessFb().length >= linesBefore + 3, 5000);
    const lines = accessFb().slice(linesBefore);
    assert.deepEqual(lines.map((l) => l.cost_nano), [costNano(PRICES.b, one.json.usage), costNano(PRICES.c, twoUsage), 0],
      JSON.stringify(lines));
    assert.deepEqual(lines.map((l) => l.tier), ['b', 'c', lines[2].tier]);
    assert.equal(lines[0].fallback, 'a', `the access log names the failed tier: ${JSON.stringify(lines[0])}`);
    assert.equal(lines[1].fallback, 'a', JSON.stringify(lines[1]));
    // spend in Redis is the same integer
    await sleep(100);
    assert.match(redis.cli('GET', `cascade:{fb}:spend:${day()}`), /^\d+$/);
  });

  test('admission reserves the costliest tier of the chain: a budget for the cheap tier only is a 429', async () => {
    await Promise.all([pa.reset(), pc.reset()]);
    // control: the cheap tier alone fits the budget
    const ok = await call(gw, chatBody('cheap and cheerful', { model: 'cheap' }), KEYS.tight);
    assert.equal(ok.status, 200, ok.text);
    // the same request to the cheap tier whose fallback is "big": refused
    // before anything reaches an upstream, though the primary would be fine
    for (const stream of [false, true]) {
      const r = await call(gw, chatBody('cheap and cheerful', { model: 'cheapfb', stream }), KEYS.tight);
      assert.equal(r.status, 429, `stream=${stream}: ${r.text}`);
      assertOpenAIError(r);
      assert.equal(r.json.error.code, 'budget_exceeded');
    }
    assert.equal((await pa.stats()).requests, 1, 'only the control reached an upstream');
    assert.equal((await pc.stats()).requests, 0);
  });

  test('a cascade reserves its cheap leg plus the costliest tier of the escalation\'s chain', async () => {
    await Promise.all([pa.reset(), pb.reset(), pc.reset()]);
    // zone2 may not use "bigbound": the cheap leg plus zl fit its budget
    const ok = await call(gw, chatBody('route me', { model: 'auto' }), KEYS.zone2);
    assert.equal(ok.status, 200, ok.text);
    // it was a cascade: the cheap tier answered first, asked for logprobs
    assert.equal(ok.tier, 'cheap');
    assert.equal((await pa.stats()).last_request.logprobs, true);
    // zone may: zl's fallback "bigbound" (50000 tokens at $5 per 1M) is reserved too
    const r = await call(gw, chatBody('route me', { model: 'auto' }), KEYS.zone);
    assert.equal(r.status, 429, r.text);
    assertOpenAIError(r);
    assert.equal(r.json.error.code, 'budget_exceeded');
    assert.equal((await pc.stats()).requests, 0);
  });

  test('a cascade whose escalation tier fails is answered by that tier\'s fallback, and pays for both calls', async () => {
    for (const stream of [false, true]) {
      await Promise.all([pa.reset(), pb.reset(), pc.reset()]);
      const from = gw.logLines().filter((l) => l.msg === 'access' && l.tenant === 'zone3').length;
      const r = await call(gw, chatBody('one two three four five six [[peer@pb:status=503]]', {
        model: 'auto', stream, ...(stream ? { stream_options: { include_usage: true } } : {}),
      }), KEYS.zone3);
      assert.equal(r.status, 200, r.text);
      assert.equal(r.headers.get('x-cascade-escalated'), 'true');
      assert.equal(r.tier, 'bigbound');
      assert.equal(r.fallback, 'zl');
      const usage = stream ? streamed(r.text).usage : r.json.usage;
      assert.equal(stream ? streamed(r.text).content : r.json.choices[0].message.content,
        'echo: one two three four five six');
      const [sa, sb, sc] = await Promise.all([pa.stats(), pb.stats(), pc.stats()]);
      assert.deepEqual([sa.requests, sb.requests, sc.requests], [1, 1, 1], 'cheap leg, failed escalation, its fallback');
      await gw.waitForLog(() => gw.logLines().filter((l) => l.msg === 'access' && l.tenant === 'zone3').length > from, 5000);
      const line = gw.logLines().filter((l) => l.msg === 'access' && l.tenant === 'zone3').at(-1);
      assert.equal(line.escalated, true);
      assert.equal(line.fallback, 'zl');
      // the peers count the same usage for the cheap call and the answer
      assert.equal(line.cost_nano, costNano(PRICES.cheap, usage) + costNano(PRICES.bigbound, usage), JSON.stringify(line));
    }
  });

  test('SIGTERM: the gateway exits 0 (under ASan: no leak or memory error on these paths)', async () => {
    const r = await gw.stop('SIGTERM', 15000);
    assert.deepEqual(r, { code: 0, signal: null }, gw.logs().slice(-4000));
  });
});

describe('single-flight and fallback', () => {
  // Identical concurrent requests share one engine call (the cache's
  // single-flight). When that call's tier fails and its fallback answers,
  // the waiting requests get the fallback's answer too, rather than each
  // asking the failed tier again.
  test('waiters get the leader\'s fallback answer: one call to the failed tier, one to its fallback', async () => {
    const [pa, pb] = await Promise.all([startPeer({ name: 'sfa' }), startPeer({ name: 'sfb' })]);
    const noEject = (t) => ({ ...t, engine: { ...t.engine, eject_after: 0 } });
    const gw = await startGateway({
      config: makeConfig({
        tiers: [
          noEject(tier({ name: 'a', model: 'ma', urls: pa.url, price: { input_per_1m: 1, output_per_1m: 1 }, fallback: 'b' })),
          noEject(tier({ name: 'b', model: 'mb', urls: pb.url, price: { input_per_1m: 2, output_per_1m: 2 } })),
        ],
        tenants: [{ id: 'sf', keys: [sha256hex('sk-sf')], allowed_tiers: ['a', 'b'] }],
      }),
    });
    try {
      // a fails once, slowly, so the other two requests join its flight
      await pa.script({ directives: { status: '503', delay_ms: '300' }, count: 1 });
      const body = JSON.stringify({ model: 'a', temperature: 0, messages: [{ role: 'user', content: 'flight and fall' }] });
      const rs = await Promise.all([0, 1, 2].map(() => fetch(`${gw.url}/v1/chat/completions`, {
        method: 'POST', headers: authHeaders('sk-sf'), body,
      })));
      const bodies = await Promise.all(rs.map((r) => r.json()));
      for (const [i, r] of rs.entries()) assert.equal(r.status, 200, JSON.stringify(bodies[i]));
      const contents = bodies.map((b) => b.choices[0].message.content);
      assert.equal(new Set(contents).size, 1, `different answers: ${JSON.stringify(contents)}`);
      assert.equal((await pa.stats()).requests, 1, 'the failed tier was asked more than once');
      assert.equal((await pb.stats()).requests, 1, 'the fallback was asked more than once');
      // and nothing was cached under tier a's key: the next request asks a again
      await call(gw, { model: 'a', temperature: 0, messages: [{ role: 'user', content: 'flight and fall' }] }, 'sk-sf');
      assert.equal((await pa.stats()).requests, 2);
    } finally {
      await gw.stop();
      await pa.stop();
      await pb.stop();
    }
  });
});
