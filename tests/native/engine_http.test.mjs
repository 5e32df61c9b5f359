// engine_http.test.mjs: cascade-engine over HTTP, driven by the official
// openai npm client, on the real stories260K model (and on the safetensors
// copy the converter makes of it).
//
// What a user would notice: the reference story for an empty prompt, token for
// token (chat and completions, streamed and not); usage and logprobs; 400
// context_length_exceeded; 503 when the wait queue is full; 16 concurrent
// streams each getting what they get alone; a client that hangs up mid-stream
// leaves the server healthy. (That a hang-up cancels the generation and frees
// its slot is checked where it can be seen: tests/unit/test_native_engine.c.)

import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test, after } from 'node:test';

import OpenAI from 'openai';

import { BUILD_DIR, SOURCE_DIR, cleanupAfterAll, runToEnd, spawnReady } from '../support/harness.mjs';

cleanupAfterAll();

const SHARED = process.env.CASCADE_SHARED_DIR || path.join(SOURCE_DIR, '..', 'shared');
const MODEL_DIR = path.join(SHARED, 'models', 'stories260K');
const MODEL = path.join(MODEL_DIR, 'stories260K.bin');
const ENGINE = path.join(BUILD_DIR, 'engines', 'server', 'cascade-engine');
const CONVERT = path.join(BUILD_DIR, 'engines', 'native', 'cascade-convert-llama2c');
const haveModel = existsSync(MODEL);
const skip = haveModel ? false : `no model at ${MODEL}`;

// The reference text without the newlines its runner printed after it.
const REFERENCE = haveModel
  ? readFileSync(path.join(MODEL_DIR, 'reference_greedy_empty_prompt.txt'), 'utf8').replace(/\n+$/, '')
  : '';

const PROMPTS = [
  '', 'Once upon a time', 'The cat', 'Lily and Tom went to the park', 'One day',
  'There was a big red ball', 'The sun was shining', 'Sam had a toy car',
  'A little bird', 'Mom said', 'The dog ran fast', 'Tim was sad because',
  'Sue liked to draw', 'In the forest there was', 'Ben found a box', 'The sky',
];

async function startEngine(args) {
  const h = await spawnReady(ENGINE, ['--listen', '127.0.0.1:0', ...args], /ENGINE_PORT=(\d+)/, {
    name: 'cascade-engine',
    timeoutMs: 20000,
  });
  h.port = Number(h.match[1]);
  h.client = new OpenAI({ apiKey: 'unused', baseURL: `http://127.0.0.1:${h.port}/v1`, maxRetries: 0 });
  return h;
}

let engine;
async function getEngine() {
  if (!engine) engine = await startEngine(['--model', MODEL, '--threads', '2']);
  return engine;
}

const greedy = { model: 'stories260K', temperature: 0 };

test('chat: the reference story, not streamed', { skip }, async () => {
  const { client } = await getEngine();
  const r = await client.chat.completions.create({
    ...greedy,
    messages: [{ role: 'user', content: '' }],
    max_tokens: 256,
  });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(r.choices[0].message.content, REFERENCE);
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.deepEqual(r.usage, { prompt_tokens: 1, completion_tokens: 256, total_tokens: 257 });
});

