// peer.test.mjs: the scripted upstream (tests/support/peer.mjs) and the
// harness helpers behave as the gateway's tests assume. If the peer lied
// about what it sent or counted, every gateway test built on it would too.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  cleanupAfterAll, startPeer, sseEvents, sseParse, rawHttp, sha256hex, freePort,
  makeConfig, tier, chatBody, peerReply, TEST_KEY,
} from '../support/harness.mjs';

cleanupAfterAll();

async function chat(peer, body, init = {}) {
  return fetch(`${peer.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    ...init,
  });
}

async function waitFor(pred, ms = 3000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

test('non-stream reply is the deterministic echo with usage and model', async () => {
  const peer = await startPeer({ name: 'a' });
  const body = chatBody('hello there   world', { model: 'm-1' });
  body.messages.unshift({ role: 'system', content: 'be brief' });
  const r = await chat(peer, body);
  assert.equal(r.status, 200);
  const j = await r.json();
  assert.equal(j.object, 'chat.completion');
  assert.equal(j.model, 'm-1');
  assert.equal(j.choices[0].message.content, 'echo: hello there world');
  assert.equal(j.choices[0].finish_reason, 'stop');
  assert.equal(j.choices[0].logprobs, null);
  // 2 system words + 3 user words; 4 pieces: "echo: ", "hello ", "there ", "world"
  assert.deepEqual(j.usage, { prompt_tokens: 5, completion_tokens: 4, total_tokens: 9 });
  const s = await peer.stats();
  assert.equal(s.name, 'a');
  assert.equal(s.requests, 1);
  assert.equal(s.completed, 1);
  assert.equal(s.aborted, 0);
  assert.deepEqual(s.last_request, body);
  assert.equal(s.last_headers['content-type'], 'application/json');
});

test('max_tokens cuts the answer with finish_reason length; logprobs are -(i%5)/10', async () => {
  const peer = await startPeer();
  const r = await chat(peer, chatBody('a b c d e f g [[peer:chunks=9]]', {
    max_completion_tokens: 7, logprobs: true, top_logprobs: 2,
  }));
  const j = await r.json();
  assert.equal(j.choices[0].finish_reason, 'length');
  assert.equal(j.usage.completion_tokens, 7);
  assert.equal(j.choices[0].message.content, 'echo: a b c d e f ');
  const lp = j.choices[0].logprobs.content;
  assert.deepEqual(lp.map((e) => e.logprob), [0, -0.1, -0.2, -0.3, -0.4, 0, -0.1]);
  assert.equal(lp[1].token, 'a ');
  assert.deepEqual(lp[1].bytes, [97, 32]);
  assert.equal(lp[1].top_logprobs.length, 2);
  assert.equal(lp[1].top_logprobs[0].token, 'a ');
  assert.equal(lp[1].top_logprobs[1].logprob, -0.6);
  const again = peerReply(chatBody('a b c d e f g [[peer:chunks=9]]', { max_tokens: 7 }));
  assert.equal(again.content, j.choices[0].message.content);
});

test('stream: chunked SSE, role chunk first, usage chunk before [DONE]', async () => {
  const peer = await startPeer();
  const body = chatBody('one two three', { stream: true, stream_options: { include_usage: true } });
  const r = await chat(peer, body);
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type'), /^text\/event-stream/);
  const ev = await sseEvents(r);
  assert.equal(ev.at(-1), '[DONE]');
  const usage = ev.at(-2);
  assert.deepEqual(usage.choices, []);
  assert.deepEqual(usage.usage, { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 });
  assert.deepEqual(ev[0].choices[0].delta, { role: 'assistant', content: '' });
  const chunks = ev.slice(0, -2);
  const text = chunks.map((e) => e.choices[0].delta.content ?? '').join('');
  assert.equal(text, 'echo: one two three');
  assert.equal(chunks.at(-1).choices[0].finish_reason, 'stop');
  // the bytes on the wire use chunked transfer encoding, as vLLM does
  const req = JSON.stringify(body);
  const raw = await rawHttp(peer.port,
    `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
    `Content-Length: ${Buffer.byteLength(req)}\r\nConnection: close\r\n\r\n${req}`);
  assert.match(raw.data, /\r\nTransfer-Encoding: chunked\r\n/i);
  assert.match(raw.data, /data: \[DONE\]\n\n\r\n0\r\n\r\n$/);
});

