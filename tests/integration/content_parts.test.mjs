// content_parts.test.mjs: what a tier accepts (issue 15), through real
// cascaded, the scripted peer and a real native tier on stories260K.
//
// - Content parts other than text go upstream unchanged to a tier whose
//   `accepts` names their type; elsewhere they are a 400 with code
//   unsupported_content_part (param "messages"), before anything reaches an
//   upstream. "auto" picks an allowed tier that accepts them. Each media part
//   reserves tiers[].media_part_tokens prompt tokens in the budget.
// - model "auto" with `tools` routes only among tiers that take tools (the
//   remote ones), on the default-tier path and on the classifier's (always
//   cheapest, the cascade zone), also for the SDK's runTools; with only
//   native tiers allowed it is a 400 naming "tools", and so is a named
//   native tier.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import OpenAI from 'openai';

import {
  SOURCE_DIR, authHeaders, cleanupAfterAll, makeConfig, peerReply, sha256hex, sseParse, startGateway, startPeer, tier,
} from '../support/harness.mjs';

cleanupAfterAll();

const SHARED = process.env.CASCADE_SHARED_DIR || path.join(SOURCE_DIR, '..', 'shared');
const MODEL = path.join(SHARED, 'models', 'stories260K', 'stories260K.bin');

// A 1x1 PNG as a data URL, and an audio clip: what real clients send.
const IMAGE = 'data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==';
const imageMessages = (text = 'What is in this image?') => [{
  role: 'user',
  content: [
    { type: 'text', text },
    { type: 'image_url', image_url: { url: IMAGE, detail: 'low' } },
  ],
}];
const audioMessages = () => [{
  role: 'user',
  content: [
    { type: 'text', text: 'Transcribe this.' },
    { type: 'input_audio', input_audio: { data: 'UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAEAfAAABAAgAZGF0YQAAAAA=', format: 'wav' } },
  ],
}];

const TOOLS = [{ type: 'function', function: { name: 'lookup', description: 'Look a word up',
  parameters: { type: 'object', properties: { word: { type: 'string' } }, required: ['word'] } } }];

const CLASSIFIER = path.join(SOURCE_DIR, 'classifier', 'models', 'difficulty.cdm');

const KEYS = {
  cheapest: 'sk-parts-cheapest', zone: 'sk-parts-zone',
  acme: 'sk-parts-acme', textonly: 'sk-parts-textonly', thrifty: 'sk-parts-thrifty', mixed: 'sk-parts-mixed',
  native: 'sk-parts-native',
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
    // a stream
  }
  return { status: res.status, text, json, tier: res.headers.get('x-cascade-tier') };
}

function assertError(r, status, code, param) {
  assert.equal(r.status, status, r.text);
  assert.ok(r.json?.error, `not an OpenAI error: ${r.text}`);
  for (const k of ['message', 'type', 'param', 'code']) assert.ok(k in r.json.error, `error.${k} missing: ${r.text}`);
  if (status === 400) assert.equal(r.json.error.type, 'invalid_request_error');
  if (code !== undefined) assert.equal(r.json.error.code, code, r.text);
  if (param !== undefined) assert.equal(r.json.error.param, param, r.text);
}

