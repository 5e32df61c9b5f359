// completions.test.mjs: POST /v1/completions through the gateway (issue 15),
// with the official openai npm package, a scripted remote upstream and a
// real native tier on stories260K; and `cascaded --check-config` on native
// tier options.
//
// - A remote tier gets the client's completion (prompt, not messages) at its
//   /v1/completions, and the answer comes back as a text_completion with the
//   gateway's id ("cmpl-...") and the tier's model, streamed or not.
// - A native tier runs the prompt without a chat template: the same text as
//   cascade-engine's own /v1/completions gives for it.
// - echo puts the prompt before the answer; a tier whose `endpoints` leave
//   completions out is a 400 naming model; the completion is charged (spend
//   in the usage API) like a chat answer.
// - --check-config refuses a native tier option that only the engine knows
//   (a bad "threads"), naming the field, without loading the model.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import OpenAI from 'openai';

import { completionReply } from '../support/peer.mjs';
import {
  BUILD_DIR, SOURCE_DIR, authHeaders, cleanupAfterAll, makeConfig, runToEnd, sha256hex, spawnReady,
  sseParse, startGateway, startPeer, tier, until,
} from '../support/harness.mjs';

cleanupAfterAll();

const SHARED = process.env.CASCADE_SHARED_DIR || path.join(SOURCE_DIR, '..', 'shared');
const MODEL = path.join(SHARED, 'models', 'stories260K', 'stories260K.bin');
if (!existsSync(MODEL)) throw new Error(`completions.test.mjs needs ${MODEL} (../shared beside the repo)`);

const KEY = 'sk-completions-test';
const CACHED_KEY = 'sk-completions-cached';
const native = { name: 'tiny', model: 'stories-tiny', price: { input_per_1m: 1, output_per_1m: 2 },
  max_output_tokens: 16, engine: { kind: 'native', model: MODEL, name: 'stories-tiny', threads: 1 } };

