// embeddings.test.mjs: POST /v1/embeddings (issue 15) through the whole
// gateway -- real redis-server, real cascaded, the scripted peer as the
// upstream, and the official openai SDK as the client.
//
// What a user would notice if it broke:
//   - client.embeddings.create with a string and with an array gets the
//     peer's vectors (the SDK's default base64 encoding and "float"), and
//     `model` is the tier's model id even when the upstream names another;
//   - the usage API's spend is the upstream's prompt tokens x the tier's
//     input price, nothing for output;
//   - a tier that does not serve embeddings (endpoints without it, a native
//     tier) and "auto" are 400s naming `model`; bad inputs are 400s naming
//     their param, and never reach the upstream;
//   - a spent budget is 429 insufficient_quota with x-should-retry: false;
//   - an upstream failure is a 502 in OpenAI's error format, unless the
//     tier's fallback serves embeddings, which then answers (and says so).
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';

import {
  ADMIN_TOKEN, SOURCE_DIR, TEST_KEY, authHeaders, cleanupAfterAll, makeConfig, sha256hex, startGateway, startPeer,
  tier, until,
} from '../support/harness.mjs';
import { embeddingReply } from '../support/peer.mjs';
import { startRedis } from '../support/redis.mjs';

cleanupAfterAll();

const SHARED = process.env.CASCADE_SHARED_DIR || path.join(SOURCE_DIR, '..', 'shared');
const NATIVE_MODEL = path.join(SHARED, 'models', 'stories260K', 'stories260K.bin');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const day = () => new Date().toISOString().slice(0, 10).replace(/-/g, '');

const EMB_MODEL = 'text-embedding-peer';
// USD per 1M tokens: a prompt token of "emb" costs 20 * 1000 nano-USD.
const PRICES = { emb: { input_per_1m: 20, output_per_1m: 40 }, backup: { input_per_1m: 30, output_per_1m: 60 } };
const KEYS = { meter: 'sk-emb-meter', broke: 'sk-emb-broke', narrow: 'sk-emb-narrow' };

const client = (gw, key = TEST_KEY) => new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: key, maxRetries: 0 });

