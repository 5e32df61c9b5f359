// faults-upstream.test.mjs: the fault suite's upstream half (issue 12).
//
// Upstreams die, hang and lose their clients. Each test breaks one for real
// and checks what the client and the tenant's bill see:
//   - a replica SIGKILLed mid-stream: that stream ends at once with an
//     OpenAI-format error event (no hang, no [DONE]); requests that were
//     waiting on it, and every later one, are answered by the other replica;
//   - an upstream that accepts the connection and never answers, at the TCP
//     level or after reading the request: 504 within the tier's timeout_ms;
//   - a client that disconnects mid-stream: the upstream sees its request
//     closed, and the tenant is charged for what was generated, more than
//     nothing and no more than was produced before the close.
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, describe, test } from 'node:test';

import {
  TEST_KEY, authHeaders, chatBody, cleanupAfterAll, makeConfig, sha256hex, sleep, sseParse, startGateway, startPeer,
  tier, until,
} from '../support/harness.mjs';
import { startRedisForFile as redisServer } from '../support/redis.mjs';

cleanupAfterAll();


// The cut stream's access line and charge, for the test that follows it.
let cutStream = null;

const today = () => new Date().toISOString().slice(0, 10).replace(/-/g, '');

function post(gw, body, signal) {
  return fetch(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: authHeaders(), body: JSON.stringify(body), signal });
}


