// routing.test.mjs: model "auto" with the shipped classifier, the tenant's
// thresholds forcing each zone, and the cascade judged on token logprobs.
//
// Two upstream peers stand for a cheap and an expensive tier, so a test can
// count which tier was called. The peer's logprobs are a fixed pattern
// (0, -0.1, -0.2, -0.3, -0.4, 0, ...), so the mean falls as the answer grows:
// with min_mean_logprob -0.12 an answer of up to 3 pieces is kept and a
// longer one escalates.
import assert from 'node:assert/strict';
import path from 'node:path';
import { before, describe, test } from 'node:test';
import OpenAI from 'openai';

import {
  SOURCE_DIR, authHeaders, chatBody, cleanupAfterAll, makeConfig, sha256hex, startGateway, startPeer, tier,
  TEST_KEY,
} from '../support/harness.mjs';

cleanupAfterAll();

const MODEL = path.join(SOURCE_DIR, 'classifier', 'models', 'difficulty.cdm');
const PRICES = { small: { input_per_1m: 1, output_per_1m: 2 }, large: { input_per_1m: 10, output_per_1m: 20 } };
const cost = (p, u) => Math.round(u.prompt_tokens * p.input_per_1m * 1000) + Math.round(u.completion_tokens * p.output_per_1m * 1000);

function tenant(id, routing, extra = {}) {
  return { id, keys: [sha256hex(`sk-${id}`)], allowed_tiers: ['small', 'large'], routing, ...extra };
}

async function ask(gw, id, body) {
  const res = await fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST', headers: authHeaders(`sk-${id}`), body: JSON.stringify(body),
  });
  const text = await res.text();
  return {
    status: res.status, text, json: !body.stream && res.ok ? JSON.parse(text) : null,
    tier: res.headers.get('x-cascade-tier'), score: res.headers.get('x-cascade-score'),
    escalated: res.headers.get('x-cascade-escalated'),
  };
}

