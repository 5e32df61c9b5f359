// engines.test.mjs: cascaded on real engines running the real stories260K
// model: in-process (a native tier) and remote (cascade-engine over HTTP),
// and the cascade between two real tiers.
//
// - the reference greedy story comes back token for token through cascaded,
//   streamed and not, from an in-process tier and through the remote engine;
// - failover from a dead replica to cascade-engine, and a client hang-up
//   leaves the engine serving;
// - the cascade: confidence thresholds placed between two prompts' measured
//   confidences make exactly the less confident one escalate.
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import OpenAI from 'openai';

import {
  BUILD_DIR, SOURCE_DIR, authHeaders, cleanupAfterAll, freePort, makeConfig, sha256hex, spawnReady, startGateway,
  tier, TEST_KEY,
} from '../support/harness.mjs';

cleanupAfterAll();

const SHARED = process.env.CASCADE_SHARED_DIR || path.join(SOURCE_DIR, '..', 'shared');
const MODEL_DIR = path.join(SHARED, 'models', 'stories260K');
const MODEL = path.join(MODEL_DIR, 'stories260K.bin');
const ENGINE = path.join(BUILD_DIR, 'engines', 'server', 'cascade-engine');
const skip = existsSync(MODEL) ? false : `no model at ${MODEL}`;
const REFERENCE = existsSync(MODEL)
  ? readFileSync(path.join(MODEL_DIR, 'reference_greedy_empty_prompt.txt'), 'utf8').replace(/\n+$/, '')
  : '';
const PRICE = { small: { input_per_1m: 1, output_per_1m: 2 }, large: { input_per_1m: 10, output_per_1m: 20 } };

function nativeTier(name, extra = {}) {
  return {
    name, model: `stories-${name}`,
    engine: { kind: 'native', model: MODEL, name: `stories-${name}`, threads: 1 },
    price: PRICE[name] ?? PRICE.small, ...extra,
  };
}

const client = (gw, key = TEST_KEY) => new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: key, maxRetries: 0 });

async function readStream(stream) {
  let text = '';
  let finish = null;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta?.content ?? '';
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  return { text, finish };
}

const greedyEmpty = { temperature: 0, max_tokens: 256, messages: [{ role: 'user', content: '' }] };