// readWithin: the rest of a response body, or a rejection if it does not
// end within ms (a hung stream must fail the test, not hang it).
async function readWithin(res, ms) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`the response did not end within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([res.text(), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function assertOpenAIError(obj, what) {
  assert.ok(obj && typeof obj.error === 'object', `${what}: ${JSON.stringify(obj)}`);
  for (const k of ['message', 'type', 'param', 'code']) assert.ok(k in obj.error, `${what}: no error.${k}`);
  assert.equal(typeof obj.error.message, 'string');
  assert.ok(obj.error.message.length > 0);
}

describe('upstream faults', () => {
  test('a replica SIGKILLed mid-stream: clean SSE error event; the rest fail over to the other replica', async () => {
    const a = await startPeer({ name: 'ka' });
    const b = await startPeer({ name: 'kb' });
    const gw = await startGateway({ config: makeConfig({ upstream: [a.url, b.url] }) });
    // One long stream, and non-stream requests that wait on both replicas.
    const res = await post(gw, chatBody('w1 w2 w3 [[peer:chunk_delay_ms=100]] [[peer:chunks=60]]', { stream: true }));
    assert.equal(res.status, 200);
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let text = '';
    while ((text.match(/"content":"[^"]+"/g) || []).length < 2) {
      const { value, done } = await reader.read();
      assert.ok(!done, 'stream ended early');
      text += dec.decode(value, { stream: true });
    }
    const waiting = Array.from({ length: 8 }, (_, i) => post(gw, chatBody(`wait ${i} [[peer:delay_ms=1000]]`)));
    // The replica holding the stream is the one that recorded it.
    const holds = async (p) => (await p.requests()).some((r) => r.body?.stream === true);
    const dead = (await holds(a)) ? a : b;
    const live = dead === a ? b : a;
    await until(async () => (await a.stats()).active + (await b.stats()).active >= 9);
    const waitingOnDead = (await dead.stats()).active - 1;
    dead.proc.kill('SIGKILL');
    dead.stop(); // the harness forgets it now: its death is expected
    // The stream ends promptly, with an error event and without [DONE].
    const t0 = Date.now();
    for (;;) {
      const { value, done } = await Promise.race([reader.read(), sleep(5000).then(() => ({ hung: true }))]);
      assert.ok(!(value === undefined && done === undefined), 'the stream hung after its upstream died');
      if (done) break;
      text += dec.decode(value, { stream: true });
    }
    const events = sseParse(text);
    const last = events.at(-1);
    assert.ok(!events.includes('[DONE]'), 'a broken stream must not end with [DONE]');
    assertOpenAIError(last, 'last event');
    assert.equal(last.error.type, 'upstream_error');
    console.log(`stream ended ${Date.now() - t0} ms after the kill with`, JSON.stringify(last));

    // Requests that were waiting on the dead replica, and new ones, are answered.
    const answered = await Promise.all(waiting.map(async (p) => {
      const r = await p;
      return { status: r.status, body: await readWithin(r, 5000) };
    }));
    assert.deepEqual(answered.map((r) => r.status), Array(8).fill(200), JSON.stringify(answered));
    for (let i = 0; i < 10; i++) {
      const r = await post(gw, chatBody(`after ${i}`, { stream: i % 2 === 1 }));
      assert.equal(r.status, 200);
      const t = await readWithin(r, 5000);
      if (i % 2 === 1) assert.ok(t.trimEnd().endsWith('data: [DONE]'), t);
    }
    const ls = await live.stats();
    console.log(`${waitingOnDead} requests were waiting on the killed replica; the live one completed ${ls.completed}`);
    assert.ok(waitingOnDead >= 1, 'some requests were in flight on the killed replica');
    assert.equal(ls.completed, 8 + 10, 'everything after the kill was answered by the live replica');
    await gw.stop();
  });

  test('a stream cut by its upstream dying is charged for the tokens that were produced, no more', async () => {
    const redis = await redisServer();
    const peer = await startPeer({ name: 'dies' });
    // Input free, output 100 USD per 1M: the charge counts output tokens.
    const price = { input_per_1m: 0, output_per_1m: 100 };
    const gw = await startGateway({ config: makeConfig({
      tiers: [tier({ name: 'small', urls: peer.url, price })],
      tenants: [{ id: 'cut', keys: [sha256hex(TEST_KEY)], allowed_tiers: ['small'] }],
      redis: { url: redis.url, timeout_ms: 200 },
    }) });
    const t0 = Date.now();
    const res = await post(gw, chatBody('a b c [[peer:chunk_delay_ms=50]] [[peer:chunks=60]]', { model: 'small', stream: true }));
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let text = '';
    while ((text.match(/"content":"[^"]+"/g) || []).length < 4) text += dec.decode((await reader.read()).value, { stream: true });
    peer.proc.kill('SIGKILL');
    peer.stop();
    const generatedAtMost = Math.floor((Date.now() - t0) / 50) + 1;
    text += await readWithin(new Response(new ReadableStream({
      async pull(c) {
        const { value, done } = await reader.read();
        if (done) c.close();
        else c.enqueue(value);
      },
    })), 5000);
    const received = (text.match(/"content":"[^"]+"/g) || []).length;
    assertOpenAIError(sseParse(text).at(-1), 'last event');
    const line = await gw.waitForLog((l) => l.msg === 'access' && l.tenant === 'cut');
    const tokens = line.cost_nano / (price.output_per_1m * 1000);
    const what = `charged ${tokens} tokens (${JSON.stringify(line)}); client received ${received}, ` +
      `upstream produced at most ${generatedAtMost}`;
    console.log(what);
    assert.ok(Number.isInteger(tokens), what);
    assert.ok(tokens >= received && tokens <= generatedAtMost, what);
    cutStream = { line, tokens, what };
    let spent = -1;
    for (let i = 0; i < 50 && spent !== line.cost_nano; i++) {
      if (i) await sleep(50);
      spent = Number(redis.cli('GET', `cascade:{cut}:spend:${today()}`) || 0);
    }
    assert.equal(spent, line.cost_nano, 'Redis holds what the access log charged');
    await gw.stop();
  });

  // The same request's access line: an operator reconciling the log needs
  // the tokens that were charged next to the cost (a failed or abandoned
  // request has no engine usage, only what was received).
  test('... and its access line shows the tokens it was charged for', () => {
    assert.ok(cutStream, 'the test above ran');
    assert.equal(cutStream.line.completion_tokens, cutStream.tokens,
      `the access log's tokens and its cost disagree: ${cutStream.what}`);
  });

  test('an upstream that accepts and never answers: 504 within timeout_ms', async () => {
    // A TCP server that accepts and then says nothing, not even HTTP.
    // `held` is the connections that carried a chat request (the health
    // prober's connections come and go on their own).
    const held = new Set();
    const all = new Set();
    const mute = net.createServer((s) => {
      all.add(s);
      s.on('data', (d) => {
        if (d.toString('latin1').startsWith('POST ')) held.add(s);
      });
      s.on('error', () => {});
      s.on('close', () => {
        held.delete(s);
        all.delete(s);
      });
    });
    await new Promise((r) => mute.listen(0, '127.0.0.1', r));
    after(() => {
      for (const s of all) s.destroy();
      mute.close();
    });
    const peer = await startPeer({ name: 'hang' });
    const TIMEOUT = 1000;
    const gw = await startGateway({ config: makeConfig({ tiers: [
      // chunk_timeout_ms far above timeout_ms: the whole-request timeout is
      // what must fire.
      tier({ name: 'mute', urls: `http://127.0.0.1:${mute.address().port}`, timeoutMs: TIMEOUT, chunkTimeoutMs: 30000 }),
      tier({ name: 'hang', model: 'hang-model', urls: peer.url, timeoutMs: TIMEOUT, chunkTimeoutMs: 30000 }),
    ] }) });
    const cases = [
      ['TCP accept, no bytes, non-stream', chatBody('x', { model: 'mute' })],
      ['TCP accept, no bytes, stream', chatBody('x', { model: 'mute', stream: true })],
      ['HTTP request read, no answer, non-stream', chatBody('x [[peer:hang]]', { model: 'hang' })],
      ['HTTP request read, no answer, stream', chatBody('x [[peer:hang]]', { model: 'hang', stream: true })],
    ];
    // All at once: a hung upstream must not hold up the others either.
    const results = await Promise.all(cases.map(async ([what, body]) => {
      const t0 = Date.now();
      const res = await post(gw, body);
      const text = await readWithin(res, TIMEOUT * 5);
      return { what, status: res.status, body: JSON.parse(text), ms: Date.now() - t0 };
    }));
    for (const r of results) {
      assert.equal(r.status, 504, `${r.what}: ${JSON.stringify(r)}`);
      assertOpenAIError(r.body, r.what);
      assert.equal(r.body.error.code, 'upstream_timeout', r.what);
      assert.ok(r.ms >= TIMEOUT - 50 && r.ms < TIMEOUT + 1000, `${r.what}: answered after ${r.ms} ms`);
    }
    console.log('504 after', results.map((r) => `${r.ms} ms`).join(', '));
    // The gateway gave up on the mute upstream's connections.
    assert.ok(held.size <= 2, `${held.size} requests reached the mute upstream`);
    await until(() => held.size === 0, 3000);
    const h = await fetch(`${gw.url}/healthz`);
    assert.equal(h.status, 200);
    await gw.stop();
  });

  test('a client that disconnects mid-stream: the upstream is cancelled; charged for what was generated', async () => {
    const redis = await redisServer();
    const peer = await startPeer({ name: 'leave' });
    // Input free, output 100 USD per 1M: the charge counts output tokens.
    const price = { input_per_1m: 0, output_per_1m: 100 };
    const gw = await startGateway({ config: makeConfig({
      tiers: [tier({ name: 'small', urls: peer.url, price })],
      tenants: [{ id: 'leaver', keys: [sha256hex(TEST_KEY)], allowed_tiers: ['small'] }],
      redis: { url: redis.url, timeout_ms: 200 },
    }) });
    const CHUNKS = 40;
    const ctrl = new AbortController();
    const t0 = Date.now();
    const res = await post(gw, chatBody(`a b c d [[peer:chunk_delay_ms=50]] [[peer:chunks=${CHUNKS}]]`,
      { model: 'small', stream: true }), ctrl.signal);
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let text = '';
    while ((text.match(/"content":"[^"]+"/g) || []).length < 5) text += dec.decode((await reader.read()).value);
    const received = (text.match(/"content":"[^"]+"/g) || []).length;
    ctrl.abort();
    // The upstream sees its request closed, well before the stream would
    // have ended on its own (CHUNKS x 50 ms after the start).
    const st = await until(async () => {
      const s = await peer.stats();
      return s.aborted >= 1 || s.completed >= 1 ? s : null;
    }, 3000);
    assert.ok(Date.now() - t0 < CHUNKS * 50 * 0.75, `the upstream saw the close only ${Date.now() - t0} ms after the start`);
    // The peer writes one token every 50 ms from the start: it cannot have
    // produced more than this by the time it saw the close.
    const generatedAtMost = Math.floor((Date.now() - t0) / 50) + 1;
    assert.equal(st.aborted, 1);
    assert.equal(st.completed, 0);
    assert.equal(st.active, 0);
    const line = await gw.waitForLog((l) => l.msg === 'access' && l.tenant === 'leaver');
    assert.equal(line.status, 499);
    // Charged for whole output tokens: at least those the client received,
    // at most what the upstream had produced when it saw the close.
    const tokens = line.cost_nano / (price.output_per_1m * 1000);
    const what = `charged ${tokens} tokens; client received ${received}, upstream produced at most ${generatedAtMost}`;
    assert.ok(Number.isInteger(tokens), `charged ${line.cost_nano} nano-USD`);
    assert.ok(tokens >= received, what);
    assert.ok(tokens <= Math.min(CHUNKS - 1, generatedAtMost), what);
    let spent = -1;
    for (let i = 0; i < 50 && spent !== line.cost_nano; i++) {
      if (i) await sleep(50);
      spent = Number(redis.cli('GET', `cascade:{leaver}:spend:${today()}`) || 0);
    }
    assert.equal(spent, line.cost_nano, 'Redis holds what the access log charged');
    console.log(what);
    assert.equal((await fetch(`${gw.url}/healthz`)).status, 200);
    await gw.stop();
    await redis.stop();
  });
});