test('chat: the reference story, streamed, with the usage chunk', { skip }, async () => {
  const { client } = await getEngine();
  const stream = await client.chat.completions.create({
    ...greedy,
    messages: [{ role: 'user', content: '' }],
    max_tokens: 256,
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = '';
  let finish = null;
  let usage = null;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      text += c.delta.content ?? '';
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.equal(text, REFERENCE);
  assert.equal(finish, 'length');
  assert.equal(usage.completion_tokens, 256);
  assert.ok(chunks > 100, `tokens arrive one by one (${chunks} chunks)`);
});

test('completions: the reference story from an empty prompt, streamed and not', { skip }, async () => {
  const { client } = await getEngine();
  const r = await client.completions.create({ ...greedy, prompt: '', max_tokens: 256 });
  assert.equal(r.object, 'text_completion');
  assert.equal(r.choices[0].text, REFERENCE);
  assert.equal(r.usage.completion_tokens, 256);
  const stream = await client.completions.create({ ...greedy, prompt: '', max_tokens: 256, stream: true });
  let text = '';
  for await (const chunk of stream) for (const c of chunk.choices) text += c.text;
  assert.equal(text, REFERENCE);
});

test('logprobs: chat top_logprobs and legacy completions logprobs', { skip }, async () => {
  const { client } = await getEngine();
  const r = await client.chat.completions.create({
    ...greedy,
    messages: [{ role: 'user', content: 'Once upon a time' }],
    max_tokens: 12,
    logprobs: true,
    top_logprobs: 3,
  });
  const lp = r.choices[0].logprobs.content;
  assert.equal(lp.length, 12);
  assert.equal(lp.map((e) => e.token).join(''), r.choices[0].message.content);
  for (const e of lp) {
    assert.ok(e.logprob <= 0);
    assert.equal(e.top_logprobs.length, 3);
    // Greedy: the chosen token is the most likely one.
    assert.equal(e.top_logprobs[0].token, e.token);
    assert.ok(Math.abs(e.top_logprobs[0].logprob - e.logprob) < 1e-6);
    assert.ok(e.top_logprobs[1].logprob <= e.top_logprobs[0].logprob);
  }
  const c = await client.completions.create({ ...greedy, prompt: 'The cat', max_tokens: 5, logprobs: 2 });
  const l = c.choices[0].logprobs;
  assert.equal(l.tokens.length, 5);
  assert.equal(l.tokens.join(''), c.choices[0].text);
  assert.equal(l.text_offset[0], 0);
  assert.equal(Object.keys(l.top_logprobs[0]).length, 2);
});

test('stop strings end the text before the match', { skip }, async () => {
  const { client } = await getEngine();
  const r = await client.chat.completions.create({
    ...greedy,
    messages: [{ role: 'user', content: '' }],
    max_tokens: 256,
    stop: ['Lily'],
  });
  assert.equal(r.choices[0].message.content, 'Once upon a time, there was a little girl named ');
  assert.equal(r.choices[0].finish_reason, 'stop');
});

test('prompt + max_tokens past the context: 400 context_length_exceeded', { skip }, async () => {
  const { client } = await getEngine();
  await assert.rejects(
    client.chat.completions.create({ ...greedy, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 600 }),
    (e) => e.status === 400 && e.code === 'context_length_exceeded',
  );
  await assert.rejects(
    client.completions.create({ ...greedy, prompt: 'x', max_tokens: 10, suffix: 'y' }),
    (e) => e.status === 400,
  );
});

test('16 concurrent streams: each gets the tokens it gets alone', { skip }, async () => {
  const { client } = await getEngine();
  const ask = async (p) => {
    const stream = await client.chat.completions.create({
      ...greedy,
      messages: [{ role: 'user', content: p }],
      max_tokens: 150,
      stream: true,
    });
    let text = '';
    for await (const chunk of stream) for (const c of chunk.choices) text += c.delta.content ?? '';
    return text;
  };
  const alone = [];
  for (const p of PROMPTS) alone.push(await ask(p));
  const together = await Promise.all(PROMPTS.map(ask));
  assert.deepEqual(together, alone);
  assert.equal(alone[0], REFERENCE.slice(0, alone[0].length));
});

test('a client hanging up mid-stream leaves the server healthy', { skip }, async () => {
  const { client, port } = await getEngine();
  // Raw HTTP, so the socket closes right after the first event arrives
  // (a whole answer takes ~20 ms here; a client library might read it all).
  await new Promise((resolve, reject) => {
    const body = JSON.stringify({
      ...greedy, messages: [{ role: 'user', content: '' }], max_tokens: 500, stream: true,
    });
    const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/v1/chat/completions',
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (res) => {
      assert.equal(res.statusCode, 200);
      res.once('data', () => {
        req.destroy();
        resolve();
      });
    });
    req.on('error', (e) => (e.code === 'ECONNRESET' ? resolve() : reject(e)));
    req.end(body);
  });
  const health = await fetch(`http://127.0.0.1:${port}/health`);
  assert.equal(health.status, 200);
  const r = await client.chat.completions.create({ ...greedy, messages: [{ role: 'user', content: '' }], max_tokens: 256 });
  assert.equal(r.choices[0].message.content, REFERENCE);
});

test('the wait queue has a limit: past it the answer is 503', { skip }, async () => {
  const small = await startEngine(['--model', MODEL, '--threads', '1', '--max-batch', '1', '--max-queue', '1']);
  try {
    const long = { ...greedy, messages: [{ role: 'user', content: 'Once upon a time' }], max_tokens: 400 };
    const results = await Promise.allSettled([0, 1, 2].map(() => small.client.chat.completions.create(long)));
    const rejected = results.filter((r) => r.status === 'rejected');
    assert.equal(results.filter((r) => r.status === 'fulfilled').length, 2);
    assert.equal(rejected.length, 1);
    assert.equal(rejected[0].reason.status, 503);
    assert.equal(rejected[0].reason.code, 'engine_overloaded');
  } finally {
    await small.stop();
  }
});

test('the converter\'s safetensors copy serves the same story', { skip }, async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'cascade-hf-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const out = path.join(dir, 'stories260K-hf');
  const conv = await runToEnd(CONVERT, ['--model', MODEL, '--out', out, '--tokenizer', path.join(MODEL_DIR, 'tok512.bin')]);
  assert.equal(conv.code, 0, conv.stderr);
  const hf = await startEngine(['--model', out, '--threads', '1']);
  try {
    const r = await hf.client.chat.completions.create({ ...greedy, messages: [{ role: 'user', content: '' }], max_tokens: 256 });
    assert.equal(r.choices[0].message.content, REFERENCE);
    const models = await hf.client.models.list();
    assert.equal(models.data[0].id, 'stories260K-hf');
  } finally {
    await hf.stop();
  }
});
