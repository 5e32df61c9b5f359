// native_params.test.mjs: OpenAI parameters on the native engine, honoured or
// refused by name, from cascade-engine's own endpoint and through cascaded
// with an in-process native tier, on the real stories260K model.
//
// - logit_bias -100 on a token of the greedy story removes it; +100 on
//   another makes every token that one;
// - frequency_penalty and presence_penalty change the greedy story, the same
//   way every time, and leave requests without them bit-identical;
// - response_format json_object: the answer is a JSON object JSON.parse reads,
//   greedy and sampled, streamed and not, finish_reason "stop";
// - tools, an image part, an unknown field, json_schema and a token id past
//   the vocabulary: 400 invalid_request_error naming the field.
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, test, before, after } from 'node:test';

import {
  BUILD_DIR, SOURCE_DIR, authHeaders, cleanupAfterAll, makeConfig, spawnReady, startGateway,
} from '../support/harness.mjs';

cleanupAfterAll();

const SHARED = process.env.CASCADE_SHARED_DIR || path.join(SOURCE_DIR, '..', 'shared');
const MODEL_DIR = path.join(SHARED, 'models', 'stories260K');
const MODEL = path.join(MODEL_DIR, 'stories260K.bin');
const ENGINE = path.join(BUILD_DIR, 'engines', 'server', 'cascade-engine');
const skip = existsSync(MODEL) ? false : `no model at ${MODEL}`;

// The llama2.c tokenizer's pieces, for ids: int32 max_len, then per token
// float32 score, int32 len, bytes (spaces as ' ').
function readPieces() {
  const b = readFileSync(path.join(MODEL_DIR, 'tok512.bin'));
  const pieces = [];
  let off = 4;
  while (off < b.length && pieces.length < 512) {
    const len = b.readInt32LE(off + 4);
    pieces.push(b.subarray(off + 8, off + 8 + len).toString('latin1'));
    off += 8 + len;
  }
  return pieces;
}

const user = (content) => [{ role: 'user', content }];
const greedy = (extra = {}) => ({ model: 'small', messages: user('Tell me a story'), temperature: 0, max_tokens: 60, ...extra });

async function post(url, body, headers = {}) {
  const r = await fetch(url, {
    method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body),
  });
  return { status: r.status, body: await r.json() };
}

// The two ways in: cascade-engine's HTTP endpoint, and cascaded with the
// engine in-process as tier "small".
const targets = {};