test('stream without include_usage sends no usage chunk', async () => {
  const peer = await startPeer();
  const ev = await sseEvents(await chat(peer, chatBody('x', { stream: true })));
  assert.equal(ev.at(-1), '[DONE]');
  assert.ok(ev.slice(0, -1).every((e) => e.choices.length === 1 && !('usage' in e)));
});

test('directives: status, delay, chunk delay, chunks, and removal from the echo', async () => {
  const peer = await startPeer({ name: 'p1' });
  let r = await chat(peer, chatBody('boom [[peer:status=503]]'));
  assert.equal(r.status, 503);
  const e = await r.json();
  assert.equal(e.error.type, 'server_error');
  assert.equal(typeof e.error.message, 'string');
  r = await chat(peer, chatBody('bad [[peer:status=400]]'));
  assert.equal(r.status, 400);
  assert.equal((await r.json()).error.type, 'invalid_request_error');

  let t0 = Date.now();
  r = await chat(peer, chatBody('slow [[peer:delay_ms=300]] reply'));
  assert.equal((await r.json()).choices[0].message.content, 'echo: slow reply');
  assert.ok(Date.now() - t0 >= 290, 'delay_ms holds the answer back');

  t0 = Date.now();
  r = await chat(peer, chatBody('[[peer:chunk_delay_ms=60]] [[peer:chunks=5]] w', { stream: true }));
  const ev = await sseEvents(r);
  assert.ok(Date.now() - t0 >= 5 * 60 - 10, 'chunk_delay_ms paces the stream');
  const content = ev.filter((x) => x !== '[DONE]').map((x) => x.choices[0].delta.content ?? '');
  assert.equal(content.join(''), 'echo: w echo: w echo:');

  // a directive addressed to another peer is removed but not obeyed
  r = await chat(peer, chatBody('hi [[peer@other:status=500]]'));
  assert.equal(r.status, 200);
  assert.equal((await r.json()).choices[0].message.content, 'echo: hi');
  r = await chat(peer, chatBody('hi [[peer@p1:status=429]]'));
  assert.equal(r.status, 429);
});

test('close destroys the socket; close_after cuts a stream', async () => {
  const peer = await startPeer();
  await assert.rejects(chat(peer, chatBody('x [[peer:close]]')));
  const r = await chat(peer, chatBody('hello b c d [[peer:close_after=2]]', { stream: true }));
  assert.equal(r.status, 200);
  const reader = r.body.getReader();
  let got = '';
  await assert.rejects(async () => {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      got += Buffer.from(value).toString();
    }
  });
  assert.match(got, /"content":"hello "/);
  assert.doesNotMatch(got, /"content":"b "/);
  assert.doesNotMatch(got, /\[DONE\]/);
  const s = await peer.stats();
  assert.equal(s.requests, 2);
  assert.equal(s.aborted, 0, 'a close the peer chose is not a client abort');
  assert.equal(s.active, 0);
});

test('a client that goes away mid-request counts as aborted', async () => {
  const peer = await startPeer();
  const ac = new AbortController();
  const p = chat(peer, chatBody('wait [[peer:hang]]'), { signal: ac.signal });
  await waitFor(async () => (await peer.stats()).active === 1);
  ac.abort();
  await assert.rejects(p);
  const s = await waitFor(async () => {
    const st = await peer.stats();
    return st.aborted === 1 ? st : null;
  });
  assert.equal(s.completed, 0);
  assert.equal(s.active, 0);

  // and mid-stream, between chunks
  const ac2 = new AbortController();
  const r = await chat(peer, chatBody('[[peer:chunk_delay_ms=200]] [[peer:chunks=20]] z', { stream: true }),
    { signal: ac2.signal });
  const reader = r.body.getReader();
  await reader.read();
  ac2.abort();
  await waitFor(async () => (await peer.stats()).aborted === 2);
});