describe('POST /v1/completions', () => {
  let peer;
  let gw;
  let client;
  before(async () => {
    peer = await startPeer({ name: 'cmpl' });
    const config = makeConfig({
      tiers: [
        tier({ name: 'remote', model: 'remote-model', urls: peer.url, price: { input_per_1m: 1000, output_per_1m: 2000 } }),
        tier({ name: 'chatonly', model: 'chat-model', urls: peer.url, endpoints: ['chat'] }),
        native,
      ],
      tenants: [{ id: 'acme', keys: [sha256hex(KEY)], allowed_tiers: ['remote', 'chatonly', 'tiny'],
        default_tier: 'remote', cache: { mode: 'off' } },
      { id: 'cached', keys: [sha256hex(CACHED_KEY)], allowed_tiers: ['remote'], cache: { mode: 'deterministic' } }],
    });
    gw = await startGateway({ config });
    client = new OpenAI({ apiKey: KEY, baseURL: `${gw.url}/v1`, maxRetries: 0 });
  });
  after(() => gw?.stop());

  test('a remote tier: the upstream gets the prompt at /v1/completions; the SDK reads a text_completion', async () => {
    await peer.reset();
    const prompt = 'Once upon a time there was a gateway';
    const r = await client.completions.create({ model: 'remote', prompt, max_tokens: 12 });
    const want = completionReply({ model: 'remote-model', prompt, max_tokens: 12 }, 'cmpl');
    assert.equal(r.object, 'text_completion');
    assert.match(r.id, /^cmpl-[0-9a-f]+$/);
    assert.equal(r.model, 'remote-model');
    assert.equal(r.choices[0].text, want.content);
    assert.equal(r.usage.prompt_tokens, want.usage.prompt_tokens);
    assert.equal(r.usage.completion_tokens, want.usage.completion_tokens);
    const reqs = await (await fetch(`${peer.url}/_requests`)).json();
    const sent = reqs.requests ? reqs.requests.at(-1) : reqs.at(-1);
    assert.equal(sent.path, '/v1/completions');
    assert.equal(sent.body.prompt, prompt);
    assert.equal(sent.body.model, 'remote-model');
    assert.equal(sent.body.messages, undefined);
  });

  test('streamed, the chunks add up to the same text, then usage, then [DONE]', async () => {
    const prompt = 'The cache was warm';
    const want = completionReply({ model: 'remote-model', prompt, max_tokens: 10 }, 'cmpl');
    const stream = await client.completions.create({ model: 'remote', prompt, max_tokens: 10, stream: true,
      stream_options: { include_usage: true } });
    let text = '';
    let usage = null;
    let finish = null;
    for await (const chunk of stream) {
      assert.equal(chunk.object, 'text_completion');
      if (chunk.choices?.[0]) {
        text += chunk.choices[0].text;
        finish = chunk.choices[0].finish_reason ?? finish;
      }
      if (chunk.usage) usage = chunk.usage;
    }
    assert.equal(text, want.content);
    assert.ok(finish, 'no finish_reason');
    assert.equal(usage?.completion_tokens, want.usage.completion_tokens);
  });

  test('echo puts the prompt before the answer', async () => {
    const prompt = 'Echo me';
    const r = await client.completions.create({ model: 'remote', prompt, max_tokens: 5, echo: true });
    const want = completionReply({ model: 'remote-model', prompt, max_tokens: 5 }, 'cmpl');
    assert.equal(r.choices[0].text, prompt + want.content);
  });

  test('a native tier runs the prompt without a chat template, as cascade-engine does', async () => {
    const prompt = 'Once upon a time';
    const r = await client.completions.create({ model: 'tiny', prompt, max_tokens: 16, temperature: 0 });
    assert.equal(r.model, 'stories-tiny');
    assert.ok(r.choices[0].text.length > 0);
    // cascade-engine on the same model and prompt, greedy: the same text
    const eng = await startEngine();
    try {
      const res = await fetch(`${eng.url}/v1/completions`, {
        method: 'POST', headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ model: 'stories-tiny', prompt, max_tokens: 16, temperature: 0 }),
      });
      const body = await res.json();
      assert.equal(res.status, 200, JSON.stringify(body));
      assert.equal(r.choices[0].text, body.choices[0].text);
      assert.equal(r.usage.completion_tokens, body.usage.completion_tokens);
    } finally {
      await eng.stop();
    }
    // and a chat request with the same text goes through the chat path, a
    // different key space: not answered from the completion
    const chat = await client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: prompt }],
      max_tokens: 16, temperature: 0 });
    assert.equal(chat.object, 'chat.completion');
  });

  test('streamed from the native tier: chunks, then [DONE]', async () => {
    const res = await fetch(`${gw.url}/v1/completions`, {
      method: 'POST', headers: authHeaders(KEY),
      body: JSON.stringify({ model: 'tiny', prompt: 'A cat', max_tokens: 8, temperature: 0, stream: true }),
    });
    assert.equal(res.status, 200);
    const events = sseParse(await res.text());
    assert.equal(events.at(-1), '[DONE]');
    const chunks = events.filter((e) => e !== '[DONE]');
    assert.ok(chunks.length >= 2);
    for (const c of chunks) assert.equal(c.object, 'text_completion');
  });

  test('a tier whose endpoints leave completions out: 400 naming model, nothing upstream', async () => {
    await peer.reset();
    const res = await fetch(`${gw.url}/v1/completions`, {
      method: 'POST', headers: authHeaders(KEY), body: JSON.stringify({ model: 'chatonly', prompt: 'x' }),
    });
    const body = await res.json();
    assert.equal(res.status, 400, JSON.stringify(body));
    assert.equal(body.error.param, 'model');
    assert.equal(body.error.code, 'unsupported_endpoint');
    assert.match(body.error.message, /\/v1\/completions/);
    const stats = await (await fetch(`${peer.url}/_stats`)).json();
    assert.equal(stats.completions_requests ?? 0, 0);
  });

  test('a cached completion replays as a text_completion, whole and streamed; a chat request never hits it', async () => {
    await peer.reset();
    const post = (path, body) => fetch(`${gw.url}${path}`, { method: 'POST', headers: authHeaders(CACHED_KEY),
      body: JSON.stringify(body) });
    const body = { model: 'remote', prompt: 'Cache this completion', max_tokens: 8, temperature: 0 };
    const first = await post('/v1/completions', body);
    const a = await first.json();
    assert.equal(first.headers.get('x-cascade-cache'), 'miss');
    const again = await post('/v1/completions', body);
    const b = await again.json();
    assert.equal(again.headers.get('x-cascade-cache'), 'hit');
    assert.equal(b.object, 'text_completion');
    assert.equal(b.choices[0].text, a.choices[0].text);
    assert.deepEqual(b.usage, a.usage);
    const s = await post('/v1/completions', { ...body, stream: true });
    assert.equal(s.headers.get('x-cascade-cache'), 'hit');
    const events = sseParse(await s.text());
    assert.equal(events.at(-1), '[DONE]');
    const text = events.filter((e) => e !== '[DONE]').map((e) => e.choices?.[0]?.text ?? '').join('');
    assert.equal(text, a.choices[0].text);
    for (const e of events.filter((x) => x !== '[DONE]')) assert.equal(e.object, 'text_completion');
    const chat = await post('/v1/chat/completions', { model: 'remote', temperature: 0, max_tokens: 8,
      messages: [{ role: 'user', content: 'Cache this completion' }] });
    assert.equal(chat.headers.get('x-cascade-cache'), 'miss');
    assert.equal((await chat.json()).object, 'chat.completion');
    const stats = await (await fetch(`${peer.url}/_stats`)).json();
    assert.equal(stats.completions_requests, 1, 'the hits reached the upstream');
  });

  test('bad completion bodies are 400s in OpenAI format', async () => {
    for (const [body, param] of [
      [{ model: 'remote' }, 'prompt'],
      [{ model: 'remote', prompt: ['a', 'b'] }, 'prompt'],
      [{ model: 'remote', prompt: 'x', best_of: 3 }, 'best_of'],
    ]) {
      const res = await fetch(`${gw.url}/v1/completions`, {
        method: 'POST', headers: authHeaders(KEY), body: JSON.stringify(body),
      });
      const j = await res.json();
      assert.equal(res.status, 400, JSON.stringify(j));
      assert.equal(j.error.param, param, JSON.stringify(j));
    }
  });

  test('a completion is charged like a chat answer (x-cascade-cost-usd, the access log)', async () => {
    const res = await fetch(`${gw.url}/v1/completions`, {
      method: 'POST', headers: authHeaders(KEY), body: JSON.stringify({ model: 'remote', prompt: 'Charge me', max_tokens: 6 }),
    });
    const r = await res.json();
    assert.equal(res.status, 200, JSON.stringify(r));
    const cost = (r.usage.prompt_tokens * 1000 + r.usage.completion_tokens * 2000) / 1e6;
    assert.ok(Math.abs(Number(res.headers.get('x-cascade-cost-usd')) - cost) < 1e-9,
      `${res.headers.get('x-cascade-cost-usd')} != ${cost}`);
    const rid = res.headers.get('x-request-id');
    await until(() => gw.logLines().some((l) => l.msg === 'access' && l.request_id === rid), 5000, 'the access line');
    const line = gw.logLines().find((l) => l.msg === 'access' && l.request_id === rid);
    assert.equal(line.path, '/v1/completions');
    assert.equal(line.cost_nano, Math.round(cost * 1e9));
  });
});