describe('content parts and the tiers that accept them', () => {
  let peer;
  let gw;
  before(async () => {
    peer = await startPeer({ name: 'parts' });
    const config = makeConfig({
      tiers: [
        tier({ name: 'text', model: 'text-model', urls: peer.url }),
        tier({ name: 'vision', model: 'vision-model', urls: peer.url, accepts: ['text', 'image_url'] }),
        // media_part_tokens at $100 per 1M prompt tokens: an image reserves $0.1
        tier({ name: 'pricey', model: 'pricey-model', urls: peer.url, accepts: ['text', 'image_url'],
          media_part_tokens: 1000, price: { input_per_1m: 100, output_per_1m: 1 }, max_output_tokens: 10 }),
      ],
      tenants: [
        { id: 'acme', keys: [sha256hex(KEYS.acme)], allowed_tiers: ['text', 'vision'], default_tier: 'text',
          cache: { mode: 'off' } },
        { id: 'textonly', keys: [sha256hex(KEYS.textonly)], allowed_tiers: ['text'], cache: { mode: 'off' } },
        { id: 'thrifty', keys: [sha256hex(KEYS.thrifty)], allowed_tiers: ['pricey'],
          budget: { usd_per_day: 0.05, on_exhausted: 'reject' }, cache: { mode: 'off' } },
      ],
    });
    gw = await startGateway({ config });
  });
  after(() => gw?.stop());

  test('an image part to a tier without image_url in accepts: 400 unsupported_content_part, nothing upstream', async () => {
    await peer.reset();
    for (const stream of [false, true]) {
      const r = await call(gw, { model: 'text', messages: imageMessages(), stream }, KEYS.acme);
      assertError(r, 400, 'unsupported_content_part', 'messages');
      assert.match(r.json.error.message, /image_url/);
    }
    // "auto" for a tenant whose tiers all take text only
    assertError(await call(gw, { model: 'auto', messages: imageMessages() }, KEYS.textonly), 400,
      'unsupported_content_part', 'messages');
    assert.equal((await peer.stats()).requests, 0);
  });

  test('"auto" with an image part goes to an allowed tier that accepts it, not the text-only default', async () => {
    await peer.reset();
    const r = await call(gw, { model: 'auto', messages: imageMessages() }, KEYS.acme);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.tier, 'vision');
    assert.equal((await peer.stats()).last_request.model, 'vision-model');
  });

  test('an image part to a tier that accepts it: 200, and the upstream gets the part unchanged', async () => {
    await peer.reset();
    const messages = imageMessages();
    const r = await call(gw, { model: 'vision', messages }, KEYS.acme);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.tier, 'vision');
    const want = peerReply({ model: 'vision-model', messages }, 'parts').content;
    assert.match(want, /^echo: What is in this image\?/);
    assert.equal(r.json.choices[0].message.content, want);
    const got = (await peer.stats()).last_request;
    assert.equal(got.model, 'vision-model');
    assert.deepEqual(got.messages, messages);
    // streamed, the same
    const s = await call(gw, { model: 'vision', messages, stream: true }, KEYS.acme);
    assert.equal(s.status, 200, s.text);
    const text = sseParse(s.text).filter((e) => e !== '[DONE]').map((e) => e.choices?.[0]?.delta?.content ?? '').join('');
    assert.equal(text, want);
    assert.deepEqual((await peer.stats()).last_request.messages, messages);
  });

  test('a part type the tier does not list (audio to an image tier) is still a 400', async () => {
    await peer.reset();
    const r = await call(gw, { model: 'vision', messages: audioMessages() }, KEYS.acme);
    assertError(r, 400, 'unsupported_content_part', 'messages');
    assert.match(r.json.error.message, /input_audio/);
    assert.equal((await peer.stats()).requests, 0);
  });

  test('each media part reserves media_part_tokens: the budget fits text, not the image', async () => {
    await peer.reset();
    const ok = await call(gw, { model: 'pricey', messages: [{ role: 'user', content: 'What is in this image?' }] },
      KEYS.thrifty);
    assert.equal(ok.status, 200, ok.text);
    const r = await call(gw, { model: 'pricey', messages: imageMessages() }, KEYS.thrifty);
    assertError(r, 429, 'budget_exceeded');
    assert.equal((await peer.stats()).requests, 1, 'only the text request reached the upstream');
  });
  test('SIGTERM: the gateway exits 0 (under ASan: no leak or memory error on these paths)', async () => {
    const r = await gw.stop('SIGTERM', 15000);
    assert.deepEqual(r, { code: 0, signal: null }, gw.logs().slice(-4000));
  });
});

const noModel = existsSync(MODEL) ? false : `no model at ${MODEL}`;