async function post(gw, body, key = TEST_KEY) {
  const res = await fetch(`${gw.url}/v1/embeddings`, {
    method: 'POST', headers: authHeaders(key), body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    // not JSON: the assertions below say so
  }
  return { status: res.status, headers: res.headers, json, text };
}

// OpenAI's error object, with the status, type and param expected.
function assertError(r, status, type, param) {
  assert.equal(r.status, status, r.text);
  assert.ok(r.json && typeof r.json.error === 'object', `not an OpenAI error: ${r.text}`);
  for (const k of ['message', 'type', 'param', 'code']) assert.ok(k in r.json.error, `error.${k} missing: ${r.text}`);
  assert.ok(r.json.error.message.length > 0);
  assert.equal(r.json.error.type, type, r.text);
  if (param !== undefined) assert.equal(r.json.error.param, param, r.text);
}

async function usageApi(gw, tenant) {
  const res = await fetch(`${gw.url}/admin/v1/tenants/${tenant}/usage`, {
    headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
  });
  assert.equal(res.status, 200);
  return res.json();
}

describe('POST /v1/embeddings', () => {
  let redis;
  let peer;     // behind tiers emb and chatonly
  let flaky;    // behind tiers flaky (falls back to emb) and failing (no fallback)
  let backup;   // behind tier backup
  let silent;   // behind tier silent: accepts connections and never answers
  let gw;

  before(async () => {
    // A native tier needs the real tiny model; without it this file must
    // fail, not pass having tested less (tests/README.md).
    if (!existsSync(NATIVE_MODEL)) throw new Error(`no model at ${NATIVE_MODEL} (scripts/setup.sh provides it)`);
    redis = await startRedis();
    peer = await startPeer({ name: 'emb' });
    flaky = await startPeer({ name: 'flaky' });
    backup = await startPeer({ name: 'backup' });
    silent = net.createServer(() => {});
    await new Promise((r) => silent.listen(0, '127.0.0.1', r));
    const tiers = [
      tier({ name: 'emb', model: EMB_MODEL, urls: peer.url, price: PRICES.emb }),
      tier({ name: 'chatonly', model: 'chat-model', urls: peer.url, price: PRICES.emb, endpoints: ['chat'] }),
      { name: 'native', model: 'stories-native',
        engine: { kind: 'native', model: NATIVE_MODEL, name: 'stories-native', threads: 1 }, price: PRICES.emb },
      tier({ name: 'flaky', model: 'flaky-model', urls: flaky.url, price: PRICES.emb, fallback: 'backup',
        retry: { attempts: 1 } }),
      tier({ name: 'failing', model: 'failing-model', urls: flaky.url, price: PRICES.emb, retry: { attempts: 1 } }),
      tier({ name: 'backup', model: 'backup-model', urls: backup.url, price: PRICES.backup }),
      tier({ name: 'silent', model: 'silent-model', urls: `http://127.0.0.1:${silent.address().port}`,
        price: PRICES.emb }),
    ];
    const all = tiers.map((t) => t.name);
    const tenants = [
      { id: 'acme', keys: [sha256hex(TEST_KEY)], allowed_tiers: all, default_tier: 'emb',
        budget: { usd_per_day: 100 } },
      // Its own tenant, so its spend is only what the metering test sends.
      { id: 'meter', keys: [sha256hex(KEYS.meter)], allowed_tiers: ['emb'], default_tier: 'emb',
        budget: { usd_per_day: 100 } },
      // Spent before the test starts (the spend key is set below).
      { id: 'broke', keys: [sha256hex(KEYS.broke)], allowed_tiers: ['emb'], default_tier: 'emb',
        budget: { usd_per_day: 0.001, on_exhausted: 'reject' } },
      // May use emb only: not flaky's fallback either.
      { id: 'narrow', keys: [sha256hex(KEYS.narrow)], allowed_tiers: ['emb', 'flaky'], default_tier: 'emb' },
    ];
    gw = await startGateway({ config: makeConfig({ tiers, tenants, redis: { url: redis.url, timeout_ms: 500 } }) });
    redis.cli('SET', `cascade:{broke}:spend:${day()}`, '1000000'); // the whole $0.001
  });
  after(async () => {
    await gw?.stop();
    await redis?.stop();
    silent?.close();
  });

  test('a string, through the SDK (base64 by default): the peer\'s vector, the tier\'s model id', async () => {
    await peer.reset();
    // The upstream calls its model something else; the client named tier
    // "emb", whose model id is what it gets back.
    await peer.script({ directives: { answer_model: 'peer-snapshot-2024' } });
    const input = 'the quick brown fox';
    const res = await client(gw).embeddings.create({ model: 'emb', input });
    const want = embeddingReply({ model: EMB_MODEL, input });
    assert.equal(res.model, EMB_MODEL);
    assert.equal(res.object, 'list');
    assert.equal(res.data.length, 1);
    // base64 carries float32: the SDK decodes the peer's values as float32.
    assert.deepEqual(res.data[0].embedding, Array.from(new Float32Array(want.data[0].embedding)));
    assert.equal(res.usage.prompt_tokens, want.usage.prompt_tokens);
    // What went upstream: the client's body with the tier's model id.
    const sent = (await peer.stats()).last_request;
    assert.equal(sent.model, EMB_MODEL);
    assert.equal(sent.input, input);
    assert.equal(sent.encoding_format, 'base64');
  });

  test('an array, with encoding_format float and dimensions: every vector, in order', async () => {
    await peer.reset();
    const input = ['alpha', 'beta gamma', 'delta epsilon zeta'];
    const res = await client(gw).embeddings.create({ model: EMB_MODEL, input, encoding_format: 'float', dimensions: 5 });
    const want = embeddingReply({ model: EMB_MODEL, input, dimensions: 5 });
    assert.equal(res.model, EMB_MODEL);
    assert.deepEqual(res.data.map((d) => d.index), [0, 1, 2]);
    assert.deepEqual(res.data.map((d) => d.embedding), want.data.map((d) => d.embedding));
    assert.equal(res.data[0].embedding.length, 5);
    // Relayed as the upstream printed it (0.1234, not 0.12340000000000001).
    const r = await post(gw, { model: 'emb', input, encoding_format: 'float', dimensions: 5 });
    assert.equal(r.text, JSON.stringify(want));
    assert.equal(res.usage.prompt_tokens, 6);
  });

  test('spend in the usage API = the upstream\'s prompt tokens x the tier\'s input price', async () => {
    const inputs = ['one two three', ['four five', 'six seven eight nine'], 'ten'];
    let tokens = 0;
    let costs = 0;
    for (const input of inputs) {
      const raw = await client(gw, KEYS.meter).embeddings.create({ model: 'emb', input }).withResponse();
      tokens += raw.data.usage.prompt_tokens;
      costs += Number(raw.response.headers.get('x-cascade-cost-usd'));
    }
    assert.equal(tokens, 3 + 6 + 1);
    const want = (tokens * PRICES.emb.input_per_1m) / 1e6;
    assert.ok(Math.abs(costs - want) < 1e-12, `x-cascade-cost-usd summed to ${costs}, want ${want}`);
    await sleep(200); // settlement is fire and forget, and the access line follows the reply
    const u = await usageApi(gw, 'meter');
    assert.ok(Math.abs(u.today.spend_usd - want) < 1e-12, `spend_usd ${u.today.spend_usd}, want ${want}`);
    assert.equal(redis.cli('GET', `cascade:{meter}:spend:${day()}`), String(tokens * PRICES.emb.input_per_1m * 1000));
    assert.equal(u.budget.reserved_usd, 0); // every reservation settled
    const lines = gw.logLines().filter((l) => l.msg === 'access' && l.tenant === 'meter');
    assert.equal(lines.length, 3);
    for (const l of lines) {
      assert.equal(l.path, '/v1/embeddings');
      assert.equal(l.status, 200);
      assert.equal(l.tier, 'emb');
      assert.equal(l.completion_tokens, 0);
    }
    assert.equal(lines.reduce((n, l) => n + l.prompt_tokens, 0), tokens);
    assert.equal(lines.reduce((n, l) => n + l.cost_nano, 0), tokens * PRICES.emb.input_per_1m * 1000);
  });

  test('a tier without embeddings in its endpoints, a native tier and "auto" are 400s naming model', async () => {
    await peer.reset();
    for (const model of ['chatonly', 'chat-model', 'native', 'auto']) {
      const r = await post(gw, { model, input: 'hi there' });
      assertError(r, 400, 'invalid_request_error', 'model');
      assert.match(r.json.error.message, model === 'auto' ? /auto/ : /does not serve embeddings/);
    }
    // And through the SDK: a BadRequestError.
    await assert.rejects(client(gw).embeddings.create({ model: 'native', input: 'x' }),
      (e) => e.status === 400 && e.param === 'model');
    assert.equal((await peer.stats()).embeddings_requests, 0);
  });

  test('an unknown model is 404 and a tier the key may not use is 403, as for chat', async () => {
    assertError(await post(gw, { model: 'no-such-model', input: 'x' }), 404, 'invalid_request_error', 'model');
    const r = await post(gw, { model: 'backup', input: 'x' }, KEYS.narrow);
    assertError(r, 403, 'permission_error', 'model');
    assert.equal(r.json.error.code, 'tier_not_allowed');
  });

  test('bad inputs are 400s naming their param, and never reach the upstream', async () => {
    await peer.reset();
    // Over 64 KB at 2048 inputs, so the gateway parses and counts it on its
    // work pool.
    const many = Array.from({ length: 2049 }, (_, i) => `w${i} `.repeat(6).trim());
    const cases = [
      [{ input: 'x' }, 'model'],
      [{ model: 'emb' }, 'input'],
      [{ model: 'emb', input: '' }, 'input'],
      [{ model: 'emb', input: [] }, 'input'],
      [{ model: 'emb', input: ['a', 2] }, 'input'],
      [{ model: 'emb', input: [1, -2] }, 'input'],
      [{ model: 'emb', input: [[1], []] }, 'input'],
      [{ model: 'emb', input: { text: 'x' } }, 'input'],
      [{ model: 'emb', input: many }, 'input'],
      [{ model: 'emb', input: 'x', encoding_format: 'int8' }, 'encoding_format'],
      [{ model: 'emb', input: 'x', dimensions: 0 }, 'dimensions'],
      [{ model: 'emb', input: 'x', dimensions: 2.5 }, 'dimensions'],
      [{ model: 'emb', input: 'x', user: 7 }, 'user'],
    ];
    for (const [body, param] of cases) assertError(await post(gw, body), 400, 'invalid_request_error', param);
    assertError(await post(gw, '{"model":"emb","input":'), 400, 'invalid_request_error', null);
    // The SDK's own error for one of them.
    await assert.rejects(client(gw).embeddings.create({ model: 'emb', input: '' }),
      (e) => e.status === 400 && e.param === 'input');
    assert.equal((await peer.stats()).embeddings_requests, 0);
    // 2048 inputs are allowed.
    const body = { model: 'emb', input: many.slice(0, 2048), encoding_format: 'float', dimensions: 32 };
    const ok = await post(gw, body);
    assert.ok(JSON.stringify(body).length > 64 * 1024);
    assert.equal(ok.status, 200, ok.text.slice(0, 300));
    assert.equal(ok.json.data.length, 2048);
    assert.equal(ok.json.usage.prompt_tokens, 2048 * 6);
    // The answer (over 256 KB: checked on the work pool too) is the peer's
    // bytes, numbers printed as the upstream printed them; only the model
    // differs, and here the peer already named the tier's model id.
    assert.ok(ok.text.length > 256 * 1024);
    assert.equal(ok.text, JSON.stringify(embeddingReply({ ...body, model: EMB_MODEL })));
  });

  test('a spent budget is 429 insufficient_quota, x-should-retry: false, and nothing goes upstream', async () => {
    await peer.reset();
    const r = await post(gw, { model: 'emb', input: 'spend more' }, KEYS.broke);
    assertError(r, 429, 'insufficient_quota');
    assert.equal(r.json.error.code, 'budget_exceeded');
    assert.equal(r.headers.get('x-should-retry'), 'false');
    assert.ok(Number(r.headers.get('retry-after')) >= 1);
    await assert.rejects(client(gw, KEYS.broke).embeddings.create({ model: 'emb', input: 'again' }),
      (e) => e.status === 429);
    assert.equal((await peer.stats()).embeddings_requests, 0);
    assert.equal(redis.cli('GET', `cascade:{broke}:spend:${day()}`), '1000000');
  });

  test('an upstream failure is a 502 in OpenAI\'s format, charged nothing', async () => {
    await flaky.reset();
    await flaky.script({ directives: { status: 500 }, count: 5 });
    const r = await post(gw, { model: 'failing', input: 'will fail' });
    assertError(r, 502, r.json?.error?.type);
    assert.ok(r.json.error.type, r.text);
    assert.ok((await flaky.stats()).embeddings_requests >= 1);
    await assert.rejects(client(gw).embeddings.create({ model: 'failing', input: 'will fail too' }),
      (e) => e.status === 502 && typeof e.message === 'string');
    // The access line is written after the reply went out.
    const failing = () => gw.logLines().filter((l) => l.msg === 'access' && l.tier === 'failing');
    await until(() => failing().length >= 2, 2000, 'two access lines for tier failing');
    const lines = failing();
    assert.equal(lines.length, 2);
    for (const l of lines) {
      assert.equal(l.status, 502);
      assert.equal(l.cost_nano, 0);
      assert.equal(l.path, '/v1/embeddings');
    }
  });

  test('an upstream answer that is not an embeddings list is a 502; an upstream 400 passes through', async () => {
    await peer.reset();
    for (const raw of [{ object: 'list', usage: { prompt_tokens: 3 } }, { object: 'list', data: 'x', usage: {} },
      { object: 'list', data: [] }, [1, 2]]) {
      await peer.script({ directives: { raw_answer: raw } });
      const r = await post(gw, { model: 'emb', input: 'broken upstream' });
      assertError(r, 502, r.json?.error?.type);
    }
    assert.equal((await peer.stats()).embeddings_requests, 4);
    // The peer refuses token ids with its own 400: the request's fault, so
    // it passes through (not retried, no fallback); the ids went up as sent.
    const r = await post(gw, { model: 'emb', input: [[1, 2, 3]] });
    assertError(r, 400, 'invalid_request_error');
    assert.deepEqual((await peer.stats()).last_request.input, [[1, 2, 3]]);
  });

  test('a failing tier\'s fallback that serves embeddings answers, and says so', async () => {
    await flaky.reset();
    await backup.reset();
    await flaky.script({ directives: { status: 503 }, count: 5 });
    const r = await post(gw, { model: 'flaky', input: 'fall back please', encoding_format: 'float' });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.headers.get('x-cascade-tier'), 'backup');
    assert.equal(r.headers.get('x-cascade-fallback'), 'flaky');
    assert.equal(r.json.model, 'backup-model');
    const want = embeddingReply({ model: 'backup-model', input: 'fall back please' });
    assert.deepEqual(r.json.data[0].embedding, want.data[0].embedding);
    // Charged at the tier that answered.
    assert.equal(Number(r.headers.get('x-cascade-cost-usd')),
      (want.usage.prompt_tokens * PRICES.backup.input_per_1m) / 1e6);
    assert.equal((await backup.stats()).embeddings_requests, 1);
    // A tenant that may not use the fallback gets the failure instead.
    await flaky.script({ directives: { status: 503 }, count: 5 });
    const n = await post(gw, { model: 'flaky', input: 'no fallback for me' }, KEYS.narrow);
    assertError(n, 503, n.json?.error?.type);
    assert.equal((await backup.stats()).embeddings_requests, 1);
  });

  test('the client\'s trace goes upstream, and into the access line', async () => {
    await peer.reset();
    const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
    const res = await fetch(`${gw.url}/v1/embeddings`, {
      method: 'POST',
      headers: { ...authHeaders(), traceparent: `00-${traceId}-00f067aa0ba902b7-01`, 'x-request-id': 'emb-trace-1' },
      body: JSON.stringify({ model: 'emb', input: 'traced' }),
    });
    assert.equal(res.status, 200, await res.text());
    const sent = (await peer.stats()).last_headers.traceparent;
    assert.match(sent, new RegExp(`^00-${traceId}-[0-9a-f]{16}-01$`));
    assert.ok(!sent.includes('00f067aa0ba902b7'), 'the gateway is a hop of its own: a fresh parent id');
    const line = await gw.waitForLog((l) => l.msg === 'access' && l.request_id === 'emb-trace-1');
    assert.equal(line.trace_id, traceId);
    assert.equal(line.key_id, 'acme#0');
  });

  test('a client that leaves while the upstream works is logged 499 and charged nothing', async () => {
    const ac = new AbortController();
    const pending = fetch(`${gw.url}/v1/embeddings`, {
      method: 'POST', headers: { ...authHeaders(), 'x-request-id': 'emb-leaves' }, signal: ac.signal,
      body: JSON.stringify({ model: 'silent', input: 'nobody answers' }),
    });
    await sleep(300);
    ac.abort();
    await assert.rejects(pending);
    const line = await gw.waitForLog((l) => l.msg === 'access' && l.request_id === 'emb-leaves');
    assert.equal(line.status, 499);
    assert.equal(line.cost_nano, 0);
    assert.equal(line.tier, 'silent');
    // The reservation was released: nothing is left reserved for the tenant.
    await sleep(200);
    assert.equal((await usageApi(gw, 'acme')).budget.reserved_usd, 0);
    // And the worker goes on serving.
    const r = await post(gw, { model: 'emb', input: 'still here' });
    assert.equal(r.status, 200, r.text);
  });

  test('wrong method and content type', async () => {
    const g = await fetch(`${gw.url}/v1/embeddings`, { headers: authHeaders() });
    assert.equal(g.status, 405);
    assert.equal(g.headers.get('allow'), 'POST');
    const t = await fetch(`${gw.url}/v1/embeddings`, {
      method: 'POST', headers: { ...authHeaders(), 'content-type': 'text/plain' }, body: '{"model":"emb","input":"x"}',
    });
    assert.equal(t.status, 415);
    const u = await fetch(`${gw.url}/v1/embeddings`, { method: 'POST', body: '{}' });
    assert.equal(u.status, 401);
  });
});