describe('real engines', { skip }, () => {
  test('an in-process native tier gives the reference story, streamed and not', async () => {
    const gw = await startGateway({ config: makeConfig({ tiers: [nativeTier('small')] }) });
    const r = await client(gw).chat.completions.create({ model: 'small', ...greedyEmpty });
    assert.equal(r.choices[0].message.content, REFERENCE);
    assert.equal(r.model, 'stories-small');
    assert.deepEqual(r.usage, { prompt_tokens: 1, completion_tokens: 256, total_tokens: 257 });
    const s = await readStream(await client(gw).chat.completions.create({ model: 'small', ...greedyEmpty, stream: true }));
    assert.equal(s.text, REFERENCE);
    assert.equal(s.finish, 'length');
    // The in-process engine's queue depth is a Prometheus gauge (idle now: 0).
    const metrics = await (await fetch(`${gw.url}/metrics`)).text();
    assert.match(metrics, /^cascade_engine_queue_depth\{tier="small"\} 0$/m);
    await gw.stop();
  });

  test('a 2 MB prompt to an in-process tier: 400 context_length_exceeded, without stalling its worker', async () => {
    // One worker: every request shares its event loop. The prompt is
    // counted on the work pool by the model's own tokenizer; one that cannot
    // fit the context is refused without being tokenized again on the loop
    // (which held the worker for about 1.6 s before). Small requests run
    // back to back meanwhile; the longest of them is compared with the big
    // request's whole time, not with a clock threshold: a stall makes it a
    // large share of it (0.26-0.30 measured before the fix, 0.02-0.03 after).
    const gw = await startGateway({
      config: makeConfig({ tiers: [nativeTier('small')], workers: 1, limits: { max_body_bytes: 16 << 20 } }),
    });
    const post = (content, max_tokens) => fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST', headers: authHeaders(TEST_KEY),
      body: JSON.stringify({ model: 'small', max_tokens, messages: [{ role: 'user', content }] }),
    });
    const big = 'Once upon a time there was a cat. '.repeat(60000);
    const t0 = Date.now();
    let bigDone = false;
    const bigP = post(big, 8).then(async (r) => {
      const body = await r.json();
      bigDone = true;
      return { status: r.status, body, ms: Date.now() - t0 };
    });
    const small = [];
    while (!bigDone) {
      const t = Date.now();
      const r = await post('hi', 4);
      assert.equal(r.status, 200);
      await r.text();
      small.push(Date.now() - t);
    }
    const b = await bigP;
    assert.equal(b.status, 400);
    assert.equal(b.body.error.code, 'context_length_exceeded');
    assert.match(b.body.error.message, /maximum context length is 512 tokens/);
    assert.ok(small.length >= 5, `only ${small.length} small requests ran alongside`);
    const worst = Math.max(...small);
    assert.ok(worst < 0.12 * b.ms, `a small request waited ${worst} ms during the big one's ${b.ms} ms`);
    await gw.stop();
  });

  test('the remote engine on cascade-engine: the reference story, failover, hang-ups', async () => {
    const engine = await spawnReady(ENGINE, ['--model', MODEL, '--listen', '127.0.0.1:0', '--threads', '1'],
      /ENGINE_PORT=(\d+)/, { name: 'cascade-engine', timeoutMs: 20000 });
    const url = `http://127.0.0.1:${engine.match[1]}`;
    const dead = `http://127.0.0.1:${await freePort()}`;
    const gw = await startGateway({
      config: makeConfig({ tiers: [tier({ name: 'small', model: 'stories260K', urls: [dead, url] })] }),
    });
    for (let i = 0; i < 3; i++) {
      const r = await client(gw).chat.completions.create({ model: 'small', ...greedyEmpty });
      assert.equal(r.choices[0].message.content, REFERENCE);
      assert.equal(r.usage.completion_tokens, 256);
    }
    const s = await readStream(await client(gw).chat.completions.create({
      model: 'small', ...greedyEmpty, stream: true, stream_options: { include_usage: true },
    }));
    assert.equal(s.text, REFERENCE);
    // A client hangs up mid-stream: logged as 499, and the engine keeps
    // serving. stories260K writes a whole answer in about 25 ms, so on a
    // quiet machine the answer can be complete before the gateway sees the
    // hang-up (then it is a 200): the hang-up is tried again until one lands
    // mid-stream, and each try must be logged as one or the other.
    const accessCount = () => gw.logLines().filter((l) => l.msg === 'access').length;
    let hungUp = false;
    for (let attempt = 0; attempt < 10 && !hungUp; attempt++) {
      const before = accessCount();
      const ctrl = new AbortController();
      const res = await fetch(`${gw.url}/v1/chat/completions`, {
        method: 'POST', headers: authHeaders(), signal: ctrl.signal,
        body: JSON.stringify({ model: 'small', ...greedyEmpty, max_tokens: 400, stream: true,
          seed: attempt }), // a new cache key each try: a hit would replay, not generate
      });
      await res.body.getReader().read();
      ctrl.abort();
      await gw.waitForLog(() => accessCount() > before);
      const line = gw.logLines().filter((l) => l.msg === 'access').at(-1);
      assert.ok(line.status === 499 || (line.status === 200 && line.stream), JSON.stringify(line));
      hungUp = line.status === 499;
    }
    assert.ok(hungUp, 'no hang-up landed mid-stream in 10 tries');
    const after = await client(gw).chat.completions.create({ model: 'small', ...greedyEmpty, max_tokens: 8 });
    assert.equal(after.choices[0].message.content, REFERENCE.slice(0, after.choices[0].message.content.length));
    await gw.stop();
    await engine.stop();
  });

  test('the cascade on real tiers: the less confident prompt escalates, the other does not', async () => {
    // Measure each prompt's confidence on the small tier: the mean logprob
    // of its greedy answer, as the cascade computes it.
    const probe = await startGateway({ config: makeConfig({ tiers: [nativeTier('small')] }) });
    const prompts = ['Once upon a time', 'The dog ran fast', 'Sue liked to draw', 'zq xv kjw', 'The sky'];
    const conf = [];
    for (const p of prompts) {
      const r = await client(probe).chat.completions.create({
        model: 'small', temperature: 0, max_tokens: 24, logprobs: true, messages: [{ role: 'user', content: p }],
      });
      const lps = r.choices[0].logprobs.content.map((e) => e.logprob);
      conf.push({ p, mean: lps.reduce((a, b) => a + b, 0) / lps.length });
    }
    await probe.stop();
    conf.sort((a, b) => a.mean - b.mean);
    const low = conf[0];
    const high = conf.at(-1);
    assert.ok(high.mean - low.mean > 0.05, JSON.stringify(conf));
    const threshold = (low.mean + high.mean) / 2;

    // Every prompt is in the cascade zone; the threshold sits between them.
    const config = makeConfig({
      tiers: [nativeTier('small'), nativeTier('large')],
      tenants: [{
        id: 'acme', keys: [sha256hex(TEST_KEY)], allowed_tiers: ['small', 'large'],
        routing: { t_low: 0, t_high: 1, cascade: { min_mean_logprob: threshold, min_window_logprob: -100, window: 8 } },
      }],
      classifier: { model: path.join(SOURCE_DIR, 'classifier', 'models', 'difficulty.cdm') },
    });
    const gw = await startGateway({ config });
    const ask = async (p) => {
      const res = await fetch(`${gw.url}/v1/chat/completions`, {
        method: 'POST', headers: authHeaders(),
        body: JSON.stringify({ model: 'auto', temperature: 0, max_tokens: 24, messages: [{ role: 'user', content: p }] }),
      });
      const j = await res.json();
      return { escalated: res.headers.get('x-cascade-escalated'), tier: res.headers.get('x-cascade-tier'), model: j.model };
    };
    const a = await ask(low.p);
    assert.deepEqual(a, { escalated: 'true', tier: 'large', model: 'stories-large' });
    const b = await ask(high.p);
    assert.deepEqual(b, { escalated: 'false', tier: 'small', model: 'stories-small' });
    await gw.stop();
  });
});