describe('tools and "auto": only tiers that take tools', { skip: noModel }, () => {
  let peer;
  let gw;
  const native = (name) => ({ name, model: `stories-${name}`, price: { input_per_1m: 0.01, output_per_1m: 0.02 },
    max_output_tokens: 8, engine: { kind: 'native', model: MODEL, name: `stories-${name}`, threads: 1 } });
  before(async () => {
    peer = await startPeer({ name: 'tools' });
    const config = makeConfig({
      tiers: [native('tiny'), tier({ name: 'remote', model: 'remote-model', urls: peer.url })],
      tenants: [
        // "auto" goes to the default tier, the native one, unless tools rule it out
        { id: 'mixed', keys: [sha256hex(KEYS.mixed)], allowed_tiers: ['tiny', 'remote'], default_tier: 'tiny',
          cache: { mode: 'off' } },
        { id: 'native', keys: [sha256hex(KEYS.native)], allowed_tiers: ['tiny'], default_tier: 'tiny',
          cache: { mode: 'off' } },
      ],
    });
    gw = await startGateway({ config, timeoutMs: 30000 });
  });
  after(() => gw?.stop());

  const ask = (key, extra) => call(gw, { model: 'auto', temperature: 0, max_tokens: 8,
    messages: [{ role: 'user', content: 'Once upon a time' }], ...extra }, key);

  test('"auto" without tools: the default (native) tier answers', async () => {
    await peer.reset();
    const r = await ask(KEYS.mixed, {});
    assert.equal(r.status, 200, r.text);
    assert.equal(r.tier, 'tiny');
    assert.equal((await peer.stats()).requests, 0);
  });

  test('"auto" with tools: routed to the remote tier, which receives the tools', async () => {
    for (const stream of [false, true]) {
      await peer.reset();
      const r = await ask(KEYS.mixed, { tools: TOOLS, stream });
      assert.equal(r.status, 200, `stream=${stream}: ${r.text}`);
      assert.equal(r.tier, 'remote');
      const s = await peer.stats();
      assert.equal(s.requests, 1, `stream=${stream}: ${JSON.stringify(s)} ${r.text}`);
      assert.deepEqual(s.last_request.tools, TOOLS);
    }
  });

  test('"auto" with tools and only native tiers allowed: 400 param tools', async () => {
    await peer.reset();
    for (const stream of [false, true]) {
      assertError(await ask(KEYS.native, { tools: TOOLS, stream }), 400, undefined, 'tools');
    }
    assert.equal((await peer.stats()).requests, 0);
  });

  test('a named native tier with tools: 400 naming tools', async () => {
    const r = await call(gw, { model: 'tiny', tools: TOOLS, messages: [{ role: 'user', content: 'hi' }] }, KEYS.mixed);
    assertError(r, 400, undefined, 'tools');
    assert.match(r.json.error.message, /tools/);
  });

  test('the openai SDK\'s runTools with model "auto": every round goes to the remote tier', async () => {
    await peer.reset();
    const tiers = [];
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: KEYS.mixed, maxRetries: 0, timeout: 20000,
      fetch: async (url, init) => {
        const res = await fetch(url, init);
        tiers.push(res.headers.get('x-cascade-tier'));
        return res;
      } });
    const looked = [];
    const runner = client.chat.completions.runTools({
      model: 'auto',
      // the peer calls the tool named in the directive, then answers the
      // tool's result in text (tests/support/peer.mjs)
      messages: [{ role: 'user', content: 'define gateway [[peer:tool_call=lookup]]' }],
      tools: [{ type: 'function', function: { ...TOOLS[0].function, parse: JSON.parse,
        function: (args) => {
          looked.push(args);
          return 'a server in front of others';
        } } }],
    });
    const content = await runner.finalContent();
    assert.equal(looked.length, 1, `the tool ran once: ${JSON.stringify(looked)}`);
    assert.equal(looked[0].query, 'define gateway');
    assert.match(content, /a server in front of others/);
    assert.deepEqual(tiers, ['remote', 'remote']);
    assert.equal((await peer.stats()).requests, 2);
  });

  test('with the classifier: "always cheapest" and the cascade zone skip the native tier when tools are sent', async () => {
    // the scored path, not the default tier: t_low = t_high = 1 sends every
    // prompt to the cheapest allowed tier (the native one); the zone tenant
    // would answer with the native tier first and escalate to the remote one
    const config = makeConfig({
      tiers: [native('tiny'), tier({ name: 'remote', model: 'remote-model', urls: peer.url })],
      tenants: [
        { id: 'cheapest', keys: [sha256hex(KEYS.cheapest)], allowed_tiers: ['tiny', 'remote'], cache: { mode: 'off' },
          routing: { t_low: 1, t_high: 1 } },
        { id: 'zone', keys: [sha256hex(KEYS.zone)], allowed_tiers: ['tiny', 'remote'], cache: { mode: 'off' },
          routing: { t_low: 0, t_high: 1, cascade: { enabled: true, min_mean_logprob: -0.5 } } },
      ],
      classifier: { model: CLASSIFIER },
    });
    const g = await startGateway({ config, timeoutMs: 30000 });
    try {
      const q = (key, extra) => call(g, { model: 'auto', temperature: 0, max_tokens: 8,
        messages: [{ role: 'user', content: 'Once upon a time' }], ...extra }, key);
      await peer.reset();
      const plain = await q(KEYS.cheapest, {});
      assert.equal(plain.status, 200, plain.text);
      assert.equal(plain.tier, 'tiny', 'without tools the cheapest tier answers');
      for (const [key, stream] of [[KEYS.cheapest, false], [KEYS.cheapest, true], [KEYS.zone, false], [KEYS.zone, true]]) {
        await peer.reset();
        const r = await q(key, { tools: TOOLS, stream });
        assert.equal(r.status, 200, `${key} stream=${stream}: ${r.text}`);
        assert.equal(r.tier, 'remote', `${key} stream=${stream}`);
        const s = await peer.stats();
        assert.equal(s.requests, 1, `${key} stream=${stream}: one upstream call, no cascade through the native tier`);
        assert.deepEqual(s.last_request.tools, TOOLS);
      }
    } finally {
      await g.stop();
    }
  });
  test('SIGTERM: the gateway exits 0 (under ASan: no leak or memory error on these paths)', async () => {
    const r = await gw.stop('SIGTERM', 15000);
    assert.deepEqual(r, { code: 0, signal: null }, gw.logs().slice(-4000));
  });
});
