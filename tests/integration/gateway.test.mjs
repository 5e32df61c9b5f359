// gateway.test.mjs: cascaded against scripted upstream peers, over real HTTP.
//
// What a client would notice: the bytes and headers of non-stream and stream
// answers, failover between replicas, timeouts, cancellation reaching the
// upstream, OpenAI-style errors for every kind of bad input, limits, the
// access log, and a graceful drain on SIGTERM.
import assert from 'node:assert/strict';
import net from 'node:net';
import { before, describe, test } from 'node:test';

import {
  authHeaders, chatBody, cleanupAfterAll, DEFAULT_MODEL, freePort, makeConfig, peerReply, rawHttp,
  sha256hex, sseParse, startGateway, startPeer, tier, TEST_KEY,
} from '../support/harness.mjs';

cleanupAfterAll();

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function post(gw, body, { headers = authHeaders(), path = '/v1/chat/completions', signal } = {}) {
  return fetch(`${gw.url}${path}`, {
    method: 'POST',
    headers,
    body: typeof body === 'string' ? body : JSON.stringify(body),
    signal,
  });
}

async function expectError(res, status, { type, code, param, message } = {}) {
  assert.equal(res.status, status);
  assert.match(res.headers.get('content-type'), /application\/json/);
  assert.ok(res.headers.get('x-request-id'));
  const body = await res.json();
  assert.ok(body.error, JSON.stringify(body));
  assert.equal(typeof body.error.message, 'string');
  assert.ok('param' in body.error && 'code' in body.error && 'type' in body.error);
  if (type) assert.equal(body.error.type, type);
  if (code !== undefined) assert.equal(body.error.code, code);
  if (param !== undefined) assert.equal(body.error.param, param);
  if (message) assert.match(body.error.message, message);
  return body;
}

async function until(pred, ms = 5000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > end) throw new Error('condition not met in time');
    await sleep(25);
  }
}