describe('native engine parameters', { skip }, () => {
  let engine;
  let gw;
  before(async () => {
    engine = await spawnReady(ENGINE, ['--model', MODEL, '--listen', '127.0.0.1:0', '--threads', '1'],
      /ENGINE_PORT=(\d+)/, { name: 'cascade-engine', timeoutMs: 20000 });
    targets.engine = (body) => post(`http://127.0.0.1:${engine.match[1]}/v1/chat/completions`, body);
    gw = await startGateway({
      config: makeConfig({
        tiers: [{
          name: 'small', model: 'stories-small',
          engine: { kind: 'native', model: MODEL, name: 'stories-small', threads: 1 },
          price: { input_per_1m: 1, output_per_1m: 2 },
        }],
      }),
    });
    targets.gateway = (body) => post(`${gw.url}/v1/chat/completions`, body, authHeaders());
  });
  after(async () => {
    await gw?.stop();
    await engine?.stop();
  });

  const content = (r) => {
    assert.equal(r.status, 200, JSON.stringify(r.body));
    return r.body.choices[0].message.content;
  };
  const tokensOf = (r) => {
    assert.equal(r.status, 200, JSON.stringify(r.body));
    return r.body.choices[0].logprobs.content.map((e) => e.token);
  };

  for (const via of ['engine', 'gateway']) {
    test(`logit_bias removes and forces tokens (${via})`, async () => {
      const pieces = readPieces();
      assert.equal(pieces.length, 512);
      const base = await targets[via](greedy({ logprobs: true }));
      const toks = tokensOf(base);
      // A piece of the story that is a whole token of its own (not the
      // first, whose leading space the decoder drops after BOS).
      const victim = toks.slice(1).find((t) => pieces.indexOf(t) > 2 && pieces.indexOf(t) === pieces.lastIndexOf(t));
      assert.ok(victim, `no unique piece among ${JSON.stringify(toks)}`);
      const id = pieces.indexOf(victim);
      const without = tokensOf(await targets[via](greedy({ logprobs: true, logit_bias: { [id]: -100 } })));
      assert.ok(!without.includes(victim), `${JSON.stringify(victim)} (id ${id}) still in ${JSON.stringify(without)}`);
      assert.notDeepEqual(without, toks);

      // A word the story does not use (ids 3..258 are byte tokens).
      const forced = pieces.findIndex((p, i) => i > 258 && /^ [a-z]{3,}$/.test(p) && !toks.includes(p) &&
        pieces.indexOf(p) === pieces.lastIndexOf(p));
      assert.ok(forced > 258);
      const all = tokensOf(await targets[via](greedy({ logprobs: true, max_tokens: 5, logit_bias: { [forced]: 100 } })));
      assert.deepEqual(all, Array(5).fill(pieces[forced]));
    });

    test(`penalties change the greedy story deterministically, and only when given (${via})`, async () => {
      const base = content(await targets[via](greedy({ max_tokens: 80 })));
      const zero = content(await targets[via](greedy({ max_tokens: 80, frequency_penalty: 0, presence_penalty: 0 })));
      assert.equal(zero, base);
      const fp = content(await targets[via](greedy({ max_tokens: 80, frequency_penalty: 2, seed: 1 })));
      assert.notEqual(fp, base);
      assert.equal(content(await targets[via](greedy({ max_tokens: 80, frequency_penalty: 2, seed: 2 }))), fp);
      const pp = content(await targets[via](greedy({ max_tokens: 80, presence_penalty: 2 })));
      assert.notEqual(pp, base);
      // A penalty that encourages repetition makes the story repeat more.
      const rep = content(await targets[via](greedy({ max_tokens: 80, frequency_penalty: -2 })));
      assert.notEqual(rep, base);
    });

    test(`response_format json_object gives one JSON object (${via})`, async () => {
      for (const extra of [{}, { temperature: 1, seed: 7 }, { temperature: 0.8, seed: 11, max_tokens: 40 }]) {
        const r = await targets[via](greedy({ max_tokens: 120, response_format: { type: 'json_object' }, ...extra }));
        const text = content(r);
        const parsed = JSON.parse(text);
        assert.equal(typeof parsed, 'object');
        assert.ok(parsed !== null && !Array.isArray(parsed), text);
        assert.equal(r.body.choices[0].finish_reason, 'stop', text);
      }
      // Streamed: the deltas put together are the object.
      const url = via === 'engine' ? `http://127.0.0.1:${engine.match[1]}` : gw.url;
      const res = await fetch(`${url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...(via === 'gateway' ? authHeaders() : {}) },
        body: JSON.stringify(greedy({ max_tokens: 100, stream: true, seed: 3, temperature: 1, response_format: { type: 'json_object' } })),
      });
      assert.equal(res.status, 200);
      let text = '';
      let finish = null;
      for (const line of (await res.text()).split('\n')) {
        if (!line.startsWith('data: {')) continue;
        const chunk = JSON.parse(line.slice(6));
        text += chunk.choices?.[0]?.delta?.content ?? '';
        finish = chunk.choices?.[0]?.finish_reason ?? finish;
      }
      assert.equal(typeof JSON.parse(text), 'object', text);
      assert.equal(finish, 'stop');
    });

    test(`what the native engine cannot honour is a 400 naming the field (${via})`, async () => {
      const cases = [
        [{ tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }] }, 'tools', /tools/],
        [{ messages: [{ role: 'user', content: [{ type: 'text', text: 'hi' }, { type: 'image_url', image_url: { url: 'https://example.com/a.png' } }] }] }, 'messages', /image/],
        [{ frobnicate: 1 }, 'frobnicate', /frobnicate/],
        [{ audio: { voice: 'alloy', format: 'mp3' } }, 'audio', /audio/],
        [{ response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'object' } } } }, 'response_format', /json_schema/],
        [{ logit_bias: { 512: 5 } }, 'logit_bias', /logit_bias/],
      ];
      for (const [extra, param, msg] of cases) {
        const r = await targets[via](greedy(extra));
        assert.equal(r.status, 400, `${param}: ${JSON.stringify(r.body)}`);
        assert.equal(r.body.error.type, 'invalid_request_error');
        assert.match(r.body.error.message, msg);
        assert.equal(r.body.error.param, param, JSON.stringify(r.body));
      }
      // What asks for nothing passes: an empty tools list, tool_choice none,
      // metadata, store false, modalities ["text"].
      const ok = await targets[via](greedy({ tools: [], tool_choice: 'none', metadata: { a: 'b' }, store: false, modalities: ['text'], max_tokens: 5 }));
      assert.equal(ok.status, 200, JSON.stringify(ok.body));
    });
  }
});