describe('auto routing and the cascade', () => {
  let small;
  let large;
  let gw;
  before(async () => {
    small = await startPeer({ name: 'small' });
    large = await startPeer({ name: 'large' });
    const cascade = { min_mean_logprob: -0.12, min_window_logprob: -5, window: 4 };
    const config = makeConfig({
      tiers: [tier({ name: 'small', model: 'small-model', urls: small.url, price: PRICES.small }),
        tier({ name: 'large', model: 'large-model', urls: large.url, price: PRICES.large }),
        tier({ name: 'nolp', model: 'nolp-model', urls: small.url, price: PRICES.small, logprobs: false })],
      tenants: [
        tenant('cheap', { t_low: 1, t_high: 1 }),
        tenant('top', { t_low: 0, t_high: 0 }),
        tenant('zone', { t_low: 0, t_high: 1, cascade }),
        tenant('skip', { t_low: 0, t_high: 1, cascade: { ...cascade, stream: 'skip' } }),
        tenant('nocascade', { t_low: 0, t_high: 1, cascade: { enabled: false } }),
        { ...tenant('nolp', { t_low: 0, t_high: 1, cascade }), allowed_tiers: ['nolp', 'large'] },
        { id: 'acme', keys: [sha256hex(TEST_KEY)], allowed_tiers: ['small', 'large'] },
      ],
      classifier: { model: MODEL },
    });
    gw = await startGateway({ config });
  });

  const reset = () => Promise.all([small.reset(), large.reset()]);
  const counts = async () => [(await small.stats()).requests, (await large.stats()).requests];

  test('thresholds force each zone; the score is reported', async () => {
    await reset();
    const a = await ask(gw, 'cheap', chatBody('What is 2 + 2?', { model: 'auto' }));
    assert.equal(a.status, 200);
    assert.equal(a.tier, 'small');
    assert.match(a.score, /^0\.\d{4}$|^1\.0000$/);
    assert.equal(a.escalated, 'false');
    const b = await ask(gw, 'top', chatBody('What is 2 + 2?', { model: 'auto' }));
    assert.equal(b.tier, 'large');
    assert.equal(b.json.model, 'large-model');
    assert.deepEqual(await counts(), [1, 1]);
    // The same text scores the same.
    const c = await ask(gw, 'top', chatBody('What is 2 + 2?', { model: 'auto' }));
    assert.equal(c.score, b.score);
  });

  test('a named tier is not routed', async () => {
    const r = await ask(gw, 'top', chatBody('hello', { model: 'small' }));
    assert.equal(r.tier, 'small');
    assert.equal(r.score, null);
  });

  test('the cascade keeps a confident cheap answer and escalates an unsure one', async () => {
    await reset();
    const sure = await ask(gw, 'zone', chatBody('hi', { model: 'auto' })); // "echo: hi": 2 pieces
    assert.equal(sure.status, 200);
    assert.equal(sure.tier, 'small');
    assert.equal(sure.escalated, 'false');
    assert.equal(sure.json.choices[0].message.content, 'echo: hi');
    assert.equal(sure.json.choices[0].logprobs, null, 'logprobs the client did not ask for are not shown');
    assert.deepEqual(await counts(), [1, 0]);
    // The cheap call was asked for logprobs; the client was not.
    assert.equal((await small.stats()).last_request.logprobs, true);

    await reset();
    const unsure = await ask(gw, 'zone', chatBody('one two three four five six', { model: 'auto' }));
    assert.equal(unsure.status, 200);
    assert.equal(unsure.tier, 'large');
    assert.equal(unsure.escalated, 'true');
    assert.equal(unsure.json.model, 'large-model');
    assert.deepEqual(await counts(), [1, 1]);
    // The escalated call carries the client's request as sent: no forced logprobs.
    assert.equal((await large.stats()).last_request.logprobs, undefined);
    // Both answers are paid for.
    const line = await gw.waitForLog((l) => l.msg === 'access' && l.tenant === 'zone' && l.tier === 'large');
    const small1 = cost(PRICES.small, unsure.json.usage); // the peers count the same
    const large1 = cost(PRICES.large, unsure.json.usage);
    assert.equal(line.cost_nano, small1 + large1);
  });

  test('a cheap tier that fails in the cascade zone escalates instead of failing', async () => {
    await reset();
    const r = await ask(gw, 'zone', chatBody('hi [[peer@small:status=500]]', { model: 'auto' }));
    assert.equal(r.status, 200);
    assert.equal(r.tier, 'large');
    assert.equal(r.escalated, 'true');
    assert.deepEqual(await counts(), [1, 1]);
  });

  test('a stream in the cascade zone: buffered and judged, the client gets only the final answer', async () => {
    await reset();
    const kept = await ask(gw, 'zone', chatBody('hi', { model: 'auto', stream: true }));
    assert.equal(kept.escalated, 'false');
    const events = kept.text.split('\n\n').filter((e) => e.startsWith('data: {')).map((e) => JSON.parse(e.slice(6)));
    assert.equal(events.map((e) => e.choices[0]?.delta?.content ?? '').join(''), 'echo: hi');
    assert.equal(events[0].model, 'small-model');
    assert.match(kept.text, /\[DONE\]/);

    const escalated = await ask(gw, 'zone', chatBody('one two three four five six', { model: 'auto', stream: true }));
    assert.equal(escalated.escalated, 'true');
    const ev2 = escalated.text.split('\n\n').filter((e) => e.startsWith('data: {')).map((e) => JSON.parse(e.slice(6)));
    assert.ok(ev2.every((e) => e.model === 'large-model'), 'nothing of the cheap answer reached the client');
    assert.equal(ev2.map((e) => e.choices[0]?.delta?.content ?? '').join(''), 'echo: one two three four five six');
    assert.deepEqual(await counts(), [2, 1]);
  });

  test('without a cascade (off, skipped for streams, no logprobs) the zone splits at its middle', async () => {
    // The prompt's score s, then zones around it whose middle lies just
    // above s (the cheap side) or just below it (the expensive side), so
    // both sides of the split are seen whatever the classifier scores.
    const prompt = 'one two three four five six';
    const s = Number((await ask(gw, 'cheap', chatBody(prompt, { model: 'auto' }))).score);
    assert.ok(s > 0.05 && s < 0.95, `score ${s} leaves no room for a zone around it`);
    const cascade = { min_mean_logprob: -0.12, min_window_logprob: -5, window: 4 };
    const below = { t_low: s - 0.03, t_high: s + 0.05 };   // middle s + 0.01: s is below it
    const above = { t_low: s - 0.05, t_high: s + 0.03 };   // middle s - 0.01: s is above it
    const config = makeConfig({
      tiers: [tier({ name: 'small', model: 'small-model', urls: small.url, price: PRICES.small }),
        tier({ name: 'large', model: 'large-model', urls: large.url, price: PRICES.large }),
        tier({ name: 'nolp', model: 'nolp-model', urls: small.url, price: PRICES.small, logprobs: false })],
      tenants: [
        tenant('off-lo', { ...below, cascade: { enabled: false } }),
        tenant('off-hi', { ...above, cascade: { enabled: false } }),
        tenant('skip-lo', { ...below, cascade: { ...cascade, stream: 'skip' } }),
        tenant('skip-hi', { ...above, cascade: { ...cascade, stream: 'skip' } }),
        { ...tenant('nolp-lo', { ...below, cascade }), allowed_tiers: ['nolp', 'large'] },
        { ...tenant('nolp-hi', { ...above, cascade }), allowed_tiers: ['nolp', 'large'] },
      ],
      classifier: { model: MODEL },
    });
    const gw2 = await startGateway({ config });
    try {
      const cases = [
        ['off-lo', false, 'small'], ['off-hi', false, 'large'],
        ['skip-lo', true, 'small'], ['skip-hi', true, 'large'],
        ['nolp-lo', false, 'nolp'], ['nolp-hi', false, 'large'],
      ];
      for (const [id, stream, want] of cases) {
        await reset();
        const r = await ask(gw2, id, chatBody(prompt, { model: 'auto', stream }));
        assert.equal(r.status, 200, `${id}: ${r.text}`);
        assert.equal(Number(r.score), s, `${id}: the same prompt scores the same`);
        assert.equal(r.escalated, 'false', id);
        assert.equal(r.tier, want, id);
        // Exactly one upstream call, on the side the split chose.
        assert.deepEqual(await counts(), want === 'large' ? [0, 1] : [1, 0], id);
      }
    } finally {
      await gw2.stop();
    }
  });

  test('the openai client sends model "auto" and gets a valid answer with the routing headers', async () => {
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'sk-zone', maxRetries: 0 });
    const { data, response } = await client.chat.completions
      .create({ model: 'auto', messages: [{ role: 'user', content: 'hi' }] }).withResponse();
    assert.equal(data.choices[0].message.content, 'echo: hi');
    assert.ok(response.headers.get('x-cascade-score'));
    assert.equal(response.headers.get('x-cascade-escalated'), 'false');
    assert.equal(response.headers.get('x-cascade-tier'), 'small');
  });
});

test('a corrupt classifier model is a clear error at start-up', async () => {
  const { writeFileSync, readFileSync, mkdtempSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const dir = mkdtempSync(path.join(tmpdir(), 'cascade-cls-'));
  const bad = path.join(dir, 'bad.cdm');
  const bytes = readFileSync(MODEL);
  bytes[bytes.length >> 1] ^= 0x55;
  writeFileSync(bad, bytes);
  const peer = await startPeer({ name: 'x' });
  await assert.rejects(startGateway({ config: makeConfig({ upstream: peer.url, classifier: { model: bad } }), timeoutMs: 5000 }),
    /classifier\.model: .*(checksum|corrupt|sha)/i);
  writeFileSync(bad, bytes.subarray(0, 100));
  await assert.rejects(startGateway({ config: makeConfig({ upstream: peer.url, classifier: { model: bad } }), timeoutMs: 5000 }),
    /classifier\.model: .*(truncat|short|size)/i);
});