describe('gateway with one upstream', () => {
  let peer;
  let gw;
  before(async () => {
    peer = await startPeer({ name: 'a' });
    const config = makeConfig({
      tiers: [
        tier({ name: 'small', urls: peer.url }),
        tier({ name: 'large', model: 'deepseek-v3', urls: peer.url }),
        tier({ name: 'hanging', model: 'slowpoke', urls: peer.url, timeoutMs: 400, chunkTimeoutMs: 300 }),
      ],
      tenants: [
        { id: 'acme', keys: [sha256hex(TEST_KEY)], allowed_tiers: ['small', 'hanging'], default_tier: 'small' },
        { id: 'beta', keys: [sha256hex('sk-beta')], allowed_tiers: ['large'] },
      ],
      limits: { max_body_bytes: 4096, max_header_bytes: 2048, header_timeout_ms: 700 },
    });
    gw = await startGateway({ config });
  });

  test('non-streaming answer: body, usage and headers', async () => {
    const body = chatBody('hello there world', { model: 'small', temperature: 0, max_tokens: 50 });
    const res = await post(gw, body, { headers: { ...authHeaders(), 'x-request-id': 'req-abc.123' } });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /^application\/json/);
    assert.equal(res.headers.get('x-request-id'), 'req-abc.123');
    assert.equal(res.headers.get('x-cascade-tier'), 'small');
    const json = await res.json();
    const want = peerReply({ ...body, model: DEFAULT_MODEL });
    assert.match(json.id, /^chatcmpl-/);
    assert.equal(json.object, 'chat.completion');
    assert.equal(json.model, DEFAULT_MODEL);
    assert.equal(json.choices.length, 1);
    assert.equal(json.choices[0].message.role, 'assistant');
    assert.equal(json.choices[0].message.content, want.content);
    assert.equal(json.choices[0].finish_reason, want.finishReason);
    assert.equal(json.usage.prompt_tokens, want.usage.prompt_tokens);
    assert.equal(json.usage.completion_tokens, want.usage.completion_tokens);
    assert.equal(json.usage.total_tokens, want.usage.prompt_tokens + want.usage.completion_tokens);
    // What went upstream: the tier's model id, our request id, no client key.
    const st = await peer.stats();
    assert.equal(st.last_request.model, DEFAULT_MODEL);
    assert.equal(st.last_request.stream, false);
    assert.equal(st.last_headers['x-request-id'], 'req-abc.123');
    assert.equal(st.last_headers.authorization, undefined);
  });

  test('model "auto" goes to the tenant default tier; a model id picks its tier', async () => {
    let res = await post(gw, chatBody('x', { model: 'auto' }));
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('x-cascade-tier'), 'small');
    res = await post(gw, chatBody('x', { model: 'deepseek-v3' }), { headers: authHeaders('sk-beta') });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('x-cascade-tier'), 'large');
    assert.equal((await res.json()).model, 'deepseek-v3');
  });

  test('streaming answer: SSE chunks as OpenAI sends them, usage, [DONE]', async () => {
    const body = chatBody('one two three four', {
      model: 'small', stream: true, stream_options: { include_usage: true }, logprobs: true, top_logprobs: 2,
    });
    const res = await post(gw, body);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /^text\/event-stream/);
    assert.equal(res.headers.get('x-cascade-tier'), 'small');
    assert.equal(res.headers.get('transfer-encoding'), 'chunked');
    const events = sseParse(await res.text());
    assert.equal(events.at(-1), '[DONE]');
    const chunks = events.slice(0, -1);
    const want = peerReply({ ...body, model: DEFAULT_MODEL });
    assert.equal(chunks[0].choices[0].delta.role, 'assistant');
    const ids = new Set(chunks.map((c) => c.id));
    assert.equal(ids.size, 1);
    for (const c of chunks) assert.equal(c.object, 'chat.completion.chunk');
    const text = chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
    assert.equal(text, want.content);
    // Logprobs are relayed per token.
    const lp = chunks.flatMap((c) => c.choices[0]?.logprobs?.content ?? []);
    assert.equal(lp.map((e) => e.token).join(''), want.content);
    assert.ok(lp.every((e) => typeof e.logprob === 'number' && e.top_logprobs.length === 2));
    const fin = chunks.filter((c) => c.choices[0]?.finish_reason);
    assert.equal(fin.length, 1);
    assert.equal(fin[0].choices[0].finish_reason, want.finishReason);
    const usage = chunks.at(-1);
    assert.deepEqual(usage.choices, []);
    assert.equal(usage.usage.completion_tokens, want.usage.completion_tokens);
    // Upstream was asked to stream and to report usage.
    const st = await peer.stats();
    assert.equal(st.last_request.stream, true);
    assert.equal(st.last_request.stream_options.include_usage, true);
  });

  test('a stream without include_usage has no usage chunk', async () => {
    const res = await post(gw, chatBody('a b', { model: 'small', stream: true }));
    const events = sseParse(await res.text());
    assert.equal(events.at(-1), '[DONE]');
    assert.ok(events.slice(0, -1).every((e) => e.choices.length === 1 && !e.usage));
  });

  test('a chunked request body and Expect: 100-continue are accepted', async () => {
    const body = JSON.stringify(chatBody('chunked body', { model: 'small' }));
    const half = Math.floor(body.length / 2);
    const hex = (s) => Buffer.byteLength(s).toString(16);
    const req = 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
      `Authorization: Bearer ${TEST_KEY}\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n` +
      `${hex(body.slice(0, half))}\r\n${body.slice(0, half)}\r\n${hex(body.slice(half))}\r\n${body.slice(half)}\r\n0\r\n\r\n`;
    const { data } = await rawHttp(gw.port, req);
    assert.match(data, /^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 200 OK/);
    assert.match(data, /"content":"echo: chunked body"/);
  });

  test('keep-alive: several requests on one connection, answered in order', async () => {
    const one = (t) => {
      const b = JSON.stringify(chatBody(t, { model: 'small' }));
      return 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
        `Authorization: Bearer ${TEST_KEY}\r\nContent-Length: ${Buffer.byteLength(b)}\r\n\r\n${b}`;
    };
    const req = one('first') + one('second') + 'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n';
    const { data, closed } = await rawHttp(gw.port, req);
    assert.ok(closed);
    const first = data.indexOf('echo: first');
    const second = data.indexOf('echo: second');
    assert.ok(first > 0 && second > first, data);
    assert.equal(data.match(/HTTP\/1\.1 200 OK/g).length, 3);
  });

  test('keep-alive answers say the idle time, so a pooling client never reuses a connection we are closing', async () => {
    // The idle time is header_timeout_ms (700 ms here): under a second says
    // timeout=0, which fetch (undici) takes as "do not reuse". Without the
    // header it reused a connection idle for ~700 ms and, now and then, sent
    // its request into our close ('other side closed'; seen once in CI).
    const res = await post(gw, chatBody('ka', { model: 'small' }));
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('keep-alive'), 'timeout=0');
    await res.text();
    await sleep(700);
    assert.equal((await post(gw, chatBody('after the idle time', { model: 'small' }))).status, 200);
    // A close answer says nothing about keeping alive.
    const { data } = await rawHttp(gw.port, 'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    assert.match(data, /\r\nConnection: close\r\n/);
    assert.doesNotMatch(data, /Keep-Alive:/i);
  });

  test('bad input gets OpenAI errors with the right status', async () => {
    await expectError(await post(gw, '{"model": "small", "messages": [', {}), 400,
      { type: 'invalid_request_error', message: /malformed JSON/ });
    await expectError(await post(gw, { model: 'small', messages: 'hi' }), 400, { param: 'messages' });
    await expectError(await post(gw, { model: 'small' }), 400, { param: 'messages', message: /required/ });
    await expectError(await post(gw, { model: 'small', messages: [] }), 400, { param: 'messages' });
    await expectError(await post(gw, { model: 'small', messages: [{ role: 'robot', content: 'x' }] }), 400,
      { message: /robot/ });
    await expectError(await post(gw, chatBody('x', { model: 'small', temperature: 'warm' })), 400,
      { param: 'temperature' });
    await expectError(await post(gw, chatBody('x', { model: 'small', n: 2 })), 400, { param: 'n' });
    await expectError(await post(gw, chatBody('x', { model: 'gpt-17' })), 404,
      { code: 'model_not_found', param: 'model' });
    await expectError(await post(gw, chatBody('x', { model: 'large' })), 403, { code: 'tier_not_allowed' });
    // Invalid UTF-8 in the content, as raw bytes.
    const raw = Buffer.concat([Buffer.from('{"model":"small","messages":[{"role":"user","content":"'),
      Buffer.from([0xc3, 0x28, 0xff]), Buffer.from('"}]}')]);
    const res = await fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: authHeaders(), body: raw });
    await expectError(res, 400, { message: /UTF-8/ });
    // Content type, method, path.
    await expectError(await post(gw, chatBody('x'), { headers: { ...authHeaders(), 'content-type': 'text/plain' } }),
      415, { code: 'unsupported_media_type' });
    const get = await fetch(`${gw.url}/v1/chat/completions`, { headers: authHeaders() });
    await expectError(get, 405, { code: 'method_not_allowed' });
    assert.equal(get.headers.get('allow'), 'POST');
    await expectError(await fetch(`${gw.url}/v2/nothing`), 404, { code: 'unknown_url' });
    // Auth.
    await expectError(await post(gw, chatBody('x'), { headers: { 'content-type': 'application/json' } }), 401,
      { code: 'invalid_api_key', message: /Missing API key/ });
    await expectError(await post(gw, chatBody('x'), { headers: authHeaders('sk-wrong') }), 401,
      { code: 'invalid_api_key' });
    // The worker keeps serving.
    assert.equal((await post(gw, chatBody('still alive', { model: 'small' }))).status, 200);
  });

  test('a body over the limit gets 413, and the gateway keeps serving', async () => {
    const big = chatBody('x'.repeat(5000), { model: 'small' });
    await expectError(await post(gw, big), 413, { message: /size limit/ });
    // Also when the client streams it chunked, without a length up front.
    const b = JSON.stringify(big);
    const req = 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n' +
      `Authorization: Bearer ${TEST_KEY}\r\nTransfer-Encoding: chunked\r\n\r\n${b.length.toString(16)}\r\n${b}\r\n0\r\n\r\n`;
    const { data, closed } = await rawHttp(gw.port, req);
    assert.match(data, /^HTTP\/1\.1 413/);
    assert.match(data, /"error":\{"message":"request body exceeds the size limit"/);
    assert.ok(closed);
    assert.equal((await post(gw, chatBody('ok', { model: 'small' }))).status, 200);
  });

  test('malformed HTTP gets 400 and a close', async () => {
    const { data, closed } = await rawHttp(gw.port, 'GARBAGE\r\n\r\n');
    assert.match(data, /^HTTP\/1\.1 400/);
    assert.match(data, /"type":"invalid_request_error"/);
    assert.ok(closed);
    const smuggle = await rawHttp(gw.port,
      'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n');
    assert.match(smuggle.data, /^HTTP\/1\.1 400/);
  });

  test('a header section over the limit closes the connection; others are unaffected', async () => {
    const huge = `GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(4000)}\r\n\r\n`;
    const { data, closed } = await rawHttp(gw.port, huge);
    assert.ok(closed);
    assert.match(data, /^HTTP\/1\.1 431/);
    assert.equal((await fetch(`${gw.url}/healthz`)).status, 200);
  });

  test('a client too slow to send its headers is disconnected; others are unaffected', async () => {
    const slow = rawHttp(gw.port, 'GET /healthz HTTP/1.1\r\nHost: x\r\n', { timeoutMs: 5000 });
    // Meanwhile, normal traffic flows.
    for (let i = 0; i < 5; i++) assert.equal((await post(gw, chatBody(`fast ${i}`, { model: 'small' }))).status, 200);
    const r = await slow;
    assert.ok(r.closed, 'the slow connection was closed');
    assert.equal(r.data, '');
    assert.ok(r.ms >= 600 && r.ms < 4000, `closed after ${r.ms} ms`);
  });

  test('GET /v1/models lists the tiers this tenant may use', async () => {
    const res = await fetch(`${gw.url}/v1/models`, { headers: authHeaders() });
    assert.equal(res.status, 200);
    const json = await res.json();
    assert.equal(json.object, 'list');
    assert.deepEqual(json.data.map((m) => m.id).sort(), ['auto', 'hanging', 'small']);
    const beta = await (await fetch(`${gw.url}/v1/models`, { headers: authHeaders('sk-beta') })).json();
    assert.deepEqual(beta.data.map((m) => m.id).sort(), ['auto', 'large']);
    await expectError(await fetch(`${gw.url}/v1/models`), 401);
  });

  test('/healthz and /readyz', async () => {
    const h = await fetch(`${gw.url}/healthz`);
    assert.equal(h.status, 200);
    const r = await until(async () => {
      const x = await fetch(`${gw.url}/readyz`);
      return x.status === 200 ? x : null;
    });
    assert.deepEqual((await r.json()).tiers, { small: { state: 'up' }, large: { state: 'up' }, hanging: { state: 'up' } });
  });

  test('an upstream that does not answer in time gets 504', async () => {
    const t0 = Date.now();
    const res = await post(gw, chatBody('wait [[peer:hang]]', { model: 'hanging' }));
    await expectError(res, 504, { code: 'upstream_timeout' });
    assert.ok(Date.now() - t0 < 3000);
  });

  test('a stream that stalls between chunks gets an error event', async () => {
    const res = await post(gw, chatBody('a b c [[peer:chunk_delay_ms=2000]]', { model: 'hanging', stream: true }));
    const text = await res.text();
    // Either nothing was sent yet (a 504), or the stream ends with an error event.
    if (res.status === 200) {
      const events = sseParse(text);
      assert.ok(events.at(-1).error, text);
      assert.notEqual(events.at(-1), '[DONE]');
    } else {
      assert.equal(res.status, 504);
    }
  });

  test('upstream 4xx passes through; 5xx becomes 502 (503 stays 503, retryable)', async () => {
    await expectError(await post(gw, chatBody('x [[peer:status=400]]', { model: 'small' })), 400);
    await expectError(await post(gw, chatBody('x [[peer:status=500]]', { model: 'small' })), 502,
      { code: 'upstream_error' });
    await expectError(await post(gw, chatBody('x [[peer:status=503]]', { model: 'small', stream: true })), 503,
      { code: 'upstream_unavailable' });
  });

  test('a client that disconnects cancels its upstream request', async () => {
    await peer.reset();
    const ctrl = new AbortController();
    const res = await post(gw, chatBody('a b c d e f g h [[peer:chunk_delay_ms=200]] [[peer:chunks=40]]',
      { model: 'small', stream: true }), { signal: ctrl.signal });
    const reader = res.body.getReader();
    await reader.read(); // the first chunk is here: the upstream is mid-stream
    ctrl.abort();
    const st = await until(async () => {
      const s = await peer.stats();
      return s.aborted >= 1 ? s : null;
    });
    assert.equal(st.aborted, 1);
    assert.equal(st.completed, 0);
    assert.equal(st.active, 0);
    // The access log says the client went away.
    await gw.waitForLog((l) => l.msg === 'access' && l.status === 499);
  });

  test('one access-log line per request, with no key in it', async () => {
    const res = await post(gw, chatBody('log me', { model: 'small' }), { headers: { ...authHeaders(), 'x-request-id': 'log-me-1' } });
    assert.equal(res.status, 200);
    const line = await gw.waitForLog((l) => l.msg === 'access' && l.request_id === 'log-me-1');
    assert.equal(line.tenant, 'acme');
    assert.equal(line.tier, 'small');
    assert.equal(line.status, 200);
    assert.equal(typeof line.latency_ms, 'number');
    assert.ok(line.prompt_tokens > 0 && line.completion_tokens > 0);
    assert.ok(line.ts);
    assert.ok(!gw.logs().includes(TEST_KEY), 'the API key never appears in the logs');
    assert.equal(gw.logLines().filter((l) => l.request_id === 'log-me-1').length, 1);
  });
});