test('/_script queues directives; /_reset clears counters and script', async () => {
  const peer = await startPeer();
  await peer.script({ directives: { status: 502 }, count: 2 });
  assert.equal((await chat(peer, chatBody('a'))).status, 502);
  assert.equal((await chat(peer, chatBody('a'))).status, 502);
  assert.equal((await chat(peer, chatBody('a'))).status, 200);
  await peer.script({ health_status: 503 });
  assert.equal((await fetch(`${peer.url}/health`)).status, 503);
  await peer.script({ directives: { status: 500 } });
  await peer.reset();
  assert.equal((await fetch(`${peer.url}/health`)).status, 200);
  assert.equal((await chat(peer, chatBody('a'))).status, 200);
  const s = await peer.stats();
  assert.equal(s.requests, 1);
  assert.equal(s.completed, 1);
  const all = await peer.requests();
  assert.equal(all.length, 1);
  assert.equal(all[0].body.messages[0].content, 'a');
});

test('models, health and bad bodies', async () => {
  const peer = await startPeer({ name: 'm', models: ['x-1', 'x-2'] });
  const m = await (await fetch(`${peer.url}/v1/models`)).json();
  assert.deepEqual(m.data.map((d) => d.id), ['x-1', 'x-2']);
  assert.equal((await fetch(`${peer.url}/health`)).status, 200);
  const r = await fetch(`${peer.url}/v1/chat/completions`, { method: 'POST', body: '{nope' });
  assert.equal(r.status, 400);
  assert.equal((await r.json()).error.type, 'invalid_request_error');
  assert.equal((await fetch(`${peer.url}/nowhere`)).status, 404);
});

test('an --api-key peer wants the bearer key', async () => {
  const peer = await startPeer({ apiKey: 'up-key' });
  assert.equal((await chat(peer, chatBody('a'))).status, 401);
  const r = await chat(peer, chatBody('a'), { headers: { authorization: 'Bearer up-key' } });
  assert.equal(r.status, 200);
});

test('harness helpers', async () => {
  assert.equal(sha256hex('abc'), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  const port = await freePort();
  assert.ok(Number.isInteger(port) && port > 0 && port < 65536);
  assert.deepEqual(sseParse('data: {"a":1}\r\n\r\n: comment\n\ndata: {"b":\ndata: 2}\n\ndata: [DONE]\n\n'),
    [{ a: 1 }, { b: 2 }, '[DONE]']);
  assert.throws(() => sseParse('data: x\ndata: y\n\n'), SyntaxError);
  assert.deepEqual(sseParse('event: e\ndata: [DONE]\n\n'), ['[DONE]']);
  const c = makeConfig({ upstream: 'http://127.0.0.1:1', limits: { read_timeout_ms: 5 } });
  assert.equal(c.tiers[0].engine.urls[0], 'http://127.0.0.1:1');
  assert.equal(c.limits.read_timeout_ms, 5);
  assert.equal(c.limits.max_body_bytes, 1048576);
  assert.deepEqual(c.tenants[0].keys, [sha256hex(TEST_KEY)]);
  assert.equal(c.tenants[0].default_tier, 'small');
  const two = makeConfig({ tiers: [tier({ name: 'l', urls: ['u1', 'u2'] }), tier({ name: 's', urls: 'u3' })] });
  assert.deepEqual(two.tenants[0].allowed_tiers, ['l', 's']);
  assert.throws(() => makeConfig({}));
});
