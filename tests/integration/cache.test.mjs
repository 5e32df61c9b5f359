// cache.test.mjs: the response cache against a real redis-server.
//
// Hits and misses as a client sees them (x-cascade-cache), what makes two
// requests the same, tenant isolation, stream replay read by the official
// openai client, single-flight counted at the upstream, and fail-open while
// Redis is down.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';

import {
  authHeaders, chatBody, cleanupAfterAll, makeConfig, sha256hex, startGateway, startPeer, tier, TEST_KEY,
} from '../support/harness.mjs';
import { startRedis } from '../support/redis.mjs';

cleanupAfterAll();

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function post(gw, body, headers = authHeaders()) {
  return fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST', headers, body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

async function ask(gw, body, headers) {
  const res = await post(gw, body, headers);
  const text = await res.text();
  return { status: res.status, cache: res.headers.get('x-cascade-cache'), text, json: res.ok && !body.stream ? JSON.parse(text) : null };
}

// Deterministic by default: temperature 0.
const det = (text, extra = {}) => chatBody(text, { model: 'small', temperature: 0, ...extra });

describe('redis cache', () => {
  let redis;
  let peer;
  let gw;
  before(async () => {
    redis = await startRedis();
    peer = await startPeer({ name: 'cache' });
    const config = makeConfig({
      tiers: [tier({ name: 'small', urls: peer.url }), tier({ name: 'large', model: 'big-model', urls: peer.url })],
      tenants: [
        { id: 'acme', keys: [sha256hex(TEST_KEY)], allowed_tiers: ['small', 'large'], default_tier: 'small' },
        { id: 'beta', keys: [sha256hex('sk-beta')], allowed_tiers: ['small'], cache: { mode: 'deterministic', ttl_s: 1 } },
        { id: 'gamma', keys: [sha256hex('sk-gamma')], allowed_tiers: ['small'], cache: { mode: 'always' } },
        { id: 'delta', keys: [sha256hex('sk-delta')], allowed_tiers: ['small'], cache: { mode: 'off' } },
      ],
      redis: { url: redis.url, timeout_ms: 200 },
    });
    gw = await startGateway({ config });
  });
  after(async () => redis?.stop());

  test('miss, then hit: same answer, fresh id, no second engine call', async () => {
    await peer.reset();
    const a = await ask(gw, det('cache me once'));
    assert.equal(a.status, 200);
    assert.equal(a.cache, 'miss');
    const b = await ask(gw, det('cache me once'));
    assert.equal(b.status, 200);
    assert.equal(b.cache, 'hit');
    assert.equal(b.json.choices[0].message.content, a.json.choices[0].message.content);
    assert.deepEqual(b.json.usage, a.json.usage);
    assert.notEqual(b.json.id, a.json.id);
    assert.equal(b.json.object, 'chat.completion');
    assert.equal((await peer.stats()).requests, 1);
    // The entry is where DESIGN.md says, with a TTL.
    const keys = redis.cli('--scan', '--pattern', 'cascade:{acme}:resp:*').split('\n').filter(Boolean);
    assert.ok(keys.length >= 1);
    assert.match(keys[0], /^cascade:\{acme\}:resp:[0-9a-f]{64}$/);
    const ttl = Number(redis.cli('TTL', keys[0]));
    assert.ok(ttl > 3000 && ttl <= 3600, `ttl ${ttl}`);
  });

  test('key order and whitespace do not matter', async () => {
    await ask(gw, det('order test', { max_tokens: 30, seed: 5 }));
    const reordered = `{ "seed" : 5, "max_tokens":30,
      "messages": [ {"content": "order test", "role": "user"} ], "temperature": 0.0, "model": "small" }`;
    const r = await ask(gw, reordered);
    assert.equal(r.cache, 'hit');
  });

  test('any changed field that changes the output misses', async () => {
    const baseBody = det('vary me', { max_tokens: 40, top_p: 1 });
    assert.equal((await ask(gw, baseBody)).cache, 'miss');
    assert.equal((await ask(gw, baseBody)).cache, 'hit');
    const variants = [
      { ...baseBody, max_tokens: 41 },
      { ...baseBody, top_p: 0.5 },
      { ...baseBody, stop: ['x'] },
      { ...baseBody, seed: 1 },
      { ...baseBody, logprobs: true },
      { ...baseBody, messages: [{ role: 'user', content: 'vary me!' }] },
      { ...baseBody, messages: [{ role: 'system', content: 's' }, { role: 'user', content: 'vary me' }] },
      { ...baseBody, model: 'large' },
      { ...baseBody, model: 'auto' },
      { ...baseBody, response_format: { type: 'json_object' } },
      { ...baseBody, tools: [{ type: 'function', function: { name: 'f', parameters: {} } }] },
    ];
    for (const v of variants) assert.equal((await ask(gw, v)).cache, 'miss', JSON.stringify(v));
    // A model id and its tier name are the same route.
    assert.equal((await ask(gw, { ...baseBody, model: 'deepseek-coder-1.3b' })).cache, 'hit');
  });

  test('tenant B never receives tenant A\'s entry', async () => {
    await peer.reset();
    const body = det('secret of acme');
    assert.equal((await ask(gw, body)).cache, 'miss');
    assert.equal((await ask(gw, body)).cache, 'hit');
    const b = await ask(gw, body, authHeaders('sk-beta'));
    assert.equal(b.cache, 'miss');
    assert.equal((await peer.stats()).requests, 2);
  });

  test('an entry tampered with in Redis is refused and answered fresh, never replayed', async () => {
    // Redis is shared: anything that reaches it can write an entry. Each of
    // these must be refused whole (cache/entry.c), answered by the engine,
    // charged as a miss, and replaced by a good entry.
    const body = det('tamper with me');
    const before = new Set(redis.cli('--scan', '--pattern', 'cascade:{acme}:resp:*').split('\n').filter(Boolean));
    const first = await ask(gw, body);
    assert.equal(first.cache, 'miss');
    const key = redis.cli('--scan', '--pattern', 'cascade:{acme}:resp:*').split('\n').filter(Boolean)
      .find((k) => !before.has(k));
    assert.ok(key, 'the entry was stored');
    const good = JSON.parse(redis.cli('GET', key));
    const bad = {
      'negative tokens': { ...good, usage: { prompt_tokens: 5, completion_tokens: -5 } },
      'huge tokens': { ...good, usage: { prompt_tokens: 5, completion_tokens: 1e18 } },
      'content not a string': { ...good, content: 123 },
      'logprobs not a list': { ...good, logprobs: 'x' },
      'finish reason not a word': { ...good, finish_reason: 'stop"}]}' },
      'not JSON': '{"content": "cut',
    };
    for (const [what, entry] of Object.entries(bad)) {
      await peer.reset();
      redis.cli('SET', key, typeof entry === 'string' ? entry : JSON.stringify(entry));
      const r = await ask(gw, body);
      assert.equal(r.status, 200, what);
      assert.equal(r.cache, 'miss', `${what}: answered from the engine`);
      assert.deepEqual(r.json.usage, first.json.usage, what);
      assert.equal((await peer.stats()).requests, 1, what);
      assert.deepEqual(JSON.parse(redis.cli('GET', key)).usage, good.usage, `${what}: a good entry replaced it`);
    }
    assert.equal((await ask(gw, body)).cache, 'hit');
  });

  test('entries expire with the tenant TTL', async () => {
    const body = det('short lived');
    assert.equal((await ask(gw, body, authHeaders('sk-beta'))).cache, 'miss');
    assert.equal((await ask(gw, body, authHeaders('sk-beta'))).cache, 'hit');
    await sleep(2100);
    assert.equal((await ask(gw, body, authHeaders('sk-beta'))).cache, 'miss');
  });

  test('cacheability: deterministic only by default; modes always and off; client opt-outs', async () => {
    const warm = chatBody('warm', { model: 'small', temperature: 0.7 });
    assert.equal((await ask(gw, warm)).cache, 'bypass');
    assert.equal((await ask(gw, warm)).cache, 'bypass');
    const seeded = chatBody('seeded', { model: 'small', temperature: 0.7, seed: 3 });
    assert.equal((await ask(gw, seeded)).cache, 'miss');
    assert.equal((await ask(gw, seeded)).cache, 'hit');
    assert.equal((await ask(gw, warm, authHeaders('sk-gamma'))).cache, 'miss');
    assert.equal((await ask(gw, warm, authHeaders('sk-gamma'))).cache, 'hit');
    assert.equal((await ask(gw, det('off'), authHeaders('sk-delta'))).cache, 'bypass');
    assert.equal((await ask(gw, det('off'), authHeaders('sk-delta'))).cache, 'bypass');
    // Client headers.
    const body = det('client says');
    assert.equal((await ask(gw, body)).cache, 'miss');
    assert.equal((await ask(gw, body, { ...authHeaders(), 'cache-control': 'no-store' })).cache, 'bypass');
    assert.equal((await ask(gw, body, { ...authHeaders(), 'x-cascade-cache': 'bypass' })).cache, 'bypass');
    await peer.reset();
    assert.equal((await ask(gw, body, { ...authHeaders(), 'x-cascade-cache': 'refresh' })).cache, 'miss');
    assert.equal((await ask(gw, body, { ...authHeaders(), 'cache-control': 'no-cache' })).cache, 'miss');
    assert.equal((await peer.stats()).requests, 2);
    assert.equal((await ask(gw, body)).cache, 'hit');
  });

  test('errors are never cached', async () => {
    await peer.reset();
    const body = det('fail [[peer:status=500]]');
    assert.equal((await ask(gw, body)).status, 502);
    assert.equal((await ask(gw, body)).status, 502);
    assert.equal((await peer.stats()).requests, 2);
  });

  test('a stream replayed from the cache carries the same content, read by the openai client', async () => {
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: TEST_KEY, maxRetries: 0 });
    const params = {
      model: 'small', temperature: 0, stream: true, stream_options: { include_usage: true },
      messages: [{ role: 'user', content: 'stream me please, twice' }],
    };
    const read = async () => {
      const { data: stream, response } = await client.chat.completions.create(params).withResponse();
      let text = '';
      let usage = null;
      let finish = null;
      for await (const chunk of stream) {
        text += chunk.choices[0]?.delta?.content ?? '';
        finish = chunk.choices[0]?.finish_reason ?? finish;
        if (chunk.usage) usage = chunk.usage;
      }
      return { text, usage, finish, cache: response.headers.get('x-cascade-cache') };
    };
    const first = await read();
    const second = await read();
    assert.equal(first.cache, 'miss');
    assert.equal(second.cache, 'hit');
    assert.equal(second.text, first.text);
    assert.ok(first.text.length > 0);
    assert.equal(second.finish, first.finish);
    assert.deepEqual(second.usage, first.usage);
    // A stream's entry also answers the same request without streaming.
    const nonStream = await client.chat.completions.create({ ...params, stream: false, stream_options: undefined });
    assert.equal(nonStream.choices[0].message.content, first.text);
  });

  test('logprobs survive the cache, stream and not', async () => {
    const body = det('with logprobs', { logprobs: true, top_logprobs: 2 });
    const a = await ask(gw, body);
    const b = await ask(gw, body);
    assert.equal(b.cache, 'hit');
    assert.deepEqual(b.json.choices[0].logprobs, a.json.choices[0].logprobs);
    assert.ok(a.json.choices[0].logprobs.content.length > 0);
  });

  test('20 concurrent identical misses make exactly 1 engine call', async () => {
    await peer.reset();
    const body = det('stampede [[peer:delay_ms=400]]');
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) =>
      ask(gw, i % 2 ? { ...body, stream: true } : body)));
    assert.ok(results.every((r) => r.status === 200), JSON.stringify(results.map((r) => r.status)));
    assert.equal((await peer.stats()).requests, 1);
    assert.equal(results.filter((r) => r.cache === 'miss').length, 1);
    const contents = new Set(results.filter((r) => r.json).map((r) => r.json.choices[0].message.content));
    assert.equal(contents.size, 1);
  });

  test('a waiter whose leader fails goes to the engine itself', async () => {
    await peer.reset();
    // The leader's request fails upstream; the waiters must still be served.
    await peer.script({ directives: { status: 500, delay_ms: 300 }, count: 1 });
    const body = det('leader fails');
    const results = await Promise.all(Array.from({ length: 5 }, () => ask(gw, body)));
    const statuses = results.map((r) => r.status).sort();
    assert.equal(statuses.filter((s) => s === 502).length, 1, JSON.stringify(statuses));
    assert.equal(statuses.filter((s) => s === 200).length, 4);
  });

  test('Redis killed under steady traffic: no failed request; hits resume when it returns', async () => {
    const body = det('survive redis');
    assert.equal((await ask(gw, body)).cache, 'miss');
    assert.equal((await ask(gw, body)).cache, 'hit');
    let stop = false;
    const failures = [];
    const seen = new Set();
    let sent = 0;
    const traffic = (async () => {
      while (!stop) {
        const r = await ask(gw, sent % 3 ? body : { ...body, stream: true });
        sent++;
        seen.add(r.cache);
        if (r.status !== 200) failures.push(r.status);
      }
    })();
    await sleep(200);
    await redis.stop();
    await sleep(800);
    await redis.start(); // empty: persistence is off
    const t0 = Date.now();
    let resumed = false;
    while (Date.now() - t0 < 8000) {
      const r = await ask(gw, det('after the outage'));
      if (r.cache === 'hit') {
        resumed = true;
        break;
      }
      await sleep(100);
    }
    stop = true;
    await traffic;
    assert.deepEqual(failures, []);
    assert.ok(sent > 10, `sent ${sent}`);
    assert.ok(seen.has('bypass'), 'requests were served with bypass during the outage');
    assert.ok(resumed, 'hits resumed after Redis came back');
    // The outage is logged once, not once per request.
    const downs = gw.logLines().filter((l) => /unavailable/.test(l.msg ?? ''));
    assert.equal(downs.length, 1, JSON.stringify(downs));
    assert.ok(gw.logLines().some((l) => /available again/.test(l.msg ?? '')));
  });
});

describe('memory cache (no Redis)', () => {
  test('miss then hit, tenants isolated', async () => {
    const peer = await startPeer({ name: 'mem' });
    const config = makeConfig({
      upstream: peer.url,
      tenants: [
        { id: 'acme', keys: [sha256hex(TEST_KEY)], allowed_tiers: ['small'] },
        { id: 'beta', keys: [sha256hex('sk-beta')], allowed_tiers: ['small'] },
      ],
    });
    const gw = await startGateway({ config });
    const body = chatBody('in memory', { temperature: 0 });
    assert.equal((await ask(gw, body)).cache, 'miss');
    assert.equal((await ask(gw, body)).cache, 'hit');
    assert.equal((await ask(gw, body, authHeaders('sk-beta'))).cache, 'miss');
    assert.equal((await peer.stats()).requests, 2);
    await gw.stop();
  });
});