describe('replicas', () => {
  test('a dead replica is skipped: every request succeeds on the live one', async () => {
    const live = await startPeer({ name: 'live' });
    const dead = await freePort(); // nothing listens here
    const gw = await startGateway({ config: makeConfig({ upstream: [`http://127.0.0.1:${dead}`, live.url] }) });
    for (let i = 0; i < 10; i++) {
      const res = await post(gw, chatBody(`n${i}`, { stream: i % 2 === 1 }));
      assert.equal(res.status, 200);
      await res.text();
    }
    assert.equal((await live.stats()).completed, 10);
    await gw.stop();
  });

  test('load is spread over healthy replicas', async () => {
    const a = await startPeer({ name: 'a' });
    const b = await startPeer({ name: 'b' });
    const gw = await startGateway({ config: makeConfig({ upstream: [a.url, b.url] }) });
    await Promise.all(Array.from({ length: 20 }, (_, i) =>
      post(gw, chatBody(`x${i} [[peer:delay_ms=50]]`)).then((r) => r.text())));
    const [sa, sb] = [await a.stats(), await b.stats()];
    assert.equal(sa.completed + sb.completed, 20);
    assert.ok(sa.completed >= 5 && sb.completed >= 5, `${sa.completed} / ${sb.completed}`);
    await gw.stop();
  });

  test('no replica reachable: 502, and /readyz is 503', async () => {
    const dead = await freePort();
    const gw = await startGateway({ config: makeConfig({ upstream: `http://127.0.0.1:${dead}` }) });
    await expectError(await post(gw, chatBody('x')), 502, { code: 'upstream_unreachable' });
    const r = await until(async () => {
      const x = await fetch(`${gw.url}/readyz`);
      return x.status === 503 ? x : null;
    });
    assert.deepEqual((await r.json()).tiers.small, { state: 'down' });
    await gw.stop();
  });
});