async function startEngine() {
  const bin = path.join(BUILD_DIR, 'engines', 'server', 'cascade-engine');
  const proc = await spawnReady(bin, ['--model', MODEL, '--listen', '127.0.0.1:0', '--name', 'stories-tiny',
    '--threads', '1'], /ENGINE_PORT=(\d+)/, { name: 'cascade-engine', timeoutMs: 20000 });
  return { url: `http://127.0.0.1:${proc.match[1]}`, stop: () => proc.stop() };
}

describe('cascaded --check-config', () => {
  const bin = path.join(BUILD_DIR, 'gateway', 'cascaded');
  const write = (config) => {
    const dir = mkdtempSync(path.join(tmpdir(), 'cascade-check-'));
    const p = path.join(dir, 'config.json');
    writeFileSync(p, JSON.stringify(config));
    return p;
  };

  test('a good config with a native tier passes without loading the model', async () => {
    const p = write(makeConfig({ tiers: [{ ...native, engine: { ...native.engine, model: '/nonexistent/model.bin' } }] }));
    const r = await runToEnd(bin, ['-c', p, '--check-config']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /config OK/);
  });

  test('a bad native option is refused, naming the field', async () => {
    const p = write(makeConfig({ tiers: [{ ...native, engine: { ...native.engine, threads: 'many' } }] }));
    const r = await runToEnd(bin, ['-c', p, '--check-config']);
    assert.equal(r.code, 2, r.stdout);
    assert.match(r.stderr, /tiers\[0\]\.engine/);
    assert.match(r.stderr, /threads/);
    const q = write(makeConfig({ tiers: [{ ...native, engine: { ...native.engine, no_such_option: 1 } }] }));
    const r2 = await runToEnd(bin, ['-c', q, '--check-config']);
    assert.equal(r2.code, 2, r2.stdout);
    assert.match(r2.stderr, /no_such_option/);
  });

  test('secrets are not read: an api_key_env that is unset still checks', async () => {
    const p = write(makeConfig({ tiers: [{ name: 'r', model: 'm', price: { input_per_1m: 1, output_per_1m: 1 },
      engine: { kind: 'remote', urls: ['https://api.example.com'], api_key_env: 'CASCADE_TEST_UNSET_KEY_VAR' } }] }));
    const r = await runToEnd(bin, ['-c', p, '--check-config']);
    assert.equal(r.code, 0, r.stderr);
  });
});
