// openai.test.mjs: the official openai npm client (pinned in package.json)
// talks to cascaded, which talks to a scripted peer. What a product team
// would see: content, usage, model, Cascade's headers, SSE streaming, and
// the client's own error classes for auth and model failures.
import assert from 'node:assert/strict';
import { before, test } from 'node:test';
import OpenAI from 'openai';

import {
  cleanupAfterAll, startPeer, startGateway, makeConfig, peerReply, chatBody,
  TEST_KEY, DEFAULT_MODEL,
} from '../support/harness.mjs';

cleanupAfterAll();

let peer;
let gw;
let client;

before(async () => {
  peer = await startPeer({ name: 'small-1' });
  gw = await startGateway({ config: makeConfig({ upstream: peer.url }) });
  // no retries: a test must see the first answer, not a retried one
  client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: TEST_KEY, maxRetries: 0, timeout: 20000 });
});

async function waitFor(pred, ms = 5000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 25));
  }
}

test('non-streaming: content, usage, model and x-cascade-tier', async () => {
  await peer.reset();
  const messages = [
    { role: 'system', content: 'You are terse.' },
    { role: 'user', content: 'Write a haiku about gateways' },
  ];
  const { data, response } = await client.chat.completions
    .create({ model: DEFAULT_MODEL, messages })
    .withResponse();
  const want = peerReply({ model: DEFAULT_MODEL, messages }, 'small-1');
  assert.equal(response.status, 200);
  assert.equal(response.headers.get('x-cascade-tier'), 'small');
  assert.equal(data.object, 'chat.completion');
  assert.equal(data.model, DEFAULT_MODEL);
  assert.equal(data.choices.length, 1);
  assert.equal(data.choices[0].message.role, 'assistant');
  assert.equal(data.choices[0].message.content, want.content);
  assert.equal(data.choices[0].finish_reason, 'stop');
  assert.equal(data.usage.prompt_tokens, want.usage.prompt_tokens);
  assert.equal(data.usage.completion_tokens, want.usage.completion_tokens);
  assert.equal(data.usage.total_tokens, want.usage.total_tokens);

  // what went upstream: the tier's model and the messages, not the client's key
  const s = await peer.stats();
  assert.equal(s.requests, 1);
  assert.equal(s.last_request.model, DEFAULT_MODEL);
  assert.deepEqual(s.last_request.messages, messages);
  assert.notEqual(s.last_headers.authorization, `Bearer ${TEST_KEY}`);
});

test('streaming: joined chunks equal the answer, usage chunk with include_usage', async () => {
  await peer.reset();
  const text = 'stream these words one by one [[peer:chunk_delay_ms=5]]';
  const stream = await client.chat.completions.create({
    model: DEFAULT_MODEL,
    messages: [{ role: 'user', content: text }],
    stream: true,
    stream_options: { include_usage: true },
  });
  const want = peerReply(chatBody(text), 'small-1');
  let content = '';
  let usage = null;
  let finish = null;
  let chunks = 0;
  let usageChunks = 0;
  for await (const chunk of stream) {
    chunks++;
    assert.equal(chunk.object, 'chat.completion.chunk');
    if (chunk.usage) {
      usage = chunk.usage;
      usageChunks++;
      assert.deepEqual(chunk.choices, []);
      continue;
    }
    for (const c of chunk.choices) {
      content += c.delta?.content ?? '';
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.equal(content, want.content);
  assert.equal(finish, 'stop');
  assert.ok(chunks >= want.chunks.length, `got ${chunks} chunks`);
  assert.equal(usageChunks, 1);
  assert.equal(usage.prompt_tokens, want.usage.prompt_tokens);
  assert.equal(usage.completion_tokens, want.usage.completion_tokens);
  const s = await peer.stats();
  assert.equal(s.last_request.stream, true);
});

test('streaming without include_usage: no usage chunk reaches the client', async () => {
  const stream = await client.chat.completions.create({
    model: DEFAULT_MODEL,
    messages: [{ role: 'user', content: 'no usage please' }],
    stream: true,
  });
  let content = '';
  for await (const chunk of stream) {
    assert.ok(!chunk.usage, 'unexpected usage chunk');
    content += chunk.choices[0]?.delta?.content ?? '';
  }
  assert.equal(content, 'echo: no usage please');
});

test('a wrong key is openai.AuthenticationError with status 401', async () => {
  const bad = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: 'sk-not-a-key', maxRetries: 0 });
  await peer.reset();
  await assert.rejects(
    bad.chat.completions.create({ model: DEFAULT_MODEL, messages: [{ role: 'user', content: 'hi' }] }),
    (err) => {
      assert.ok(err instanceof OpenAI.AuthenticationError, `got ${err?.constructor?.name}: ${err}`);
      assert.equal(err.status, 401);
      return true;
    },
  );
  assert.equal((await peer.stats()).requests, 0, 'an unauthenticated request must not reach upstream');
});

test('an unknown model is openai.NotFoundError with status 404', async () => {
  await assert.rejects(
    client.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'hi' }] }),
    (err) => {
      assert.ok(err instanceof OpenAI.NotFoundError, `got ${err?.constructor?.name}: ${err}`);
      assert.equal(err.status, 404);
      return true;
    },
  );
});

test('an upstream 400 passes through to the client as the same OpenAI error, not a hang', async () => {
  await assert.rejects(
    client.chat.completions.create({
      model: DEFAULT_MODEL,
      messages: [{ role: 'user', content: 'fail please [[peer:status=400]]' }],
    }),
    (err) => {
      // The client's own mistake: the upstream's status, type and message.
      assert.ok(err instanceof OpenAI.BadRequestError, `got ${err?.constructor?.name}: ${err}`);
      assert.equal(err.status, 400);
      assert.equal(err.error?.type, 'invalid_request_error');
      assert.match(err.message, /scripted status 400/);
      return true;
    },
  );
});

test('aborting a stream in the client cancels the upstream request', async () => {
  await peer.reset();
  const stream = await client.chat.completions.create({
    model: DEFAULT_MODEL,
    messages: [{ role: 'user', content: 'long answer [[peer:chunks=100]] [[peer:chunk_delay_ms=50]]' }],
    stream: true,
  });
  let seen = 0;
  for await (const chunk of stream) {
    if (chunk.choices[0]?.delta?.content) seen++;
    if (seen === 2) {
      stream.controller.abort();
      break;
    }
  }
  assert.equal(seen, 2);
  // 100 chunks at 50 ms would take 5 s; the gateway must give up well before
  const s = await waitFor(async () => {
    const st = await peer.stats();
    return st.aborted === 1 ? st : null;
  }, 3000);
  assert.equal(s.completed, 0);
});

test('SIGTERM: the gateway exits 0 (under ASan: no leak or memory error on the way out)', async () => {
  const r = await gw.stop('SIGTERM', 15000);
  assert.deepEqual(r, { code: 0, signal: null }, gw.logs().slice(-4000));
});