describe('shutdown', () => {
  test('SIGTERM drains: in-flight requests finish, new connections are refused, exit 0', async () => {
    const peer = await startPeer({ name: 'drain' });
    const gw = await startGateway({ config: makeConfig({ upstream: peer.url }) });
    const inflight = post(gw, chatBody('slow one [[peer:delay_ms=700]]'));
    await until(async () => (await peer.stats()).active === 1);
    gw.proc.kill('SIGTERM');
    await sleep(200);
    // The listener is closed: a new connection is refused.
    const refused = await new Promise((resolve) => {
      const s = net.connect(gw.port, '127.0.0.1');
      s.on('connect', () => { s.destroy(); resolve(false); });
      s.on('error', () => resolve(true));
    });
    assert.ok(refused, 'new connections are refused while draining');
    const res = await inflight;
    assert.equal(res.status, 200);
    assert.equal((await res.json()).choices[0].message.content, 'echo: slow one');
    const exit = await gw.stop();
    assert.equal(exit.code, 0, JSON.stringify(exit) + gw.logs());
  });

  test('bad config: the error names the field and cascaded exits 2', async () => {
    const config = makeConfig({ upstream: 'http://127.0.0.1:1' });
    config.tenants[0].keys = ['not-a-hash'];
    await assert.rejects(startGateway({ config, timeoutMs: 3000 }), /tenants\[0\]\.keys\[0\]: not a sha256 hex string/);
  });
});
